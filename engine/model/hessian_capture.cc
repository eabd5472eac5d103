#include "engine/model/hessian_capture.h"

#include <utility>

#include "common/status_macros.h"

namespace quantd::model {

HessianCapture::HessianCapture(const LlamaConfig& cfg) : HessianCapture(cfg, -1) {}

HessianCapture::HessianCapture(const LlamaConfig& cfg, int only_layer) : only_layer_(only_layer) {
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
  AddXtX(x, &xtx);
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

LayerHessianStream::LayerHessianStream(const LlamaConfig& cfg, int first, int last, Emit emit)
    : cfg_(cfg),
      first_(first),
      last_(last),
      stop_after_(last < cfg.num_layers ? last - 1 : -1),
      emit_(std::move(emit)) {}

void LayerHessianStream::OnLinearInput(int layer, LinearGroup group, const MatrixF& x) {
  if (layer < first_ || layer >= last_) return;
  const int g = static_cast<int>(group);
  if (x.cols() != GroupInputDim(cfg_, group)) return;
  if (sums_[g].cols() != x.cols()) sums_[g] = MatrixD::Zero(x.cols(), x.cols());
  // Straight into the sum (no n x n temporary: 6.6 GB for a 70B down_proj). Starting from
  // zero this gives AddXtX's bits.
  const MatrixD xd = x.cast<double>();
  sums_[g].selfadjointView<Eigen::Lower>().rankUpdate(xd.transpose());
  sums_[g].triangularView<Eigen::StrictlyUpper>() = sums_[g].transpose();
  tokens_[g] += x.rows();
}

absl::Status LayerHessianStream::OnLayerDone(int layer) {
  if (layer < first_ || layer >= last_) return absl::OkStatus();
  for (LinearGroup group : kAllGroups) {
    const int g = static_cast<int>(group);
    if (sums_[g].cols() == 0) {
      const int n = GroupInputDim(cfg_, group);
      sums_[g] = MatrixD::Zero(n, n);
    }
    QUANTD_RETURN_IF_ERROR(emit_(layer, group, sums_[g], tokens_[g]));
    sums_[g] = MatrixD();
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
