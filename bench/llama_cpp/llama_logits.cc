// llama_logits: llama.cpp's logits for a fixed sequence of token ids, to compare a GGUF export
// with quantd's own forward of the same weights (tests/gguf_families_test.py). The ids are read
// as uint16 little-endian (quantd's token files), decoded in one batch at positions 0..T-1
// without BOS, and the logits of every position written as [T][n_vocab] little-endian fp32
// (K/V cache in fp32, no flash attention).
// Built against the llama.cpp library that llama-cpp-python vendors (like llama_ppl.cc, with llama_util.h); not
// part of the quantd build.
//   usage: llama_logits MODEL.gguf TOKENS.u16 OUT.f32
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

#include "llama.h"
#include "llama_util.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: llama_logits MODEL.gguf TOKENS.u16 OUT.f32\n");
    return 2;
  }
  std::ifstream in(argv[2], std::ios::binary);
  const std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<llama_token> toks(raw.size() / 2);
  for (size_t i = 0; i < toks.size(); ++i) {
    toks[i] = static_cast<uint8_t>(raw[2 * i]) | static_cast<uint8_t>(raw[2 * i + 1]) << 8;
  }
  if (toks.empty()) {
    std::fprintf(stderr, "no tokens in %s\n", argv[2]);
    return 1;
  }
  llama_model* model = llama_util::LoadModel(argv[1]);
  if (model == nullptr) return 1;
  const int n = static_cast<int>(toks.size());
  llama_context_params cp = llama_util::OneBatchParams(n < 64 ? 64 : n);
  cp.n_threads = 1;
  cp.n_threads_batch = 1;
  // fp32 K/V cache and no flash attention (whose CPU path works in fp16): with F32 weights the
  // whole graph then runs in fp32, as quantd's forward.
  cp.type_k = GGML_TYPE_F32;
  cp.type_v = GGML_TYPE_F32;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  llama_context* ctx = llama_util::NewContext(model, cp);
  if (ctx == nullptr) return 1;
  llama_batch batch = llama_batch_init(n, 0, 1);
  llama_util::FillBatch(&batch, toks.data(), n);
  if (llama_decode(ctx, batch) != 0) {
    std::fprintf(stderr, "llama_decode failed\n");
    return 1;
  }
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  std::ofstream out(argv[3], std::ios::binary);
  for (int i = 0; i < n; ++i) {
    out.write(reinterpret_cast<const char*>(llama_get_logits_ith(ctx, i)),
              static_cast<std::streamsize>(n_vocab) * sizeof(float));
  }
  std::printf("{\"tokens\": %d, \"n_vocab\": %d}\n", n, n_vocab);
  llama_util::Free(batch, ctx, model);
  return out.good() ? 0 : 1;
}
