#include "engine/model/hessian_capture.h"

#include <algorithm>
#include <utility>

#include "common/status_macros.h"
#include "engine/model/forward_device.h"

namespace quantd::model {

std::vector<double> RowWeights(absl::Span<const int64_t> seq_lengths, const TokenWeighting& w) {
  std::vector<double> out;
  if (w.IsUniform()) return out;
  for (int64_t len : seq_lengths) {
    for (int64_t p = 0; p < len; ++p) out.push_back(w.WeightAt(p));
  }
  return out;
}

HessianCapture::HessianCapture(const LlamaConfig& cfg) : HessianCapture(cfg, -1) {}

HessianCapture::HessianCapture(const LlamaConfig& cfg, int only_layer, TokenWeighting weighting)
    : only_layer_(only_layer) {
  if (!weighting.IsUniform()) {
    // Forward's sequences are at most max_position_embeddings long.
    const int64_t n = std::max<int64_t>(cfg.max_position_embeddings, 1);
    row_weights_ = RowWeights({n}, weighting);
  }
  slots_.reserve(static_cast<size_t>(cfg.num_layers) * kNumGroups);
  for (int l = 0; l < cfg.num_layers; ++l) {
    for (LinearGroup g : kAllGroups) {
      auto s = std::make_unique<Slot>();
      const int in = only_layer < 0 || l == only_layer ? GroupInputDim(cfg, g) : 0;
      MutexLock lock(&s->mu);
      s->sum = MatrixD::Zero(in, in);
      slots_.push_back(std::move(s));
    }
  }
}

HessianCapture::Slot& HessianCapture::At(int layer, LinearGroup g) const {
  return *slots_[static_cast<size_t>(layer) * kNumGroups + static_cast<int>(g)];
}

void HessianCapture::OnLinearInput(int layer, LinearGroup group, const MatrixF& x) {
  if (layer < 0 || static_cast<size_t>(layer) * kNumGroups >= slots_.size()) return;
  if (only_layer_ >= 0 && layer != only_layer_) return;
  Slot& s = At(layer, group);
  // The product is computed outside the lock; only the addition is serialised.
  MatrixD xtx = MatrixD::Zero(x.cols(), x.cols());
  AddWeightedXtX(x, row_weights_, &xtx);
  MutexLock lock(&s.mu);
  if (s.sum.cols() != x.cols()) return;
  s.sum += xtx;
  s.tokens += x.rows();
}

void AddXtX(const MatrixF& x, MatrixD* sum) {
  const MatrixD xd = x.cast<double>();
  MatrixD xtx = MatrixD::Zero(xd.cols(), xd.cols());
  xtx.selfadjointView<Eigen::Lower>().rankUpdate(xd.transpose());
  xtx.triangularView<Eigen::StrictlyUpper>() = xtx.transpose();
  *sum += xtx;
}

void AddWeightedXtX(const MatrixF& x, absl::Span<const double> w, MatrixD* sum) {
  const MatrixD xd = x.cast<double>();
  sum->selfadjointView<Eigen::Lower>().rankUpdate(xd.transpose());
  const Eigen::Index rows = std::min<Eigen::Index>(xd.rows(), static_cast<Eigen::Index>(w.size()));
  for (Eigen::Index r = 0; r < rows; ++r) {
    if (w[r] != 1.0) {
      sum->selfadjointView<Eigen::Lower>().rankUpdate(xd.row(r).transpose(), w[r] - 1.0);
    }
  }
  sum->triangularView<Eigen::StrictlyUpper>() = sum->transpose();
}

LayerHessianStream::LayerHessianStream(const LlamaConfig& cfg, int first, int last, Emit emit,
                                       std::vector<double> row_weights)
    : cfg_(cfg),
      first_(first),
      last_(last),
      stop_after_(last < cfg.num_layers ? last - 1 : -1),
      emit_(std::move(emit)),
      row_weights_(std::move(row_weights)) {}

void LayerHessianStream::OnLinearInput(int layer, LinearGroup group, const MatrixF& x) {
  if (host_ops_ == nullptr) host_ops_ = std::make_unique<CpuForwardOps>();
  absl::StatusOr<std::unique_ptr<quant::DeviceMatrix>> view =
      host_ops_->BindWeight(x, quant::WeightDtype::kF32);  // a reference, no copy
  absl::Status s = view.ok() ? OnDeviceInput(*host_ops_, layer, group, **view) : view.status();
  if (!s.ok() && error_.ok()) error_ = s;
}

absl::Status LayerHessianStream::OnDeviceInput(quant::ForwardOps& ops, int layer,
                                               LinearGroup group, const quant::DeviceMatrix& x) {
  if (layer < first_ || layer >= last_) return absl::OkStatus();
  const int g = static_cast<int>(group);
  if (x.cols() != GroupInputDim(cfg_, group)) return absl::OkStatus();
  if (ops_ != &ops) {
    for (auto& sum : sums_) {
      if (sum != nullptr) {
        return absl::InternalError("LayerHessianStream: one layer's inputs came from two ops");
      }
    }
    ops_ = &ops;
  }
  if (sums_[g] == nullptr) {
    QUANTD_ASSIGN_OR_RETURN(sums_[g], ops.NewGram(x.cols()));
  }
  // Straight into the sum (no n x n temporary: 6.6 GB for a 70B down_proj). On the CPU,
  // starting from zero this gives AddWeightedXtX's bits.
  QUANTD_RETURN_IF_ERROR(ops.AccumulateGram(x, row_weights_, sums_[g].get()));
  tokens_[g] += x.rows();
  return absl::OkStatus();
}

absl::Status LayerHessianStream::OnLayerDone(int layer) {
  QUANTD_RETURN_IF_ERROR(error_);
  if (layer < first_ || layer >= last_) return absl::OkStatus();
  for (LinearGroup group : kAllGroups) {
    const int g = static_cast<int>(group);
    MatrixD read;
    const MatrixD* sum = nullptr;
    if (sums_[g] == nullptr) {
      const int n = GroupInputDim(cfg_, group);
      read = MatrixD::Zero(n, n);
      sum = &read;
    } else if ((sum = ops_->HostGram(*sums_[g])) == nullptr) {
      QUANTD_RETURN_IF_ERROR(ops_->ReadGram(*sums_[g], &read));
      sum = &read;
    }
    QUANTD_RETURN_IF_ERROR(emit_(layer, group, *sum, tokens_[g]));
    sums_[g].reset();
    tokens_[g] = 0;
  }
  return absl::OkStatus();
}

const MatrixD& HessianCapture::Sum(int layer, LinearGroup g) const {
  Slot& s = At(layer, g);
  MutexLock lock(&s.mu);
  return s.sum;
}

int64_t HessianCapture::Tokens(int layer, LinearGroup g) const {
  Slot& s = At(layer, g);
  MutexLock lock(&s.mu);
  return s.tokens;
}

}  // namespace quantd::model
