// Vector codebooks used by block LDLQ: a codebook maps a g-dimensional vector of roughly
// unit-variance values (the incoherence-processed weights divided by their RMS) to the nearest
// codeword it can represent, and decodes codes back.
// Thread-safety: implementations are immutable after construction; all methods are const and
// may be called from many threads at once.
#ifndef QUANTD_ENGINE_QUANT_CODEBOOK_H_
#define QUANTD_ENGINE_QUANT_CODEBOOK_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace quantd::quant {

class VectorCodebook {
 public:
  virtual ~VectorCodebook() = default;

  // Identifier stored in packed results, e.g. "e8p", "rvq3", "rvq4", "scalar2".
  virtual std::string name() const = 0;
  // Vector dimension g (8 for the E8P family, 1 for scalar codebooks).
  virtual int dim() const = 0;
  // Number of uint16 codes produced per vector (1 for e8p, 2 for rvq3/rvq4).
  virtual int codes_per_vector() const = 0;
  // Bits per weight actually spent (2 for e8p, 3 for rvq3, 4 for rvq4).
  virtual int bits_per_weight() const = 0;

  // x: dim() floats. Writes codes_per_vector() codes and dim() reconstructed values
  // (xhat = Decode(codes)). Encoding is exact nearest-codeword search for E8P.
  virtual void Quantize(const float* x, uint16_t* codes, float* xhat) const = 0;
  // codes: codes_per_vector() values; writes dim() floats.
  virtual void Decode(const uint16_t* codes, float* xhat) const = 0;
};

// Returns the codebook named `name` ("e8p", "rvq3", "rvq4", "scalar2" = 2-bit Lloyd-Max for
// N(0,1)); `scale` is the codebook's input scale (x is multiplied by it before rounding to the
// lattice and the result divided by it); 0 selects the codebook's default.
// INVALID_ARGUMENT for an unknown name or a non-finite/negative scale.
absl::StatusOr<std::unique_ptr<VectorCodebook>> MakeCodebook(std::string_view name,
                                                             double scale = 0.0);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_CODEBOOK_H_
