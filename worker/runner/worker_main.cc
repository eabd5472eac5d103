// quantd-worker: a worker process. Parses flags and runs quantd::runner::Worker.
#include <signal.h>

#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "worker/runner/worker.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:7070", "coordinator gRPC address");
ABSL_FLAG(std::string, name, "", "worker name (default hostname-pid)");
ABSL_FLAG(std::string, cache_dir, "/tmp/quantd-worker", "local cache for task inputs");
ABSL_FLAG(std::string, device, "auto", "auto | cpu | cuda:N");
ABSL_FLAG(int, threads, 0, "CPU threads (0 = all cores)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("quantd-worker: runs quantization tasks for a quantd coordinator");
  absl::ParseCommandLine(argc, argv);
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device != "auto" && device != "cpu") {
    std::fprintf(stderr, "quantd-worker: device %s is not available in this build (CPU only)\n",
                 device.c_str());
    return 2;
  }
  quantd::runner::WorkerOptions o;
  o.coordinator = absl::GetFlag(FLAGS_coordinator);
  o.name = absl::GetFlag(FLAGS_name);
  o.cache_dir = absl::GetFlag(FLAGS_cache_dir);
  o.device = device;
  o.threads = absl::GetFlag(FLAGS_threads);
  quantd::runner::Worker worker(o);
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::thread watcher([&] {
    int sig;
    sigwait(&sigs, &sig);
    worker.Stop();
  });
  watcher.detach();
  absl::Status s = worker.Run();
  if (!s.ok()) {
    std::fprintf(stderr, "quantd-worker: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
