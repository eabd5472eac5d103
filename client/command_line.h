// quantctl's command-line grammar: turns argv into a typed Invocation, without side effects
// (no network, no file access except making paths absolute). Any error here is a usage error
// (exit code 2). The grammar is documented in UsageText() and docs/cli.md.
// Thread-safety: pure functions.
#ifndef QUANTD_CLIENT_COMMAND_LINE_H_
#define QUANTD_CLIENT_COMMAND_LINE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"

namespace quantd::client {

inline constexpr char kDefaultAddr[] = "127.0.0.1:7070";

enum class Command { kHelp, kSubmit, kWatch, kJobs, kStatus, kCancel, kModels, kFetch, kDelete };

// One parsed quantctl invocation. Only the fields of `command` are meaningful.
struct Invocation {
  Command command = Command::kHelp;
  std::string addr = kDefaultAddr;  // --addr, else $QUANTD_ADDR, else kDefaultAddr
  bool json = false;                // --json (submit, watch, jobs, status, cancel, models)
  // Connection security, absolute paths; empty = not given (commands.h then looks at
  // $QUANTD_TOKEN and $QUANTD_TLS_CA / _CERT / _KEY).
  std::string token_file;  // --token-file: first token of the file is sent as a bearer token
  std::string tls_ca;      // --tls-ca: dial TLS, verifying the server with this CA bundle
  std::string tls_cert;    // --tls-cert / --tls-key: client certificate for mutual TLS
  std::string tls_key;
  std::string job_id;               // watch, status, cancel

  // submit: the request with absolute paths. request_id empty = generate one when sending.
  quantd::v1::SubmitJobRequest submit;
  bool wait = false;                    // submit --wait
  // watch, submit --wait: without a terminal, a progress line at least this often (seconds).
  int32_t progress_interval_s = 30;     // --progress-interval
  std::optional<double> max_ppl_ratio;  // submit --max-ppl-ratio (requires --wait and --eval)

  std::string model_name;     // models (empty = all), fetch, delete
  int32_t model_version = 0;  // fetch NAME@VERSION (0 = latest); delete NAME@VERSION (≥ 1)
  std::string out_dir;        // fetch -o, absolute
  bool hf_format = false;     // fetch --format hf (else native)
  std::string export_format;  // fetch --format gptq|compressed-tensors|gguf ("" = native or hf)
  std::string hf_dtype = "f16";  // fetch --dtype f16|bf16|f32 (hf only)
};

// Parses argv without the program name. `env_addr` is $QUANTD_ADDR (nullptr or empty = unset).
// INVALID_ARGUMENT with a message meant for the user on any usage error.
absl::StatusOr<Invocation> ParseCommandLine(const std::vector<std::string>& args,
                                            const char* env_addr);

// The text of `quantctl --help`: grammar, --json format, exit codes.
const char* UsageText();

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_COMMAND_LINE_H_
