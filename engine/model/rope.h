// Rotary position embedding (RoPE) settings of a Llama-family model and their inverse
// frequencies, with the semantics of Hugging Face transformers' rope types "default", "linear",
// "llama3", "dynamic", "yarn" and "longrope" (modeling_rope_utils.py), and partial rotary
// embeddings (partial_rotary_factor < 1: only the first dims of each head rotate). Other rope
// types are refused when the config is parsed, never approximated.
// Thread-safety: plain value type; the functions are thread-safe.
#ifndef QUANTD_ENGINE_MODEL_ROPE_H_
#define QUANTD_ENGINE_MODEL_ROPE_H_

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace quantd::model {

enum class RopeType {
  kDefault,   // inv_freq[i] = theta^(-2i/dim), dim = the rotated dims of a head
  kLinear,    // default / factor (position interpolation)
  kLlama3,    // Llama 3.1: low frequencies / factor, high kept, smooth ramp between
  kDynamic,   // dynamic NTK: theta grows only past max_position_embeddings, which quantd's
              // forwards never reach, so the frequencies are the default ones
  kYarn,      // YaRN: interpolated low / extrapolated high frequencies with a linear ramp
              // between, cos and sin times attention_factor
  kLongrope,  // LongRoPE (Phi-3): default / short_factor[i], or / long_factor[i] for a sequence
              // longer than original_max_position_embeddings; cos and sin times attention_factor
};

struct RopeParams {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;  // rope_theta. Default: 10000 (transformers' default_theta)
  double factor = 1.0;     // linear (> 0), llama3, dynamic, yarn, longrope (>= 1)
  double low_freq_factor = 0.0;                // llama3 only
  double high_freq_factor = 0.0;               // llama3 only; > low_freq_factor
  // llama3, yarn, longrope. Default: max_position_embeddings (Phi-3: the top-level key, 4096).
  int original_max_position_embeddings = 0;
  // The rotated fraction of each head: the first int(head_dim * partial_rotary_factor) dims.
  // Default: 1.
  double partial_rotary_factor = 1.0;
  // yarn, longrope: cos and sin are multiplied by this (resolved when parsed from
  // attention_factor, or mscale / mscale_all_dim / factor as transformers does). 1 otherwise.
  double attention_factor = 1.0;
  double beta_fast = 32.0, beta_slow = 1.0;  // yarn only
  bool truncate = true;                      // yarn only: floor / ceil the correction range
  std::vector<double> short_factor, long_factor;  // longrope only: [rotary dims / 2] each

  bool operator==(const RopeParams& o) const;
  bool operator!=(const RopeParams& o) const { return !(*this == o); }
};

// "default", "linear", "llama3", "dynamic", "yarn" or "longrope".
std::string_view RopeTypeName(RopeType t);

// Reads the RoPE settings of a config.json object in either layout:
//   transformers >= 5: "rope_parameters": {"rope_type", "rope_theta", "factor", ...}
//   older:             top-level "rope_theta" and "rope_scaling": {"type"|"rope_type", ...}
// transformers 5 reads "rope_scaling" first when it is a non-empty object, then
// "rope_parameters", taking "rope_theta" from inside that object before the top-level one;
// transformers 4 reads only the old keys. When old keys are present and the two readings
// differ, the config means different models to different transformers versions: that is
// INVALID_ARGUMENT naming both keys. Also INVALID_ARGUMENT (naming the key and value) for a
// rope type quantd does not implement, a key inside the RoPE object that is not used by its
// type (e.g. "beta_fast" for llama3), a partial_rotary_factor other than 1 unless
// `opts.allow_partial_rotary`, out-of-range numbers, and settings transformers 4 and 5 turn into
// different frequencies (a yarn or longrope factor other than max_position_embeddings /
// original_max_position_embeddings).
struct RopeParseOptions {
  // The llama3 / yarn / longrope default for original_max_position_embeddings.
  int max_position_embeddings = 0;
  // Phi-3: the top-level original_max_position_embeddings (> 0), which transformers puts into a
  // longrope / yarn / llama3 object over the object's own value. 0: none.
  int top_original_max_position_embeddings = 0;
  // Phi-3: "su" and "yarn" name longrope (Phi3Config), and only default / longrope exist.
  bool phi3 = false;
  // partial_rotary_factor < 1 is implemented by the family's transformers class.
  bool allow_partial_rotary = false;
};
absl::StatusOr<RopeParams> ParseRopeParams(const nlohmann::json& config,
                                           const RopeParseOptions& opts);
inline absl::StatusOr<RopeParams> ParseRopeParams(const nlohmann::json& config,
                                                  int max_position_embeddings) {
  RopeParseOptions o;
  o.max_position_embeddings = max_position_embeddings;
  return ParseRopeParams(config, o);
}

// The rotated dims of a head: int(head_dim * partial_rotary_factor).
int RotaryDim(const RopeParams& p, int head_dim);
// INVALID_ARGUMENT when the rotated dims of a `head_dim` head are odd or zero, or the longrope
// factor lists do not have RotaryDim / 2 entries.
absl::Status CheckRopeForHead(const RopeParams& p, int head_dim);

// Whether a sequence of `seq_len` tokens uses longrope's long factors (seq_len >
// original_max_position_embeddings, as transformers decides per forward call).
bool RopeUsesLongFactors(const RopeParams& p, int seq_len);

// inv_freq[i], i in [0, RotaryDim/2): the angle of pair i at position t is t * inv_freq[i], for a
// sequence of `seq_len` tokens (matters for longrope only). fp32 like transformers (which
// computes these in float32); the rotary dims must be even (CheckRopeForHead).
std::vector<float> RopeInverseFrequencies(const RopeParams& p, int head_dim, int seq_len = 0);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_ROPE_H_
