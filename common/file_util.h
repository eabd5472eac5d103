// Small file-system helpers every layer uses: whole-file reads, crash-safe writes
// (temp file + fsync + rename + directory fsync) and SHA-256 digests (OpenSSL).
// Thread-safety: all functions are thread-safe (no shared state).
#ifndef QUANTD_COMMON_FILE_UTIL_H_
#define QUANTD_COMMON_FILE_UTIL_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace quantd {

// Returns the whole file. NOT_FOUND if it does not exist, INVALID_ARGUMENT if it is larger
// than `max_bytes`, INTERNAL on other I/O errors.
absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     uint64_t max_bytes = uint64_t{1} << 34);

// Writes `data` to `path` atomically: a reader sees either the old file or the complete new one,
// also after a crash. Creates no directories.
//
// Fault injection (tests, docs/reliability.md): when the environment variable
// QUANTD_FAULT_WRITE is "SUBSTRING:FIRST[-LAST]" at the first call, the FIRST-th to LAST-th
// (1-based, counted per process) calls whose path contains SUBSTRING write half of the data to
// the temporary file and then fail with RESOURCE_EXHAUSTED, like a disk that filled up.
absl::Status WriteFileAtomic(const std::string& path, std::string_view data);

// fsyncs a directory so that renames inside it survive a crash.
absl::Status SyncDir(const std::string& dir);

// Creates `dir` and missing parents (mode 0755). Ok if it exists.
absl::Status MakeDirs(const std::string& dir);

// Removes a file or directory tree. Ok if it does not exist.
absl::Status RemoveAll(const std::string& path);

// Lowercase hex SHA-256 of bytes / of a file's contents (streamed).
std::string Sha256Hex(std::string_view data);
absl::StatusOr<std::string> Sha256File(const std::string& path);

// Size of a file in bytes; NOT_FOUND if absent.
absl::StatusOr<uint64_t> FileSize(const std::string& path);

// Joins path parts with '/'.
std::string JoinPath(std::string_view a, std::string_view b);

}  // namespace quantd

#endif  // QUANTD_COMMON_FILE_UTIL_H_
