// Small encoders the engine exports share (export_compressed.cc, export_gptq.cc): fp16 bytes of
// fp32 values and dense little-endian bit packing into int32 words.
// Thread-safety: stateless functions.
#ifndef QUANTD_ENGINE_ARTIFACT_EXPORT_PACK_H_
#define QUANTD_ENGINE_ARTIFACT_EXPORT_PACK_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace quantd::artifact {

// n fp32 values as little-endian IEEE fp16 bytes. INVALID_ARGUMENT naming `name` when a finite
// value exceeds fp16's range (65504).
absl::StatusOr<std::string> F16Bytes(const float* v, int64_t n, const std::string& name);

// ORs value i of v[0..count) (each < 2^bits) into `words` at bit i·bits of the little-endian
// word sequence, low bits first; a value may straddle two words (GPTQ's 3-bit layout is exactly
// this: 32 values in 3 words). `words` must hold ceil(count·bits/32) entries.
void PackBits(const uint32_t* v, size_t count, int bits, uint32_t* words);

// The words' little-endian bytes (an I32 tensor's data).
std::string WordBytes(const std::vector<uint32_t>& words);

}  // namespace quantd::artifact

#endif  // QUANTD_ENGINE_ARTIFACT_EXPORT_PACK_H_
