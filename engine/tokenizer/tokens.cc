#include "engine/tokenizer/tokens.h"

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/str_util.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace quantd::model {
namespace {

template <typename T>
absl::StatusOr<std::vector<int32_t>> Decode(const std::string& path, std::string_view bytes) {
  if (bytes.size() % sizeof(T) != 0) {
    return absl::InvalidArgumentError(internal::Cat(path, ": ", bytes.size(),
                                                   " bytes is not a multiple of ", sizeof(T)));
  }
  const size_t n = bytes.size() / sizeof(T);
  if (n == 0) return absl::InvalidArgumentError(internal::Cat(path, ": no tokens"));
  std::vector<int32_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, bytes.data() + i * sizeof(T), sizeof(T));  // little-endian host
    if (static_cast<int64_t>(v) < 0 || static_cast<int64_t>(v) > INT32_MAX) {
      return absl::InvalidArgumentError(
          internal::Cat(path, ": token ", i, " has invalid id ", static_cast<int64_t>(v)));
    }
    out[i] = static_cast<int32_t>(v);
  }
  return out;
}

// Parses a NumPy .npy v1/v2/v3 file holding a 1-D integer array.
absl::StatusOr<std::vector<int32_t>> DecodeNpy(const std::string& path, std::string_view b) {
  auto bad = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(internal::Cat(path, ": ", what));
  };
  if (b.size() < 10 || b.substr(0, 6) != std::string_view("\x93NUMPY", 6)) {
    return bad("not a .npy file (bad magic)");
  }
  const int major = static_cast<unsigned char>(b[6]);
  size_t hlen, start;
  if (major == 1) {
    hlen = static_cast<unsigned char>(b[8]) | (static_cast<unsigned char>(b[9]) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (b.size() < 12) return bad("truncated .npy header");
    hlen = 0;
    for (int i = 3; i >= 0; --i) hlen = (hlen << 8) | static_cast<unsigned char>(b[8 + i]);
    start = 12;
  } else {
    return bad(internal::Cat("unsupported .npy version ", major));
  }
  if (hlen > b.size() - start) return bad("truncated .npy header");
  const std::string_view header = b.substr(start, hlen);
  const std::string_view data = b.substr(start + hlen);
  if (!(header.find("'fortran_order': False") != std::string_view::npos)) {
    return bad("only C-order .npy arrays are supported");
  }
  // shape must be a 1-tuple "(n,)".
  const size_t sp = header.find("'shape': (");
  if (sp == std::string_view::npos) return bad("no shape in .npy header");
  const size_t close = header.find(')', sp);
  std::string_view shape = header.substr(sp + 10, close - sp - 10);
  if (shape.empty() || shape.back() != ',' || shape.find(',') != shape.size() - 1) {
    return bad(internal::Cat("expected a 1-D array, shape is (", shape, ")"));
  }
  auto descr_is = [&header](std::string_view d) {
    return header.find(internal::Cat("'descr': '", d, "'")) != std::string_view::npos;
  };
  absl::StatusOr<std::vector<int32_t>> out;
  if (descr_is("<u2")) out = Decode<uint16_t>(path, data);
  else if (descr_is("<u4")) out = Decode<uint32_t>(path, data);
  else if (descr_is("<i4")) out = Decode<int32_t>(path, data);
  else if (descr_is("<i8")) out = Decode<int64_t>(path, data);
  else return bad("unsupported .npy dtype (want <u2, <u4, <i4 or <i8)");
  if (out.ok()) {
    const std::string want(shape.substr(0, shape.size() - 1));
    if (want != std::to_string(out->size())) {
      return bad(internal::Cat("shape (", shape, ") does not match ", out->size(), " elements"));
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> LoadTokenFile(const std::string& path) {
  enum { kU16, kU32, kNpy } kind;
  if (absl::EndsWith(path, ".u16")) kind = kU16;
  else if (absl::EndsWith(path, ".u32")) kind = kU32;
  else if (absl::EndsWith(path, ".npy")) kind = kNpy;
  else {
    return absl::InvalidArgumentError(internal::Cat(
        path, ": not a token file; expected .u16, .u32 (raw little-endian) or .npy"));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path, uint64_t{1} << 33));
  switch (kind) {
    case kU16: return Decode<uint16_t>(path, bytes);
    case kU32: return Decode<uint32_t>(path, bytes);
    case kNpy: return DecodeNpy(path, bytes);
  }
  return absl::InternalError("unreachable");
}

absl::Status ValidateTokens(absl::Span<const int32_t> tokens, int vocab_size) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      return absl::InvalidArgumentError(internal::Cat("token ", i, " has id ", tokens[i],
                                                     ", outside vocabulary [0, ", vocab_size,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace quantd::model
