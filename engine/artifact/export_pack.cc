#include "engine/artifact/export_pack.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/format/float16.h"

namespace quantd::artifact {

absl::StatusOr<std::string> F16Bytes(const float* v, int64_t n, const std::string& name) {
  std::string out(static_cast<size_t>(n) * 2, '\0');
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(v[i]) && std::fabs(v[i]) > 65504.0f) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": value ", v[i],
                                                     " does not fit fp16"));
    }
    const uint16_t h = model::FloatToHalf(v[i]);
    std::memcpy(&out[2 * i], &h, 2);
  }
  return out;
}

void PackBits(const uint32_t* v, size_t count, int bits, uint32_t* words) {
  for (size_t i = 0; i < count; ++i) {
    const uint64_t bit = static_cast<uint64_t>(i) * bits;
    const size_t w = bit / 32;
    const int shift = static_cast<int>(bit % 32);
    words[w] |= v[i] << shift;
    if (shift + bits > 32) words[w + 1] |= v[i] >> (32 - shift);
  }
}

std::string WordBytes(const std::vector<uint32_t>& words) {
  std::string out(words.size() * 4, '\0');
  std::memcpy(out.data(), words.data(), out.size());  // little-endian hosts only (ggml/GGUF too)
  return out;
}

}  // namespace quantd::artifact
