// Hand-written argv parsing for quantctl: "--flag VALUE", "--flag=VALUE", boolean flags, short
// flags such as "-o DIR", positionals, and "--" to end flags. No global state, no exceptions.
// Thread-safety: all functions are pure.
#ifndef QUANTD_CLIENT_CLI_ARGS_H_
#define QUANTD_CLIENT_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace quantd::client {

// One flag a command accepts. `name` includes its dashes: "--calib", "-o".
struct FlagSpec {
  std::string name;
  bool takes_value = false;  // false: a boolean flag; "--flag=VALUE" is then an error
};

// The result of ParseArgs.
struct ParsedArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;  // flag name (with dashes) -> value ("" for booleans)

  bool Has(const std::string& flag) const { return flags.count(flag) > 0; }
  // The flag's value, or `fallback` when it was not given.
  std::string Get(const std::string& flag, const std::string& fallback = "") const;
};

// Parses `args` (no program name, no command name) against `specs`. INVALID_ARGUMENT on an
// unknown flag, a flag given twice, a missing value, or a value given to a boolean flag.
// A lone "-" is a positional; everything after "--" is positional.
absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                     const std::vector<FlagSpec>& specs);

// Whole-string decimal integer in [min, max]; INVALID_ARGUMENT naming `what` otherwise.
absl::StatusOr<int64_t> ParseInt(absl::string_view what, absl::string_view text, int64_t min,
                                 int64_t max);
absl::StatusOr<uint64_t> ParseUint64(absl::string_view what, absl::string_view text);
// Whole-string finite number; INVALID_ARGUMENT otherwise.
absl::StatusOr<double> ParseDouble(absl::string_view what, absl::string_view text);

// "NAME" or "NAME@VERSION" (VERSION a positive integer). version = 0 means "latest".
struct ModelRef {
  std::string name;
  int32_t version = 0;
};
absl::StatusOr<ModelRef> ParseModelRef(absl::string_view text);

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_CLI_ARGS_H_
