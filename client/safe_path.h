// Checks on file paths that come from the server, before the client writes anything under them.
// A registry lists its files as paths relative to the version directory; a path that is
// absolute or climbs out with ".." would let a server (or a corrupted manifest) write outside
// the directory the user asked for.
// Thread-safety: pure functions.
#ifndef QUANTD_CLIENT_SAFE_PATH_H_
#define QUANTD_CLIENT_SAFE_PATH_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace quantd::client {

// OK if `path` is a plain relative path: non-empty, at most 4096 bytes, no NUL or backslash,
// not absolute, no empty, "." or ".." components, and no component ending in ".part" (the
// client's own temporary suffix). INVALID_ARGUMENT naming the path otherwise.
absl::Status ValidateArtifactPath(absl::string_view path);

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_SAFE_PATH_H_
