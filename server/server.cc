#include "server/server.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "auth/channel.h"
#include "auth/server_credentials.h"
#include "auth/token_file.h"
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

// What a SIGHUP needs to reload the accepted tokens.
struct TokenReload {
  std::string path;         // --auth_token_file; empty: no token check, nothing to reload
  std::string local_token;  // the local workers' token, accepted across reloads
  std::shared_ptr<auth::TokenStore> store;
};

// What the local workers' token may do: be a worker, nothing else.
const auth::Identity kLocalWorkers{"quantd local workers", auth::kScopeWorker, ""};

// The tokens of the file at `path` (none when empty) plus the local workers' token. Logs how
// many lines got the default scopes.
absl::StatusOr<std::shared_ptr<const auth::TokenSet>> LoadTokens(const std::string& path,
                                                                  const std::string& local_token) {
  std::vector<auth::TokenEntry> entries;
  if (!path.empty()) {
    QUANTD_ASSIGN_OR_RETURN(entries, auth::LoadTokenFile(path));
    size_t defaulted = 0;
    for (const auth::TokenEntry& e : entries) defaulted += e.scopes_given ? 0 : 1;
    if (defaulted > 0) {
      std::fprintf(stderr,
                   "quantd: auth: %zu token(s) of %s have no scopes= and get the default %s "
                   "(not worker, not metrics)\n",
                   defaulted, path.c_str(), auth::ScopesToString(auth::kDefaultScopes).c_str());
    }
  }
  auto tokens = std::make_shared<auth::TokenSet>(entries);
  tokens->Add(local_token, kLocalWorkers);
  return tokens;
}

// SIGHUP: token rotation without a restart. A file that no longer loads (missing, world-readable,
// malformed, empty) changes nothing: the current tokens stay accepted and the log says why.
void ReloadTokens(const TokenReload& r) {
  if (r.path.empty()) {
    std::fprintf(stderr, "quantd: SIGHUP: no --auth_token_file, nothing to reload\n");
    return;
  }
  absl::StatusOr<std::shared_ptr<const auth::TokenSet>> tokens = LoadTokens(r.path, r.local_token);
  if (!tokens.ok()) {
    std::fprintf(stderr,
                 "quantd: auth: SIGHUP: reloading %s failed, the previous %zu token(s) stay "
                 "accepted: %s\n",
                 r.path.c_str(), r.store->Get()->size() - 1, tokens.status().ToString().c_str());
    return;
  }
  const size_t n = (*tokens)->size() - 1;
  r.store->Replace(*std::move(tokens));
  std::fprintf(stderr, "quantd: auth: SIGHUP: now accepting the %zu token(s) of %s\n", n,
               r.path.c_str());
}

// Credentials for the gRPC ports, and what local workers need to pass them: a token made for
// them at startup (in a 0600 file under the data dir, added to the accepted tokens) and, with
// TLS, the CA that signed the server certificate (--tls_client_ca if given, else --tls_cert,
// which then must hold the chain up to its root) plus, with mutual TLS, the server's own
// certificate as their client certificate. Fills `reload` for SIGHUP.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ConfigureSecurity(
    const ServerOptions& options, WorkerPoolOptions* local, TokenReload* reload) {
  auth::ServerSecurityOptions sec;
  sec.tls_cert_file = options.tls_cert;
  sec.tls_key_file = options.tls_key;
  sec.tls_client_ca_file = options.tls_client_ca;
  // Local workers need a token whenever calls are checked: with a token file, and with mutual
  // TLS (they present the server's certificate, which must not carry the worker scope for
  // everyone holding it; their token does).
  const bool mutual_tls = !options.tls_client_ca.empty();
  if (!options.auth_token_file.empty() || mutual_tls) {
    QUANTD_ASSIGN_OR_RETURN(std::string local_token, auth::RandomToken());
    QUANTD_ASSIGN_OR_RETURN(std::shared_ptr<const auth::TokenSet> tokens,
                            LoadTokens(options.auth_token_file, local_token));
    reload->path = options.auth_token_file;
    reload->local_token = local_token;
    reload->store = std::make_shared<auth::TokenStore>(tokens);
    local->auth_token_file = JoinPath(options.coordinator.data_dir, "local-worker.token");
    QUANTD_RETURN_IF_ERROR(auth::WritePrivateFile(
        local->auth_token_file,
        absl::StrCat("# written by quantd at startup for its local workers\n", local_token,
                     " quantd-local-workers scopes=worker\n")));
    sec.tokens = reload->store;
    sec.require_token = !options.auth_token_file.empty();
    if (options.auth_token_file.empty()) {
      std::fprintf(stderr,
                   "quantd: auth: mutual TLS: callers are identified by their certificates "
                   "(scopes from OU=quantd:<scope>, default %s)\n",
                   auth::ScopesToString(auth::kDefaultScopes).c_str());
    } else {
      std::fprintf(stderr,
                   "quantd: auth: %zu token(s) from %s (SIGHUP reloads it); grpc.health.v1 needs "
                   "none\n",
                   tokens->size() - 1, options.auth_token_file.c_str());
    }
    const bool tls = !options.tls_cert.empty();
    for (const std::string& addr : {options.listen, options.worker_listen}) {
      if (!tls && !addr.empty() && !auth::IsLoopbackAddress(addr)) {
        std::fprintf(stderr,
                     "quantd: warning: bearer tokens on %s travel in plaintext; anyone on the "
                     "network path can read them (add --tls_cert/--tls_key)\n",
                     addr.c_str());
      }
    }
  }
  if (!options.tls_cert.empty()) {
    local->tls_ca = options.tls_client_ca.empty() ? options.tls_cert : options.tls_client_ca;
    if (!options.tls_client_ca.empty()) {
      local->tls_cert = options.tls_cert;
      local->tls_key = options.tls_key;
    }
  }
  return auth::MakeServerCredentials(sec);
}

}  // namespace

absl::Status RunServer(const ServerOptions& options) {
  // Block termination signals and SIGHUP in every thread; the main thread waits for them below.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  QUANTD_RETURN_IF_ERROR(MakeDirs(options.coordinator.data_dir));
  WorkerPoolOptions wo;
  TokenReload reload;
  QUANTD_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> creds,
                          ConfigureSecurity(options, &wo, &reload));
  Metrics metrics;
  Metrics::Authorizer metrics_auth;
  if (options.metrics_require_token) {
    if (options.auth_token_file.empty()) {
      return absl::InvalidArgumentError(
          "--metrics_require_token needs --auth_token_file (scrapers authenticate with a token "
          "of that file that has the metrics scope)");
    }
    metrics_auth = [store = reload.store](const std::string& /*user*/, const std::string& password) {
      std::optional<auth::Identity> id = store->Get()->Match(password);
      return id.has_value() && (id->scopes & auth::kScopeMetrics) != 0;
    };
  }
  if (!options.metrics_listen.empty()) {
    QUANTD_RETURN_IF_ERROR(metrics.Serve(options.metrics_listen, std::move(metrics_auth)));
  }
  const CoordinatorOptions& co = options.coordinator;
  if (co.allow_any_input_path) {
    std::fprintf(stderr,
                 "quantd: warning: --allow_any_input_path: jobs may name any file quantd can "
                 "read as their model or calibration data\n");
  } else if (co.input_roots.empty()) {
    std::fprintf(stderr,
                 "quantd: warning: no --input_root: every submission is refused until quantd "
                 "runs with --input_root=DIR (the directories jobs may read)\n");
  } else {
    std::fprintf(stderr, "quantd: job inputs only under --input_root %s\n",
                 absl::StrJoin(co.input_roots, ", ").c_str());
  }
  QUANTD_ASSIGN_OR_RETURN(auto coordinator, Coordinator::Create(options.coordinator, &metrics));

  // Submissions and reports run here, off the gRPC callback threads (services.h). Destroyed
  // after the server's Shutdown (which waits for their reactors) and before the coordinator.
  auto submit_work = std::make_unique<WorkQueue>(4, "quantd-submit");
  auto report_work = std::make_unique<WorkQueue>(8, "quantd-report");
  QuantServiceImpl quant(coordinator.get(), submit_work.get());
  RegistryServiceImpl registry(coordinator.get());
  WorkerServiceImpl workers(coordinator.get(), report_work.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  int worker_port = 0;
  builder.AddListeningPort(options.listen, creds, &port);
  if (!options.worker_listen.empty()) {
    builder.AddListeningPort(options.worker_listen, creds, &worker_port);
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
  std::fprintf(stderr, "quantd: serving gRPC (%s) on %s, metrics on %s, data in %s\n",
               options.tls_cert.empty()            ? "plaintext"
               : options.tls_client_ca.empty() ? "TLS"
                                                   : "mutual TLS",
               self_addr.c_str(), options.metrics_listen.empty() ? "(off)" : options.metrics_listen.c_str(),
               options.coordinator.data_dir.c_str());
  if (!options.port_file.empty()) {
    QUANTD_RETURN_IF_ERROR(WriteFileAtomic(options.port_file, std::to_string(port)));
  }

  int n = options.local_workers;
  if (n < 0) n = std::max(1, CountGpus());
  std::unique_ptr<WorkerPool> pool;
  if (n > 0) {
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
  for (;;) {
    sigwait(&sigs, &sig);
    if (sig != SIGHUP) break;
    ReloadTokens(reload);
  }
  std::fprintf(stderr, "quantd: signal %d, shutting down\n", sig);
  if (pool) pool->Stop();
  if (!wo.auth_token_file.empty()) RemoveAll(wo.auth_token_file).IgnoreError();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  submit_work.reset();
  report_work.reset();
  coordinator.reset();
  return absl::OkStatus();
}

}  // namespace quantd::server
