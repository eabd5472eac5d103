// quantd-bench tokenize: tokenizer throughput on a text file, at several prefix lengths so a
// super-linear cost shows up as falling bytes/s.
#include <chrono>
#include <cstdio>
#include <string>

#include "bench/bench.h"
#include "common/file_util.h"
#include "nlohmann/json.hpp"
#include "engine/tokenizer/tokenizer.h"

namespace quantd::bench {

int RunTokenize(const Flags& flags) {
  const std::string dir = flags.Get("model", ""), path = flags.Get("text", "");
  auto max_bytes = flags.GetInt("bytes", 0);
  if (dir.empty() || path.empty() || !max_bytes.ok() || *max_bytes < 0) {
    std::fprintf(stderr, "usage: quantd-bench tokenize --model DIR --text FILE [--bytes N]\n");
    return 2;
  }
  auto tok = model::LoadTokenizerForModel(dir);
  auto text = ReadFile(path);
  if (!tok.ok() || !text.ok()) {
    std::fprintf(stderr, "%s\n", (tok.ok() ? text.status() : tok.status()).ToString().c_str());
    return 1;
  }
  size_t total = text->size();
  if (*max_bytes > 0 && static_cast<size_t>(*max_bytes) < total) total = *max_bytes;
  // Prefixes of 1/8, 1/4, 1/2 and all of the input (cut at a byte; the BPE is byte-level or
  // falls back to bytes, so a split UTF-8 sequence is still valid input).
  for (int div : {8, 4, 2, 1}) {
    const std::string_view part(text->data(), total / div);
    const auto t0 = std::chrono::steady_clock::now();
    auto ids = (*tok)->Encode(part, /*bos=*/false);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!ids.ok()) {
      std::fprintf(stderr, "%s\n", ids.status().ToString().c_str());
      return 1;
    }
    nlohmann::json out = {{"bytes", part.size()},
                          {"tokens", ids->size()},
                          {"seconds", secs},
                          {"bytes_per_s", part.size() / secs},
                          {"tokens_per_s", ids->size() / secs}};
    std::printf("%s\n", out.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace quantd::bench
