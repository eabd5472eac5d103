// quantd: the coordinator daemon. Parses flags and runs quantd::server::RunServer.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "gRPC address for clients and workers");
ABSL_FLAG(std::string, worker_listen, "",
          "optional second gRPC address for remote workers (e.g. 0.0.0.0:7071)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics address; empty disables");
ABSL_FLAG(std::string, data_dir, "./var", "job store and registry directory");
ABSL_FLAG(int, local_workers, -1,
          "worker processes to spawn and supervise; -1 = one per GPU, else one CPU worker");
ABSL_FLAG(std::string, worker_binary, "", "quantd-worker path; default: next to quantd");
ABSL_FLAG(std::string, device, "auto", "device for local workers: auto | cpu | cuda:N");
ABSL_FLAG(int, lease_timeout_s, 20, "seconds without heartbeat before a task is re-queued");
ABSL_FLAG(std::string, port_file, "", "write the bound client port here (for tests)");
ABSL_FLAG(std::string, auth_token_file, "",
          "require 'authorization: Bearer <token>' on every RPC (grpc.health.v1 exempt); the file "
          "holds one token per line, optionally followed by a name; must not be world-readable");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve TLS on the gRPC ports");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require client certificates signed by it (mutual TLS)");
ABSL_FLAG(std::string, input_root, "",
          "directory job inputs (model directories, calibration and evaluation files) must "
          "resolve into, symlinks followed; repeat the flag for several. Without one, "
          "submissions are refused unless --allow_any_input_path");
ABSL_FLAG(bool, allow_any_input_path, false,
          "let jobs read any path quantd can read (no --input_root confinement)");
ABSL_FLAG(bool, metrics_require_token, false,
          "/metrics needs HTTP Basic auth whose password is a token of --auth_token_file with "
          "the metrics scope");

namespace {

// Every value of a repeatable string flag, in order ("--name=V", "--name V", one dash too):
// absl keeps only the last occurrence.
std::vector<std::string> RepeatedFlag(int argc, char** argv, const std::string& name) {
  std::vector<std::string> out;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") break;
    for (const std::string& dash : {"--", "-"}) {
      const std::string flag = dash + name;
      if (a.rfind(flag + "=", 0) == 0) {
        out.push_back(a.substr(flag.size() + 1));
      } else if (a == flag && i + 1 < argc) {
        out.push_back(argv[++i]);
      }
    }
  }
  return out;
}

}  // namespace

ABSL_FLAG(int, max_hessian_shards, 8,
          "Hessian tasks per stage at most (each returns its stage's layers' fp64 sums: fewer "
          "shards move fewer bytes and need less coordinator disk; docs/ARCHITECTURE.md)");
ABSL_FLAG(int64_t, hessian_stage_mb, 32768,
          "Coordinator disk (MiB) for one Hessian stage, its shards plus merged Hessians: a "
          "model whose Hessians need more is captured in blocks of layers, each block's "
          "Hessians deleted once its matrices are quantized (docs/ARCHITECTURE.md)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("quantd: quantization-as-a-service coordinator");
  std::vector<std::string> input_roots = RepeatedFlag(argc, argv, "input_root");
  absl::ParseCommandLine(argc, argv);
  quantd::server::ServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.worker_listen = absl::GetFlag(FLAGS_worker_listen);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.coordinator.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.coordinator.lease_timeout = absl::Seconds(absl::GetFlag(FLAGS_lease_timeout_s));
  if (absl::GetFlag(FLAGS_max_hessian_shards) < 1) {
    std::fprintf(stderr, "quantd: --max_hessian_shards must be at least 1, got %d\n",
                 absl::GetFlag(FLAGS_max_hessian_shards));
    return 2;
  }
  o.coordinator.max_hessian_shards = absl::GetFlag(FLAGS_max_hessian_shards);
  if (absl::GetFlag(FLAGS_hessian_stage_mb) < 1) {
    std::fprintf(stderr, "quantd: --hessian_stage_mb must be at least 1, got %lld\n",
                 static_cast<long long>(absl::GetFlag(FLAGS_hessian_stage_mb)));
    return 2;
  }
  o.coordinator.hessian_stage_bytes =
      static_cast<uint64_t>(absl::GetFlag(FLAGS_hessian_stage_mb)) << 20;
  o.local_workers = absl::GetFlag(FLAGS_local_workers);
  o.worker_binary = absl::GetFlag(FLAGS_worker_binary);
  o.device = absl::GetFlag(FLAGS_device);
  o.port_file = absl::GetFlag(FLAGS_port_file);
  o.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  o.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (input_roots.empty() && !absl::GetFlag(FLAGS_input_root).empty()) {
    input_roots.push_back(absl::GetFlag(FLAGS_input_root));  // e.g. from a --flagfile
  }
  o.coordinator.input_roots = input_roots;
  o.coordinator.allow_any_input_path = absl::GetFlag(FLAGS_allow_any_input_path);
  o.metrics_require_token = absl::GetFlag(FLAGS_metrics_require_token);
  absl::Status s = quantd::server::RunServer(o);
  if (!s.ok()) {
    std::fprintf(stderr, "quantd: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
