// Downloads one published model version from RegistryService.FetchArtifact into a local
// directory: resumable (DIR/<path>.part grows until complete, a broken stream resumes from its
// size), verified (size and sha256 against the ModelVersion's file list) and crash-safe (each
// file is fsynced and renamed into place; DIR/manifest.json is written last, atomically, so a
// directory with manifest.json is complete).
// Thread-safety: FetchModelVersion is reentrant; two calls must not share a directory.
#ifndef QUANTD_CLIENT_MODEL_FETCHER_H_
#define QUANTD_CLIENT_MODEL_FETCHER_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "proto/quantd.grpc.pb.h"
#include "proto/quantd.pb.h"

namespace quantd::client {

struct FetchOptions {
  // Attempts per file after a stream broke with UNAVAILABLE / DEADLINE_EXCEEDED without
  // delivering any byte; an attempt that made progress resets the count. Default: 5.
  int max_retries = 5;
  // Backoff before retry k (1-based): initial_backoff * 2^(k-1), capped at 8 s. Default: 500 ms.
  absl::Duration initial_backoff = absl::Milliseconds(500);
  // Called once per file when it is in place: path, size in bytes, offset the download resumed
  // from (0 = fresh), whether it was already present and verified. May be empty.
  std::function<void(const std::string& path, uint64_t size, uint64_t resumed_from,
                     bool already_present)>
      on_file;
  // Called before each retry with the error that caused it. May be empty.
  std::function<void(const std::string& path, const absl::Status& error)> on_retry;
};

// Fetches every file of `model` (as returned by GetModel: name, resolved version, files,
// manifest_json) into `dir` (created if missing). Errors:
//   INVALID_ARGUMENT  a file path is absolute, contains "..", or is otherwise unsafe
//                     (checked for every file before anything is written);
//   DATA_LOSS         size or sha256 mismatch, or the server sent bytes at the wrong offset
//                     (the .part file is deleted);
//   UNAVAILABLE       the stream kept breaking after options.max_retries retries;
//   INTERNAL          local I/O errors; other server codes as the server sent them.
absl::Status FetchModelVersion(quantd::v1::RegistryService::StubInterface& stub,
                               const quantd::v1::ModelVersion& model, const std::string& dir,
                               const FetchOptions& options = {});

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_MODEL_FETCHER_H_
