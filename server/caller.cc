#include "server/caller.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "auth/scopes.h"

namespace quantd::server {
namespace {

std::string FirstProperty(const grpc::AuthContext* ctx, const char* name) {
  if (ctx == nullptr) return "";
  for (const grpc::string_ref& v : ctx->FindPropertyValues(name)) {
    return std::string(v.data(), v.size());
  }
  return "";
}

// Control characters as \xNN, so a request cannot forge or split audit lines.
std::string Printable(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

}  // namespace

Caller CallerOf(const grpc::ServerContextBase& ctx) {
  Caller c;
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  c.name = FirstProperty(auth.get(), auth::kCallerProperty);
  if (c.name.empty()) c.name = "anonymous";
  c.tenant = FirstProperty(auth.get(), auth::kTenantProperty);
  c.peer = ctx.peer();
  return c;
}

absl::Status CheckTenant(const Caller& caller, absl::string_view name) {
  if (auth::TenantAllows(caller.tenant, name)) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("\"", caller.name, "\" is limited to models whose names start with \"",
                   caller.tenant, "\" (tenant= in quantd's --auth_token_file); \"", name,
                   "\" is not one of them"));
}

void Audit(const Caller& caller, absl::string_view action, absl::string_view what,
           const absl::Status& result) {
  const std::string line = absl::StrCat(
      "quantd: audit: ", action, " by \"", Printable(caller.name), "\" (",
      caller.tenant.empty() ? "" : absl::StrCat("tenant ", caller.tenant, ", "), caller.peer, ") ",
      Printable(what), ": ", result.ok() ? "OK" : Printable(result.ToString()), "\n");
  std::fputs(line.c_str(), stderr);
}

}  // namespace quantd::server
