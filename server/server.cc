#include "server/server.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server_builder.h"
#include "server/services.h"
#include "server/worker_pool.h"

namespace quantd::server {
namespace {

std::string SelfDir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "." : p.parent_path().string();
}

int CountGpus() {
  int n = 0;
  while (std::filesystem::exists(absl::StrCat("/dev/nvidia", n))) ++n;
  return n;
}

}  // namespace

absl::Status RunServer(const ServerOptions& options) {
  // Block termination signals in every thread; the main thread waits for them below.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  QUANTD_RETURN_IF_ERROR(MakeDirs(options.coordinator.data_dir));
  Metrics metrics;
  if (!options.metrics_listen.empty()) QUANTD_RETURN_IF_ERROR(metrics.Serve(options.metrics_listen));
  QUANTD_ASSIGN_OR_RETURN(auto coordinator, Coordinator::Create(options.coordinator, &metrics));

  QuantServiceImpl quant(coordinator.get());
  RegistryServiceImpl registry(coordinator.get());
  WorkerServiceImpl workers(coordinator.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  int worker_port = 0;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &port);
  if (!options.worker_listen.empty()) {
    builder.AddListeningPort(options.worker_listen, grpc::InsecureServerCredentials(), &worker_port);
  }
  builder.RegisterService(&quant);
  builder.RegisterService(&registry);
  builder.RegisterService(&workers);
  builder.SetMaxReceiveMessageSize(4 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  std::string host = options.listen.substr(0, options.listen.rfind(':'));
  if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
  const std::string self_addr = absl::StrCat(host, ":", port);
  std::fprintf(stderr, "quantd: serving gRPC on %s, metrics on %s, data in %s\n",
               self_addr.c_str(), options.metrics_listen.empty() ? "(off)" : options.metrics_listen.c_str(),
               options.coordinator.data_dir.c_str());
  if (!options.port_file.empty()) {
    QUANTD_RETURN_IF_ERROR(WriteFileAtomic(options.port_file, std::to_string(port)));
  }

  int n = options.local_workers;
  if (n < 0) n = std::max(1, CountGpus());
  std::unique_ptr<WorkerPool> pool;
  if (n > 0) {
    WorkerPoolOptions wo;
    wo.worker_binary = options.worker_binary.empty() ? JoinPath(SelfDir(), "quantd-worker")
                                                     : options.worker_binary;
    wo.coordinator = self_addr;
    wo.cache_root = JoinPath(options.coordinator.data_dir, "worker-cache");
    wo.device = options.device;
    wo.count = n;
    pool = std::make_unique<WorkerPool>(wo);
    absl::Status s = pool->Start();
    if (!s.ok()) {
      server->Shutdown();
      return s;
    }
    std::fprintf(stderr, "quantd: started %d local worker(s)\n", n);
  }

  int sig = 0;
  sigwait(&sigs, &sig);
  std::fprintf(stderr, "quantd: signal %d, shutting down\n", sig);
  if (pool) pool->Stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  coordinator.reset();
  return absl::OkStatus();
}

}  // namespace quantd::server
