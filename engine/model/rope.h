// Rotary position embedding (RoPE) settings of a Llama-family model and their inverse
// frequencies, with the semantics of Hugging Face transformers' rope types "default", "linear"
// and "llama3" (modeling_rope_utils.py). Other rope types ("dynamic", "yarn", "longrope", ...)
// are refused when the config is parsed, never approximated.
// Thread-safety: plain value type; the functions are thread-safe.
#ifndef QUANTD_ENGINE_MODEL_ROPE_H_
#define QUANTD_ENGINE_MODEL_ROPE_H_

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace quantd::model {

enum class RopeType {
  kDefault,  // inv_freq[i] = theta^(-2i/head_dim)
  kLinear,   // default / factor (position interpolation)
  kLlama3,   // Llama 3.1: low frequencies / factor, high kept, smooth ramp between
};

struct RopeParams {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;  // rope_theta. Default: 10000 (transformers' default_theta)
  double factor = 1.0;     // linear, llama3: > 0 (linear), >= 1 (llama3)
  double low_freq_factor = 0.0;                // llama3 only
  double high_freq_factor = 0.0;               // llama3 only; > low_freq_factor
  int original_max_position_embeddings = 0;    // llama3 only; Default: max_position_embeddings

  bool operator==(const RopeParams& o) const;
  bool operator!=(const RopeParams& o) const { return !(*this == o); }
};

// "default", "linear" or "llama3".
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
// type (e.g. "beta_fast"), a partial_rotary_factor other than 1, and out-of-range numbers.
// `max_position_embeddings` is the llama3 default for original_max_position_embeddings.
absl::StatusOr<RopeParams> ParseRopeParams(const nlohmann::json& config,
                                           int max_position_embeddings);

// inv_freq[i], i in [0, head_dim/2): the angle of pair i at position t is t * inv_freq[i].
// fp32 like transformers (which computes these in float32); head_dim must be even.
std::vector<float> RopeInverseFrequencies(const RopeParams& p, int head_dim);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_ROPE_H_
