#include "server/worker_pool.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"

namespace quantd::server {

WorkerPool::WorkerPool(WorkerPoolOptions options) : options_(std::move(options)) {}

WorkerPool::~WorkerPool() { Stop(); }

pid_t WorkerPool::Spawn(int index) {
  const std::string name = absl::StrCat("local-", index);
  const std::string cache = JoinPath(options_.cache_root, name);
  MakeDirs(cache).IgnoreError();
  int threads = options_.threads_per_worker;
  if (threads <= 0) {
    long cores = ::sysconf(_SC_NPROCESSORS_ONLN);
    threads = std::max<long>(1, cores / std::max(1, options_.count));
  }
  std::vector<std::string> args = {options_.worker_binary,
                                   "--coordinator=" + options_.coordinator,
                                   "--name=" + name,
                                   "--cache_dir=" + cache,
                                   "--device=" + options_.device,
                                   absl::StrCat("--threads=", threads)};
  if (!options_.auth_token_file.empty()) {
    args.push_back("--auth_token_file=" + options_.auth_token_file);
  }
  if (!options_.tls_ca.empty()) args.push_back("--tls_ca=" + options_.tls_ca);
  if (!options_.tls_cert.empty()) args.push_back("--tls_cert=" + options_.tls_cert);
  if (!options_.tls_key.empty()) args.push_back("--tls_key=" + options_.tls_key);
  pid_t pid = ::fork();
  if (pid == 0) {
    // A worker must not outlive its coordinator, even after a kill -9.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    std::fprintf(stderr, "quantd: cannot exec %s\n", argv[0]);
    ::_exit(127);
  }
  return pid;
}

absl::Status WorkerPool::Start() {
  if (::access(options_.worker_binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat("worker binary ", options_.worker_binary, " is not executable"));
  }
  {
    MutexLock l(&mu_);
    for (int i = 0; i < options_.count; ++i) pids_.push_back(Spawn(i));
  }
  supervisor_ = std::thread([this] { Supervise(); });
  return absl::OkStatus();
}

void WorkerPool::Supervise() {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    MutexLock l(&mu_);
    if (stopping_) return;
    if (pid > 0) {
      for (size_t i = 0; i < pids_.size(); ++i) {
        if (pids_[i] != pid) continue;
        std::fprintf(stderr, "quantd: worker local-%zu (pid %d) exited (status %d); restarting\n",
                     i, pid, status);
        mu_.Unlock();
        absl::SleepFor(absl::Seconds(1));
        mu_.Lock();
        if (stopping_) return;
        pids_[i] = Spawn(static_cast<int>(i));
      }
      continue;
    }
    mu_.Unlock();
    absl::SleepFor(absl::Milliseconds(200));
    mu_.Lock();
  }
}

void WorkerPool::Stop() {
  std::vector<pid_t> pids;
  {
    MutexLock l(&mu_);
    if (stopping_) return;
    stopping_ = true;
    pids = pids_;
  }
  if (supervisor_.joinable()) supervisor_.join();
  for (pid_t p : pids) ::kill(p, SIGTERM);
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  for (pid_t p : pids) {
    while (::waitpid(p, nullptr, WNOHANG) == 0) {
      if (absl::Now() > deadline) {
        ::kill(p, SIGKILL);
        ::waitpid(p, nullptr, 0);
        break;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
}

}  // namespace quantd::server
