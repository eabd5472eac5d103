#include "client/commands.h"

#include <cstdlib>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "engine/artifact/export_formats.h"
#include "client/export_command.h"
#include "client/client.h"
#include "client/command_line.h"
#include "client/connection_security.h"
#include "client/output.h"
#include "client/progress.h"
#include "common/file_util.h"
#include "engine/artifact/artifact.h"

namespace quantd::client {
namespace {

namespace v1 = quantd::v1;

int Fail(const Streams& io, const absl::Status& st) {
  io.err << "quantctl: " << absl::StatusCodeToString(st.code()) << ": " << st.message() << "\n";
  return ExitCodeFor(st);
}

std::string JsonOf(const google::protobuf::Message& m) { return ToJson(m); }
template <typename M>
std::string JsonOf(const std::vector<M>& ms) {
  return ToJsonArray(ms);
}

// Prints a call's result as JSON (--json) or as `text` renders it; fails with its status.
template <typename T, typename Text>
int Print(const Invocation& inv, const Streams& io, const absl::StatusOr<T>& r, Text text) {
  if (!r.ok()) return Fail(io, r.status());
  io.out << (inv.json ? JsonOf(*r) + "\n" : text(*r));
  return kExitOk;
}

// 128 random bits as hex: unique enough that two submits never share an idempotency key.
std::string RandomRequestId() {
  std::random_device rd;
  std::string id = "quantctl-";
  for (int i = 0; i < 4; ++i) absl::StrAppend(&id, absl::Hex(rd(), absl::kZeroPad8));
  return id;
}

// Watches `id` to the end, printing progress to the human stream (stderr with --json): on a
// terminal one line redrawn every second, else phase lines and heartbeats (progress.h).
// Returns the exit code by outcome and quality gate.
int WatchToEnd(QuantdClient& client, const Invocation& inv, const std::string& id,
               const Streams& io) {
  std::ostream& human = inv.json ? io.err : io.out;
  ProgressStyle style;
  style.tty = inv.json ? io.err_is_tty : io.out_is_tty;
  style.heartbeat = absl::Seconds(inv.progress_interval_s);
  if (io.columns > 0) style.columns = io.columns;
  absl::Mutex mu;  // guards the renderer, `human` and `done` between the watch and the ticker
  ProgressRenderer progress(style, absl::Now());
  bool done = false;
  auto write = [&human](const std::string& text) {
    if (text.empty()) return;
    human << text;
    human.flush();
  };
  std::thread ticker([&] {
    absl::MutexLock l(&mu);
    while (!mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(1))) {
      write(progress.OnTick(absl::Now()));
    }
  });
  absl::StatusOr<v1::Job> job = client.Watch(
      id,
      [&](const v1::JobEvent& e) {
        absl::MutexLock l(&mu);
        write(progress.OnJob(e.job(), e.message(), absl::Now()));
      },
      [&](const absl::Status& st) {
        absl::MutexLock l(&mu);
        write(progress.Note(absl::StrCat("connection lost (", st.message(), "); re-attaching"),
                            absl::Now()));
      });
  {
    absl::MutexLock l(&mu);
    done = true;
    write(progress.Finish(absl::Now()));
  }
  ticker.join();
  if (!job.ok()) return Fail(io, job.status());
  if (inv.json) io.out << ToJson(*job) << "\n";
  if (job->state() != v1::JOB_STATE_SUCCEEDED) {
    io.err << "quantctl: " << FinalJobLine(*job) << "\n";
    return kExitFailed;
  }
  human << FinalJobLine(*job) << "\n";
  if (inv.max_ppl_ratio) {
    const double fp = job->fp_ppl(), q = job->quant_ppl();
    if (!(fp > 0) || !(q > 0)) {
      io.err << "quantctl: quality gate: the job has no perplexity (fp " << fp << ", quantized "
             << q << ")\n";
      return kExitQualityGate;
    }
    const double ratio = q / fp;
    const std::string line =
        absl::StrFormat("quantized perplexity %.4f / fp perplexity %.4f = %.4f", q, fp, ratio);
    if (ratio > *inv.max_ppl_ratio) {
      io.err << "quantctl: quality gate failed: " << line << " > "
             << absl::StrFormat("%g", *inv.max_ppl_ratio) << "\n";
      return kExitQualityGate;
    }
    human << "quality gate passed: " << line << " <= "
          << absl::StrFormat("%g", *inv.max_ppl_ratio) << "\n";
  }
  return kExitOk;
}

int Submit(QuantdClient& client, const Invocation& inv, const Streams& io) {
  v1::SubmitJobRequest req = inv.submit;
  if (req.request_id().empty()) req.set_request_id(RandomRequestId());
  absl::StatusOr<v1::SubmitJobResponse> resp = client.Submit(req);
  if (!resp.ok()) return Fail(io, resp.status());
  const v1::Job& job = resp->job();
  if (!resp->created()) {
    io.err << "quantctl: request id " << req.request_id() << " matched existing job " << job.id()
           << "\n";
  }
  if (!inv.wait) {
    io.out << (inv.json ? ToJson(job) : job.id()) << "\n";
    return kExitOk;
  }
  (inv.json ? io.err : io.out) << job.id() << "\n";
  return WatchToEnd(client, inv, job.id(), io);
}

int Fetch(QuantdClient& client, const Invocation& inv, const Streams& io) {
  FetchOptions opts;
  opts.on_file = [&io](const std::string& path, uint64_t size, uint64_t resumed_from,
                       bool already_present) {
    io.out << "  " << path << "  " << size << " bytes";
    if (already_present) {
      io.out << " (already present, verified)";
    } else if (resumed_from > 0) {
      io.out << " (resumed at byte " << resumed_from << ")";
    }
    io.out << "  sha256 ok\n";
    io.out.flush();
  };
  opts.on_retry = [&io](const std::string& path, const absl::Status& st) {
    io.err << "quantctl: " << path << ": stream broke (" << st.message() << "); resuming\n";
  };
  // --format hf and the engine formats: the verified native files go to a hidden subdirectory
  // (so a broken download resumes there), then the export is written beside it.
  const bool convert = inv.hf_format || !inv.export_format.empty();
  const std::string native_dir = convert ? JoinPath(inv.out_dir, ".quantd-native") : inv.out_dir;
  int32_t version = inv.model_version;
  if (!inv.export_format.empty()) {
    // Refused before anything is downloaded, from the manifest's settings.
    absl::StatusOr<artifact::ExportFormat> fmt = artifact::ParseExportFormat(inv.export_format);
    if (!fmt.ok()) return Fail(io, fmt.status());
    absl::StatusOr<v1::ModelVersion> head = client.GetModel(inv.model_name, inv.model_version);
    if (!head.ok()) return Fail(io, head.status());
    absl::StatusOr<artifact::ExportSpec> spec =
        artifact::ExportSpecFromManifest(head->manifest_json());
    if (!spec.ok()) return Fail(io, spec.status());
    if (absl::Status st = artifact::CheckExportable(*spec, *fmt); !st.ok()) {
      return Fail(io, absl::Status(st.code(), absl::StrCat(head->name(), "@", head->version(),
                                                           ": ", st.message())));
    }
    if (!artifact::ExportImplemented(*fmt)) {
      return Fail(io, absl::UnimplementedError(absl::StrCat(
                          "--format ", inv.export_format, " is not implemented yet")));
    }
    version = head->version();  // the version that was checked, even if a newer one appears
  }
  absl::StatusOr<v1::ModelVersion> mv = client.Fetch(inv.model_name, version, native_dir, opts);
  if (!mv.ok()) return Fail(io, mv.status());
  io.out << "fetched " << mv->name() << " version " << mv->version() << " (" << mv->files_size()
         << " files) to " << native_dir << "\n";
  if (inv.hf_format) {
    const artifact::HfDType dtype = inv.hf_dtype == "bf16"  ? artifact::HfDType::kBF16
                                    : inv.hf_dtype == "f32" ? artifact::HfDType::kF32
                                                            : artifact::HfDType::kF16;
    if (absl::Status st = artifact::ExportHfModel(native_dir, inv.out_dir, dtype); !st.ok()) {
      return Fail(io, st);
    }
    if (absl::Status st = RemoveAll(native_dir); !st.ok()) return Fail(io, st);
    io.out << "wrote Hugging Face checkpoint (" << inv.hf_dtype << ") to " << inv.out_dir << "\n";
  }
  if (!inv.export_format.empty()) {
    absl::StatusOr<artifact::ExportFormat> fmt = artifact::ParseExportFormat(inv.export_format);
    if (!fmt.ok()) return Fail(io, fmt.status());
    absl::StatusOr<std::string> line = WriteEngineExport(native_dir, inv.out_dir, *fmt);
    if (!line.ok()) return Fail(io, line.status());
    if (absl::Status st = RemoveAll(native_dir); !st.ok()) return Fail(io, st);
    io.out << *line << "\n";
  }
  return kExitOk;
}

int Run(QuantdClient& client, const Invocation& inv, const Streams& io) {
  switch (inv.command) {
    case Command::kSubmit:
      return Submit(client, inv, io);
    case Command::kWatch:
      return WatchToEnd(client, inv, inv.job_id, io);
    case Command::kJobs:
      return Print(inv, io, client.ListJobs(), JobsTable);
    case Command::kStatus:
      return Print(inv, io, client.GetJob(inv.job_id), DescribeJob);
    case Command::kCancel:
      return Print(inv, io, client.Cancel(inv.job_id), [](const v1::Job& job) {
        return absl::StrCat("job ", job.id(), ": ", StateName(job.state()), "\n");
      });
    case Command::kModels:
      return Print(inv, io, client.ListModels(inv.model_name), ModelsTable);
    case Command::kFetch:
      return Fetch(client, inv, io);
    case Command::kDelete:
      return Print(inv, io, client.DeleteModel(inv.model_name, inv.model_version),
                   [](const v1::ModelVersion& mv) {
                     return absl::StrCat("deleted ", mv.name(), "@", mv.version(), "\n");
                   });
    case Command::kHelp:
      break;
  }
  io.out << UsageText();
  return kExitOk;
}

}  // namespace

int ExitCodeFor(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) return kExitUnavailable;
  return kExitFailed;
}

int RunQuantctl(const std::vector<std::string>& args, const char* env_addr, const Streams& io) {
  absl::StatusOr<Invocation> inv = ParseCommandLine(args, env_addr);
  if (!inv.ok()) {
    io.err << "quantctl: " << inv.status().message() << "\n"
           << "Run 'quantctl --help' for usage.\n";
    return kExitUsage;
  }
  if (inv->command == Command::kHelp) {
    io.out << UsageText();
    return kExitOk;
  }
  absl::StatusOr<auth::ChannelSecurity> security = ResolveChannelSecurity(*inv, std::getenv);
  if (!security.ok()) return Fail(io, security.status());
  if (std::string w = auth::PlaintextTokenWarning(inv->addr, *security); !w.empty()) {
    io.err << "quantctl: " << w << "\n";
  }
  ClientOptions options;
  options.security = *std::move(security);
  absl::StatusOr<std::unique_ptr<QuantdClient>> client = QuantdClient::Connect(inv->addr, options);
  if (!client.ok()) return Fail(io, client.status());
  return Run(**client, *inv, io);
}

}  // namespace quantd::client
