#include "auth/scopes.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace quantd::auth {
namespace {

constexpr std::pair<Scope, absl::string_view> kNames[] = {
    {kScopeSubmit, "submit"}, {kScopeRead, "read"},       {kScopeAdmin, "admin"},
    {kScopeWorker, "worker"}, {kScopeMetrics, "metrics"},
};

struct MethodScope {
  absl::string_view method;
  uint32_t scope;
};

// Every RPC of proto/quantd.proto; auth/scopes_test.cc checks that the table covers the
// services' descriptors, so a new method fails that test until it is given a scope here.
constexpr MethodScope kMethods[] = {
    {"/quantd.v1.QuantService/SubmitJob", kScopeSubmit},
    {"/quantd.v1.QuantService/GetJob", kScopeRead},
    {"/quantd.v1.QuantService/ListJobs", kScopeRead},
    {"/quantd.v1.QuantService/WatchJob", kScopeRead},
    {"/quantd.v1.QuantService/CancelJob", kScopeAdmin},
    {"/quantd.v1.RegistryService/ListModels", kScopeRead},
    {"/quantd.v1.RegistryService/GetModel", kScopeRead},
    {"/quantd.v1.RegistryService/FetchArtifact", kScopeRead},
    {"/quantd.v1.RegistryService/DeleteModel", kScopeAdmin},
};

}  // namespace

absl::string_view ScopeName(Scope s) {
  for (const auto& [scope, name] : kNames) {
    if (scope == s) return name;
  }
  return "?";
}

std::string ScopesToString(uint32_t scopes) {
  std::string out;
  for (const auto& [scope, name] : kNames) {
    if (scopes & scope) absl::StrAppend(&out, out.empty() ? "" : ",", name);
  }
  return out.empty() ? "none" : out;
}

absl::StatusOr<uint32_t> ParseScopes(absl::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError("empty scope list");
  uint32_t out = 0;
  for (absl::string_view word : absl::StrSplit(text, ',')) {
    uint32_t bit = 0;
    for (const auto& [scope, name] : kNames) {
      if (word == name) bit = scope;
    }
    if (bit == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown scope \"", word, "\" (known: ", ScopesToString(kAllScopes), ")"));
    }
    if (out & bit) return absl::InvalidArgumentError(absl::StrCat("scope \"", word, "\" repeated"));
    out |= bit;
  }
  return out;
}

absl::Status ValidateTenant(absl::string_view t, uint32_t scopes) {
  bool ok = !t.empty() && t.size() <= 127 && absl::ascii_isalnum(static_cast<unsigned char>(t[0]));
  for (unsigned char c : t) ok = ok && (absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-');
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        t, " is not a model-name prefix (1-127 characters [A-Za-z0-9._-], starting with a "
           "letter or digit)"));
  }
  if (scopes & kScopeWorker) {
    return absl::InvalidArgumentError(
        absl::StrCat(t, " cannot be combined with the worker scope (a worker serves every job)"));
  }
  return absl::OkStatus();
}

std::optional<uint32_t> RequiredScope(absl::string_view method) {
  if (absl::StartsWith(method, "/quantd.v1.WorkerService/")) return kScopeWorker;
  for (const MethodScope& m : kMethods) {
    if (m.method == method) return m.scope;
  }
  if (absl::StartsWith(method, "/grpc.reflection.")) return 0u;
  return std::nullopt;
}

}  // namespace quantd::auth
