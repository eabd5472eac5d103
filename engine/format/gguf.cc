#include "engine/format/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <type_traits>
#include <utility>

#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/format/float16.h"
#include "common/str_util.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF reader assumes a little-endian host");

namespace quantd::model {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS
constexpr uint64_t kMaxAlignment = 1 << 16;

// Bounds-checked little-endian reads over the file image. Every Read* fails (returns false)
// instead of reading past the end.
class Cursor {
 public:
  explicit Cursor(std::string_view b) : b_(b) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return b_.size() - pos_; }
  template <typename T>
  bool Read(T* v) {
    if (remaining() < sizeof(T)) return false;
    std::memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  // u64 length + bytes; the length is checked against the remaining bytes before allocating.
  bool ReadString(std::string* s) {
    uint64_t n;
    if (!Read(&n) || n > remaining()) return false;
    s->assign(b_.data() + pos_, n);
    pos_ += n;
    return true;
  }

 private:
  std::string_view b_;
  uint64_t pos_ = 0;
};

struct TypeInfo {
  uint32_t id;
  std::string_view name;
};
constexpr TypeInfo kGgmlTypeNames[] = {
    {0, "F32"},      {1, "F16"},      {2, "Q4_0"},    {3, "Q4_1"},     {6, "Q5_0"},
    {7, "Q5_1"},     {8, "Q8_0"},     {9, "Q8_1"},    {10, "Q2_K"},    {11, "Q3_K"},
    {12, "Q4_K"},    {13, "Q5_K"},    {14, "Q6_K"},   {15, "Q8_K"},    {16, "IQ2_XXS"},
    {17, "IQ2_XS"},  {18, "IQ3_XXS"}, {19, "IQ1_S"},  {20, "IQ4_NL"},  {21, "IQ3_S"},
    {22, "IQ2_S"},   {23, "IQ4_XS"},  {24, "I8"},     {25, "I16"},     {26, "I32"},
    {27, "I64"},     {28, "F64"},     {29, "IQ1_M"},  {30, "BF16"},    {34, "TQ1_0"},
    {35, "TQ2_0"},   {39, "MXFP4"},
};

bool IsSupported(uint32_t t) {
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kBF16:
      return true;
  }
  return false;
}

}  // namespace

std::string_view GgufValueTypeName(GgufValueType t) {
  static constexpr std::string_view kNames[] = {"u8",  "i8",   "u16",    "i16",   "u32",
                                                "i32", "f32",  "bool",   "string", "array",
                                                "u64", "i64",  "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < 13 ? kNames[i] : "?";
}

std::string_view GgmlTypeName(uint32_t type) {
  for (const auto& t : kGgmlTypeNames)
    if (t.id == type) return t.name;
  return "unknown";
}

size_t GgufValue::size() const { return ints.size() + floats.size() + strings.size(); }

int64_t GgmlBlockSize(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return 1;
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
      return 32;
  }
  return 1;
}

int64_t GgmlBlockBytes(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return 4;
    case GgmlType::kF16: return 2;
    case GgmlType::kBF16: return 2;
    case GgmlType::kQ4_0: return 18;  // f16 d, 16 bytes of nibbles
    case GgmlType::kQ4_1: return 20;  // f16 d, f16 m, 16 bytes of nibbles
    case GgmlType::kQ5_0: return 22;  // f16 d, 4 bytes of high bits, 16 bytes of nibbles
    case GgmlType::kQ5_1: return 24;  // f16 d, f16 m, 4 bytes of high bits, 16 bytes of nibbles
    case GgmlType::kQ8_0: return 34;  // f16 d, 32 x int8
  }
  return 1;
}

void DequantizeGgml(GgmlType t, const char* src, int64_t n, float* dst) {
  switch (t) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);  // dst is null when n == 0
      return;
    case GgmlType::kF16:
      HalfsToFloats(src, n, dst);
      return;
    case GgmlType::kBF16:
      BFloat16sToFloats(src, n, dst);
      return;
    case GgmlType::kQ8_0:
      for (int64_t b = 0; b < n / 32; ++b, src += 34, dst += 32) {
        const float d = HalfToFloat(LoadLe16(src));
        for (int j = 0; j < 32; ++j) dst[j] = d * static_cast<float>(static_cast<int8_t>(src[2 + j]));
      }
      return;
    case GgmlType::kQ4_0:
      for (int64_t b = 0; b < n / 32; ++b, src += 18, dst += 32) {
        const float d = HalfToFloat(LoadLe16(src));
        for (int j = 0; j < 16; ++j) {
          const auto q = static_cast<unsigned char>(src[2 + j]);
          dst[j] = d * static_cast<float>((q & 0x0f) - 8);
          dst[j + 16] = d * static_cast<float>((q >> 4) - 8);
        }
      }
      return;
    case GgmlType::kQ4_1:
      for (int64_t b = 0; b < n / 32; ++b, src += 20, dst += 32) {
        const float d = HalfToFloat(LoadLe16(src));
        const float m = HalfToFloat(LoadLe16(src + 2));
        for (int j = 0; j < 16; ++j) {
          const auto q = static_cast<unsigned char>(src[4 + j]);
          dst[j] = d * static_cast<float>(q & 0x0f) + m;
          dst[j + 16] = d * static_cast<float>(q >> 4) + m;
        }
      }
      return;
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1: {
      // ggml-common.h block_q5_0 / block_q5_1: bit j of the little-endian u32 qh is bit 4 of
      // weight j, bit j + 16 that of weight j + 16.
      const bool with_min = t == GgmlType::kQ5_1;
      const int head = with_min ? 4 : 2, bytes = with_min ? 24 : 22;
      for (int64_t b = 0; b < n / 32; ++b, src += bytes, dst += 32) {
        const float d = HalfToFloat(LoadLe16(src));
        const float m = with_min ? HalfToFloat(LoadLe16(src + 2)) : 0.0f;
        uint32_t qh;
        std::memcpy(&qh, src + head, 4);
        for (int j = 0; j < 16; ++j) {
          const auto q = static_cast<unsigned char>(src[head + 4 + j]);
          const int lo = (q & 0x0f) | static_cast<int>((qh >> j) & 1) << 4;
          const int hi = (q >> 4) | static_cast<int>((qh >> (j + 16)) & 1) << 4;
          if (with_min) {
            dst[j] = d * static_cast<float>(lo) + m;
            dst[j + 16] = d * static_cast<float>(hi) + m;
          } else {
            dst[j] = d * static_cast<float>(lo - 16);
            dst[j + 16] = d * static_cast<float>(hi - 16);
          }
        }
      }
      return;
    }
  }
}

GgufFile::~GgufFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->label_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(internal::Cat(path, ": no such file"));
    return absl::InternalError(internal::Cat(path, ": open: ", std::strerror(err)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(internal::Cat(path, ": not a regular file"));
  }
  if (st.st_size > 0) {
    f->map_size_ = static_cast<size_t>(st.st_size);
    void* m = mmap(nullptr, f->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(internal::Cat(path, ": mmap: ", std::strerror(err)));
    }
    f->map_ = m;
    f->bytes_ = std::string_view(static_cast<const char*>(m), f->map_size_);
  }
  ::close(fd);
  QUANTD_RETURN_IF_ERROR(f->ParseAll());
  return f;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::string_view bytes,
                                                          std::string label) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->label_ = std::move(label);
  f->bytes_ = bytes;
  QUANTD_RETURN_IF_ERROR(f->ParseAll());
  return f;
}

absl::Status GgufFile::ParseAll() {
  Cursor c(bytes_);
  auto bad = [this](const std::string& what) {
    return absl::InvalidArgumentError(internal::Cat(label_, ": ", what));
  };
  auto truncated = [&](const std::string& field) {
    return bad(internal::Cat("truncated at byte ", c.pos(), " reading ", field, " (file has ",
                             bytes_.size(), " bytes)"));
  };

  uint32_t magic;
  if (!c.Read(&magic)) return truncated("magic");
  if (magic != kMagic) return bad("bad magic (not a GGUF file)");
  if (!c.Read(&version_)) return truncated("version");
  if (version_ != 2 && version_ != 3) {
    return bad(internal::Cat("unsupported version ", version_, " (2 and 3 are supported)"));
  }
  uint64_t n_tensors, n_kv;
  if (!c.Read(&n_tensors)) return truncated("tensor count");
  if (!c.Read(&n_kv)) return truncated("metadata count");
  // A tensor info takes at least 24 bytes and a key/value pair at least 13: counts beyond what
  // the file can hold are rejected before anything is allocated.
  if (n_tensors > c.remaining() / 24) {
    return bad(internal::Cat("tensor count ", n_tensors, " exceeds what the file can hold"));
  }
  if (n_kv > c.remaining() / 13) {
    return bad(internal::Cat("metadata count ", n_kv, " exceeds what the file can hold"));
  }

  // Metadata.
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    const std::string field = internal::Cat("metadata key #", i);
    if (!c.ReadString(&key)) return truncated(field);
    const std::string kf = internal::Cat("metadata \"", key, "\"");
    if (key.empty()) return bad(internal::Cat(field, " is empty"));
    if (metadata_.count(key) != 0) return bad(internal::Cat(kf, ": duplicate key"));
    uint32_t raw_type;
    if (!c.Read(&raw_type)) return truncated(internal::Cat(kf, " type"));
    GgufValue v;
    uint64_t count = 1;
    if (raw_type == static_cast<uint32_t>(GgufValueType::kArray)) {
      v.is_array = true;
      if (!c.Read(&raw_type)) return truncated(internal::Cat(kf, " array type"));
      if (raw_type == static_cast<uint32_t>(GgufValueType::kArray)) {
        return bad(internal::Cat(kf, ": arrays of arrays are not supported"));
      }
      if (!c.Read(&count)) return truncated(internal::Cat(kf, " array length"));
    }
    if (raw_type > static_cast<uint32_t>(GgufValueType::kF64)) {
      return bad(internal::Cat(kf, ": unknown value type ", raw_type));
    }
    v.type = static_cast<GgufValueType>(raw_type);
    size_t elem_bytes = 0;
    switch (v.type) {
      case GgufValueType::kU8: case GgufValueType::kI8: case GgufValueType::kBool:
        elem_bytes = 1; break;
      case GgufValueType::kU16: case GgufValueType::kI16:
        elem_bytes = 2; break;
      case GgufValueType::kU32: case GgufValueType::kI32: case GgufValueType::kF32:
        elem_bytes = 4; break;
      case GgufValueType::kU64: case GgufValueType::kI64: case GgufValueType::kF64:
        elem_bytes = 8; break;
      case GgufValueType::kString:
        elem_bytes = 8; break;  // at least the length field
      case GgufValueType::kArray:
        break;
    }
    if (count > c.remaining() / elem_bytes) {
      return bad(internal::Cat(kf, ": array length ", count, " exceeds the file"));
    }
    // Reads one element of x's type and appends it to `out` (v.ints or v.floats).
    auto read = [&c](auto x, auto* out) {
      const bool ok = c.Read(&x);
      out->push_back(static_cast<typename std::decay_t<decltype(*out)>::value_type>(x));
      return ok;
    };
    for (uint64_t k = 0; k < count; ++k) {
      bool ok = true;
      switch (v.type) {
        case GgufValueType::kU8: ok = read(uint8_t{0}, &v.ints); break;
        case GgufValueType::kI8: ok = read(int8_t{0}, &v.ints); break;
        case GgufValueType::kU16: ok = read(uint16_t{0}, &v.ints); break;
        case GgufValueType::kI16: ok = read(int16_t{0}, &v.ints); break;
        case GgufValueType::kU32: ok = read(uint32_t{0}, &v.ints); break;
        case GgufValueType::kI32: ok = read(int32_t{0}, &v.ints); break;
        case GgufValueType::kU64: ok = read(uint64_t{0}, &v.ints); break;
        case GgufValueType::kI64: ok = read(int64_t{0}, &v.ints); break;
        case GgufValueType::kF32: ok = read(float{0}, &v.floats); break;
        case GgufValueType::kF64: ok = read(double{0}, &v.floats); break;
        case GgufValueType::kBool: {
          uint8_t x = 0;
          ok = c.Read(&x);
          if (ok && x > 1) return bad(internal::Cat(kf, ": bool value ", int{x}, " is not 0 or 1"));
          v.ints.push_back(x);
          break;
        }
        case GgufValueType::kString: {
          std::string s;
          ok = c.ReadString(&s);
          v.strings.push_back(std::move(s));
          break;
        }
        case GgufValueType::kArray:
          break;
      }
      if (!ok) return truncated(v.is_array ? internal::Cat(kf, " element ", k) : kf);
    }
    metadata_.emplace(std::move(key), std::move(v));
  }

  if (const GgufValue* a = Find("general.alignment")) {
    if (a->is_array || a->type != GgufValueType::kU32) {
      return bad("general.alignment must be a u32");
    }
    const int64_t al = a->ints[0];
    if (al <= 0 || (al & (al - 1)) != 0 || static_cast<uint64_t>(al) > kMaxAlignment) {
      return bad(internal::Cat("general.alignment = ", al, " is not a power of two in [1, ",
                               kMaxAlignment, "]"));
    }
    alignment_ = static_cast<uint64_t>(al);
  }

  // Tensor directory.
  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    if (!c.ReadString(&t.name)) return truncated(internal::Cat("tensor #", i, " name"));
    const std::string tf = internal::Cat("tensor \"", t.name, "\"");
    if (t.name.empty()) return bad(internal::Cat("tensor #", i, " has an empty name"));
    uint32_t n_dims;
    if (!c.Read(&n_dims)) return truncated(internal::Cat(tf, " n_dims"));
    if (n_dims < 1 || n_dims > kMaxDims) {
      return bad(internal::Cat(tf, ": n_dims ", n_dims, " is outside [1, ", kMaxDims, "]"));
    }
    unsigned __int128 n = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      int64_t ne;
      if (!c.Read(&ne)) return truncated(internal::Cat(tf, " ne[", d, "]"));
      if (ne < 0) return bad(internal::Cat(tf, ": ne[", d, "] = ", ne, " is negative"));
      t.ne.push_back(ne);
      n *= static_cast<uint64_t>(ne);
      if (n > static_cast<uint64_t>(INT64_MAX)) {
        return bad(internal::Cat(tf, ": element count of ne [", absl::StrJoin(t.ne, ","),
                                 ", ...] overflows"));
      }
    }
    t.nelements = static_cast<int64_t>(n);
    uint32_t type;
    if (!c.Read(&type)) return truncated(internal::Cat(tf, " type"));
    if (!IsSupported(type)) {
      return bad(internal::Cat(tf, ": unsupported tensor type ", GgmlTypeName(type), " (", type,
                               "); supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"));
    }
    t.type = static_cast<GgmlType>(type);
    const int64_t bs = GgmlBlockSize(t.type);
    if (t.ne[0] % bs != 0) {
      return bad(internal::Cat(tf, ": ne[0] = ", t.ne[0], " is not a multiple of the ",
                               GgmlTypeName(type), " block size ", bs));
    }
    const unsigned __int128 nbytes =
        static_cast<unsigned __int128>(t.nelements / bs) * GgmlBlockBytes(t.type);
    if (nbytes > bytes_.size()) {
      return bad(internal::Cat(tf, ": needs ", static_cast<uint64_t>(nbytes),
                               " bytes, more than the file"));
    }
    t.nbytes = static_cast<uint64_t>(nbytes);
    if (!c.Read(&t.offset)) return truncated(internal::Cat(tf, " offset"));
    if (t.offset % alignment_ != 0) {
      return bad(internal::Cat(tf, ": offset ", t.offset, " is not a multiple of the alignment ",
                               alignment_));
    }
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) {
      return bad(internal::Cat(tf, ": duplicate tensor name"));
    }
    tensors_.push_back(std::move(t));
  }

  // Data section: starts at the next multiple of the alignment.
  const uint64_t end_of_dir = c.pos();
  data_start_ = (end_of_dir + alignment_ - 1) / alignment_ * alignment_;
  if (!tensors_.empty() && data_start_ > bytes_.size()) {
    return bad(internal::Cat("data section at byte ", data_start_, " is past the end of the file (",
                             bytes_.size(), " bytes)"));
  }
  const uint64_t data_size = bytes_.size() > data_start_ ? bytes_.size() - data_start_ : 0;
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return bad(internal::Cat("tensor \"", t.name, "\": bytes [", t.offset, ", +", t.nbytes,
                               ") lie outside the data section of ", data_size, " bytes"));
    }
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo& p = *by_offset[i - 1];
    if (by_offset[i]->offset < p.offset + p.nbytes) {
      return bad(internal::Cat("tensors \"", p.name, "\" and \"", by_offset[i]->name,
                               "\" overlap at data offset ", by_offset[i]->offset));
    }
  }
  return absl::OkStatus();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {
absl::StatusOr<const GgufValue*> FindScalar(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(internal::Cat(f.label(), ": no metadata \"", key, "\""));
  }
  if (v->is_array) {
    return absl::InvalidArgumentError(
        internal::Cat(f.label(), ": metadata \"", key, "\" is an array, expected a scalar"));
  }
  return v;
}

absl::Status WrongType(const GgufFile& f, std::string_view key, const GgufValue& v,
                       std::string_view want) {
  return absl::InvalidArgumentError(internal::Cat(f.label(), ": metadata \"", key, "\" is ",
                                                  GgufValueTypeName(v.type), ", expected ", want));
}
}  // namespace

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  QUANTD_ASSIGN_OR_RETURN(const GgufValue* v, FindScalar(*this, key));
  if (v->ints.empty() || v->type == GgufValueType::kBool) return WrongType(*this, key, *v, "an integer");
  if (v->type == GgufValueType::kU64 && v->ints[0] < 0) {
    return absl::InvalidArgumentError(internal::Cat(
        label_, ": metadata \"", key, "\" = ", static_cast<uint64_t>(v->ints[0]), " is too large"));
  }
  return v->ints[0];
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  QUANTD_ASSIGN_OR_RETURN(const GgufValue* v, FindScalar(*this, key));
  if (!v->floats.empty()) return v->floats[0];
  if (!v->ints.empty() && v->type != GgufValueType::kBool) {
    return v->type == GgufValueType::kU64 ? static_cast<double>(static_cast<uint64_t>(v->ints[0]))
                                          : static_cast<double>(v->ints[0]);
  }
  return WrongType(*this, key, *v, "a number");
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  QUANTD_ASSIGN_OR_RETURN(const GgufValue* v, FindScalar(*this, key));
  if (v->strings.empty()) return WrongType(*this, key, *v, "a string");
  return v->strings[0];
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  QUANTD_ASSIGN_OR_RETURN(const GgufValue* v, FindScalar(*this, key));
  if (v->type != GgufValueType::kBool) return WrongType(*this, key, *v, "a bool");
  return v->ints[0] != 0;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::string_view GgufFile::TensorData(const GgufTensorInfo& t) const {
  return bytes_.substr(data_start_ + t.offset, t.nbytes);
}

absl::StatusOr<std::vector<float>> GgufFile::Dequantize(const GgufTensorInfo& t) const {
  if (t.nelements > (int64_t{1} << 31)) {
    return absl::ResourceExhaustedError(internal::Cat(
        label_, ": tensor \"", t.name, "\" has ", t.nelements, " elements, limit 2^31"));
  }
  std::vector<float> out(static_cast<size_t>(t.nelements));
  DequantizeGgml(t.type, TensorData(t).data(), t.nelements, out.data());
  return out;
}

}  // namespace quantd::model
