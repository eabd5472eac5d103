#include "engine/quant/device.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/quant/hadamard.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace quantd::quant {
namespace {

// Tokens per fp32 Gram block. Each block's xᵀx is an fp32 GEMM (the fast path) and is then added
// into the fp64 sum, so rounding error does not grow with the total token count: per element
// |error| ≤ γ_B·Σ_t |x_ti||x_tj| with γ_B = B·2⁻²⁴/(1 − B·2⁻²⁴) ≈ 6.1e-5 for B = 1024, plus the
// fp64 additions (≈ 2⁻⁵³ per block). docs/formats/hessian.md states the bound; hessian_test
// checks it element-wise against a naive fp64 sum.
constexpr int64_t kGramTokenBlock = 1024;

std::string Shape(int64_t r, int64_t c) { return absl::StrCat("[", r, ",", c, "]"); }

class CpuDevice : public Device {
 public:
  explicit CpuDevice(int threads) : threads_(threads) {}

  std::string name() const override { return absl::StrCat("cpu(threads=", threads_, ")"); }

  absl::Status AccumulateGram(const MatrixF& x, MatrixD* h) override {
    const int64_t n = x.cols();
    if (h->rows() != n || h->cols() != n) {
      return absl::InvalidArgumentError(absl::StrCat("AccumulateGram: x is ", Shape(x.rows(), n),
                                                     ", h is ", Shape(h->rows(), h->cols())));
    }
    Enter();
    MatrixF block(n, n);
    for (int64_t t0 = 0; t0 < x.rows(); t0 += kGramTokenBlock) {
      const int64_t len = std::min<int64_t>(kGramTokenBlock, x.rows() - t0);
      const auto xb = x.middleRows(t0, len);
      block.noalias() = xb.transpose() * xb;
      // Row-parallel fp32 → fp64 add; each element is touched by one thread, so the result does
      // not depend on the thread count.
#pragma omp parallel for schedule(static) num_threads(threads_)
      for (int64_t i = 0; i < n; ++i) h->row(i) += block.row(i).cast<double>();
    }
    return absl::OkStatus();
  }

  absl::Status Gemm(const MatrixF& a, const MatrixF& b, MatrixF* c) override {
    return GemmT(a, b, c);
  }
  absl::Status Gemm(const MatrixD& a, const MatrixD& b, MatrixD* c) override {
    return GemmT(a, b, c);
  }

  absl::Status Cholesky(const MatrixD& a, MatrixD* lower) override {
    if (a.rows() != a.cols()) {
      return absl::InvalidArgumentError(absl::StrCat("Cholesky of ", Shape(a.rows(), a.cols())));
    }
    Enter();
    Eigen::LLT<Eigen::MatrixXd> llt(a);  // column-major for Eigen's blocked LLT
    if (llt.info() != Eigen::Success) {
      return absl::FailedPreconditionError("matrix is not positive definite");
    }
    *lower = llt.matrixL();
    if (!lower->allFinite() || (lower->diagonal().array() <= 0).any()) {
      return absl::FailedPreconditionError("matrix is not positive definite (degenerate pivot)");
    }
    return absl::OkStatus();
  }

  absl::Status SolveLower(const MatrixD& lower, bool transpose, MatrixD* b) override {
    if (lower.rows() != lower.cols() || b->rows() != lower.rows()) {
      return absl::InvalidArgumentError(absl::StrCat("SolveLower: L is ",
                                                     Shape(lower.rows(), lower.cols()), ", b is ",
                                                     Shape(b->rows(), b->cols())));
    }
    Enter();
    if (transpose) {
      lower.triangularView<Eigen::Lower>().transpose().solveInPlace(*b);
    } else {
      lower.triangularView<Eigen::Lower>().solveInPlace(*b);
    }
    return absl::OkStatus();
  }

  absl::Status HadamardRows(MatrixD* rows) override {
    const int64_t len = rows->cols();
    if (len <= 0 || (len & (len - 1)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("HadamardRows: row length ", len, " is not a power of two"));
    }
    const double norm = 1.0 / std::sqrt(static_cast<double>(len));
    const int64_t r = rows->rows();
#pragma omp parallel for num_threads(threads_) schedule(static) if (r * len >= (int64_t{1} << 16))
    for (int64_t i = 0; i < r; ++i) {
      double* x = rows->data() + i * len;
      Fwht(x, len);
      for (int64_t j = 0; j < len; ++j) x[j] *= norm;
    }
    return absl::OkStatus();
  }

  MemoryInfo GetMemoryInfo() const override {
    MemoryInfo info;
    const int64_t page = sysconf(_SC_PAGESIZE);
    info.total_bytes = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * page;
    info.available_bytes = static_cast<int64_t>(sysconf(_SC_AVPHYS_PAGES)) * page;
    return info;
  }

 private:
  // c = a·b in fp32 or fp64.
  template <typename M>
  absl::Status GemmT(const M& a, const M& b, M* c) const {
    if (a.cols() != b.rows()) {
      return absl::InvalidArgumentError(absl::StrCat("Gemm: a is ", Shape(a.rows(), a.cols()),
                                                     ", b is ", Shape(b.rows(), b.cols())));
    }
    Enter();
    c->resize(a.rows(), b.cols());
    c->noalias() = a * b;
    return absl::OkStatus();
  }
  // Eigen's thread count is process-global; set it for this device's calls.
  void Enter() const { Eigen::setNbThreads(threads_); }

  int threads_;
};

}  // namespace

void NllState::Reset(int64_t rows) {
  max.assign(rows, -std::numeric_limits<float>::infinity());
  sum.assign(rows, 0.0);
  target_logit.assign(rows, 0.0f);
}

std::unique_ptr<Device> MakeCpuDevice(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::make_unique<CpuDevice>(threads);
}

}  // namespace quantd::quant
