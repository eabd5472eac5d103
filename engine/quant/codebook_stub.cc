// Placeholder used only while codebook.cc (owned by the codebook engineer) is absent: every
// codebook is UNIMPLEMENTED, so quip-sharp quantization reports a clear error instead of linking
// failures. CMakeLists.txt drops this file as soon as codebook.cc exists.
#include "engine/quant/codebook.h"

#include "absl/strings/str_cat.h"

namespace quantd::quant {

absl::StatusOr<std::unique_ptr<VectorCodebook>> MakeCodebook(std::string_view name,
                                                             double scale) {
  return absl::UnimplementedError(
      absl::StrCat("codebook \"", std::string(name), "\" is not built into this binary yet"));
}

}  // namespace quantd::quant
