// The one translation from the wire QuantSpec (proto/quantd.proto) to quant::QuantSpec, shared by
// the coordinator (validation at submit time) and the worker (the spec it quantizes with), so the
// two can never disagree about a field or a default.
// Thread-safety: a pure function.
#ifndef QUANTD_WORKER_RUNNER_QUANT_SPEC_H_
#define QUANTD_WORKER_RUNNER_QUANT_SPEC_H_

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"
#include "worker/quant/quantize.h"

namespace quantd::runner {

// Wire defaults: damp 0 means 0.01. The seed is the job-level seed; the coordinator derives each
// matrix's seed from it. INVALID_ARGUMENT for an unknown method or a spec ValidateSpec rejects.
absl::StatusOr<quant::QuantSpec> QuantSpecFromProto(const quantd::v1::QuantSpec& p);

}  // namespace quantd::runner

#endif  // QUANTD_WORKER_RUNNER_QUANT_SPEC_H_
