// The one translation from the wire QuantSpec (proto/quantd.proto) to quant::QuantSpec, shared by
// the coordinator (validation at submit time) and the worker (the spec it quantizes with), so the
// two can never disagree about a field or a default.
// Thread-safety: a pure function.
#ifndef QUANTD_ENGINE_SPEC_QUANT_SPEC_H_
#define QUANTD_ENGINE_SPEC_QUANT_SPEC_H_

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"
#include "engine/model/finetune.h"
#include "engine/model/finetune_e2e.h"
#include "engine/model/hessian_capture.h"
#include "engine/quant/quantize.h"

namespace quantd::runner {

// QuIP# uses 10 greedy block-coordinate passes; on stories260K 2-bit 3 passes reach 0.06405 mean
// proxy loss against 0.06399 for 10 and 0.0739 for none (docs/benchmarks.md).
inline constexpr int kDefaultGreedyPasses = 3;

// Wire defaults: damp 0 means 0.01; with a grid, bits 0 and group_size 0 mean the grid's own; trellis_code "" means 1mad and trellis_l 0 means 16; greedy_passes unset means kDefaultGreedyPasses for
// quip-sharp (0 for the other methods). The seed is the job-level seed; the coordinator derives each
// matrix's seed from it. INVALID_ARGUMENT for an unknown method or a spec ValidateSpec rejects.
//
// A spec with a bit budget (avg_bits or budget_weight set) is checked at every width of
// kBudgetWidths, with the budget's own rules (INVALID_ARGUMENT naming the value: avg_bits outside
// [2, 4] or not finite, bits given too, a grid, sequential, budget_weight other than "abs"/"rel",
// budget_weight without avg_bits); the result then has the narrowest width as its bits.
absl::StatusOr<quant::QuantSpec> QuantSpecFromProto(const quantd::v1::QuantSpec& p);

// The method table's row for the wire spec's method (quant/method_table.h); the "unknown" row,
// which allows nothing, for a name that is not a method (specs are validated at submit).
const quant::MethodTraits& MethodOf(const quantd::v1::QuantSpec& p);

// The widths a bit budget chooses from (code bits per weight), narrowest first.
inline constexpr int kBudgetWidths[] = {2, 3, 4};

// Whether the wire spec asks for a bit budget.
bool HasBitBudget(const quantd::v1::QuantSpec& p);

// The spec a budgeted job's quantize task runs at one width: `job` with bits = `bits` and the
// budget fields cleared (a plain uniform spec).
quantd::v1::QuantSpec BudgetWidthSpec(const quantd::v1::QuantSpec& job, int bits);

// Default weight of each calibration sequence's first token in the Hessians (model/hessian_capture.h).
inline constexpr double kDefaultSinkWeight = model::kDefaultSinkWeight;

// The Hessian token weighting a stored (or task) spec asks for. token_weighting "" is a spec from
// before token weighting existed and means "none" (unweighted, as such jobs were captured);
// sink_weight 0 means kDefaultSinkWeight; "sink+massive" also weights massive-activation tokens,
// massive_ratio 0 meaning model::kDefaultMassiveRatio.
// INVALID_ARGUMENT naming the value for an unknown token_weighting, a sink_weight outside
// [1, 65536] (or not finite), a massive_ratio outside [2, 1e6] (or not finite), a sink_weight
// with token_weighting "none", or a massive_ratio with a mode other than "sink+massive".
absl::StatusOr<model::TokenWeighting> TokenWeightingFromProto(const quantd::v1::QuantSpec& p);

// At submit: writes the weighting's defaults into `p` (token_weighting "" becomes "sink" for every
// method that reads Hessians and "none" for rtn; sink_weight set for "sink" and "sink+massive",
// 0 for "none"; massive_ratio set for "sink+massive"), so
// a stored spec and its fingerprint say what was used. Errors as TokenWeightingFromProto's.
absl::Status FillTokenWeightingDefaults(quantd::v1::QuantSpec* p);

// Fine-tuning defaults (issue 27): the settings measured on SmolLM2-135M quip-sharp 2-bit
// (docs/benchmarks.md "Fine-tuning after rounding").
inline constexpr int kDefaultFinetuneEpochs = 4;
inline constexpr double kDefaultFinetuneLearningRate = 3e-3;
inline constexpr int kDefaultFinetuneBatch = 2;
inline constexpr int kDefaultFinetuneHoldout = 2;
inline constexpr int kDefaultFinetunePatience = 1;
// The KL stage (finetune.e2e, on by default): SmolLM2-135M qtip and quip-sharp 2-bit kept their
// second KL epoch at lr 1e-3 and a third raised the held-out KL (docs/benchmarks.md "End-to-end
// KL stage"); stories260K at 3e-3 reached a lower KL and a worse perplexity than at 1e-3.
inline constexpr int kDefaultFinetuneE2eEpochs = 2;
inline constexpr double kDefaultFinetuneE2eLearningRate = 1e-3;

// At submit: fills the defaults of a FinetuneSpec with enabled set (0 = default) and checks
// every value: INVALID_ARGUMENT naming the field for epochs outside 1..1000, a learning rate
// not in (0, 1] (or not finite), batch_sequences or holdout_sequences outside 1..4096, patience
// outside 1..1000, or any value set while enabled is false; the KL stage's: e2e "" becomes
// "on"; INVALID_ARGUMENT for e2e other than on/off, e2e_epochs outside 1..1000, an e2e learning
// rate not in (0, 1], or e2e options set with e2e "off".
absl::Status FillFinetuneDefaults(quantd::v1::FinetuneSpec* p);

// Whether a stored (filled-in) spec runs the KL stage: enabled and e2e "on".
inline bool FinetuneE2eOn(const quantd::v1::FinetuneSpec& p) {
  return p.enabled() && p.e2e() == "on";
}

// The engine's options for a stored (filled-in) FinetuneSpec on calibration sequences of
// `seq_len` tokens. INVALID_ARGUMENT as FillFinetuneDefaults (a spec that is not filled in).
absl::StatusOr<model::FinetuneOptions> FinetuneOptionsFromProto(const quantd::v1::FinetuneSpec& p,
                                                                int seq_len);
// The KL stage's options for a stored spec with FinetuneE2eOn (batch, held-out sequences and
// patience are the block stage's). INVALID_ARGUMENT as FillFinetuneDefaults.
absl::StatusOr<model::E2eOptions> E2eOptionsFromProto(const quantd::v1::FinetuneSpec& p,
                                                      int seq_len);

}  // namespace quantd::runner

#endif  // QUANTD_ENGINE_SPEC_QUANT_SPEC_H_
