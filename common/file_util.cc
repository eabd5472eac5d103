#include "common/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <openssl/evp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace quantd {
namespace {

absl::Status ErrnoStatus(std::string_view what, const std::string& path, int err) {
  std::string msg = absl::StrCat(std::string(what), " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

// read(2) or write(2) over the `size` bytes at `buf` until all are moved or a call moves none
// (end of file), retrying interrupted calls. The bytes moved, or -1 with errno set.
template <typename Io, typename Byte>
ssize_t MoveAll(Io io, int fd, Byte* buf, size_t size) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = io(fd, buf + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

// Hex-encodes an EVP digest.
std::string Hex(const unsigned char* d, unsigned len) {
  static const char kHex[] = "0123456789abcdef";
  std::string out(2 * len, '0');
  for (unsigned i = 0; i < len; ++i) {
    out[2 * i] = kHex[d[i] >> 4];
    out[2 * i + 1] = kHex[d[i] & 15];
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path, uint64_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open", path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus("stat", path, err);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, expected a file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is ", st.st_size, " bytes, more than the limit of ", max_bytes));
  }
  std::string data(static_cast<size_t>(st.st_size), '\0');
  const ssize_t got = MoveAll(::read, fd, data.data(), data.size());
  if (got < 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus("read", path, err);
  }
  ::close(fd);
  data.resize(static_cast<size_t>(got));
  return data;
}

absl::Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open dir", dir, errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoStatus("fsync dir", dir, err);
  return absl::OkStatus();
}

namespace {

struct FaultPlan {
  std::string substring;
  int64_t first = 0, last = -1;
  std::atomic<int64_t> seen{0};
};

// Parsed once from $QUANTD_FAULT_WRITE; nullptr when unset or malformed (then a warning).
FaultPlan* WriteFaults() {
  static FaultPlan* plan = []() -> FaultPlan* {
    const char* env = std::getenv("QUANTD_FAULT_WRITE");
    if (env == nullptr || *env == '\0') return nullptr;
    const std::string spec(env);
    const size_t colon = spec.rfind(':');
    auto* p = new FaultPlan;
    bool ok = colon != std::string::npos && colon > 0;
    if (ok) {
      p->substring = spec.substr(0, colon);
      const std::string range = spec.substr(colon + 1);
      const size_t dash = range.find('-');
      ok = absl::SimpleAtoi(range.substr(0, dash), &p->first) && p->first >= 1;
      p->last = p->first;
      if (ok && dash != std::string::npos) {
        ok = absl::SimpleAtoi(range.substr(dash + 1), &p->last) && p->last >= p->first;
      }
    }
    if (!ok) {
      std::fprintf(stderr, "QUANTD_FAULT_WRITE=%s ignored: expected SUBSTRING:FIRST[-LAST]\n", env);
      delete p;
      return nullptr;
    }
    return p;
  }();
  return plan;
}

// True when this write must fail (see WriteFileAtomic's comment).
bool InjectWriteFault(const std::string& path) {
  FaultPlan* plan = WriteFaults();
  if (plan == nullptr || path.find(plan->substring) == std::string::npos) return false;
  const int64_t n = ++plan->seen;
  return n >= plan->first && n <= plan->last;
}

}  // namespace

absl::Status WriteFileAtomic(const std::string& path, std::string_view data) {
  const bool inject = InjectWriteFault(path);
  if (inject) data = data.substr(0, data.size() / 2);
  std::filesystem::path p(path);
  std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
  std::random_device rd;
  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", rd());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("create", tmp, errno);
  if (const ssize_t put = MoveAll(::write, fd, data.data(), data.size());
      put != static_cast<ssize_t>(data.size())) {
    int err = put < 0 ? errno : EIO;  // a write that moves nothing: report, do not spin
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoStatus("write", tmp, err);
  }
  if (inject) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return absl::ResourceExhaustedError(
        absl::StrCat("write ", tmp, ": No space left on device (injected by QUANTD_FAULT_WRITE)"));
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoStatus("fsync", tmp, err);
  }
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus("close", tmp, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus("rename", path, err);
  }
  return SyncDir(dir);
}

absl::Status MakeDirs(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir -p ", dir, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status RemoveAll(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return absl::InternalError(absl::StrCat("rm -r ", path, ": ", ec.message()));
  return absl::OkStatus();
}

std::string Sha256Hex(std::string_view data) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_Digest(data.data(), data.size(), d, &len, EVP_sha256(), nullptr);
  return Hex(d, len);
}

absl::StatusOr<std::string> Sha256File(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open", path, errno);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::string buf(1 << 20, '\0');
  for (;;) {
    ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int err = errno;
      ::close(fd);
      EVP_MD_CTX_free(ctx);
      return ErrnoStatus("read", path, err);
    }
    if (r == 0) break;
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(r));
  }
  ::close(fd);
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx, d, &len);
  EVP_MD_CTX_free(ctx);
  return Hex(d, len);
}

absl::StatusOr<uint64_t> FileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("stat", path, errno);
  return static_cast<uint64_t>(st.st_size);
}

std::string JoinPath(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  if (a.back() == '/') return std::string(a) + std::string(b);
  return std::string(a) + "/" + std::string(b);
}

}  // namespace quantd
