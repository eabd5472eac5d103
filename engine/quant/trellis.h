// QTIP's bitshift trellis quantizer (docs/algorithms.md "QTIP bitshift trellis"): a sequence of T
// weights is coded as a walk through 2^L states where each step shifts b = k·V new bits into an
// L-bit state and the state decodes to V values through a computed code (1MAD, 3INST) or a small
// table indexed by a hash of the state (HYB). Encoding is a Viterbi search over all 2^L states;
// tail-biting makes the bit stream cyclic so a tile costs exactly k·T bits.
//
// Bit stream of a tile (S = T/V steps, codes c_0..c_{S-1} of b bits each): state s_i is the L-bit
// window of the cyclic stream c_0 c_1 … c_{S-1} that ends with c_i. Hence
// s_i = ((s_{i-1} << b) | c_i) mod 2^L, and s_0 = (low L−b bits of s_{S-1}) << b | c_0.
// Thread-safety: a Trellis is immutable after construction; Encode/Decode are const and may run
// on many threads at once (each call allocates its own workspace).
#ifndef QUANTD_ENGINE_QUANT_TRELLIS_H_
#define QUANTD_ENGINE_QUANT_TRELLIS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace quantd::quant {

enum class TrellisCode : uint8_t { k1Mad = 1, k3Inst = 2, kHyb = 3 };

// "1mad", "3inst", "hyb"; INVALID_ARGUMENT otherwise.
absl::StatusOr<TrellisCode> ParseTrellisCode(std::string_view name);
std::string_view TrellisCodeName(TrellisCode c);

inline constexpr int kHybQ = 9;  // HYB table: 2^9 entries × 2 values

// The HYB lookup table, 2^kHybQ × 2 floats (row-major): 2-D k-means centres of folded Gaussian
// samples (second component ≥ 0; bit 15 of the hashed state flips its sign). Deterministic: the
// same values on every run and machine (own RNG and Box–Muller, fixed iteration count).
const std::vector<float>& DefaultHybTable();

struct TrellisConfig {
  TrellisCode code = TrellisCode::kHyb;  // Default: HYB
  int L = 16;                            // Default: 16 state bits (8..20)
  int k = 2;                             // Default: 2 bits per weight (1..4)
  int V = 2;                             // Default: 2 (HYB); 1MAD and 3INST need V = 1
};

// INVALID_ARGUMENT naming the bad field.
absl::Status ValidateTrellisConfig(const TrellisConfig& c);

class Trellis {
 public:
  // hyb_table: 2^kHybQ × 2 values for HYB (empty = DefaultHybTable()); ignored otherwise.
  static absl::StatusOr<Trellis> Make(const TrellisConfig& config,
                                      std::vector<float> hyb_table = {});

  const TrellisConfig& config() const { return config_; }
  int bits_per_step() const { return b_; }
  const std::vector<float>& hyb_table() const { return hyb_table_; }
  // The V values of state s.
  const float* StateValues(uint32_t s) const { return &values_[static_cast<size_t>(s) * config_.V]; }

  // Tail-biting encode of x[0..T) (T a multiple of V, T/V ≥ L/b): writes T/V codes of b bits
  // and xhat = Decode(codes). Returns the squared error Σ(x − xhat)².
  double EncodeTailBiting(const float* x, int T, uint16_t* codes, float* xhat) const;
  // Unconstrained Viterbi (free start state, L + b·(S−1) bits): the reference the tail-biting
  // cost is compared with. Writes the S states and xhat; returns the squared error.
  double EncodeFree(const float* x, int T, uint32_t* states, float* xhat) const;
  // Decodes a tail-biting tile; states (optional) receives the S states.
  void DecodeTailBiting(const uint16_t* codes, int T, float* xhat, uint32_t* states = nullptr) const;

 private:
  Trellis() = default;
  // Viterbi over steps of x; start_prefix / end_suffix ≥ 0 constrain s_0 >> b and
  // s_{S-1} mod 2^(L−b). Writes states; returns the squared error.
  double Viterbi(const float* x, int steps, int64_t start_prefix, int64_t end_suffix,
                 uint32_t* states) const;

  TrellisConfig config_;
  int b_ = 0;
  std::vector<float> values_;     // 2^L × V
  std::vector<float> hyb_table_;  // HYB only
};

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_TRELLIS_H_
