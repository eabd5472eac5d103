#include "client/model_fetcher.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "client/safe_path.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "grpcpp/client_context.h"

namespace quantd::client {
namespace {

namespace v1 = quantd::v1;

// Owns one file descriptor.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now and reports the error that close(2) may return (delayed write errors).
  absl::Status Close(const std::string& path) {
    int fd = fd_;
    fd_ = -1;
    if (fd >= 0 && ::close(fd) != 0) {
      return absl::InternalError(absl::StrCat("close ", path, ": ", std::strerror(errno)));
    }
    return absl::OkStatus();
  }

 private:
  int fd_;
};

absl::Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("write ", path, ": ", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status WithContext(const absl::Status& st, const std::string& path) {
  return absl::Status(st.code(), absl::StrCat(path, ": ", st.message()));
}

bool Retryable(const absl::Status& st) {
  return absl::IsUnavailable(st) || absl::IsDeadlineExceeded(st);
}

// Streams `file` into `part` from its current size until it has file.size() bytes.
absl::Status DownloadToPart(v1::RegistryService::StubInterface& stub,
                            const v1::ModelVersion& model, const v1::ArtifactFile& file,
                            const std::string& part, const FetchOptions& options,
                            uint64_t* resumed_from) {
  uint64_t offset = 0;
  if (auto size = FileSize(part); size.ok()) offset = *size;
  if (offset > file.size()) {  // not ours to trust: start over
    QUANTD_RETURN_IF_ERROR(RemoveAll(part));
    offset = 0;
  }
  *resumed_from = offset;
  ScopedFd fd(::open(part.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    return absl::InternalError(absl::StrCat("open ", part, ": ", std::strerror(errno)));
  }
  int failures = 0;
  while (offset < file.size()) {
    const uint64_t attempt_start = offset;
    grpc::ClientContext ctx;  // no deadline: large files on slow links
    v1::FetchArtifactRequest req;
    req.set_name(model.name());
    req.set_version(model.version());
    req.set_path(file.path());
    req.set_offset(offset);
    std::unique_ptr<grpc::ClientReaderInterface<v1::Chunk>> reader = stub.FetchArtifact(&ctx, req);
    v1::Chunk chunk;
    absl::Status bad;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != offset) {
        bad = absl::DataLossError(absl::StrCat("server sent bytes at offset ", chunk.offset(),
                                               ", expected ", offset));
      } else if (chunk.data().size() > file.size() - offset) {
        bad = absl::DataLossError(absl::StrCat("server sent more than the manifest's ",
                                               file.size(), " bytes"));
      } else {
        bad = WriteAll(fd.get(), chunk.data(), part);
        offset += chunk.data().size();
      }
      if (!bad.ok()) {
        ctx.TryCancel();
        break;
      }
    }
    absl::Status st = FromGrpc(reader->Finish());
    if (!bad.ok()) {
      if (absl::IsDataLoss(bad)) (void)RemoveAll(part);
      return bad;
    }
    if (st.ok()) {
      if (offset != file.size()) {
        (void)RemoveAll(part);
        return absl::DataLossError(absl::StrCat("stream ended at byte ", offset, " of ",
                                                file.size()));
      }
      break;
    }
    if (!Retryable(st)) return st;
    if (offset > attempt_start) failures = 0;
    if (++failures > options.max_retries) {
      return absl::UnavailableError(absl::StrCat("stream broke ", failures,
                                                 " times without progress at byte ", offset,
                                                 "; last error: ", st.message()));
    }
    if (options.on_retry) options.on_retry(file.path(), st);
    absl::Duration backoff = options.initial_backoff;
    for (int i = 1; i < failures && backoff < absl::Seconds(8); ++i) backoff *= 2;
    absl::SleepFor(std::min(backoff, absl::Seconds(8)));
  }
  if (::fsync(fd.get()) != 0) {
    return absl::InternalError(absl::StrCat("fsync ", part, ": ", std::strerror(errno)));
  }
  return fd.Close(part);
}

// OK if `path` has exactly the size and sha256 the manifest lists; DATA_LOSS otherwise.
absl::Status Verify(const std::string& path, const v1::ArtifactFile& file) {
  QUANTD_ASSIGN_OR_RETURN(uint64_t size, FileSize(path));
  if (size != file.size()) {
    return absl::DataLossError(
        absl::StrCat("size is ", size, " bytes, the manifest says ", file.size()));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string digest, Sha256File(path));
  if (!absl::EqualsIgnoreCase(digest, file.sha256())) {
    return absl::DataLossError(
        absl::StrCat("sha256 is ", digest, ", the manifest says ", file.sha256()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FetchModelVersion(v1::RegistryService::StubInterface& stub,
                               const v1::ModelVersion& model, const std::string& dir,
                               const FetchOptions& options) {
  for (const v1::ArtifactFile& f : model.files()) {
    QUANTD_RETURN_IF_ERROR(ValidateArtifactPath(f.path()));
    if (f.path() == "manifest.json") {
      return absl::InvalidArgumentError("server lists manifest.json among the artifact files");
    }
  }
  QUANTD_RETURN_IF_ERROR(MakeDirs(dir));
  for (const v1::ArtifactFile& f : model.files()) {
    const std::string dest = JoinPath(dir, f.path());
    const std::string parent = std::filesystem::path(dest).parent_path().string();
    QUANTD_RETURN_IF_ERROR(MakeDirs(parent));
    if (FileSize(dest).ok() && Verify(dest, f).ok()) {
      if (options.on_file) options.on_file(f.path(), f.size(), 0, true);
      continue;
    }
    const std::string part = dest + ".part";
    uint64_t resumed_from = 0;
    absl::Status st = DownloadToPart(stub, model, f, part, options, &resumed_from);
    if (st.ok()) {
      st = Verify(part, f);
      if (absl::IsDataLoss(st)) (void)RemoveAll(part);
    }
    if (!st.ok()) return WithContext(st, f.path());
    std::error_code ec;
    std::filesystem::rename(part, dest, ec);
    if (ec) return absl::InternalError(absl::StrCat("rename ", part, ": ", ec.message()));
    QUANTD_RETURN_IF_ERROR(SyncDir(parent));
    if (options.on_file) options.on_file(f.path(), f.size(), resumed_from, false);
  }
  // Last: a directory with manifest.json is a complete fetch.
  return WriteFileAtomic(JoinPath(dir, "manifest.json"), model.manifest_json());
}

}  // namespace quantd::client
