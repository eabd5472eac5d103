// Fuzzes the config.json parser (ParseLlamaConfig).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/model/config.h"
#include "engine/model/rope.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto c = quantd::model::ParseLlamaConfig(
      std::string_view(reinterpret_cast<const char*>(data), size));
  if (c.ok() && (c->hidden_size <= 0 || c->num_heads <= 0 || c->head_dim <= 0 ||
                 c->num_kv_heads <= 0 || c->num_heads % c->num_kv_heads != 0)) {
    __builtin_trap();  // an accepted config must be consistent
  }
  if (c.ok()) {
    for (float f : quantd::model::RopeInverseFrequencies(c->rope, c->head_dim)) {
      if (!(f > 0) || !std::isfinite(f)) __builtin_trap();  // and give finite RoPE frequencies
    }
  }
  return 0;
}
