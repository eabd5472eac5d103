#include "client/safe_path.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace quantd::client {
namespace {

absl::Status Bad(absl::string_view path, absl::string_view why) {
  std::string shown(path.substr(0, 200));
  for (char& c : shown) {
    if (c == '\0') c = '?';
  }
  return absl::InvalidArgumentError(
      absl::StrCat("server sent an unsafe file path \"", shown, "\": ", why));
}

}  // namespace

absl::Status ValidateArtifactPath(absl::string_view path) {
  if (path.empty()) return Bad(path, "empty");
  if (path.size() > 4096) return Bad(path, "longer than 4096 bytes");
  if (path.find('\0') != absl::string_view::npos) return Bad(path, "contains NUL");
  if (path.find('\\') != absl::string_view::npos) return Bad(path, "contains a backslash");
  if (path.front() == '/') return Bad(path, "absolute");
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty()) return Bad(path, "empty component");
    if (part == ".") return Bad(path, "\".\" component");
    if (part == "..") return Bad(path, "\"..\" component (path traversal)");
    if (part.size() >= 5 && part.substr(part.size() - 5) == ".part") {
      return Bad(path, "ends in .part, the client's temporary suffix");
    }
  }
  return absl::OkStatus();
}

}  // namespace quantd::client
