// Adam (Kingma & Ba 2015) with bias correction, β1 0.9, β2 0.999, ε 1e-8, over float parameter
// arrays: the one optimizer of both fine-tuning stages (finetune.h, the block stage, keeps its
// moments and computes its step in double; finetune_e2e.h, the KL stage, in float, since the
// head alone has vocab × hidden of them). M is the moments' and the step's type; the step is
// rounded to float before it is subtracted.
// Thread-safety: one Step at a time per object.
#ifndef QUANTD_ENGINE_MODEL_ADAM_H_
#define QUANTD_ENGINE_MODEL_ADAM_H_

#include <Eigen/Core>
#include <cmath>
#include <utility>
#include <vector>

namespace quantd::model {

// A tunable float array, not owned (it must outlive the optimizer).
struct AdamSlot {
  float* data;
  Eigen::Index size;
};

template <typename M>
class Adam {
 public:
  Adam(std::vector<AdamSlot> slots, double lr) : slots_(std::move(slots)), lr_(lr) {
    for (const AdamSlot& s : slots_) {
      m_.push_back(Array::Zero(s.size));
      v_.push_back(Array::Zero(s.size));
    }
  }
  // One step; grads[i] holds slots[i].size gradients of slot i.
  void Step(const std::vector<const float*>& grads) {
    ++t_;
    const M b1 = static_cast<M>(0.9), b2 = static_cast<M>(0.999), eps = static_cast<M>(1e-8);
    const M c1 = static_cast<M>(1.0 - std::pow(0.9, t_)),
            c2 = static_cast<M>(1.0 - std::pow(0.999, t_)), lr = static_cast<M>(lr_);
    for (size_t i = 0; i < slots_.size(); ++i) {
      const Array g = Eigen::Map<const Eigen::ArrayXf>(grads[i], slots_[i].size).template cast<M>();
      Eigen::Map<Eigen::ArrayXf> p(slots_[i].data, slots_[i].size);
      m_[i] = b1 * m_[i] + (1 - b1) * g;
      v_[i] = b2 * v_[i] + (1 - b2) * g.square();
      p -= (lr * (m_[i] / c1) / ((v_[i] / c2).sqrt() + eps)).template cast<float>();
    }
  }

 private:
  using Array = Eigen::Array<M, Eigen::Dynamic, 1>;
  std::vector<AdamSlot> slots_;
  double lr_;
  int t_ = 0;
  std::vector<Array> m_, v_;
};

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_MODEL_ADAM_H_
