// The one translation from the wire QuantSpec (proto/quantd.proto) to quant::QuantSpec, shared by
// the coordinator (validation at submit time) and the worker (the spec it quantizes with), so the
// two can never disagree about a field or a default.
// Thread-safety: a pure function.
#ifndef QUANTD_ENGINE_SPEC_QUANT_SPEC_H_
#define QUANTD_ENGINE_SPEC_QUANT_SPEC_H_

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"
#include "engine/quant/quantize.h"

namespace quantd::runner {

// QuIP# uses 10 greedy block-coordinate passes; on stories260K 2-bit 3 passes reach 0.06405 mean
// proxy loss against 0.06399 for 10 and 0.0739 for none (docs/benchmarks.md).
inline constexpr int kDefaultGreedyPasses = 3;

// Wire defaults: damp 0 means 0.01; with a grid, bits 0 and group_size 0 mean the grid's own; trellis_code "" means 1mad and trellis_l 0 means 16; greedy_passes unset means kDefaultGreedyPasses for
// quip-sharp (0 for the other methods). The seed is the job-level seed; the coordinator derives each
// matrix's seed from it. INVALID_ARGUMENT for an unknown method or a spec ValidateSpec rejects.
absl::StatusOr<quant::QuantSpec> QuantSpecFromProto(const quantd::v1::QuantSpec& p);

// The method table's row for the wire spec's method (quant/method_table.h); the "unknown" row,
// which allows nothing, for a name that is not a method (specs are validated at submit).
const quant::MethodTraits& MethodOf(const quantd::v1::QuantSpec& p);

}  // namespace quantd::runner

#endif  // QUANTD_ENGINE_SPEC_QUANT_SPEC_H_
