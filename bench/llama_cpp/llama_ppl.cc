// llama_ppl: perplexity of a GGUF model under llama.cpp with the protocol of quantd's own
// evaluation (engine/model/perplexity.h, docs/benchmarks.md): the whole text tokenized without
// BOS, the first N tokens, non-overlapping windows of C tokens, every next-token target of each
// window scored, 4,095 for 4,096 tokens (llama-perplexity scores only the second half of each window and adds a BOS, so
// its numbers are not comparable with ours). Built and run by bench/gguf_llama_cpp.sh against
// the llama.cpp library that llama-cpp-python vendors; not part of the quantd build.
//   usage: llama_ppl MODEL.gguf TEXT_FILE [N=4096] [C=512]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"
#include "llama_util.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: llama_ppl MODEL.gguf TEXT_FILE [N=4096] [C=512]\n");
    return 2;
  }
  const int n_tokens = argc > 3 ? std::atoi(argv[3]) : 4096;
  const int ctx_len = argc > 4 ? std::atoi(argv[4]) : 512;
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();

  llama_model* model = llama_util::LoadModel(argv[1]);
  if (model == nullptr) return 1;
  const llama_vocab* vocab = llama_model_get_vocab(model);
  std::vector<llama_token> toks(text.size() + 16);
  const int n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), toks.data(),
                               static_cast<int32_t>(toks.size()), /*add_special=*/false,
                               /*parse_special=*/false);
  if (n < 2) {
    std::fprintf(stderr, "tokenization failed (%d)\n", n);
    return 1;
  }
  toks.resize(std::min(n, n_tokens));
  llama_context* ctx = llama_util::NewContext(model, llama_util::OneBatchParams(ctx_len));
  if (ctx == nullptr) return 1;
  const int n_vocab = llama_vocab_n_tokens(vocab);
  double nll = 0;
  long targets = 0;
  llama_batch batch = llama_batch_init(ctx_len, 0, 1);
  for (size_t start = 0; start + 1 < toks.size(); start += ctx_len) {
    const int len = static_cast<int>(std::min<size_t>(ctx_len, toks.size() - start));
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_util::FillBatch(&batch, toks.data() + start, len);
    if (llama_decode(ctx, batch) != 0) {
      std::fprintf(stderr, "llama_decode failed\n");
      return 1;
    }
    // Every position with a next token is scored, the window's last one included (its target is
    // the next window's first token): x = s[i:i+C], y = s[i+1:i+C+1], as quantd's evaluation.
    for (int i = 0; i < len && start + i + 1 < toks.size(); ++i) {
      const float* lg = llama_get_logits_ith(ctx, i);
      double mx = lg[0];
      for (int v = 1; v < n_vocab; ++v) mx = std::max(mx, static_cast<double>(lg[v]));
      double se = 0;
      for (int v = 0; v < n_vocab; ++v) se += std::exp(lg[v] - mx);
      nll += std::log(se) + mx - lg[toks[start + i + 1]];
      ++targets;
    }
  }
  std::printf("{\"model\": \"%s\", \"tokens\": %zu, \"targets\": %ld, \"mean_nll\": %.6f, \"ppl\": %.4f}\n",
              argv[1], toks.size(), targets, nll / targets, std::exp(nll / targets));
  llama_util::Free(batch, ctx, model);
  return 0;
}
