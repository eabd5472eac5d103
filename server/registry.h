// Registry: the directory of published models, registry/<name>/<version>/, each version
// immutable. A version is built in registry/.staging/<job-id>/ and becomes visible only through
// one rename(2). manifest.json in each version lists every other file with its size and sha256;
// see docs/formats/registry.md.
// Thread-safety: thread-safe (publication is serialized by a mutex; reads take no lock).
#ifndef QUANTD_SERVER_REGISTRY_H_
#define QUANTD_SERVER_REGISTRY_H_

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "proto/quantd.pb.h"

namespace quantd::server {

// True for names matching [A-Za-z0-9][A-Za-z0-9._-]{0,127} (so never "." or "..", "/" or NUL).
bool IsValidModelName(std::string_view name);

class Registry {
 public:
  explicit Registry(std::string root);

  // Creates the root and staging directories; finishes deletions a crash interrupted (files
  // left in tombstones).
  absl::Status Init();

  const std::string& root() const { return root_; }
  std::string StagingDir(const std::string& job_id) const;

  // Publishes `staging_dir` (which must hold manifest.json) as the next version of `name`.
  // Returns the version number. The manifest's "version" field is filled in before the rename.
  absl::StatusOr<int> Publish(const std::string& name, const std::string& staging_dir);

  // version 0 = latest. NOT_FOUND if absent, INVALID_ARGUMENT for a bad name.
  absl::StatusOr<quantd::v1::ModelVersion> Get(const std::string& name, int version) const;
  // Every version of `name`, or of every model when `name` is empty; sorted by name, version.
  absl::StatusOr<std::vector<quantd::v1::ModelVersion>> List(const std::string& name) const;

  // Deletes version `version` (≥ 1; no "latest", so a delete is never a guess) of `name` and
  // returns what it was. The number is never reused: the version's directory stays as a
  // tombstone holding its manifest renamed to deleted.json (so Publish skips the number and the
  // removal can be audited). The rename makes the version invisible at once; the other files
  // go after it (a crash in between leaves them in the tombstone, removed by the next Delete of
  // it or by Init). NOT_FOUND if absent, INVALID_ARGUMENT for a bad name or version.
  absl::StatusOr<quantd::v1::ModelVersion> Delete(const std::string& name, int version);

  // Absolute path of a file of a version after checking that the manifest lists it and that its
  // size and sha256 still match (DATA_LOSS otherwise). Verified digests are cached by
  // (path, size, mtime).
  absl::StatusOr<std::string> VerifiedFile(const std::string& name, int version,
                                           const std::string& path);

 private:
  absl::StatusOr<quantd::v1::ModelVersion> Load(const std::string& name, int version) const;
  std::vector<int> Versions(const std::string& name) const;

  std::string root_;
  Mutex publish_mu_;
  Mutex cache_mu_;
  std::map<std::string, std::string> verified_ ABSL_GUARDED_BY(cache_mu_);  // key -> sha256
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_REGISTRY_H_
