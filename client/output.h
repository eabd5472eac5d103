// How quantctl prints things: --json documents, human tables and the summary of a registry
// manifest (the live watch display is progress.h). Pure formatting; commands.cc decides where
// it goes.
// Thread-safety: pure functions.
#ifndef QUANTD_CLIENT_OUTPUT_H_
#define QUANTD_CLIENT_OUTPUT_H_

#include <optional>
#include <string>
#include <vector>

#include "google/protobuf/message.h"
#include "proto/quantd.pb.h"

namespace quantd::client {

// The message as JSON with proto field names (snake_case), every primitive field printed even
// when it has its default value, enums by name, int64/uint64 as strings (proto3 JSON mapping);
// 2-space indented, fields in proto order.
std::string ToJson(const google::protobuf::Message& message);
// A JSON array of such objects.
std::string ToJsonArrayOf(const std::vector<const google::protobuf::Message*>& messages);
template <typename M>
std::string ToJsonArray(const std::vector<M>& messages) {
  std::vector<const google::protobuf::Message*> ptrs;
  for (const M& m : messages) ptrs.push_back(&m);
  return ToJsonArrayOf(ptrs);
}

// "SUCCEEDED" for JOB_STATE_SUCCEEDED, etc.
std::string StateName(quantd::v1::JobState state);

// Fields quantctl shows from a manifest_json; absent when missing or of the wrong type.
struct ManifestSummary {
  std::optional<std::string> method;
  std::optional<int> bits;
  std::optional<double> avg_bits;  // a bit budget's achieved code bits per weight
  std::optional<double> fp_ppl;
  std::optional<double> quant_ppl;
  std::vector<std::string> export_formats;  // manifest "export_formats" (fetch --format)
};
// Lenient: malformed JSON or missing keys give empty fields, never an error.
ManifestSummary SummarizeManifest(const std::string& manifest_json);

// Fixed-width table: header row, then rows; columns separated by two spaces.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);
std::string JobsTable(const std::vector<quantd::v1::Job>& jobs);
std::string ModelsTable(const std::vector<quantd::v1::ModelVersion>& models);
// Multi-line "key: value" description of one job.
std::string DescribeJob(const quantd::v1::Job& job);
// A fine-tuning job's phase: "finetune, block 4/30 (block 2 held-out 0.02912 -> 0.02345)" (the
// block being tuned, and the last tuned block's held-out loss before and after); once every
// block is tuned and the job has the KL stage, "finetune e2e (held-out KL 0.3508 -> 0.3229,
// epoch 1/2)" (before the stage -> after its last epoch; "finetune e2e" until the first epoch).
std::string FinetunePhaseLabel(const quantd::v1::Job& job);
// The job's phase with its position: "quantize", "quantize, layer 3/30" (a sequential job's
// layer stage), "hessian, stage 2/4" (a staged job), or FinetunePhaseLabel's text; "" when the
// job has no phase yet.
std::string PhaseLabel(const quantd::v1::Job& job);
// One line: "job ID SUCCEEDED: NAME version 3, perplexity fp 5.4540 -> quantized 5.9000".
std::string FinalJobLine(const quantd::v1::Job& job);

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_OUTPUT_H_
