#include "auth/token_file.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "openssl/crypto.h"
#include "openssl/sha.h"

namespace quantd::auth {
namespace {

std::array<uint8_t, 32> Digest(const std::string& s) {
  std::array<uint8_t, 32> d;
  SHA256(reinterpret_cast<const uint8_t*>(s.data()), s.size(), d.data());
  return d;
}

bool PrintableNoSpace(const std::string& s) {
  for (unsigned char c : s) {
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

// Splits what follows the token into the name and the scopes=/tenant= fields.
absl::Status ParseRest(absl::string_view rest, TokenEntry* e) {
  std::vector<absl::string_view> name_words;
  bool tenant_given = false;
  for (absl::string_view w : absl::StrSplit(rest, absl::ByAnyChar(" \t"), absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&w, "scopes=")) {
      if (e->scopes_given) return absl::InvalidArgumentError("scopes= given twice");
      absl::StatusOr<uint32_t> s = ParseScopes(w);
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("scopes=", w, ": ", s.status().message()));
      e->scopes = *s;
      e->scopes_given = true;
    } else if (absl::ConsumePrefix(&w, "tenant=")) {
      if (tenant_given) return absl::InvalidArgumentError("tenant= given twice");
      e->tenant = std::string(w);
      tenant_given = true;
    } else if (w.find('=') != absl::string_view::npos) {
      // A misspelt field ("scope=read") must not silently leave the token with the defaults.
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown field \"", w, "\" (fields: scopes=LIST, tenant=PREFIX; names cannot contain '=')"));
    } else {
      name_words.push_back(w);
    }
  }
  if (!name_words.empty()) e->name = absl::StrJoin(name_words, " ");
  if (!e->tenant.empty()) {
    absl::Status t = ValidateTenant(e->tenant, e->scopes);
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat("tenant=", t.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(const std::string& path,
                                                       const std::string& text) {
  std::vector<TokenEntry> out;
  int line_no = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_no;
    absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty() || line.front() == '#') continue;
    const size_t sp = line.find_first_of(" \t");
    TokenEntry e;
    e.token = std::string(line.substr(0, sp));
    e.name = absl::StrCat("line ", line_no);
    // Never echo the token itself in an error.
    if (!PrintableNoSpace(e.token)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", line_no, ": token has a character outside printable ASCII"));
    }
    if (e.token.size() < kMinTokenLength) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": token is ",
                                                     e.token.size(), " characters, at least ",
                                                     kMinTokenLength, " required"));
    }
    if (sp != absl::string_view::npos) {
      absl::Status fields = ParseRest(line.substr(sp), &e);
      if (!fields.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": ", fields.message()));
      }
    }
    for (const TokenEntry& prev : out) {
      if (prev.token == e.token) {
        return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no,
                                                       ": duplicate token (also on ",
                                                       prev.name, ")"));
      }
    }
    out.push_back(std::move(e));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no tokens (only blank lines and # comments)"));
  }
  return out;
}

absl::StatusOr<std::vector<TokenEntry>> LoadTokenFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    const std::string msg = absl::StrCat("token file ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  if ((st.st_mode & 0007) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "token file ", path, " is accessible to other users (mode ",
        absl::StrFormat("%04o", st.st_mode & 07777), "); run chmod 600 ", path));
  }
  if (::access(path.c_str(), R_OK) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("token file ", path, ": ", std::strerror(errno)));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string text, ReadFile(path, 1 << 20));
  return ParseTokenFile(path, text);
}

absl::StatusOr<std::string> ReadClientToken(const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(std::vector<TokenEntry> entries, LoadTokenFile(path));
  return entries.front().token;
}

TokenSet::TokenSet(const std::vector<TokenEntry>& entries) {
  for (const TokenEntry& e : entries) Add(e.token, Identity{e.name, e.scopes, e.tenant});
}

void TokenSet::Add(const std::string& token, const Identity& identity) {
  entries_.push_back({Digest(token), identity});
}

std::optional<Identity> TokenSet::Match(const std::string& presented) const {
  const std::array<uint8_t, 32> d = Digest(presented);
  size_t found = 0;  // index + 1 of the matching entry; 0 = none
  for (size_t i = 0; i < entries_.size(); ++i) {
    const int differs = CRYPTO_memcmp(d.data(), entries_[i].digest.data(), d.size());
    const size_t mask = static_cast<size_t>(differs == 0) - 1;  // 0 on match, ~0 otherwise
    found = (found & mask) | ((i + 1) & ~mask);
  }
  if (found == 0) return std::nullopt;
  return entries_[found - 1].identity;
}

absl::StatusOr<std::string> RandomToken() {
  uint8_t buf[32];
  size_t got = 0;
  while (got < sizeof(buf)) {
    ssize_t n = ::getrandom(buf + got, sizeof(buf) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("getrandom: ", std::strerror(errno)));
    }
    got += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(buf), sizeof(buf)));
}

absl::Status WritePrivateFile(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("create ", tmp, ": ", std::strerror(errno)));
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return absl::InternalError(absl::StrCat("write ", tmp, ": ", std::strerror(err)));
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace quantd::auth
