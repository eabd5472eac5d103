// InputRoots: the directories quantd may read job inputs from (quantd --input_root, repeatable;
// docs/reliability.md "Input roots"). A SubmitJobRequest names files on the coordinator's host
// (model directory, calibration and evaluation files); each is resolved with symlinks followed
// (realpath) and must lie inside a root, so a client cannot make the daemon read, tokenize and
// hand to workers a file it was not meant to (/etc/passwd, another team's data). The files are
// then read through the resolved paths.
// Thread-safety: immutable after Create; safe to share.
#ifndef QUANTD_SERVER_INPUT_ROOTS_H_
#define QUANTD_SERVER_INPUT_ROOTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quantd::server {

class InputRoots {
 public:
  // No roots and not allow_any: every input is refused (FAILED_PRECONDITION saying how to
  // configure a root).
  InputRoots() = default;

  // Resolves every root (realpath). INVALID_ARGUMENT naming the root when it does not exist or
  // is not a directory. `allow_any` (--allow_any_input_path): every readable path is allowed,
  // roots or not.
  static absl::StatusOr<InputRoots> Create(const std::vector<std::string>& roots, bool allow_any);

  // The resolved (absolute, symlink-free) path of `path` when it lies inside a root (or
  // allow_any). `what` names the input in errors ("calibration file").
  //   FAILED_PRECONDITION  no root is configured (the message says how to configure one)
  //   PERMISSION_DENIED    outside every root, naming the path, what it resolves to and the roots
  //   NOT_FOUND            it does not exist (only said for paths under a root, so existence
  //                        outside the roots is not revealed)
  absl::StatusOr<std::string> Resolve(const std::string& path, absl::string_view what) const;

  // Resolve for a model directory, and every symlink directly inside it (the job reads the
  // directory's files by name: config.json, *.safetensors, tokenizer files) must resolve
  // inside a root too: PERMISSION_DENIED naming the entry otherwise. Dangling links are left
  // alone (they cannot be read).
  absl::StatusOr<std::string> ResolveModelDir(const std::string& dir) const;

  const std::vector<std::string>& roots() const { return roots_; }
  bool allow_any() const { return allow_any_; }

 private:
  bool Inside(const std::string& resolved) const;
  std::string RootList() const;

  std::vector<std::string> roots_;  // resolved
  bool allow_any_ = false;
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_INPUT_ROOTS_H_
