#include "engine/spec/quant_spec.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace quantd::runner {

namespace {

absl::Status ValidateBudget(const quantd::v1::QuantSpec& p) {
  if (p.avg_bits() == 0) {
    return absl::InvalidArgumentError(absl::StrCat("budget_weight \"", p.budget_weight(),
                                                   "\" applies only with avg_bits"));
  }
  if (!std::isfinite(p.avg_bits()) || p.avg_bits() < kBudgetWidths[0] ||
      p.avg_bits() > kBudgetWidths[std::size(kBudgetWidths) - 1]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "avg_bits ", p.avg_bits(), " is outside [2, 4] (a bit budget chooses 2, 3 or 4 bits per matrix)"));
  }
  if (p.bits() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("bits ", p.bits(), " and avg_bits ", p.avg_bits(),
                                                   " both given: with a bit budget each matrix's "
                                                   "bits are chosen (leave bits 0)"));
  }
  if (!p.grid().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("grid ", p.grid(),
                                                   " fixes the bits; it cannot be used with avg_bits"));
  }
  if (p.sequential()) {
    return absl::InvalidArgumentError(
        "sequential cannot be used with avg_bits: the budget needs every matrix's losses at every "
        "width before any layer is fixed");
  }
  if (!p.budget_weight().empty() && p.budget_weight() != "abs" && p.budget_weight() != "rel") {
    return absl::InvalidArgumentError(
        absl::StrCat("budget_weight \"", p.budget_weight(), "\" is not \"abs\" or \"rel\""));
  }
  return absl::OkStatus();
}

}  // namespace

bool HasBitBudget(const quantd::v1::QuantSpec& p) {
  return p.avg_bits() != 0 || !p.budget_weight().empty();
}

quantd::v1::QuantSpec BudgetWidthSpec(const quantd::v1::QuantSpec& job, int bits) {
  quantd::v1::QuantSpec s = job;
  s.set_bits(bits);
  s.clear_avg_bits();
  s.clear_budget_weight();
  return s;
}

absl::StatusOr<quant::QuantSpec> QuantSpecFromProto(const quantd::v1::QuantSpec& p) {
  if (HasBitBudget(p)) {
    QUANTD_RETURN_IF_ERROR(ValidateBudget(p));
    absl::StatusOr<quant::QuantSpec> narrowest;
    for (int b : kBudgetWidths) {
      auto s = QuantSpecFromProto(BudgetWidthSpec(p, b));
      if (!s.ok()) {
        return absl::Status(s.status().code(),
                            absl::StrCat("with avg_bits ", p.avg_bits(), ": ", s.status().message()));
      }
      if (!narrowest.ok()) narrowest = std::move(s);
    }
    return narrowest;
  }
  quant::QuantSpec spec;
  QUANTD_ASSIGN_OR_RETURN(spec.method, quant::ParseMethod(p.method()));
  QUANTD_ASSIGN_OR_RETURN(spec.grid, quant::ParseGridTarget(p.grid()));
  const quant::GridShape shape = quant::GridShapeOf(spec.grid);
  spec.bits = p.bits() == 0 && shape.bits != 0 ? shape.bits : p.bits();
  spec.seed = p.seed();
  spec.group_size = p.group_size() == 0 ? shape.group_size : p.group_size();
  spec.mse_clip = p.mse_clip();
  spec.act_order = p.act_order();
  spec.hessian_scale = p.hessian_scale();
  spec.greedy_passes = p.has_greedy_passes()                      ? p.greedy_passes()
                       : quant::TraitsOf(spec.method).greedy_passes ? kDefaultGreedyPasses
                                                                  : 0;
  spec.codebook_scale = p.codebook_scale();
  spec.damp = p.damp() == 0 ? 0.01 : p.damp();
  spec.baseline_guard = !p.no_baseline_guard();
  if (!p.trellis_code().empty()) {
    QUANTD_ASSIGN_OR_RETURN(spec.trellis_code, quant::ParseTrellisCode(p.trellis_code()));
  }
  if (p.trellis_l() != 0) spec.trellis_l = p.trellis_l();
  if ((!p.trellis_code().empty() || p.trellis_l() != 0) && !quant::TraitsOf(spec.method).trellis) {
    return absl::InvalidArgumentError(
        absl::StrCat("trellis_code / trellis_l apply to method qtip only, not ", p.method()));
  }
  QUANTD_RETURN_IF_ERROR(quant::ValidateSpec(spec));
  return spec;
}

const quant::MethodTraits& MethodOf(const quantd::v1::QuantSpec& p) {
  auto t = quant::FindMethod(p.method());
  return t.ok() ? **t : quant::TraitsOf(static_cast<quant::Method>(0));
}

absl::StatusOr<model::TokenWeighting> TokenWeightingFromProto(const quantd::v1::QuantSpec& p) {
  // A stored spec names its weighting (FillTokenWeightingDefaults at submit). An empty one is a
  // job submitted before token weighting existed: it stays unweighted, as it was then, so a
  // resumed old job gives the bytes it would have given.
  const std::string mode = p.token_weighting().empty() ? "none" : p.token_weighting();
  model::TokenWeighting w;
  if (mode != "none" && mode != "sink" && mode != "sink+massive") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown token_weighting \"", p.token_weighting(),
                     "\": expected \"none\", \"sink\" or \"sink+massive\""));
  }
  if (mode != "sink+massive" && p.massive_ratio() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("massive_ratio ", p.massive_ratio(),
                                                   " given with token_weighting \"", mode,
                                                   "\" (only \"sink+massive\" reads it)"));
  }
  if (mode == "none") {
    if (p.sink_weight() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sink_weight ", p.sink_weight(), " given with token_weighting \"none\""));
    }
    return w;
  }
  const double sw = p.sink_weight() == 0 ? kDefaultSinkWeight : p.sink_weight();
  if (!std::isfinite(sw) || sw < 1 || sw > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("sink_weight ", p.sink_weight(), " is outside [1, 65536]"));
  }
  w.sink_weight = sw;
  w.sink_positions = 1;
  if (mode == "sink+massive") {
    const double r = p.massive_ratio() == 0 ? model::kDefaultMassiveRatio : p.massive_ratio();
    if (!std::isfinite(r) || r < 2 || r > 1e6) {
      return absl::InvalidArgumentError(
          absl::StrCat("massive_ratio ", p.massive_ratio(), " is outside [2, 1e6]"));
    }
    w.massive_ratio = r;
  }
  return w;
}

absl::Status FillTokenWeightingDefaults(quantd::v1::QuantSpec* p) {
  // Only methods that read Hessians are weighted by default (rtn is not).
  if (p->token_weighting().empty()) p->set_token_weighting(MethodOf(*p).uses_hessian ? "sink" : "none");
  QUANTD_ASSIGN_OR_RETURN(model::TokenWeighting w, TokenWeightingFromProto(*p));
  if (w.IsUniform() && p->token_weighting() == "none") {
    p->set_sink_weight(0);
  } else {
    p->set_sink_weight(w.sink_weight);
    if (p->token_weighting() == "sink+massive") p->set_massive_ratio(w.massive_ratio);
  }
  return absl::OkStatus();
}

namespace {

absl::Status CheckFinetuneSpec(const quantd::v1::FinetuneSpec& p) {
  auto range = [](const char* field, int64_t v, int64_t lo, int64_t hi) {
    if (v >= lo && v <= hi) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("finetune ", field, " ", v, " is outside [", lo, ", ", hi, "]"));
  };
  QUANTD_RETURN_IF_ERROR(range("epochs", p.epochs(), 1, 1000));
  if (!(std::isfinite(p.learning_rate()) && p.learning_rate() > 0 && p.learning_rate() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("finetune learning_rate ", p.learning_rate(), " is not in (0, 1]"));
  }
  QUANTD_RETURN_IF_ERROR(range("batch_sequences", p.batch_sequences(), 1, 4096));
  QUANTD_RETURN_IF_ERROR(range("holdout_sequences", p.holdout_sequences(), 1, 4096));
  QUANTD_RETURN_IF_ERROR(range("patience", p.patience(), 1, 1000));
  if (p.e2e() != "on" && p.e2e() != "off" && !p.e2e().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("finetune e2e '", p.e2e(), "' is not one of: on, off"));
  }
  // "" only in specs stored before the KL stage existed (submit fills it in): off.
  if (p.e2e() != "on") {
    if (p.e2e_epochs() != 0 || p.e2e_learning_rate() != 0 || p.e2e_head()) {
      return absl::InvalidArgumentError(
          "finetune e2e options (epochs, learning rate, head) are set but e2e is off");
    }
    return absl::OkStatus();
  }
  QUANTD_RETURN_IF_ERROR(range("e2e_epochs", p.e2e_epochs(), 1, 1000));
  if (!(std::isfinite(p.e2e_learning_rate()) && p.e2e_learning_rate() > 0 &&
        p.e2e_learning_rate() <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("finetune e2e_learning_rate ",
                                                   p.e2e_learning_rate(), " is not in (0, 1]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FillFinetuneDefaults(quantd::v1::FinetuneSpec* p) {
  if (!p->enabled()) {
    if (p->epochs() != 0 || p->learning_rate() != 0 || p->batch_sequences() != 0 ||
        p->holdout_sequences() != 0 || p->patience() != 0 || !p->e2e().empty() ||
        p->e2e_epochs() != 0 || p->e2e_learning_rate() != 0 || p->e2e_head()) {
      return absl::InvalidArgumentError(
          "finetune options are set but finetune.enabled is false (pass --finetune)");
    }
    return absl::OkStatus();
  }
  if (p->epochs() == 0) p->set_epochs(kDefaultFinetuneEpochs);
  if (p->learning_rate() == 0) p->set_learning_rate(kDefaultFinetuneLearningRate);
  if (p->batch_sequences() == 0) p->set_batch_sequences(kDefaultFinetuneBatch);
  if (p->holdout_sequences() == 0) p->set_holdout_sequences(kDefaultFinetuneHoldout);
  if (p->patience() == 0) p->set_patience(kDefaultFinetunePatience);
  if (p->e2e().empty()) p->set_e2e("on");
  if (p->e2e() == "on") {
    if (p->e2e_epochs() == 0) p->set_e2e_epochs(kDefaultFinetuneE2eEpochs);
    if (p->e2e_learning_rate() == 0) p->set_e2e_learning_rate(kDefaultFinetuneE2eLearningRate);
  }
  return CheckFinetuneSpec(*p);
}

absl::StatusOr<model::FinetuneOptions> FinetuneOptionsFromProto(const quantd::v1::FinetuneSpec& p,
                                                                int seq_len) {
  if (!p.enabled()) return absl::InvalidArgumentError("finetune is not enabled in the spec");
  QUANTD_RETURN_IF_ERROR(CheckFinetuneSpec(p));
  model::FinetuneOptions o;
  o.seq_len = seq_len;
  o.epochs = p.epochs();
  o.learning_rate = p.learning_rate();
  o.batch_sequences = p.batch_sequences();
  o.holdout_sequences = p.holdout_sequences();
  o.patience = p.patience();
  QUANTD_RETURN_IF_ERROR(model::ValidateFinetuneOptions(o));
  return o;
}

absl::StatusOr<model::E2eOptions> E2eOptionsFromProto(const quantd::v1::FinetuneSpec& p,
                                                      int seq_len) {
  QUANTD_ASSIGN_OR_RETURN(model::FinetuneOptions f, FinetuneOptionsFromProto(p, seq_len));
  if (!FinetuneE2eOn(p)) return absl::InvalidArgumentError("finetune e2e is not on in the spec");
  model::E2eOptions o;
  o.seq_len = f.seq_len;
  o.epochs = p.e2e_epochs();
  o.learning_rate = p.e2e_learning_rate();
  o.batch_sequences = f.batch_sequences;
  o.holdout_sequences = f.holdout_sequences;
  o.patience = f.patience;
  o.tune_head = p.e2e_head();
  QUANTD_RETURN_IF_ERROR(model::ValidateE2eOptions(o));
  return o;
}

}  // namespace quantd::runner
