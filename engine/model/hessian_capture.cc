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

std::vector<int64_t> MassiveRows(const MatrixF& residual, absl::Span<const int64_t> seq_lengths,
                                 double ratio) {
  std::vector<int64_t> rows;
  int64_t start = 0;
  std::vector<float> peak;
  for (int64_t len : seq_lengths) {
    if (len <= 0 || start + len > residual.rows()) break;
    peak.resize(static_cast<size_t>(len));
    for (int64_t t = 0; t < len; ++t) peak[t] = residual.row(start + t).cwiseAbs().maxCoeff();
    std::vector<float> sorted = peak;
    auto mid = sorted.begin() + len / 2;
    std::nth_element(sorted.begin(), mid, sorted.end());
    const double threshold = ratio * static_cast<double>(*mid);
    for (int64_t t = 0; t < len; ++t) {
      if (peak[t] > 0 && static_cast<double>(peak[t]) >= threshold) rows.push_back(start + t);
    }
    start += len;
  }
  return rows;
}

std::vector<double> LayerRowWeights(const MatrixF& residual, absl::Span<const int64_t> seq_lengths,
                                    const TokenWeighting& w, const std::vector<double>& base) {
  if (!w.Massive()) return base;
  std::vector<double> out = base;
  if (out.empty()) out.assign(static_cast<size_t>(residual.rows()), 1.0);
  out.resize(static_cast<size_t>(residual.rows()), 1.0);
  for (int64_t r : MassiveRows(residual, seq_lengths, w.massive_ratio)) {
    out[r] = std::max(out[r], w.sink_weight);
  }
  return out;
}

HessianCapture::HessianCapture(const LlamaConfig& cfg) : HessianCapture(cfg, -1) {}

HessianCapture::HessianCapture(const LlamaConfig& cfg, int only_layer, TokenWeighting weighting)
    : only_layer_(only_layer), weighting_(weighting) {
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
  if (weighting_.Massive()) {
    std::vector<double> w;
    {
      MutexLock lock(&massive_->mu);
      auto it = massive_->thread_weights.find(std::this_thread::get_id());
      if (it != massive_->thread_weights.end()) w = it->second;
    }
    AddWeightedXtX(x, w.empty() ? row_weights_ : w, &xtx);
  } else {
    AddWeightedXtX(x, row_weights_, &xtx);
  }
  MutexLock lock(&s.mu);
  if (s.sum.cols() != x.cols()) return;
  s.sum += xtx;
  s.tokens += x.rows();
}

void HessianCapture::OnResidual(int layer, const MatrixF& x) {
  if (!weighting_.Massive()) return;
  if (only_layer_ >= 0 && layer != only_layer_) return;
  const int64_t n = x.rows();
  std::vector<double> base(row_weights_.begin(),
                           row_weights_.begin() + std::min<int64_t>(n, row_weights_.size()));
  std::vector<double> w = LayerRowWeights(x, {n}, weighting_, base);
  int64_t flagged = 0;
  for (int64_t r = 0; r < n; ++r) {
    flagged += w[r] != (r < static_cast<int64_t>(base.size()) ? base[r] : 1.0);
  }
  MutexLock lock(&massive_->mu);
  massive_->thread_weights[std::this_thread::get_id()] = std::move(w);
  massive_->flags += flagged;
}

int64_t HessianCapture::MassiveFlags() const {
  MutexLock lock(&massive_->mu);
  return massive_->flags;
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

void LayerHessianStream::WeightMassiveRows(std::vector<int64_t> seq_lengths, TokenWeighting w) {
  seq_lengths_ = std::move(seq_lengths);
  massive_ = w;
}

absl::Status LayerHessianStream::OnDeviceResidual(quant::ForwardOps& ops, int layer,
                                                  const quant::DeviceMatrix& x) {
  layer_weighted_ = false;
  if (!massive_.Massive() || layer < first_ || layer >= last_) return absl::OkStatus();
  MatrixF host;
  const MatrixF* h = ops.HostMatrix(x);
  if (h == nullptr) {
    QUANTD_RETURN_IF_ERROR(ops.Download(x, &host));
    h = &host;
  }
  layer_weights_ = LayerRowWeights(*h, seq_lengths_, massive_, row_weights_);
  for (size_t r = 0; r < layer_weights_.size(); ++r) {
    massive_flags_ += layer_weights_[r] != (r < row_weights_.size() ? row_weights_[r] : 1.0);
  }
  layer_weighted_ = true;
  return absl::OkStatus();
}

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
  QUANTD_RETURN_IF_ERROR(
      ops.AccumulateGram(x, layer_weighted_ ? layer_weights_ : row_weights_, sums_[g].get()));
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
