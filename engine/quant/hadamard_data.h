// Stored Hadamard base matrices (orders 52, 116, 156, 172) as '+'/'-' row strings.
// Thread-safety: immutable static data.
#ifndef QUANTD_ENGINE_QUANT_HADAMARD_DATA_H_
#define QUANTD_ENGINE_QUANT_HADAMARD_DATA_H_

namespace quantd::quant {

// Returns q row strings of q characters each, or nullptr when order q is not stored.
const char* const* HadamardDataRows(int q);

}  // namespace quantd::quant

#endif  // QUANTD_ENGINE_QUANT_HADAMARD_DATA_H_
