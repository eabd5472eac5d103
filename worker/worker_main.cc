// quantd-worker: a worker process. Parses flags and runs quantd::runner::Worker.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "auth/token_file.h"
#include "engine/device/device_registry.h"
#include "worker/worker.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:7070", "coordinator gRPC address");
ABSL_FLAG(std::string, name, "", "worker name (default hostname-pid)");
ABSL_FLAG(std::string, cache_dir, "/tmp/quantd-worker", "local cache for task inputs");
ABSL_FLAG(std::string, device, "auto", "auto | cpu | cuda:N");
ABSL_FLAG(int, threads, 0, "CPU threads (0 = all cores)");
ABSL_FLAG(int64_t, memory_mb, 0,
          "memory this worker offers for one task, in MiB (0 = at registration MemAvailable, or "
          "the GPU's free memory on a GPU device); "
          "the coordinator never gives it a task whose estimate is larger");
ABSL_FLAG(std::string, auth_token_file, "",
          "send the first token of this file as 'authorization: Bearer' (not world-readable)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle that verifies the coordinator: dial TLS");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate chain for mutual TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");

int main(int argc, char** argv) {
  // OpenMP threads that spin between parallel regions starve each other (and everyone else)
  // on a shared or oversubscribed machine: the batched forward measured 3.4-8.8x slower with
  // libgomp's default than with OMP_WAIT_POLICY=passive under load (docs/benchmarks.md).
  // libgomp reads the variable when it is loaded, before main, so a worker started without
  // it sets it and runs itself again; an explicit setting is kept.
  // The binary is run again by its real path, not /proc/self/exe, so the process keeps its name
  // ("quantd-worker" in ps, top and /proc/<pid>/stat; "exe" otherwise).
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
      self[n] = '\0';
      ::setenv("OMP_WAIT_POLICY", "passive", 1);
      ::execv(self, argv);  // returns only on failure: then run with the default
    }
  }
  absl::SetProgramUsageMessage("quantd-worker: runs quantization tasks for a quantd coordinator");
  absl::ParseCommandLine(argc, argv);
  const std::string device = absl::GetFlag(FLAGS_device);
  // auto: cuda:0 when built with CUDA and a GPU is present, else the CPU. A device that cannot be
  // used (bad spec, no CUDA support, no such GPU) is a startup error.
  absl::StatusOr<std::unique_ptr<quantd::quant::Device>> dev =
      quantd::device::MakeDevice(device, absl::GetFlag(FLAGS_threads));
  if (!dev.ok()) {
    std::fprintf(stderr, "quantd-worker: --device %s: %s\n", device.c_str(),
                 dev.status().ToString().c_str());
    return 2;
  }
  quantd::runner::WorkerOptions o;
  o.coordinator = absl::GetFlag(FLAGS_coordinator);
  o.name = absl::GetFlag(FLAGS_name);
  o.cache_dir = absl::GetFlag(FLAGS_cache_dir);
  o.device = device;
  o.threads = absl::GetFlag(FLAGS_threads);
  if (absl::GetFlag(FLAGS_memory_mb) < 0) {
    std::fprintf(stderr, "quantd-worker: --memory_mb must be >= 0\n");
    return 2;
  }
  o.memory_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_memory_mb)) << 20;
  o.security.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  o.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.security.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  if (const std::string path = absl::GetFlag(FLAGS_auth_token_file); !path.empty()) {
    absl::StatusOr<std::string> token = quantd::auth::ReadClientToken(path);
    if (!token.ok()) {
      std::fprintf(stderr, "quantd-worker: %s\n", token.status().ToString().c_str());
      return 1;
    }
    o.security.token = *token;
  }
  if (std::string w = quantd::auth::PlaintextTokenWarning(o.coordinator, o.security); !w.empty()) {
    std::fprintf(stderr, "quantd-worker: %s\n", w.c_str());
  }
  quantd::runner::Worker worker(o, *std::move(dev));
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
