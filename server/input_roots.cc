#include "server/input_roots.h"

#include <climits>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quantd::server {
namespace fs = std::filesystem;
namespace {

// realpath(3), or "" when `path` cannot be resolved (missing, dangling link, no permission).
std::string RealPath(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) == nullptr ? "" : std::string(buf);
}

bool Under(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

}  // namespace

absl::StatusOr<InputRoots> InputRoots::Create(const std::vector<std::string>& roots,
                                              bool allow_any) {
  InputRoots r;
  r.allow_any_ = allow_any;
  for (const std::string& root : roots) {
    const std::string real = root.empty() ? "" : RealPath(root);
    std::error_code ec;
    if (real.empty() || !fs::is_directory(real, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--input_root ", root, " is not an existing directory"));
    }
    r.roots_.push_back(real);
  }
  return r;
}

bool InputRoots::Inside(const std::string& resolved) const {
  for (const std::string& root : roots_) {
    if (Under(resolved, root)) return true;
  }
  return false;
}

std::string InputRoots::RootList() const { return absl::StrJoin(roots_, ", "); }

absl::StatusOr<std::string> InputRoots::Resolve(const std::string& path,
                                                absl::string_view what) const {
  if (allow_any_) return path;
  if (roots_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "quantd reads job inputs only under --input_root directories and none is configured, "
        "so it cannot read the ", what, " ", path, ": start quantd with --input_root=DIR "
        "(repeatable) naming the directories clients may use, or with --allow_any_input_path to "
        "let it read any path it can"));
  }
  const std::string real = RealPath(path);
  if (real.empty()) {
    std::error_code ec;
    const fs::path lexical = fs::absolute(path, ec).lexically_normal();
    if (!ec && Inside(lexical.string())) {
      return absl::NotFoundError(absl::StrCat(what, " ", path, " does not exist"));
    }
    return absl::PermissionDeniedError(absl::StrCat(
        what, " ", path, " is outside every --input_root (", RootList(), ")"));
  }
  if (!Inside(real)) {
    return absl::PermissionDeniedError(absl::StrCat(
        what, " ", path, real == path ? "" : absl::StrCat(" resolves to ", real, ", which"),
        " is outside every --input_root (", RootList(), ")"));
  }
  return real;
}

absl::StatusOr<std::string> InputRoots::ResolveModelDir(const std::string& dir) const {
  absl::StatusOr<std::string> real = Resolve(dir, "model directory");
  if (!real.ok() || allow_any_) return real;
  std::error_code ec;
  if (!fs::is_directory(*real, ec)) return real;  // the caller says "not a directory"
  for (fs::directory_iterator it(*real, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_symlink(ec)) continue;
    const std::string target = RealPath(it->path().string());
    if (target.empty() || Inside(target)) continue;
    return absl::PermissionDeniedError(absl::StrCat(
        "model directory ", dir, ": ", it->path().filename().string(), " resolves to ", target,
        ", which is outside every --input_root (", RootList(), ")"));
  }
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("model directory ", dir, ": cannot list it: ", ec.message()));
  }
  return real;
}

}  // namespace quantd::server
