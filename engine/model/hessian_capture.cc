#include "engine/model/hessian_capture.h"

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
  const MatrixD xd = x.cast<double>();
  MatrixD xtx = MatrixD::Zero(xd.cols(), xd.cols());
  xtx.selfadjointView<Eigen::Lower>().rankUpdate(xd.transpose());
  xtx.triangularView<Eigen::StrictlyUpper>() = xtx.transpose();
  MutexLock lock(&s.mu);
  if (s.sum.cols() != xd.cols()) return;
  s.sum += xtx;
  s.tokens += x.rows();
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
