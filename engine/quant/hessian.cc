#include "engine/quant/hessian.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/quant/byte_io.h"

namespace quantd::quant {
namespace {

constexpr char kMagic[8] = {'Q', 'D', 'H', 'E', 'S', 'S', '\0', '\1'};
constexpr uint32_t kVersion = 1;
constexpr int kMaxN = 1 << 20;

}  // namespace

HessianAccumulator::HessianAccumulator(int n) : n_(n < 0 ? 0 : n), sum_(MatrixD::Zero(n_, n_)) {}

absl::Status HessianAccumulator::Add(Device& dev, const MatrixF& x) {
  if (x.cols() != n_) {
    return absl::InvalidArgumentError(
        absl::StrCat("Hessian input has ", x.cols(), " columns, expected ", n_));
  }
  if (!x.allFinite()) {
    return absl::InvalidArgumentError("Hessian input activations contain NaN or Inf");
  }
  QUANTD_RETURN_IF_ERROR(dev.AccumulateGram(x, &sum_));
  tokens_ += x.rows();
  return absl::OkStatus();
}

absl::Status HessianAccumulator::Merge(const HessianAccumulator& other) {
  if (other.n_ != n_) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot merge Hessians of dimension ", other.n_, " into ", n_));
  }
  sum_ += other.sum_;
  tokens_ += other.tokens_;
  return absl::OkStatus();
}

MatrixD HessianAccumulator::Mean() const {
  if (tokens_ == 0) return MatrixD::Zero(n_, n_);
  return sum_ / static_cast<double>(tokens_);
}

std::string HessianAccumulator::Serialize() const {
  std::string out;
  out.reserve(32 + sizeof(double) * static_cast<size_t>(n_) * n_);
  ByteWriter w(&out);
  w.Bytes(std::string_view(kMagic, 8));
  w.U32(kVersion);
  w.U32(static_cast<uint32_t>(n_));
  w.U64(static_cast<uint64_t>(tokens_));
  for (int64_t i = 0; i < sum_.size(); ++i) w.F64(sum_.data()[i]);
  w.U32(Crc32(out));
  return out;
}

absl::StatusOr<HessianAccumulator> HessianAccumulator::Parse(std::string_view bytes) {
  QUANTD_ASSIGN_OR_RETURN(std::string_view body,
                          ChecksummedBody(bytes, std::string_view(kMagic, 8), 28, "Hessian file"));
  ByteReader r(body);
  QUANTD_ASSIGN_OR_RETURN(uint32_t version, r.U32("version"));
  QUANTD_ASSIGN_OR_RETURN(uint32_t n, r.U32("n"));
  QUANTD_ASSIGN_OR_RETURN(uint64_t tokens, r.U64("tokens"));
  if (version != kVersion) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported Hessian format version ", version));
  }
  if (n == 0 || n > kMaxN || r.remaining() != static_cast<size_t>(n) * n * 8) {
    return absl::DataLossError(absl::StrCat("Hessian payload of ", r.remaining(),
                                            " bytes does not match n = ", n));
  }
  HessianAccumulator acc(static_cast<int>(n));
  acc.tokens_ = static_cast<int64_t>(tokens);
  for (int64_t i = 0; i < acc.sum_.size(); ++i) {
    QUANTD_ASSIGN_OR_RETURN(acc.sum_.data()[i], r.F64("sum entry"));
  }
  return acc;
}

}  // namespace quantd::quant
