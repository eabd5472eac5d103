// Scopes: what a caller may do on quantd's gRPC ports (least privilege, docs/reliability.md
// "Scopes and tenants"). A scope set is a bit mask; every RPC method needs exactly one scope,
// looked up in one table (RequiredScope) by the auth metadata processor before any handler runs.
//
//   submit   QuantService/SubmitJob
//   read     QuantService/GetJob, ListJobs, WatchJob; RegistryService/ListModels, GetModel,
//            FetchArtifact
//   admin    QuantService/CancelJob; RegistryService/DeleteModel
//   worker   every WorkerService method (Register, Heartbeat, LeaseTask, FetchBlob, ReportTask)
//   metrics  GET /metrics when quantd runs with --metrics_require_token
//
// Token-file lines without "scopes=" and client certificates without "quantd:" OUs get
// kDefaultScopes = submit,read,admin: what a client could do before scopes existed, without
// worker (a client credential must not register as a worker) and without metrics.
// Thread-safety: plain values and pure functions.
#ifndef QUANTD_AUTH_SCOPES_H_
#define QUANTD_AUTH_SCOPES_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quantd::auth {

enum Scope : uint32_t {
  kScopeSubmit = 1u << 0,
  kScopeRead = 1u << 1,
  kScopeAdmin = 1u << 2,
  kScopeWorker = 1u << 3,
  kScopeMetrics = 1u << 4,
};
inline constexpr uint32_t kAllScopes =
    kScopeSubmit | kScopeRead | kScopeAdmin | kScopeWorker | kScopeMetrics;
inline constexpr uint32_t kDefaultScopes = kScopeSubmit | kScopeRead | kScopeAdmin;

// "submit", "read", ... for one scope bit.
absl::string_view ScopeName(Scope s);
// Comma-separated names in table order ("submit,read,admin"); "none" for 0.
std::string ScopesToString(uint32_t scopes);
// Parses "submit,read" (names as above, comma-separated, no spaces, no repeats).
// INVALID_ARGUMENT naming the unknown or repeated word, or an empty list.
absl::StatusOr<uint32_t> ParseScopes(absl::string_view text);

// The scope a gRPC method (":path", "/quantd.v1.QuantService/SubmitJob") needs. 0 for methods
// any authenticated caller may use (server reflection; grpc.health.v1 is exempt from the
// check altogether). nullopt for a method that is not in the table: the caller refuses it
// (fail closed, so a new RPC cannot be reachable without a decision about its scope).
std::optional<uint32_t> RequiredScope(absl::string_view method);

// Who is calling, as the processor established it: a token-file entry, a client certificate,
// or quantd's own local workers.
struct Identity {
  std::string name;             // token name or certificate CN; what logs and audit lines show
  uint32_t scopes = kDefaultScopes;
  // Non-empty: the caller may only touch models whose names start with this prefix (and the
  // jobs that produce them). Default: empty = every model.
  std::string tenant;
};

// Checks a tenant prefix for a caller with `scopes`: a model-name prefix (1-127 characters
// [A-Za-z0-9._-], starting with a letter or digit), and not given to a worker (a worker serves
// every job). INVALID_ARGUMENT starting with the prefix and saying what is wrong.
absl::Status ValidateTenant(absl::string_view tenant, uint32_t scopes);

// Whether a caller limited to `tenant` (empty = unlimited) may touch model `name`.
inline bool TenantAllows(absl::string_view tenant, absl::string_view name) {
  return tenant.empty() || (name.size() >= tenant.size() && name.substr(0, tenant.size()) == tenant);
}

// Auth-context properties the processor sets on an accepted call, read by the handlers.
inline constexpr char kCallerProperty[] = "quantd.caller";
inline constexpr char kTenantProperty[] = "quantd.tenant";

}  // namespace quantd::auth

#endif  // QUANTD_AUTH_SCOPES_H_
