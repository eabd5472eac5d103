// quantctl's commands: runs a parsed Invocation against a quantd server and turns the outcome
// into output and an exit code. main.cc only collects argv, $QUANTD_ADDR and isatty.
// Thread-safety: RunQuantctl may run concurrently with itself on different streams.
#ifndef QUANTD_CLIENT_COMMANDS_H_
#define QUANTD_CLIENT_COMMANDS_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace quantd::client {

// Exit codes; documented in UsageText() and docs/cli.md.
enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,       // job failed/cancelled, or the server refused the request
  kExitUsage = 2,        // bad command line
  kExitQualityGate = 3,  // --max-ppl-ratio exceeded
  kExitUnavailable = 4,  // UNAVAILABLE / DEADLINE_EXCEEDED
};

// kExitUnavailable for UNAVAILABLE and DEADLINE_EXCEEDED, kExitOk for OK, else kExitFailed.
int ExitCodeFor(const absl::Status& status);

// Where output goes and whether it is a terminal (progress bar vs plain lines).
struct Streams {
  std::ostream& out;
  std::ostream& err;
  bool out_is_tty = false;
  bool err_is_tty = false;
  int columns = 0;  // the terminal's width when one is a terminal; 0 = unknown (80)
};

// Runs quantctl with `args` (argv without the program name). `env_addr` is $QUANTD_ADDR or
// nullptr; $QUANTD_TOKEN and $QUANTD_TLS_* are read with std::getenv (connection_security.h).
// Returns the process exit code.
int RunQuantctl(const std::vector<std::string>& args, const char* env_addr, const Streams& io);

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_COMMANDS_H_
