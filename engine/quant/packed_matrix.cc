#include "engine/quant/packed_matrix.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/quant/butterfly.h"
#include "engine/quant/byte_io.h"

namespace quantd::quant {
namespace {

constexpr char kMagic[4] = {'Q', 'D', 'P', 'M'};
constexpr uint8_t kFlagRht = 1;
constexpr uint32_t kMaxDim = 1u << 24;
// Method values that use scalar grids per (row, group) / one global grid / a vector codebook.
constexpr uint8_t kRtn = 1, kGptq = 2, kQuip = 3, kQuipSharp = 4, kQtip = 5, kButterfly = 7;
// 6 (quarot) is a request-level method whose matrices are stored as gptq: never in a header.
constexpr uint8_t kQuarotNotStored = 6;
constexpr uint8_t kTrellisHyb = 3;
constexpr int kTile = 16, kTileWeights = kTile * kTile, kHybValues = 1024;

bool IsVector(const PackedContents& c) { return c.method == kQuipSharp; }
bool HasWeightScale(const PackedContents& c) { return c.method == kQuipSharp || c.method == kQtip; }

int64_t NumCodes(const PackedContents& c) {
  if (c.method == kQtip) {
    const int64_t tiles = static_cast<int64_t>((c.m + kTile - 1) / kTile) * ((c.n + kTile - 1) / kTile);
    return c.trellis_v > 0 ? tiles * (kTileWeights / c.trellis_v) : 0;
  }
  if (IsVector(c)) {
    return static_cast<int64_t>(c.m) * (c.n_padded / c.vector_dim) * c.codes_per_vector;
  }
  return static_cast<int64_t>(c.m) * c.n_padded;
}

int64_t CodeBytes(const PackedContents& c) {
  if (c.method == kQtip) return PackedBytes(NumCodes(c), CodeBits(c, 0));
  if (!IsVector(c)) return PackedBytes(NumCodes(c), c.bits);
  int64_t bits_per_vector = 0;
  for (int j = 0; j < c.codes_per_vector; ++j) bits_per_vector += CodeBits(c, j);
  return (static_cast<int64_t>(c.m) * (c.n_padded / c.vector_dim) * bits_per_vector + 7) / 8;
}

void PutSigns(ByteWriter& w, const std::vector<int8_t>& s) {
  BitWriter bw;
  for (int8_t v : s) bw.Put(v < 0 ? 1 : 0, 1);
  w.Bytes(bw.Finish());
}

absl::StatusOr<std::vector<int8_t>> GetSigns(ByteReader& r, int count, std::string_view what) {
  QUANTD_ASSIGN_OR_RETURN(std::string_view b, r.Bytes((count + 7) / 8, what));
  BitReader br(b);
  std::vector<int8_t> s(count);
  for (int i = 0; i < count; ++i) s[i] = br.Get(1) ? -1 : 1;
  return s;
}

}  // namespace

int64_t ExpectedGrids(const PackedContents& c) {
  if (c.method == kRtn || c.method == kGptq) {
    return static_cast<int64_t>(c.m) * NumGroups(c.n, c.group_size);
  }
  return c.method == kQuip || c.method == kButterfly ? 1 : 0;
}

int CodeBits(const PackedContents& c, int j) {
  if (c.method == kQtip) return c.bits * c.trellis_v;
  if (!IsVector(c)) return c.bits;
  const int total = c.bits * c.vector_dim;
  if (c.codes_per_vector == 1) return total;
  return j == 0 ? 16 : (total - 16) / (c.codes_per_vector - 1);
}

absl::StatusOr<std::string> EncodePacked(const PackedContents& c) {
  if (static_cast<int64_t>(c.codes.size()) != NumCodes(c) ||
      static_cast<int64_t>(c.grids.size()) != ExpectedGrids(c) ||
      (c.rht && (static_cast<int>(c.signs_m.size()) != c.m ||
                 static_cast<int>(c.signs_n.size()) != c.n_padded)) ||
      (c.method == kQtip &&
       c.hyb_table.size() != (c.trellis_code == kTrellisHyb ? size_t{kHybValues} : size_t{0})) ||
      static_cast<int64_t>(c.angles.size()) !=
          (c.method == kButterfly ? Butterfly::NumAngles(c.n_padded) : 0)) {
    return absl::InternalError("packed matrix contents have inconsistent sizes");
  }
  std::string out;
  ByteWriter w(&out);
  w.Bytes(std::string_view(kMagic, 4));
  w.U16(kPackedVersion);
  w.U8(c.method);
  w.U8(static_cast<uint8_t>(c.bits));
  w.U32(c.m);
  w.U32(c.n);
  w.U32(c.n_padded);
  w.U64(c.seed);
  w.U32(c.group_size);
  w.U8(c.rht ? kFlagRht : 0);
  w.U8(static_cast<uint8_t>(c.codebook.size()));
  if (!c.codebook.empty()) {
    w.Bytes(c.codebook);
    w.F64(c.codebook_scale);
    w.U8(static_cast<uint8_t>(c.vector_dim));
    w.U8(static_cast<uint8_t>(c.codes_per_vector));
  }
  if (c.method == kQtip) {
    w.U8(c.trellis_code);
    w.U8(static_cast<uint8_t>(c.trellis_l));
    w.U8(static_cast<uint8_t>(c.trellis_v));
    w.F64(c.trellis_scale);
    for (float v : c.hyb_table) w.F32(v);
  }
  if (c.rht) {
    PutSigns(w, c.signs_m);
    PutSigns(w, c.signs_n);
  }
  for (float a : c.angles) w.F32(a);
  for (const ScalarGrid& g : c.grids) {
    w.F32(g.scale);
    w.F32(g.zero);
  }
  if (HasWeightScale(c)) w.F32(c.weight_scale);
  BitWriter bw;
  for (size_t i = 0; i < c.codes.size(); ++i) {
    const int bits = CodeBits(c, static_cast<int>(i % c.codes_per_vector));
    if (bits < 1 || bits > 16 || (c.codes[i] >> bits) != 0) {
      return absl::InternalError(absl::StrCat("code ", c.codes[i], " does not fit ", bits, " bits"));
    }
    bw.Put(c.codes[i], bits);
  }
  w.Bytes(bw.Finish());
  w.U32(Crc32(out));
  return out;
}

absl::StatusOr<PackedContents> DecodePacked(std::string_view bytes) {
  QUANTD_ASSIGN_OR_RETURN(std::string_view body,
                          ChecksummedBody(bytes, std::string_view(kMagic, 4), 10, "packed matrix"));
  ByteReader r(body);
  QUANTD_ASSIGN_OR_RETURN(uint16_t version, r.U16("version"));
  if (version != kPackedVersion) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported packed matrix version ", version));
  }
  PackedContents c;
  QUANTD_ASSIGN_OR_RETURN(c.method, r.U8("method"));
  QUANTD_ASSIGN_OR_RETURN(uint8_t bits, r.U8("bits"));
  QUANTD_ASSIGN_OR_RETURN(uint32_t m, r.U32("m"));
  QUANTD_ASSIGN_OR_RETURN(uint32_t n, r.U32("n"));
  QUANTD_ASSIGN_OR_RETURN(uint32_t np, r.U32("n_padded"));
  QUANTD_ASSIGN_OR_RETURN(c.seed, r.U64("seed"));
  QUANTD_ASSIGN_OR_RETURN(uint32_t gs, r.U32("group_size"));
  QUANTD_ASSIGN_OR_RETURN(uint8_t flags, r.U8("flags"));
  QUANTD_ASSIGN_OR_RETURN(uint8_t name_len, r.U8("codebook name length"));
  if (c.method < kRtn || c.method > kButterfly || c.method == kQuarotNotStored ||
      (c.method == kButterfly && (np != n || (flags & kFlagRht) == 0)) || bits < 1 || bits > 8 || m == 0 || n == 0 ||
      m > kMaxDim || n > kMaxDim || np < n || np > kMaxDim || gs > kMaxDim ||
      (c.method == kQuipSharp) != (name_len > 0)) {
    return absl::DataLossError(absl::StrCat("packed matrix header is inconsistent: method ",
                                            c.method, ", bits ", bits, ", shape [", m, ",", n,
                                            "], padded ", np));
  }
  c.bits = bits;
  c.m = static_cast<int>(m);
  c.n = static_cast<int>(n);
  c.n_padded = static_cast<int>(np);
  c.group_size = static_cast<int>(gs);
  c.rht = (flags & kFlagRht) != 0;
  if (name_len > 0) {
    QUANTD_ASSIGN_OR_RETURN(std::string_view name, r.Bytes(name_len, "codebook name"));
    c.codebook = std::string(name);
    QUANTD_ASSIGN_OR_RETURN(c.codebook_scale, r.F64("codebook scale"));
    QUANTD_ASSIGN_OR_RETURN(uint8_t dim, r.U8("vector dim"));
    QUANTD_ASSIGN_OR_RETURN(uint8_t cpv, r.U8("codes per vector"));
    if (dim == 0 || cpv == 0 || np % dim != 0 || (cpv > 1 && bits * dim <= 16)) {
      return absl::DataLossError(absl::StrCat("packed matrix: bad vector layout dim ", dim,
                                              ", codes ", cpv));
    }
    c.vector_dim = dim;
    c.codes_per_vector = cpv;
  }
  if (c.method == kQtip) {
    QUANTD_ASSIGN_OR_RETURN(c.trellis_code, r.U8("trellis code"));
    QUANTD_ASSIGN_OR_RETURN(uint8_t l, r.U8("trellis L"));
    QUANTD_ASSIGN_OR_RETURN(uint8_t v, r.U8("trellis V"));
    QUANTD_ASSIGN_OR_RETURN(c.trellis_scale, r.F64("trellis scale"));
    if (c.trellis_code < 1 || c.trellis_code > kTrellisHyb || l < 8 || l > 20 || v < 1 || v > 2 ||
        bits * v >= l || np != n || !c.rht) {
      return absl::DataLossError(absl::StrCat("packed qtip header is inconsistent: code ",
                                              c.trellis_code, ", L ", l, ", V ", v, ", bits ", bits));
    }
    c.trellis_l = l;
    c.trellis_v = v;
    if (c.trellis_code == kTrellisHyb) {
      c.hyb_table.resize(kHybValues);
      for (float& x : c.hyb_table) {
        QUANTD_ASSIGN_OR_RETURN(x, r.F32("HYB table"));
      }
    }
  }
  if (c.rht) {
    QUANTD_ASSIGN_OR_RETURN(c.signs_m, GetSigns(r, c.m, "output signs"));
    QUANTD_ASSIGN_OR_RETURN(c.signs_n, GetSigns(r, c.n_padded, "input signs"));
  }
  if (c.method == kButterfly) {
    c.angles.resize(Butterfly::NumAngles(c.n_padded));
    if (static_cast<int64_t>(r.remaining()) < static_cast<int64_t>(c.angles.size()) * 4) {
      return absl::DataLossError("packed butterfly matrix truncated in its angles");
    }
    for (float& a : c.angles) {
      QUANTD_ASSIGN_OR_RETURN(a, r.F32("butterfly angle"));
    }
  }
  const int64_t grids = ExpectedGrids(c);
  const int64_t need = grids * 8 + (HasWeightScale(c) ? 4 : 0) + CodeBytes(c);
  if (static_cast<int64_t>(r.remaining()) != need) {
    return absl::DataLossError(absl::StrCat("packed matrix body has ", r.remaining(),
                                            " bytes, header implies ", need));
  }
  c.grids.resize(grids);
  for (ScalarGrid& g : c.grids) {
    g.maxq = (1 << c.bits) - 1;
    QUANTD_ASSIGN_OR_RETURN(g.scale, r.F32("grid scale"));
    QUANTD_ASSIGN_OR_RETURN(g.zero, r.F32("grid zero"));
  }
  if (HasWeightScale(c)) {
    QUANTD_ASSIGN_OR_RETURN(c.weight_scale, r.F32("weight scale"));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string_view code_bytes, r.Bytes(CodeBytes(c), "codes"));
  BitReader br(code_bytes);
  c.codes.resize(NumCodes(c));
  for (size_t i = 0; i < c.codes.size(); ++i) {
    c.codes[i] = static_cast<uint16_t>(br.Get(CodeBits(c, static_cast<int>(i % c.codes_per_vector))));
  }
  return c;
}

}  // namespace quantd::quant
