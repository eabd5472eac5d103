#include "worker/worker.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "grpcpp/create_channel.h"
#include "common/grpc_status.h"
#include "engine/device/device_registry.h"
#include "engine/spec/job_files.h"
#include "worker/executor.h"

namespace quantd::runner {
namespace {

// The worker RPCs' version; must equal the coordinator's (server/coordinator.h kWorkerApiVersion).
constexpr int kApiVersion = 3;
constexpr size_t kChunkBytes = 2 << 20;

std::string DefaultName() {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, "-", ::getpid());
}

void Log(const std::string& name, const std::string& msg) {
  std::fprintf(stderr, "quantd-worker[%s]: %s\n", name.c_str(), msg.c_str());
}

// A refused token will not become valid by retrying.
bool IsAuthError(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
         s.error_code() == grpc::StatusCode::PERMISSION_DENIED;
}

// Fault injection for tests (docs/reliability.md): QUANTD_FAULT_TASK_DELAY_MS=N makes the worker
// hold each leased task N ms longer before running it (heartbeats go on), so that a test can catch
// a worker while it holds a lease. Read once; 0 when unset; a malformed value is ignored with a
// warning.
absl::Duration InjectedTaskDelay() {
  static const absl::Duration delay = [] {
    const char* env = std::getenv("QUANTD_FAULT_TASK_DELAY_MS");
    if (env == nullptr || *env == '\0') return absl::ZeroDuration();
    char* end = nullptr;
    const long ms = std::strtol(env, &end, 10);
    if (*end != '\0' || ms < 0 || ms > 600000) {
      std::fprintf(stderr, "QUANTD_FAULT_TASK_DELAY_MS=%s ignored: expected 0-600000\n", env);
      return absl::ZeroDuration();
    }
    return absl::Milliseconds(ms);
  }();
  return delay;
}

}  // namespace

Worker::Worker(WorkerOptions options) : options_(std::move(options)) {
  if (options_.name.empty()) options_.name = DefaultName();
  absl::StatusOr<std::unique_ptr<quant::Device>> d =
      device::MakeDevice(options_.device, options_.threads);
  if (d.ok()) {
    device_ = std::move(*d);
  } else {
    device_status_ = d.status();
  }
}

Worker::Worker(WorkerOptions options, std::unique_ptr<quant::Device> device)
    : options_(std::move(options)), device_(std::move(device)) {
  if (options_.name.empty()) options_.name = DefaultName();
}

// MemAvailable from /proc/meminfo in bytes; 0 (no admission) when it cannot be read.
static uint64_t AvailableMemoryBytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (f >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib << 10;
  }
  return 0;
}

absl::Status Worker::RegisterLoop() {
  absl::Duration backoff = absl::Milliseconds(100);
  grpc::StatusCode last_logged = grpc::StatusCode::OK;
  while (!stop_.load()) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    quantd::v1::RegisterRequest req;
    req.set_api_version(kApiVersion);
    req.set_worker_name(options_.name);
    req.set_device(device_->name());
    req.set_threads(options_.threads);
    uint64_t memory = options_.memory_bytes;
    if (memory == 0) {
      // A GPU worker offers the GPU's free memory: that is where a task's matrices live.
      const int64_t gpu_free = device_->host_memory() ? 0 : device_->GetMemoryInfo().available_bytes;
      memory = device_->host_memory() ? AvailableMemoryBytes()
                                      : static_cast<uint64_t>(std::max<int64_t>(0, gpu_free));
    }
    req.set_memory_bytes(memory);
    quantd::v1::RegisterResponse resp;
    grpc::Status s = stub_->Register(&ctx, req, &resp);
    if (s.ok()) {
      MutexLock l(&mu_);
      worker_id_ = resp.worker_id();
      heartbeat_ms_ = resp.heartbeat_interval_ms() > 0 ? resp.heartbeat_interval_ms() : 2000;
      Log(options_.name, absl::StrCat("registered as ", worker_id_, " on ", device_->name()));
      return absl::OkStatus();
    }
    if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
        s.error_code() == grpc::StatusCode::INVALID_ARGUMENT || IsAuthError(s)) {
      return FromGrpc(s);
    }
    if (s.error_code() != last_logged) {  // e.g. a TLS handshake that keeps failing
      last_logged = s.error_code();
      Log(options_.name, absl::StrCat("cannot register with ", options_.coordinator, " (",
                                      FromGrpc(s).ToString(), "); retrying"));
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
  return absl::CancelledError("stopped");
}

void Worker::HeartbeatLoop() {
  while (!stop_.load()) {
    int interval_ms;
    {
      MutexLock l(&mu_);
      interval_ms = heartbeat_ms_;
    }
    absl::SleepFor(absl::Milliseconds(interval_ms));
    quantd::v1::HeartbeatRequest req;
    {
      MutexLock l(&mu_);
      if (worker_id_.empty()) continue;
      req.set_worker_id(worker_id_);
      if (!current_lease_.empty()) req.add_lease_ids(current_lease_);
      if (!current_lease_.empty() && progress_) *req.mutable_finetune_e2e() = *progress_;
    }
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(JobsCacheDir(), ec)) {
      if (e.is_directory(ec)) req.add_cached_job_ids(e.path().filename().string());
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    quantd::v1::HeartbeatResponse resp;
    grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      MutexLock l(&mu_);
      worker_id_.clear();  // the main loop re-registers
      continue;
    }
    if (s.ok() && resp.cancelled_lease_ids_size() > 0) {
      MutexLock l(&mu_);
      for (const auto& id : resp.cancelled_lease_ids()) {
        if (id == current_lease_) cancelled_.store(true);
      }
    }
    if (s.ok() && resp.finished_job_ids_size() > 0) EvictFinished(resp);
  }
}

void Worker::EvictFinished(const quantd::v1::HeartbeatResponse& resp) {
  for (const std::string& id : resp.finished_job_ids()) {
    // Only names this worker can have listed: one path component, not "." or "..".
    if (id.empty() || id.front() == '.' || id.find('/') != std::string::npos) continue;
    {
      // A finished job's tasks are never leased again, so only the running task (abandoned
      // when its job was cancelled) can still read this directory.
      MutexLock l(&mu_);
      if (id == current_job_) continue;
    }
    const std::string dir = JoinPath(JobsCacheDir(), id);
    uint64_t bytes = 0;
    std::error_code ec;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir, ec)) {
      if (e.is_regular_file(ec)) bytes += e.file_size(ec);
    }
    absl::Status s = RemoveAll(dir);
    Log(options_.name, s.ok() ? absl::StrCat("job ", id, " ended: removed its cached blobs (",
                                             bytes >> 20, " MiB)")
                              : absl::StrCat("removing the cache of job ", id, ": ",
                                             s.ToString()));
  }
}

absl::StatusOr<std::string> Worker::FetchBlob(const std::string& job_id, const std::string& name) {
  if (name.find("..") != std::string::npos || name.empty() || name.front() == '/') {
    return absl::InvalidArgumentError(absl::StrCat("bad blob name ", name));
  }
  if (job_id.empty() || job_id.find('/') != std::string::npos || job_id.front() == '.') {
    return absl::InvalidArgumentError(absl::StrCat("bad job id ", job_id));
  }
  const std::string path = JoinPath(JoinPath(JobsCacheDir(), job_id), name);
  if (std::filesystem::exists(path)) return path;  // blobs are immutable once complete
  QUANTD_RETURN_IF_ERROR(MakeDirs(std::filesystem::path(path).parent_path().string()));
  const std::string part = path + ".part";
  for (int attempt = 0; attempt < 5; ++attempt) {
    uint64_t offset = 0;
    if (auto sz = FileSize(part); sz.ok()) offset = *sz;
    std::ofstream out(part, std::ios::binary | std::ios::app);
    grpc::ClientContext ctx;
    quantd::v1::FetchBlobRequest req;
    req.set_job_id(job_id);
    req.set_name(name);
    req.set_offset(offset);
    auto reader = stub_->FetchBlob(&ctx, req);
    quantd::v1::Chunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != offset) {
        return absl::DataLossError(absl::StrCat("blob ", name, ": chunk at ", chunk.offset(),
                                                ", expected ", offset));
      }
      out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
      offset += chunk.data().size();
    }
    out.close();
    grpc::Status s = reader->Finish();
    if (s.ok()) {
      if (std::rename(part.c_str(), path.c_str()) != 0) {
        return absl::InternalError(absl::StrCat("rename ", part));
      }
      return path;
    }
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      RemoveAll(part).IgnoreError();
      return FromGrpc(s);
    }
    absl::SleepFor(absl::Milliseconds(200 * (attempt + 1)));
  }
  return absl::UnavailableError(absl::StrCat("could not fetch blob ", name));
}

void Worker::EvictUnusedHessians(const quantd::v1::Task& task) {
  std::set<std::string> keep;
  for (const auto& in : task.inputs()) keep.insert(in.name());
  const std::string dir = JoinPath(JoinPath(JobsCacheDir(), task.job_id()), jobfiles::kHessiansDir);
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (absl::EndsWith(name, ".part")) name.resize(name.size() - 5);
    if (keep.count(std::string(jobfiles::kHessiansPrefix) + name) == 0) {
      RemoveAll(e.path().string()).IgnoreError();
    }
  }
}

absl::Status Worker::RunTask(const quantd::v1::Task& task) {
  cancelled_.store(false);
  {
    MutexLock l(&mu_);
    current_lease_ = task.lease_id();
    current_job_ = task.job_id();
  }
  // The lease stays named in heartbeats until the report is sent: checksumming and sending a
  // large result (a Hessian shard of several GB) can take longer than the lease timeout, and a
  // lease that expires meanwhile makes the coordinator drop the result and run the task again.
  struct ReleaseLease {
    Worker* w;
    ~ReleaseLease() {
      MutexLock l(&w->mu_);
      w->current_lease_.clear();
      w->current_job_.clear();
      w->progress_.reset();
    }
  } release_lease{this};
  if (InjectedTaskDelay() > absl::ZeroDuration()) absl::SleepFor(InjectedTaskDelay());
  EvictUnusedHessians(task);
  BlobResolver resolver = [&](const std::string& name) { return FetchBlob(task.job_id(), name); };
  absl::StatusOr<TaskResult> r =
      ExecuteTask(task, resolver, *device_, cancelled_, ScratchDir(),
                  [this](const quantd::v1::FinetuneE2eStatus& p) {
                    MutexLock l(&mu_);
                    progress_ = p;
                  });
  // A result file's directory goes when this function returns, sent or not.
  struct RemoveDir {
    std::string dir;
    ~RemoveDir() {
      if (!dir.empty()) RemoveAll(dir).IgnoreError();
    }
  } result_dir{r.ok() && !r->data_path.empty()
                   ? std::filesystem::path(r->data_path).parent_path().string()
                   : std::string()};
  if (cancelled_.load()) {
    Log(options_.name, absl::StrCat("task ", task.task_id(), " of ", task.job_id(), " cancelled"));
    return absl::OkStatus();
  }
  quantd::v1::TaskReportHeader h;
  if (r.ok()) h = r->header;
  {
    MutexLock l(&mu_);
    h.set_worker_id(worker_id_);
  }
  h.set_lease_id(task.lease_id());
  h.set_job_id(task.job_id());
  h.set_task_id(task.task_id());
  h.set_ok(r.ok());
  if (!r.ok()) {
    h.set_error_code(static_cast<int>(r.status().code()));
    h.set_error(std::string(r.status().message()));
    Log(options_.name, absl::StrCat("task ", task.task_id(), " failed: ", r.status().ToString()));
  } else if (!r->data_path.empty()) {
    absl::StatusOr<uint64_t> size = FileSize(r->data_path);
    absl::StatusOr<std::string> digest = Sha256File(r->data_path);
    if (!size.ok() || !digest.ok()) {
      const absl::Status& bad = !size.ok() ? size.status() : digest.status();
      h.set_ok(false);
      h.set_error_code(static_cast<int>(absl::StatusCode::kUnavailable));
      h.set_error(absl::StrCat("result file: ", bad.message()));
    } else {
      h.set_result_size(*size);
      h.set_result_sha256(*digest);
    }
  } else {
    h.set_result_size(r->data.size());
    h.set_result_sha256(Sha256Hex(r->data));
  }
  grpc::ClientContext ctx;
  quantd::v1::TaskReportResponse resp;
  auto writer = stub_->ReportTask(&ctx, &resp);
  quantd::v1::TaskReport msg;
  *msg.mutable_header() = h;
  bool ok = writer->Write(msg);
  if (r.ok() && h.ok() && !r->data_path.empty()) {
    // Streamed from the file: a Hessian shard can be far larger than memory allows to copy.
    std::ifstream in(r->data_path, std::ios::binary);
    std::string buf(kChunkBytes, '\0');
    while (ok && in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const std::streamsize n = in.gcount();
      if (n <= 0) break;
      quantd::v1::TaskReport chunk;
      chunk.set_data(buf.data(), static_cast<size_t>(n));
      ok = writer->Write(chunk);
    }
  } else if (r.ok()) {
    for (size_t off = 0; ok && off < r->data.size(); off += kChunkBytes) {
      quantd::v1::TaskReport chunk;
      chunk.set_data(r->data.substr(off, kChunkBytes));
      ok = writer->Write(chunk);
    }
  }

  writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (!s.ok()) {
    Log(options_.name, absl::StrCat("report of task ", task.task_id(), " refused: ", s.error_message()));
  }
  return absl::OkStatus();
}

absl::Status Worker::Run() {
  if (device_ == nullptr) return device_status_;
  QUANTD_RETURN_IF_ERROR(MakeDirs(options_.cache_dir));
  QUANTD_RETURN_IF_ERROR(MakeDirs(ScratchDir()));
  if (int n = RemoveStaleShards(ScratchDir()); n > 0) {
    Log(options_.name, absl::StrCat("removed ", n, " Hessian shard(s) left by a killed worker"));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  QUANTD_ASSIGN_OR_RETURN(
      std::shared_ptr<grpc::Channel> channel,
      auth::MakeChannel(options_.coordinator, options_.security, args, "--tls_"));
  stub_ = quantd::v1::WorkerService::NewStub(channel);
  std::thread hb([this] { HeartbeatLoop(); });
  absl::Status result = absl::OkStatus();
  while (!stop_.load()) {
    std::string id;
    {
      MutexLock l(&mu_);
      id = worker_id_;
    }
    if (id.empty()) {
      absl::Status s = RegisterLoop();
      if (!s.ok()) {
        if (!stop_.load()) result = s;
        break;
      }
      continue;
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    quantd::v1::LeaseTaskRequest req;
    req.set_worker_id(id);
    quantd::v1::LeaseTaskResponse resp;
    grpc::Status s = stub_->LeaseTask(&ctx, req, &resp);
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      MutexLock l(&mu_);
      worker_id_.clear();
      continue;
    }
    if (IsAuthError(s)) {  // e.g. the coordinator restarted with other tokens
      result = FromGrpc(s);
      break;
    }
    if (!s.ok() || !resp.found()) {
      absl::SleepFor(absl::Milliseconds(s.ok() ? 100 : 500));
      continue;
    }
    RunTask(resp.task()).IgnoreError();
  }
  stop_.store(true);
  hb.join();
  return result;
}

}  // namespace quantd::runner
