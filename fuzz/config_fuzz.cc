// Fuzzes the config.json parser (ParseLlamaConfig).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto c = quantd::model::ParseLlamaConfig(
      std::string_view(reinterpret_cast<const char*>(data), size));
  if (c.ok() && (c->hidden_size <= 0 || c->num_heads <= 0 || c->head_dim <= 0 ||
                 c->num_kv_heads <= 0 || c->num_heads % c->num_kv_heads != 0)) {
    __builtin_trap();  // an accepted config must be consistent
  }
  return 0;
}
