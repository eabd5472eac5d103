// Internal string helpers for the model library. The Debian abseil is built with its own
// absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), so std::string_view arguments must be
// converted before they reach absl::StrCat; Cat() does that.
// Thread-safety: stateless.
#ifndef QUANTD_COMMON_STR_UTIL_H_
#define QUANTD_COMMON_STR_UTIL_H_

#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace quantd::model::internal {

inline absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }
template <typename T>
const T& ToAbsl(const T& t) {
  return t;
}

// absl::StrCat that also accepts std::string_view.
template <typename... A>
std::string Cat(const A&... a) {
  return absl::StrCat(ToAbsl(a)...);
}

}  // namespace quantd::model::internal

#endif  // QUANTD_COMMON_STR_UTIL_H_
