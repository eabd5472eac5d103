#include "client/cli_args.h"

#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace quantd::client {

std::string ParsedArgs::Get(const std::string& flag, const std::string& fallback) const {
  auto it = flags.find(flag);
  return it == flags.end() ? fallback : it->second;
}

absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                     const std::vector<FlagSpec>& specs) {
  auto find_spec = [&specs](absl::string_view name) -> const FlagSpec* {
    for (const FlagSpec& s : specs) {
      if (s.name == name) return &s;
    }
    return nullptr;
  };
  ParsedArgs out;
  bool flags_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (flags_done || a.size() < 2 || a[0] != '-') {
      out.positional.push_back(a);
      continue;
    }
    if (a == "--") {
      flags_done = true;
      continue;
    }
    std::string name = a;
    std::string value;
    bool inline_value = false;
    if (a.rfind("--", 0) == 0) {
      size_t eq = a.find('=');
      if (eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        inline_value = true;
      }
    }
    const FlagSpec* spec = find_spec(name);
    if (spec == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag ", name));
    if (out.Has(name)) return absl::InvalidArgumentError(absl::StrCat(name, " given twice"));
    if (!spec->takes_value) {
      if (inline_value) {
        return absl::InvalidArgumentError(absl::StrCat(name, " takes no value (got \"", value, "\")"));
      }
    } else if (!inline_value) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
      value = args[++i];
    }
    out.flags[name] = value;
  }
  return out;
}

absl::StatusOr<int64_t> ParseInt(absl::string_view what, absl::string_view text, int64_t min,
                                 int64_t max) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(text, &v) || text.empty() || text.front() == ' ' || text.back() == ' ') {
    return absl::InvalidArgumentError(absl::StrCat(what, ": \"", text, "\" is not an integer"));
  }
  if (v < min || v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", v, " is out of range [", min, ", ", max, "]"));
  }
  return v;
}

absl::StatusOr<uint64_t> ParseUint64(absl::string_view what, absl::string_view text) {
  uint64_t v = 0;
  if (text.empty() || text.front() == '-' || text.front() == '+' || text.front() == ' ' ||
      text.back() == ' ' || !absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": \"", text, "\" is not a non-negative integer"));
  }
  return v;
}

absl::StatusOr<double> ParseDouble(absl::string_view what, absl::string_view text) {
  double v = 0;
  if (text.empty() || text.front() == ' ' || text.back() == ' ' || !absl::SimpleAtod(text, &v) ||
      !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": \"", text, "\" is not a number"));
  }
  return v;
}

absl::StatusOr<ModelRef> ParseModelRef(absl::string_view text) {
  ModelRef ref;
  size_t at = text.rfind('@');
  ref.name = std::string(text.substr(0, at));
  if (ref.name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("model \"", text, "\": empty name"));
  }
  if (at != absl::string_view::npos) {
    auto v = ParseInt(absl::StrCat("model \"", text, "\" version"), text.substr(at + 1), 1,
                      std::numeric_limits<int32_t>::max());
    if (!v.ok()) return v.status();
    ref.version = static_cast<int32_t>(*v);
  }
  return ref;
}

}  // namespace quantd::client
