#include "engine/format/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/str_util.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace quantd::model {
namespace {

using json = nlohmann::json;

// Largest header we accept; the safetensors reference implementation uses 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kF64, "F64", 8},  {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},  {DType::kI8, "I8", 1},   {DType::kU64, "U64", 8},
    {DType::kU32, "U32", 4},  {DType::kU16, "U16", 2}, {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

uint64_t ReadLE64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// A JSON value that must be a non-negative integer fitting in int64.
bool AsNonNegative(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return *out <= static_cast<uint64_t>(INT64_MAX);
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

// Bytes needed by shape x dtype; false on negative dims or overflow.
bool ByteSize(const std::vector<int64_t>& shape, DType dtype, uint64_t* out) {
  unsigned __int128 n = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0) return false;
    n *= static_cast<uint64_t>(d);
    if (n > static_cast<uint64_t>(INT64_MAX)) return false;
  }
  *out = static_cast<uint64_t>(n);
  return true;
}

std::string ShapeStr(const std::vector<int64_t>& shape) {
  return internal::Cat("[", absl::StrJoin(shape, ","), "]");
}

}  // namespace

absl::StatusOr<DType> ParseDType(std::string_view s) {
  for (const auto& d : kDTypes)
    if (d.name == s) return d.dtype;
  return absl::InvalidArgumentError(internal::Cat("unknown safetensors dtype \"", s, "\""));
}

std::string_view DTypeName(DType d) {
  for (const auto& e : kDTypes)
    if (e.dtype == d) return e.name;
  return "?";
}

size_t DTypeSize(DType d) {
  for (const auto& e : kDTypes)
    if (e.dtype == d) return e.size;
  return 0;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto bad = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(internal::Cat(path, ": ", what));
  };
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == ENOENT) return absl::NotFoundError(internal::Cat(path, ": no such file"));
      return absl::InternalError(internal::Cat(path, ": open: ", std::strerror(err)));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return bad("not a regular file");
    }
    if (st.st_size < 8) {
      ::close(fd);
      return bad(internal::Cat("truncated: ", st.st_size, " bytes, need at least 8"));
    }
    f->map_size_ = static_cast<size_t>(st.st_size);
    void* m = mmap(nullptr, f->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) {
      return absl::InternalError(internal::Cat(path, ": mmap: ", std::strerror(errno)));
    }
    f->map_ = m;
  }
  QUANTD_RETURN_IF_ERROR(f->Validate(static_cast<const char*>(f->map_)));
  return f;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(std::string_view bytes,
                                                                        std::string label) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = std::move(label);
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(internal::Cat(
        f->path_, ": truncated: ", bytes.size(), " bytes, need at least 8"));
  }
  f->map_size_ = bytes.size();
  QUANTD_RETURN_IF_ERROR(f->Validate(bytes.data()));
  return f;
}

absl::Status SafetensorsFile::Validate(const char* base) {
  SafetensorsFile* f = this;
  const std::string& path = path_;
  auto bad = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(internal::Cat(path, ": ", what));
  };
  const uint64_t header_len = ReadLE64(base);
  if (header_len > f->map_size_ - 8) {
    return bad(internal::Cat("header length ", header_len, " exceeds the file (",
                            f->map_size_, " bytes)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return bad(internal::Cat("header length ", header_len, " exceeds limit ", kMaxHeaderBytes));
  }
  const std::string_view header(base + 8, header_len);
  f->data_ = base + 8 + header_len;
  const uint64_t data_size = f->map_size_ - 8 - header_len;

  json root = json::parse(header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return bad("header is not valid JSON");
  if (!root.is_object()) return bad("header is not a JSON object");

  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  try {
    for (auto it = root.begin(); it != root.end(); ++it) {
      const std::string& name = it.key();
      const json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) return bad("__metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) {
            return bad(internal::Cat("__metadata__ value for \"", m.key(), "\" is not a string"));
          }
          f->metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      auto bad_t = [&](absl::string_view what) {
        return bad(internal::Cat("tensor \"", name, "\": ", what));
      };
      if (name.empty()) return bad("empty tensor name");
      if (!v.is_object()) return bad_t("entry is not an object");
      for (auto k = v.begin(); k != v.end(); ++k) {
        if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets")
          return bad_t(internal::Cat("unknown key \"", k.key(), "\""));
      }
      if (!v.contains("dtype") || !v["dtype"].is_string()) return bad_t("missing string dtype");
      Entry e;
      auto dt = ParseDType(v["dtype"].get<std::string>());
      if (!dt.ok()) return bad_t(dt.status().message());
      e.dtype = *dt;
      if (!v.contains("shape") || !v["shape"].is_array()) return bad_t("missing shape array");
      for (const json& d : v["shape"]) {
        uint64_t u;
        if (!AsNonNegative(d, &u)) return bad_t(internal::Cat("bad dimension ", d.dump()));
        e.shape.push_back(static_cast<int64_t>(u));
      }
      const json& off = v.contains("data_offsets") ? v["data_offsets"] : json();
      if (!off.is_array() || off.size() != 2 || !AsNonNegative(off[0], &e.begin) ||
          !AsNonNegative(off[1], &e.end)) {
        return bad_t(internal::Cat("bad data_offsets ", off.dump()));
      }
      if (e.begin > e.end || e.end > data_size) {
        return bad_t(internal::Cat("data_offsets [", e.begin, ",", e.end,
                                  "] outside the data section of ", data_size, " bytes"));
      }
      uint64_t need;
      if (!ByteSize(e.shape, e.dtype, &need)) {
        return bad_t(internal::Cat("shape ", ShapeStr(e.shape), " overflows"));
      }
      if (need != e.end - e.begin) {
        return bad_t(internal::Cat("shape ", ShapeStr(e.shape), " x ", DTypeName(e.dtype),
                                  " needs ", need, " bytes, data_offsets give ",
                                  e.end - e.begin));
      }
      auto [pos, inserted] = f->entries_.emplace(name, std::move(e));
      if (!inserted) return bad_t("duplicate name");
      ranges.push_back({pos->second.begin, pos->second.end, &pos->first});
    }
  } catch (const std::exception& ex) {
    return bad(internal::Cat("malformed header: ", ex.what()));
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return bad(internal::Cat("tensors \"", *ranges[i - 1].name, "\" and \"", *ranges[i].name,
                              "\" overlap at byte ", ranges[i].begin));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> SafetensorsFile::Names() const { return IndexNames(entries_); }

absl::StatusOr<TensorView> SafetensorsFile::Get(std::string_view name) const {
  QUANTD_ASSIGN_OR_RETURN(auto it, FindTensor(entries_, path_, name));
  const Entry& e = it->second;
  return TensorView{it->first, e.dtype, e.shape,
                    std::string_view(data_ + e.begin, e.end - e.begin)};
}

void ReleasePages(std::string_view mapped_bytes) {
  if (mapped_bytes.empty()) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(mapped_bytes.data());
  const uintptr_t e = b + mapped_bytes.size();
  const uintptr_t lo = (b + page - 1) / page * page, hi = e / page * page;
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

namespace {

// The 8-byte length and the padded JSON header for tensors laid out in `order` (indices into
// `decls`); names are checked and `sizes` gets each tensor's byte size.
absl::StatusOr<std::string> BuildHeader(const std::string& path,
                                        const std::vector<TensorDecl>& decls,
                                        const std::vector<size_t>& order,
                                        const std::map<std::string, std::string>& metadata,
                                        std::vector<uint64_t>* sizes) {
  json header = json::object();
  json meta = json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  meta["format"] = "pt";
  header["__metadata__"] = meta;
  sizes->assign(decls.size(), 0);
  uint64_t offset = 0;
  for (size_t i : order) {
    const TensorDecl& t = decls[i];
    if (t.name.empty() || t.name == "__metadata__") {
      return absl::InvalidArgumentError(
          internal::Cat(path, ": invalid tensor name \"", t.name, "\""));
    }
    if (header.contains(t.name)) {
      return absl::InvalidArgumentError(
          internal::Cat(path, ": duplicate tensor \"", t.name, "\""));
    }
    uint64_t need;
    if (!ByteSize(t.shape, t.dtype, &need)) {
      return absl::InvalidArgumentError(internal::Cat(path, ": tensor \"", t.name, "\": shape ",
                                                     ShapeStr(t.shape), " is invalid"));
    }
    (*sizes)[i] = need;
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + need}}};
    offset += need;
  }
  // nlohmann's default object is a std::map, so keys come out sorted.
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string out;
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += h;
  return out;
}

absl::Status ErrnoError(std::string_view what, const std::string& path, int err) {
  if (err == ENOSPC) {
    return absl::ResourceExhaustedError(internal::Cat(what, " ", path, ": ", std::strerror(err)));
  }
  return absl::InternalError(internal::Cat(what, " ", path, ": ", std::strerror(err)));
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<TensorDecl> decls;
  std::vector<size_t> order;
  for (const auto& t : tensors) {
    order.push_back(decls.size());
    decls.push_back({t.name, t.dtype, t.shape});
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return decls[a].name < decls[b].name; });
  std::vector<uint64_t> sizes;
  QUANTD_ASSIGN_OR_RETURN(std::string out, BuildHeader(path, decls, order, metadata, &sizes));
  for (size_t i : order) {
    const TensorToWrite& t = tensors[i];
    if (sizes[i] != t.data.size()) {
      return absl::InvalidArgumentError(
          internal::Cat(path, ": tensor \"", t.name, "\": shape ", ShapeStr(t.shape), " x ",
                       DTypeName(t.dtype), " does not match ", t.data.size(), " data bytes"));
    }
  }
  for (size_t i : order) out += tensors[i].data;
  return WriteFileAtomic(path, out);
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<TensorDecl> decls,
    const std::map<std::string, std::string>& metadata) {
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  w->path_ = path;
  std::vector<size_t> order(decls.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  QUANTD_ASSIGN_OR_RETURN(std::string header,
                          BuildHeader(path, decls, order, metadata, &w->sizes_));
  w->decls_ = std::move(decls);
  std::random_device rd;
  w->tmp_ = internal::Cat(path, ".tmp.", ::getpid(), ".", rd());
  w->fd_ = ::open(w->tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w->fd_ < 0) return ErrnoError("create", w->tmp_, errno);
  QUANTD_RETURN_IF_ERROR(w->Write(header));
  return w;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!done_) ::unlink(tmp_.c_str());
}

absl::Status SafetensorsWriter::Write(std::string_view bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("write", tmp_, errno);
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Append(std::string_view name, std::string_view bytes) {
  return Put(name, bytes, /*whole=*/true);
}

absl::Status SafetensorsWriter::AppendPart(std::string_view name, std::string_view bytes) {
  return Put(name, bytes, /*whole=*/false);
}

absl::Status SafetensorsWriter::Put(std::string_view name, std::string_view bytes, bool whole) {
  if (next_ >= decls_.size() || decls_[next_].name != name) {
    return absl::FailedPreconditionError(internal::Cat(
        path_, ": tensor \"", name, "\" appended out of order, expected \"",
        next_ < decls_.size() ? decls_[next_].name : std::string("<none>"), "\""));
  }
  const uint64_t have = partial_ + bytes.size();
  if (whole ? partial_ != 0 || have != sizes_[next_] : have > sizes_[next_]) {
    return absl::InvalidArgumentError(internal::Cat(path_, ": tensor \"", name, "\" has ", have,
                                                   " bytes, its shape needs ", sizes_[next_]));
  }
  QUANTD_RETURN_IF_ERROR(Write(bytes));
  partial_ = have;
  if (partial_ == sizes_[next_]) {
    partial_ = 0;
    ++next_;
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (next_ != decls_.size()) {
    return absl::FailedPreconditionError(internal::Cat(path_, ": ", decls_.size() - next_,
                                                      " declared tensors were not written"));
  }
  if (::fsync(fd_) != 0) return ErrnoError("fsync", tmp_, errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) return ErrnoError("close", tmp_, errno);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) return ErrnoError("rename", tmp_, errno);
  done_ = true;
  const std::filesystem::path p(path_);
  return SyncDir(p.has_parent_path() ? p.parent_path().string() : ".");
}

}  // namespace quantd::model
