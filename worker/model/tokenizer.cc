#include "worker/model/tokenizer.h"

#include <filesystem>

#include "absl/status/status.h"
#include "worker/model/str_util.h"
#include "worker/model/tokenizer_hf.h"
#include "worker/model/tokenizer_llama2c.h"

namespace quantd::model {

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
