#include "engine/tokenizer/tokenizer.h"

#include <cctype>
#include <filesystem>

#include "absl/status/status.h"
#include "common/status_macros.h"
#include "common/str_util.h"
#include "engine/tokenizer/tokenizer_hf.h"
#include "engine/tokenizer/tokenizer_llama2c.h"

namespace quantd::model {

absl::StatusOr<std::vector<int32_t>> EncodeDocuments(const Tokenizer& tok, std::string_view text) {
  const std::string_view sep =
      text.find("<|endoftext|>") != std::string_view::npos ? "<|endoftext|>" : "\n\n";
  std::vector<int32_t> tokens;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(sep, pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view doc = text.substr(pos, end - pos);
    while (!doc.empty() && std::isspace(static_cast<unsigned char>(doc.front()))) doc.remove_prefix(1);
    while (!doc.empty() && std::isspace(static_cast<unsigned char>(doc.back()))) doc.remove_suffix(1);
    if (!doc.empty()) {
      QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok.Encode(doc, /*bos=*/true));
      tokens.insert(tokens.end(), ids.begin(), ids.end());
    }
    pos = end + sep.size();
  }
  return tokens;
}

std::string FindTokenizerFile(const std::string& model_dir) {
  for (const char* n : {"tokenizer.json", "tokenizer.bin", "tok512.bin"}) {
    const std::filesystem::path p = std::filesystem::path(model_dir) / n;
    std::error_code ec;
    if (std::filesystem::is_regular_file(p, ec)) return p.string();
  }
  return "";
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerForModel(const std::string& model_dir) {
  const std::string path = FindTokenizerFile(model_dir);
  if (path.empty()) {
    return absl::NotFoundError(internal::Cat(
        "model directory ", model_dir, " has no tokenizer.json, tokenizer.bin or tok512.bin"));
  }
  if (std::filesystem::path(path).filename() == "tokenizer.json") {
    auto t = HfTokenizer::Load(path);
    if (!t.ok()) return t.status();
    return std::unique_ptr<Tokenizer>(std::move(*t));
  }
  auto t = Llama2cTokenizer::Load(path);
  if (!t.ok()) return t.status();
  return std::unique_ptr<Tokenizer>(std::move(*t));
}

}  // namespace quantd::model
