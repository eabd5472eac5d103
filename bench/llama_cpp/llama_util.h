// What llama_logits.cc and llama_ppl.cc share: loading a GGUF model and filling a batch of one
// sequence. Header-only, built with them against the llama.cpp library that llama-cpp-python
// vendors (bench/gguf_llama_cpp.sh, tests/gguf_families_test.py); not part of the quantd build.
#ifndef QUANTD_BENCH_LLAMA_CPP_LLAMA_UTIL_H_
#define QUANTD_BENCH_LLAMA_CPP_LLAMA_UTIL_H_

#include <cstdio>

#include "llama.h"

namespace llama_util {

// Initializes the backend and loads `path` with the default model parameters; nullptr (with a
// message on stderr) when it cannot.
inline llama_model* LoadModel(const char* path) {
  llama_backend_init();
  llama_model* model = llama_model_load_from_file(path, llama_model_default_params());
  if (model == nullptr) std::fprintf(stderr, "cannot load %s\n", path);
  return model;
}

// Context parameters for windows of up to `n` tokens decoded in one batch (n_ctx = n_batch =
// n_ubatch = n); the rest are llama.cpp's defaults.
inline llama_context_params OneBatchParams(int n) {
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = n;
  cp.n_batch = n;
  cp.n_ubatch = n;
  return cp;
}

// llama_init_from_model, with a message on stderr when it fails (nullptr).
inline llama_context* NewContext(llama_model* model, const llama_context_params& cp) {
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) std::fprintf(stderr, "cannot create a context\n");
  return ctx;
}

// `batch` (from llama_batch_init(>= n, 0, 1)) holds toks[0..n) of sequence 0 at positions
// 0..n-1, with the logits of every position requested.
inline void FillBatch(llama_batch* batch, const llama_token* toks, int n) {
  batch->n_tokens = n;
  for (int i = 0; i < n; ++i) {
    batch->token[i] = toks[i];
    batch->pos[i] = i;
    batch->n_seq_id[i] = 1;
    batch->seq_id[i][0] = 0;
    batch->logits[i] = 1;
  }
}

// Frees what LoadModel, llama_init_from_model and llama_batch_init made.
inline void Free(llama_batch batch, llama_context* ctx, llama_model* model) {
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
}

}  // namespace llama_util

#endif  // QUANTD_BENCH_LLAMA_CPP_LLAMA_UTIL_H_
