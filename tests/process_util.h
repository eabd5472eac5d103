// Helpers for end-to-end tests that start real processes: a daemon handle that starts quantd
// on free ports in a temporary data dir and kills it on destruction, command execution with
// captured output and exit code, and a minimal HTTP GET for /metrics.
#ifndef QUANTD_TESTS_PROCESS_UTIL_H_
#define QUANTD_TESTS_PROCESS_UTIL_H_

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace quantd::testing {

std::string SourceDir();   // $QUANTD_SOURCE_DIR
std::string BinaryDir();   // $QUANTD_BINARY_DIR
std::string MakeTempDir(const std::string& tag);
int FreePort();
// The factor instrumented builds scale every time limit by ($QUANTD_TEST_TIMEOUT_SCALE, set by
// tests/CMakeLists.txt; 1 when unset).
int TimeoutScale();

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs argv (argv[0] is a path) with extra environment entries, waits for it.
CommandResult Run(const std::vector<std::string>& argv,
                  const std::vector<std::string>& env = {}, int timeout_s = 600);
// Starts argv in its own process group with stdout/stderr appended to `log_path`; returns the pid.
pid_t SpawnLogged(const std::vector<std::string>& argv, const std::string& log_path,
                  const std::vector<std::string>& env = {});

// A command's output as it arrived: pieces with their arrival times (seconds since the start).
struct CapturedRun {
  int exit_code = -1;
  std::vector<std::pair<double, std::string>> chunks;
  std::string All() const;  // the pieces joined
};
// Runs argv with stdout and stderr both on a new 80x24 pseudo-terminal (`pty`), else on one
// pipe, reading as the output comes; kills it after `timeout_s` (times TimeoutScale()).
CapturedRun RunCaptured(const std::vector<std::string>& argv, bool pty,
                        const std::vector<std::string>& env = {}, int timeout_s = 600);

class Daemon {
 public:
  // Starts quantd with `local_workers` workers and extra flags; waits until it serves. Job
  // inputs are confined to --input_root=$QUANTD_SOURCE_DIR and --input_root=/tmp unless
  // `extra_flags` has its own --input_root or --allow_any_input_path.
  // `env` entries ("NAME=value") are added to quantd's environment (its workers inherit them).
  explicit Daemon(int local_workers, std::vector<std::string> extra_flags = {},
                  std::string data_dir = "", std::vector<std::string> env = {});
  ~Daemon();
  bool ok() const { return port_ > 0; }
  std::string addr() const;
  int metrics_port() const { return metrics_port_; }
  const std::string& data_dir() const { return data_dir_; }
  pid_t pid() const { return pid_; }
  // Runs quantctl against this daemon.
  CommandResult Quantctl(const std::vector<std::string>& args, int timeout_s = 600) const;
  void Kill(int sig);
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  std::string data_dir_;
};

// GET http://127.0.0.1:port/path; returns the body or "" on failure.
std::string HttpGet(int port, const std::string& path);
// The same with extra request header lines (each ending in "\r\n"); returns the whole response,
// status line and headers included, or "" on failure.
std::string HttpGetRaw(int port, const std::string& path, const std::string& headers);

}  // namespace quantd::testing

#endif  // QUANTD_TESTS_PROCESS_UTIL_H_
