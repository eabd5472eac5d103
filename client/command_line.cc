#include "client/command_line.h"

#include <filesystem>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/cli_args.h"
#include "common/status_macros.h"

namespace quantd::client {
namespace {

constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();

std::string Absolute(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path, ec);
  if (ec) return path;
  return p.lexically_normal().string();
}

absl::Status Usage(absl::string_view msg) { return absl::InvalidArgumentError(msg); }

// Flags every command accepts, before or after the command name.
constexpr const char* kConnectionFlags[] = {"--addr", "--token-file", "--tls-ca", "--tls-cert",
                                            "--tls-key"};

bool IsConnectionFlag(const std::string& arg) {
  for (const char* f : kConnectionFlags) {
    if (arg == f) return true;
  }
  return false;
}

std::string* ConnectionPath(Invocation* inv, const std::string& flag) {
  if (flag == "--token-file") return &inv->token_file;
  if (flag == "--tls-ca") return &inv->tls_ca;
  if (flag == "--tls-cert") return &inv->tls_cert;
  return &inv->tls_key;
}

absl::Status ExpectPositionals(const ParsedArgs& a, absl::string_view command, size_t min,
                               size_t max, absl::string_view what) {
  if (a.positional.size() < min) {
    return Usage(absl::StrCat(command, ": missing ", what));
  }
  if (a.positional.size() > max) {
    return Usage(absl::StrCat(command, ": unexpected argument \"", a.positional[max], "\""));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Required(const ParsedArgs& a, absl::string_view command,
                                     const std::string& flag) {
  if (!a.Has(flag)) return Usage(absl::StrCat(command, ": ", flag, " is required"));
  std::string v = a.Get(flag);
  if (v.empty()) return Usage(absl::StrCat(command, ": ", flag, " must not be empty"));
  return v;
}

absl::StatusOr<int32_t> OptionalInt(const ParsedArgs& a, const std::string& flag, int32_t min,
                                    int32_t fallback) {
  if (!a.Has(flag)) return fallback;
  QUANTD_ASSIGN_OR_RETURN(int64_t v, ParseInt(flag, a.Get(flag), min, kInt32Max));
  return static_cast<int32_t>(v);
}

absl::Status ParseSubmit(const ParsedArgs& a, Invocation* inv) {
  QUANTD_RETURN_IF_ERROR(ExpectPositionals(a, "submit", 1, 1, "MODEL_DIR"));
  quantd::v1::SubmitJobRequest& r = inv->submit;
  r.set_model_dir(Absolute(a.positional[0]));
  // Optional for rtn only (the server says so): without it the job captures no Hessians.
  if (a.Has("--calib")) {
    if (a.Get("--calib").empty()) return Usage("submit: --calib must not be empty");
    r.set_calib_path(Absolute(a.Get("--calib")));
  } else if (a.Get("--method") != "rtn") {
    return Usage("submit: --calib FILE is required (only --method rtn runs without calibration data)");
  }
  if (a.Has("--eval")) {
    if (a.Get("--eval").empty()) return Usage("submit: --eval must not be empty");
    r.set_eval_path(Absolute(a.Get("--eval")));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string name, Required(a, "submit", "--name"));
  r.set_name(name);
  if (a.Has("--request-id")) {
    if (a.Get("--request-id").empty()) return Usage("submit: --request-id must not be empty");
    r.set_request_id(a.Get("--request-id"));
  }
  // method and bits are checked by the server (one list of what is valid); here only their form.
  quantd::v1::QuantSpec* spec = r.mutable_spec();
  QUANTD_ASSIGN_OR_RETURN(std::string method, Required(a, "submit", "--method"));
  spec->set_method(method);
  // --grid: the server fills bits and group size from the grid when they are not given.
  spec->set_grid(a.Get("--grid", ""));
  // --avg-bits: a bit budget, which chooses each matrix's bits (2, 3 or 4) itself.
  if (!a.Has("--bits") && spec->grid().empty() && !a.Has("--avg-bits")) {
    QUANTD_RETURN_IF_ERROR(Required(a, "submit", "--bits").status());
  }
  if (a.Has("--bits")) {
    QUANTD_ASSIGN_OR_RETURN(int64_t bits, ParseInt("--bits", a.Get("--bits"), 1, 64));
    spec->set_bits(static_cast<int32_t>(bits));
  }
  if (a.Has("--avg-bits")) {
    QUANTD_ASSIGN_OR_RETURN(double avg, ParseDouble("--avg-bits", a.Get("--avg-bits")));
    spec->set_avg_bits(avg);  // range checked by the server
  }
  spec->set_budget_weight(a.Get("--budget-weight", ""));
  if (a.Has("--seed")) {
    QUANTD_ASSIGN_OR_RETURN(uint64_t seed, ParseUint64("--seed", a.Get("--seed")));
    spec->set_seed(seed);
  }
  QUANTD_ASSIGN_OR_RETURN(int32_t group_size, OptionalInt(a, "--group-size", 0, 0));
  spec->set_group_size(group_size);
  if (a.Has("--greedy-passes")) {  // unset: the server's default for the method
    QUANTD_ASSIGN_OR_RETURN(int32_t passes, OptionalInt(a, "--greedy-passes", 0, 0));
    spec->set_greedy_passes(passes);
  }
  spec->set_mse_clip(a.Has("--mse-clip"));
  spec->set_act_order(a.Has("--act-order"));
  spec->set_hessian_scale(a.Has("--hessian-scale"));
  // Fine-tuning after rounding (issue 27): the server fills the defaults and checks the ranges;
  // an --ft-* option without --finetune is refused there too, naming it.
  for (const char* f : {"--ft-epochs", "--ft-lr", "--ft-batch", "--ft-holdout", "--ft-patience",
                        "--ft-e2e", "--ft-e2e-epochs", "--ft-e2e-lr", "--ft-e2e-head"}) {
    if (a.Has(f) && !a.Has("--finetune")) {
      return Usage(absl::StrCat("submit: ", f, " needs --finetune"));
    }
  }
  if (a.Has("--finetune")) {
    quantd::v1::FinetuneSpec* ft = spec->mutable_finetune();
    ft->set_enabled(true);
    QUANTD_ASSIGN_OR_RETURN(int32_t epochs, OptionalInt(a, "--ft-epochs", 1, 0));
    ft->set_epochs(epochs);
    if (a.Has("--ft-lr")) {
      QUANTD_ASSIGN_OR_RETURN(double lr, ParseDouble("--ft-lr", a.Get("--ft-lr")));
      if (!(lr > 0 && lr <= 1)) return Usage(absl::StrCat("--ft-lr ", a.Get("--ft-lr"), " is not in (0, 1]"));
      ft->set_learning_rate(lr);
    }
    QUANTD_ASSIGN_OR_RETURN(int32_t batch, OptionalInt(a, "--ft-batch", 1, 0));
    ft->set_batch_sequences(batch);
    QUANTD_ASSIGN_OR_RETURN(int32_t holdout, OptionalInt(a, "--ft-holdout", 1, 0));
    ft->set_holdout_sequences(holdout);
    QUANTD_ASSIGN_OR_RETURN(int32_t patience, OptionalInt(a, "--ft-patience", 1, 0));
    ft->set_patience(patience);
    // The end-to-end KL stage: on unless --ft-e2e off (the server fills its defaults).
    const std::string e2e = a.Get("--ft-e2e", "");
    if (!e2e.empty() && e2e != "on" && e2e != "off") {
      return Usage(absl::StrCat("--ft-e2e '", e2e, "' is not one of: on, off"));
    }
    if (e2e == "off") {
      for (const char* f : {"--ft-e2e-epochs", "--ft-e2e-lr", "--ft-e2e-head"}) {
        if (a.Has(f)) return Usage(absl::StrCat("submit: ", f, " needs --ft-e2e on"));
      }
    }
    ft->set_e2e(e2e);
    QUANTD_ASSIGN_OR_RETURN(int32_t e2e_epochs, OptionalInt(a, "--ft-e2e-epochs", 1, 0));
    ft->set_e2e_epochs(e2e_epochs);
    if (a.Has("--ft-e2e-lr")) {
      QUANTD_ASSIGN_OR_RETURN(double lr, ParseDouble("--ft-e2e-lr", a.Get("--ft-e2e-lr")));
      if (!(lr > 0 && lr <= 1)) {
        return Usage(absl::StrCat("--ft-e2e-lr ", a.Get("--ft-e2e-lr"), " is not in (0, 1]"));
      }
      ft->set_e2e_learning_rate(lr);
    }
    ft->set_e2e_head(a.Has("--ft-e2e-head"));
  }
  spec->set_sequential(a.Has("--sequential"));
  spec->set_no_baseline_guard(a.Has("--no-baseline-guard"));
  spec->set_trellis_code(a.Get("--trellis-code", ""));
  if (a.Has("--trellis-l")) {
    QUANTD_ASSIGN_OR_RETURN(int32_t l, OptionalInt(a, "--trellis-l", 0, 0));
    spec->set_trellis_l(l);
  }
  if (a.Has("--damp")) {
    QUANTD_ASSIGN_OR_RETURN(double damp, ParseDouble("--damp", a.Get("--damp")));
    if (damp < 0) return Usage("--damp must be >= 0");
    spec->set_damp(damp);
  }
  if (a.Has("--codebook-scale")) {
    QUANTD_ASSIGN_OR_RETURN(double scale,
                            ParseDouble("--codebook-scale", a.Get("--codebook-scale")));
    if (scale < 0) return Usage("--codebook-scale must be >= 0");
    spec->set_codebook_scale(scale);
  }
  // --seq-len / --calib-seqs are the short names of --calib-seq-len / --max-calib-seqs.
  for (const auto& [alias, flag] : {std::pair<const char*, const char*>{"--seq-len", "--calib-seq-len"},
                                    {"--calib-seqs", "--max-calib-seqs"}}) {
    if (a.Has(alias) && a.Has(flag) && a.Get(alias) != a.Get(flag)) {
      return Usage(absl::StrCat("submit: ", alias, " and ", flag, " name the same setting with ",
                                "different values"));
    }
  }
  QUANTD_ASSIGN_OR_RETURN(
      int32_t seq_len,
      OptionalInt(a, a.Has("--seq-len") ? "--seq-len" : "--calib-seq-len", 1, 0));
  r.set_calib_seq_len(seq_len);
  QUANTD_ASSIGN_OR_RETURN(
      int32_t max_seqs,
      OptionalInt(a, a.Has("--calib-seqs") ? "--calib-seqs" : "--max-calib-seqs", 0, 0));
  r.set_max_calib_seqs(max_seqs);
  // Calibration like serving and sink-weighted Hessians (issue 24): values are checked by the
  // server, which names what it refuses.
  r.set_calib_sampling(a.Get("--calib-sampling", ""));
  if (a.Has("--calib-seed")) {
    QUANTD_ASSIGN_OR_RETURN(uint64_t cseed, ParseUint64("--calib-seed", a.Get("--calib-seed")));
    r.set_calib_seed(cseed);
  }
  r.set_start_token(a.Get("--start-token", ""));
  spec->set_token_weighting(a.Get("--token-weighting", ""));
  if (a.Has("--sink-weight")) {
    QUANTD_ASSIGN_OR_RETURN(double sw, ParseDouble("--sink-weight", a.Get("--sink-weight")));
    spec->set_sink_weight(sw);
  }
  if (a.Has("--massive-ratio")) {
    QUANTD_ASSIGN_OR_RETURN(double mr, ParseDouble("--massive-ratio", a.Get("--massive-ratio")));
    spec->set_massive_ratio(mr);
  }
  QUANTD_ASSIGN_OR_RETURN(int32_t eval_ctx, OptionalInt(a, "--eval-context", 1, 0));
  r.set_eval_context(eval_ctx);

  inv->wait = a.Has("--wait");
  if (a.Has("--max-ppl-ratio")) {
    QUANTD_ASSIGN_OR_RETURN(double ratio,
                            ParseDouble("--max-ppl-ratio", a.Get("--max-ppl-ratio")));
    if (ratio <= 0) return Usage("--max-ppl-ratio must be > 0");
    if (!inv->wait) return Usage("submit: --max-ppl-ratio needs --wait");
    if (r.eval_path().empty()) {
      return Usage("submit: --max-ppl-ratio needs --eval (no perplexity without evaluation data)");
    }
    inv->max_ppl_ratio = ratio;
  }
  return absl::OkStatus();
}

absl::Status ParseFetch(const ParsedArgs& a, Invocation* inv) {
  QUANTD_RETURN_IF_ERROR(ExpectPositionals(a, "fetch", 1, 1, "NAME[@VERSION]"));
  QUANTD_ASSIGN_OR_RETURN(ModelRef ref, ParseModelRef(a.positional[0]));
  inv->model_name = ref.name;
  inv->model_version = ref.version;
  QUANTD_ASSIGN_OR_RETURN(std::string dir, Required(a, "fetch", "-o"));
  inv->out_dir = Absolute(dir);
  const std::string format = a.Get("--format", "native");
  if (format != "native" && format != "hf" && format != "gptq" && format != "compressed-tensors" &&
      format != "gguf") {
    return Usage(absl::StrCat("fetch: unknown --format \"", format,
                              "\"; expected native, hf, gptq, compressed-tensors or gguf"));
  }
  inv->hf_format = format == "hf";
  if (format != "native" && format != "hf") inv->export_format = format;
  if (a.Has("--dtype")) {
    if (!inv->hf_format) return Usage("fetch: --dtype applies only to --format hf");
    inv->hf_dtype = a.Get("--dtype");
    if (inv->hf_dtype != "f16" && inv->hf_dtype != "bf16" && inv->hf_dtype != "f32") {
      return Usage(absl::StrCat("fetch: unknown --dtype \"", inv->hf_dtype,
                                "\"; expected f16, bf16 or f32"));
    }
  }
  return absl::OkStatus();
}

struct CommandSpec {
  const char* name;
  Command command;
  std::vector<FlagSpec> flags;  // besides kConnectionFlags and --help
};

const std::vector<CommandSpec>& Commands() {
  static const auto* commands = new std::vector<CommandSpec>{
      {"submit",
       Command::kSubmit,
       {{"--calib", true},
        {"--eval", true},
        {"--method", true},
        {"--bits", true},
        {"--avg-bits", true},
        {"--budget-weight", true},
        {"--name", true},
        {"--request-id", true},
        {"--seed", true},
        {"--group-size", true},
        {"--greedy-passes", true},
        {"--mse-clip", false},
        {"--act-order", false},
        {"--hessian-scale", false},
        {"--finetune", false},
        {"--ft-epochs", true},
        {"--ft-lr", true},
        {"--ft-batch", true},
        {"--ft-holdout", true},
        {"--ft-patience", true},
        {"--ft-e2e", true},
        {"--ft-e2e-epochs", true},
        {"--ft-e2e-lr", true},
        {"--ft-e2e-head", false},
        {"--sequential", false},
        {"--no-baseline-guard", false},
        {"--trellis-code", true},
        {"--trellis-l", true},
        {"--grid", true},
        {"--damp", true},
        {"--codebook-scale", true},
        {"--calib-seq-len", true},
        {"--max-calib-seqs", true},
        {"--seq-len", true},
        {"--calib-seqs", true},
        {"--calib-sampling", true},
        {"--calib-seed", true},
        {"--start-token", true},
        {"--token-weighting", true},
        {"--sink-weight", true},
        {"--massive-ratio", true},
        {"--eval-context", true},
        {"--wait", false},
        {"--json", false},
        {"--progress-interval", true},
        {"--max-ppl-ratio", true}}},
      {"watch", Command::kWatch, {{"--json", false}, {"--progress-interval", true}}},
      {"jobs", Command::kJobs, {{"--json", false}}},
      {"status", Command::kStatus, {{"--json", false}}},
      {"cancel", Command::kCancel, {{"--json", false}}},
      {"models", Command::kModels, {{"--json", false}}},
      {"fetch", Command::kFetch, {{"-o", true}, {"--format", true}, {"--dtype", true}}},
      {"delete", Command::kDelete, {{"--json", false}}},
  };
  return *commands;
}

}  // namespace

absl::StatusOr<Invocation> ParseCommandLine(const std::vector<std::string>& args,
                                            const char* env_addr) {
  Invocation inv;
  if (env_addr != nullptr && env_addr[0] != '\0') inv.addr = env_addr;
  // Global flags may come before the command: quantctl --addr H:P jobs.
  size_t i = 0;
  std::vector<std::string> global;
  while (i < args.size() && !args[i].empty() && args[i][0] == '-') {
    global.push_back(args[i]);
    if (IsConnectionFlag(args[i]) && i + 1 < args.size()) global.push_back(args[++i]);
    ++i;
  }
  std::vector<FlagSpec> global_specs = {{"--help", false}, {"-h", false}};
  for (const char* f : kConnectionFlags) global_specs.push_back({f, true});
  QUANTD_ASSIGN_OR_RETURN(ParsedArgs g, ParseArgs(global, global_specs));
  if (g.Has("--help") || g.Has("-h") || i == args.size()) {
    if (i == args.size() && !g.Has("--help") && !g.Has("-h")) {
      return Usage("missing command");
    }
    inv.command = Command::kHelp;
    return inv;
  }
  const std::string& name = args[i];
  if (name == "help") {
    inv.command = Command::kHelp;
    return inv;
  }
  const CommandSpec* spec = nullptr;
  for (const CommandSpec& c : Commands()) {
    if (name == c.name) spec = &c;
  }
  if (spec == nullptr) return Usage(absl::StrCat("unknown command \"", name, "\""));
  std::vector<FlagSpec> flags = spec->flags;
  for (const char* f : kConnectionFlags) flags.push_back({f, true});
  flags.push_back({"--help", false});
  flags.push_back({"-h", false});
  std::vector<std::string> rest(args.begin() + i + 1, args.end());
  auto parsed = ParseArgs(rest, flags);
  if (!parsed.ok()) return Usage(absl::StrCat(name, ": ", parsed.status().message()));
  ParsedArgs& a = *parsed;
  if (a.Has("--help") || a.Has("-h")) {
    inv.command = Command::kHelp;
    return inv;
  }
  if (g.Has("--addr") && a.Has("--addr")) return Usage("--addr given twice");
  const std::string addr = a.Has("--addr") ? a.Get("--addr") : g.Get("--addr", inv.addr);
  if (addr.empty()) return Usage("--addr must not be empty");
  inv.addr = addr;
  for (const char* f : {"--token-file", "--tls-ca", "--tls-cert", "--tls-key"}) {
    if (g.Has(f) && a.Has(f)) return Usage(absl::StrCat(f, " given twice"));
    const std::string path = a.Has(f) ? a.Get(f) : g.Get(f);
    if ((a.Has(f) || g.Has(f)) && path.empty()) return Usage(absl::StrCat(f, " must not be empty"));
    if (!path.empty()) *ConnectionPath(&inv, f) = Absolute(path);
  }
  if (inv.tls_cert.empty() != inv.tls_key.empty()) {
    return Usage("--tls-cert and --tls-key must be given together");
  }
  inv.command = spec->command;
  inv.json = a.Has("--json");
  if (a.Has("--progress-interval")) {
    QUANTD_ASSIGN_OR_RETURN(
        int64_t s, ParseInt("--progress-interval", a.Get("--progress-interval"), 1, 86400));
    if (inv.command == Command::kSubmit && !a.Has("--wait")) {
      return Usage("submit: --progress-interval needs --wait");
    }
    inv.progress_interval_s = static_cast<int32_t>(s);
  }
  switch (inv.command) {
    case Command::kSubmit:
      QUANTD_RETURN_IF_ERROR(ParseSubmit(a, &inv));
      break;
    case Command::kWatch:
    case Command::kStatus:
    case Command::kCancel:
      QUANTD_RETURN_IF_ERROR(ExpectPositionals(a, name, 1, 1, "JOB"));
      inv.job_id = a.positional[0];
      if (inv.job_id.empty()) return Usage(absl::StrCat(name, ": JOB must not be empty"));
      break;
    case Command::kJobs:
      QUANTD_RETURN_IF_ERROR(ExpectPositionals(a, name, 0, 0, ""));
      break;
    case Command::kModels:
      QUANTD_RETURN_IF_ERROR(ExpectPositionals(a, name, 0, 1, ""));
      if (!a.positional.empty()) inv.model_name = a.positional[0];
      break;
    case Command::kFetch:
      QUANTD_RETURN_IF_ERROR(ParseFetch(a, &inv));
      break;
    case Command::kDelete: {
      QUANTD_RETURN_IF_ERROR(ExpectPositionals(a, name, 1, 1, "NAME@VERSION"));
      QUANTD_ASSIGN_OR_RETURN(ModelRef ref, ParseModelRef(a.positional[0]));
      if (ref.version < 1) {
        return Usage("delete: name the version (NAME@VERSION): deleting never means \"latest\"");
      }
      inv.model_name = ref.name;
      inv.model_version = ref.version;
      break;
    }
    case Command::kHelp:
      break;
  }
  return inv;
}

const char* UsageText() {
  return R"(usage: quantctl [--addr HOST:PORT] [--token-file FILE]
                [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] COMMAND [ARGS]

Talks to a quantd coordinator at --addr HOST:PORT, else $QUANTD_ADDR, else 127.0.0.1:7070.
Flags may be written "--flag VALUE" or "--flag=VALUE"; "--" ends the flags.

connection flags (before or after the command):
  --token-file FILE   send the first token in FILE as "authorization: Bearer <token>";
                      else the token in $QUANTD_TOKEN. FILE must not be readable by others.
  --tls-ca FILE       dial TLS and verify the server certificate with this CA bundle
                      (else $QUANTD_TLS_CA); the certificate must name the --addr host.
  --tls-cert FILE --tls-key FILE
                      client certificate for mutual TLS (else $QUANTD_TLS_CERT/_KEY).

commands:
  submit MODEL_DIR [--calib FILE] [--eval FILE] --method {rtn,gptq,quip,quip-sharp,qtip,quarot,butterfly}
         {--bits {2,3,4,8} | --avg-bits X [--budget-weight {abs,rel}]} --name NAME
         [--request-id ID] [--seed N] [--group-size N]
         [--grid {q4_0,q4_1,q5_0,q5_1,q8_0,gptq-sym,gptq-asym}]
         [--greedy-passes N] [--mse-clip] [--act-order] [--hessian-scale] [--sequential]
         [--finetune [--ft-epochs N] [--ft-lr X] [--ft-batch N] [--ft-holdout N] [--ft-patience N]
                     [--ft-e2e {on,off}] [--ft-e2e-epochs N] [--ft-e2e-lr X] [--ft-e2e-head]] [--damp X]
         [--codebook-scale X] [--no-baseline-guard] [--trellis-code {1mad,3inst,hyb}]
         [--trellis-l L] [--seq-len N] [--calib-seqs N] [--calib-sampling {first,random}]
         [--calib-seed N] [--start-token {auto,none}] [--token-weighting {sink,none,sink+massive}]
         [--sink-weight W] [--massive-ratio R] [--eval-context N]
         [--wait [--progress-interval S]] [--json] [--max-ppl-ratio R]
      Submits a quantization job and prints its id (or, with --json, the job). Paths are made
      absolute. Without --request-id a random one is used (the same id returns the same job).
      --calib is required except for rtn, which without it skips the Hessian capture (its
      proxy losses are then relative weight errors). The server validates method, bits and name. --wait then watches the job like `watch`
      and exits by its outcome; --max-ppl-ratio R (needs --wait and --eval) exits 3 if
      quant_ppl / fp_ppl > R. --grid (rtn, gptq) quantizes onto a grid an engine format holds
      exactly, fp16 scales included (q4_0 ... q8_0: GGUF blocks of 32; bits and group size
      default to the grid's); docs/formats/exports.md. --avg-bits X (2 <= X <= 4, instead of
      --bits) is a bit budget: every matrix is quantized at 2, 3 and 4 bits and each keeps the
      width that minimizes the summed loss (--budget-weight rel: relative proxy loss, the
      default; abs: output-error energy) at an average of at most X code bits per weight.
      --seq-len N (alias --calib-seq-len) tokens per calibration sequence (default 512);
      --calib-seqs N (alias --max-calib-seqs) how many (default all). --calib-sampling random
      (the default when --calib-seqs is given) draws them at random starts with --calib-seed
      (default 0); first takes consecutive windows. --start-token auto (default) puts the
      model's start token (where its tokenizer.json adds one, e.g. Llama's BOS) at the head of
      every calibration sequence and evaluation window; none does not. --token-weighting sink
      (the default for every method but rtn) weights each sequence's first token --sink-weight
      times (default 16) in the Hessians; none weights all tokens alike; sink+massive also
      gives that weight, layer by layer, to each token whose largest activation entering the
      layer is at least --massive-ratio times its sequence's median (default 100).
  watch JOB [--json] [--progress-interval S]
      Shows progress until the job ends, then its state, version and perplexities.
      Re-attaches if the connection breaks (up to 120 s). On a terminal: one line redrawn
      in place (phase, layer, tasks done/total, workers busy, elapsed, ETA); otherwise a
      line per phase change and one every S seconds (default 30).
  jobs [--json]          Lists every job.
  status JOB [--json]    Shows one job.
  cancel JOB [--json]    Cancels a job.
  models [NAME] [--json] Lists published model versions (name, version, method, bits, ppl).
  delete NAME@VERSION [--json]
                         Deletes one published version (its files; the number is never reused).
  fetch NAME[@VERSION] -o DIR [--format native|hf|gguf|gptq|compressed-tensors] [--dtype f16|bf16|f32]
      Downloads a model version (default: latest) into DIR, resuming broken transfers and
      verifying each file's size and sha256; writes DIR/manifest.json last.
      --format hf downloads the native files into DIR/.quantd-native (resumable, verified),
      then writes a Hugging Face checkpoint into DIR: model.safetensors with every quantized
      matrix dequantized (--dtype, default f16), config.json and the tokenizer files;
      the manifest is kept as quantd_manifest.json.
      --format gguf writes DIR/model.gguf for llama.cpp from the version's own integer codes
      (rtn/gptq with groups of 32; `models` lists each version's export formats); a version
      that does not fit is refused (FAILED_PRECONDITION) before anything is downloaded.
      --format gptq writes a GPTQ checkpoint directory (transformers + gptqmodel, vLLM, TGI;
      rtn/gptq at 2/3/4/8 bits); --format compressed-tensors a pack-quantized one (vLLM;
      4/8 bits). Both are refused the same way when the version does not fit.
  help, --help, -h       This text.

--json: stdout holds exactly one JSON document: a Job (submit, watch, status, cancel) or an
array of Jobs (jobs) / ModelVersions (models), with proto field names (snake_case), every field
present, enums by name (e.g. "JOB_STATE_SUCCEEDED") and 64-bit integers as strings.
Progress and messages go to stderr.

exit codes:
  0  success
  1  job failed or cancelled, or the server refused the request (NOT_FOUND,
     INVALID_ARGUMENT, DATA_LOSS, ...; UNAUTHENTICATED = no token sent,
     PERMISSION_DENIED = token rejected, a scope or tenant the token lacks (the message
     names it), or an input outside quantd's --input_root); printed to stderr as
     "quantctl: CODE: message"
  2  usage error
  3  quality gate failed (--max-ppl-ratio)
  4  server unavailable (UNAVAILABLE or DEADLINE_EXCEEDED; connect timeout 5 s), including
     a failed TLS handshake (plaintext vs TLS, unknown CA, missing client certificate)
)";
}

}  // namespace quantd::client
