// Synthetic Llama checkpoints of real sizes, so that 1B-70B shapes can be tested without
// downloading weights: a Hugging Face directory with config.json, bf16 weights sharded like the
// Hub's (model-0000i-of-0000n.safetensors + model.safetensors.index.json), and a
// SentencePiece-style BPE tokenizer.json with the config's vocabulary size.
// Weights are random with realistic scales (N(0, init_std) linears and embeddings, RMSNorm
// scales near 1), deterministic in the seed. Generation holds one tensor at a time.
// Thread-safety: stateless functions (generation uses OpenMP inside).
#ifndef QUANTD_ENGINE_MODEL_SYNTHETIC_CHECKPOINT_H_
#define QUANTD_ENGINE_MODEL_SYNTHETIC_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/model/config.h"

namespace quantd::model {

// A Llama config of these sizes: head_dim = hidden / heads, RMSNorm eps 1e-5, RoPE θ 10000,
// untied head, BOS id 1 (the known shapes below; tests of real-size shapes).
LlamaConfig LlamaShape(int hidden, int inter, int layers, int heads, int kv, int vocab,
                       int max_pos);

struct SyntheticShape {
  LlamaConfig cfg;
  std::string name;  // "llama2-7b", ...
};

// Known shapes: "llama2-7b" (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000),
// "tinyllama-1.1b" (hidden 2048, 22 layers, 32 heads / 4 KV heads, MLP 5632, vocab 32000),
// "tiny" (hidden 64, 2 layers, 4 heads / 2 KV heads, MLP 160, vocab 512; tests).
// INVALID_ARGUMENT naming the known shapes otherwise.
absl::StatusOr<SyntheticShape> SyntheticShapeByName(std::string_view name);

struct SyntheticOptions {
  // Upper bound of a shard's tensor bytes (a tensor larger than it gets a shard of its own).
  // Default: 4 GiB.
  int64_t max_shard_bytes = int64_t{4} << 30;
  // Standard deviation of linear and embedding weights. Default: 0.02 (Llama's init).
  float init_std = 0.02f;
  uint64_t seed = 0;  // Default: 0
};

struct SyntheticResult {
  int shards = 0;
  int64_t total_bytes = 0;  // weight bytes (index.json's metadata.total_size)
};

// Writes the checkpoint for `cfg` into `dir` (created if missing). The config must be valid
// (ParseLlamaConfig of the written config.json succeeds). INVALID_ARGUMENT for a bad config or
// options, INTERNAL/RESOURCE_EXHAUSTED for I/O errors.
absl::StatusOr<SyntheticResult> WriteSyntheticCheckpoint(const LlamaConfig& cfg,
                                                         const std::string& dir,
                                                         const SyntheticOptions& opts);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_SYNTHETIC_CHECKPOINT_H_
