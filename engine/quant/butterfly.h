// ButterflyQuant's learnable orthogonal transform (Xu et al. 2025): a butterfly G on n inputs,
// a product of Givens-rotation layers, learned per linear layer to lower the proxy loss of the
// weight quantized in the rotated basis. For n = 2^k, G has k layers of n/2 rotations; layer l
// rotates the column pairs (i, i + 2^l) for every i whose bit l is 0. Any other n is split into
// its binary digits, largest first (172 = 128 + 32 + 8 + 4), one butterfly per power-of-two block
// on consecutive indices (G block-diagonal); the fixed randomized Hadamard that precedes G in
// the butterfly method (quantize.cc) mixes all n inputs, so the blocks see mixed coordinates.
// A row vector x is transformed as x·G with G = L_1·L_2·…·L_K (layer 1 first); the Givens
// rotation of angle θ on columns (i, j) maps (a, b) to (a cosθ − b sinθ, a sinθ + b cosθ).
// Thread-safety: Butterfly is a value type; const methods may run concurrently.
#ifndef QUANTD_ENGINE_QUANT_BUTTERFLY_H_
#define QUANTD_ENGINE_QUANT_BUTTERFLY_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/matrix.h"
#include "engine/quant/device.h"

namespace quantd::quant {

class Butterfly {
 public:
  // All angles 0 (G = I). INVALID_ARGUMENT for n < 1 or n > 2^24.
  static absl::StatusOr<Butterfly> Make(int n);
  // Number of angles the structure for n has: Σ over blocks of (s/2)·log₂ s.
  static int64_t NumAngles(int n);

  int n() const { return n_; }
  // Angles in radians: block by block, layer by layer, pair by pair (i increasing).
  const std::vector<double>& angles() const { return angles_; }
  std::vector<double>& mutable_angles() { return angles_; }

  // rows ← rows·G for rows [r×n]; InverseRows: rows ← rows·Gᵀ.
  void ApplyRows(MatrixD* rows) const;
  void InverseRows(MatrixD* rows) const;
  // The n×n matrix G (orthogonal).
  MatrixD Matrix() const;
  // Given Γ = ∂L/∂G [n×n], the gradient ∂L/∂θ (one entry per angle), back-propagated through
  // the Givens layers by hand.
  std::vector<double> Backward(const MatrixD& dl_dg) const;

 private:
  struct Stage {
    std::vector<int> i, j;  // disjoint column pairs of one layer
    int64_t angle0 = 0;     // index of the first pair's angle
  };
  Butterfly() = default;
  void Rotate(const Stage& s, bool inverse, MatrixD* x) const;

  int n_ = 0;
  std::vector<Stage> stages_;
  std::vector<double> angles_;
};

// Settings of the angle search. Default values are what method `butterfly` uses.
struct ButterflyParams {
  int bits = 2;             // 2..4, the QuIP scalar grid the surrogate rounds to
  int steps = 120;          // Default: 120 Adam steps
  double lr = 0.02;         // Default: 0.02 (radians per step, Adam)
  double uniformity = 0.05; // Default: 0.05 = λ of the uniformity regularizer
  int check_every = 20;     // Default: 20; candidates evaluated with the real quantizer
};

// The smooth surrogate the straight-through estimate differentiates, for a fixed rounding error
// δ [m×n] (δ = Q(Y) − Y at the current angles, held constant):
//   f(θ) = tr(δ Gᵀ H G δᵀ) / tr(W H Wᵀ) + λ·(κ(W G) − 9/5)²,
// κ(Y) = mean(Y⁴)/mean(Y²)² (9/5 is the kurtosis of a uniform distribution: the regularizer
// pulls the rotated weights toward a flat histogram over the grid's range). w [m×n], h [n×n]
// symmetric. Returns f and, when grad is non-null, ∂f/∂θ. The m·n² products run on `dev` (a GPU
// when the worker has one); the Givens sweeps stay on the host. A device error is returned.
absl::StatusOr<double> ButterflySurrogate(Device& dev, const Butterfly& b, const MatrixD& w,
                                          const MatrixD& h, const MatrixD& delta, double lambda,
                                          std::vector<double>* grad);

// δ = Q(W G) − W G with the QuIP scalar grid of `bits` bits (s = 2.4·RMS).
MatrixD ButterflyRoundingError(const Butterfly& b, const MatrixD& w, int bits);

// Learns the angles for weight w [m×n] (already in the basis G acts on) and proxy Hessian h:
// Adam on the straight-through surrogate from G = I. Every check_every steps the candidate is
// scored by `score` (the caller's real quantizer: lower is better); the best-scoring angles,
// including the initial G = I, are returned. Deterministic for a given device: no randomness.
// The surrogate's products run on `dev`. INVALID_ARGUMENT for mismatched shapes or bad params;
// a device error is returned.
template <typename Score>
absl::StatusOr<Butterfly> LearnButterfly(Device& dev, const MatrixD& w, const MatrixD& h,
                                         const ButterflyParams& p, Score score);

// Non-template core of LearnButterfly: `score` called through a function pointer.
absl::StatusOr<Butterfly> LearnButterflyImpl(Device& dev, const MatrixD& w, const MatrixD& h,
                                             const ButterflyParams& p,
                                             double (*score)(const Butterfly&, void*), void* ctx);

template <typename Score>
absl::StatusOr<Butterfly> LearnButterfly(Device& dev, const MatrixD& w, const MatrixD& h,
                                         const ButterflyParams& p, Score score) {
  return LearnButterflyImpl(
      dev, w, h, p, [](const Butterfly& b, void* c) { return (*static_cast<Score*>(c))(b); },
      &score);
}

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_BUTTERFLY_H_
