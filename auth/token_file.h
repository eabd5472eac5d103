// TokenSet: the bearer tokens quantd accepts, loaded from an --auth_token_file, and the
// reading of a single token for clients (quantctl, quantd-worker).
//
// File format (docs/reliability.md, "Authentication and TLS"): one token per line, optionally
// followed by whitespace and a name used in logs and audit lines, and by the fields
// "scopes=submit,read" and "tenant=PREFIX" in any order
// ("s3cr3t-token-value  ci-runner  scopes=submit,read  tenant=team-a."). Words of the name are
// joined by one space. A line without "scopes=" gets kDefaultScopes (auth/scopes.h:
// submit,read,admin, never worker). "tenant=" limits the token to models whose names start with
// PREFIX (a model-name prefix: [A-Za-z0-9._-], starting with a letter or digit); it cannot be
// combined with the worker scope. Blank lines and lines starting with '#' are ignored;
// surrounding whitespace and a trailing '\r' are stripped. A token is at least kMinTokenLength printable ASCII characters without spaces
// (it travels as an HTTP/2 header value). The file must not grant any permission to "other"
// (mode & 0007 == 0): a world-readable token file is refused.
// Tokens are kept only as SHA-256 digests; Match compares in constant time.
// Thread-safety: a TokenSet is immutable after Load/Add and safe to share between threads.
#ifndef QUANTD_AUTH_TOKEN_FILE_H_
#define QUANTD_AUTH_TOKEN_FILE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "auth/scopes.h"
#include "common/mutex.h"

namespace quantd::auth {

inline constexpr size_t kMinTokenLength = 16;

// One line of a token file.
struct TokenEntry {
  std::string token;
  std::string name;  // the name after the token, else "line N"
  uint32_t scopes = kDefaultScopes;  // Default: kDefaultScopes (a line without "scopes=")
  std::string tenant;                // Default: empty = every model
  bool scopes_given = false;         // the line had "scopes="
};

// Parses the text of a token file; `path` only names the file in errors. INVALID_ARGUMENT
// naming path:line for a bad token, a duplicate, an unknown or repeated field or scope, an
// invalid tenant prefix, a tenant on a worker token, and for a file with no tokens.
absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(const std::string& path,
                                                       const std::string& text);

// Reads and parses `path`. NOT_FOUND / PERMISSION_DENIED if it cannot be read,
// PERMISSION_DENIED if it is world-readable (any of mode 0007 set), else as ParseTokenFile.
absl::StatusOr<std::vector<TokenEntry>> LoadTokenFile(const std::string& path);

// The token a client sends: the first token of the file at `path` (same rules as
// LoadTokenFile).
absl::StatusOr<std::string> ReadClientToken(const std::string& path);

class TokenSet {
 public:
  TokenSet() = default;
  explicit TokenSet(const std::vector<TokenEntry>& entries);

  // Adds one token (e.g. the one quantd generates for its local workers, scopes = worker).
  void Add(const std::string& token, const Identity& identity);
  size_t size() const { return entries_.size(); }

  // The identity (name, scopes, tenant) of the entry whose token equals `presented`, or nullopt.
  // Hashes `presented` and compares the digest with every entry without early exit, so the time
  // does not depend on how much of a token matched.
  std::optional<Identity> Match(const std::string& presented) const;

 private:
  struct Entry {
    std::array<uint8_t, 32> digest;
    Identity identity;
  };
  std::vector<Entry> entries_;
};

// The token set a server checks against, replaceable while calls are being checked (quantd
// reloads its --auth_token_file on SIGHUP). Readers take a snapshot: a call is checked against
// one whole set, old or new, never a mix.
// Thread-safety: thread-safe.
class TokenStore {
 public:
  explicit TokenStore(std::shared_ptr<const TokenSet> tokens) : tokens_(std::move(tokens)) {}
  std::shared_ptr<const TokenSet> Get() const {
    MutexLock l(&mu_);
    return tokens_;
  }
  void Replace(std::shared_ptr<const TokenSet> tokens) {
    MutexLock l(&mu_);
    tokens_ = std::move(tokens);
  }

 private:
  mutable Mutex mu_;
  std::shared_ptr<const TokenSet> tokens_ ABSL_GUARDED_BY(mu_);
};

// 32 random bytes from the OS as 64 hex characters (tokens quantd makes for local workers).
absl::StatusOr<std::string> RandomToken();

// Writes `data` to `path` with mode 0600 (temp file + rename; replaces an existing file).
absl::Status WritePrivateFile(const std::string& path, const std::string& data);

}  // namespace quantd::auth

#endif  // QUANTD_AUTH_TOKEN_FILE_H_
