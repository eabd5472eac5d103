#include "tests/process_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace quantd::testing {

std::string SourceDir() {
  const char* s = std::getenv("QUANTD_SOURCE_DIR");
  return s ? s : ".";
}
std::string BinaryDir() {
  const char* s = std::getenv("QUANTD_BINARY_DIR");
  return s ? s : ".";
}

std::string MakeTempDir(const std::string& tag) {
  std::string t = "/tmp/quantd_" + tag + "_XXXXXX";
  std::vector<char> buf(t.begin(), t.end());
  buf.push_back('\0');
  return ::mkdtemp(buf.data());
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

namespace {

std::string ReadAll(int fd) {
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

// `new_session`: the child leads a new session (and so process group), its controlling
// terminal being out_fd when that is a terminal; else only a new process group.
pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
            int out_fd, int err_fd, bool new_session = false) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (new_session) {
      ::setsid();
      if (::isatty(out_fd)) ::ioctl(out_fd, TIOCSCTTY, 0);
    } else {
      ::setpgid(0, 0);
    }
    if (out_fd >= 0) ::dup2(out_fd, 1);
    if (err_fd >= 0) ::dup2(err_fd, 2);
    for (const std::string& e : env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

}  // namespace

int TimeoutScale() {
  const char* scale_env = std::getenv("QUANTD_TEST_TIMEOUT_SCALE");
  return scale_env != nullptr ? std::max(1, std::atoi(scale_env)) : 1;
}

CommandResult Run(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                  int timeout_s) {
  std::string dir = MakeTempDir("cmd");
  std::string out_path = dir + "/out", err_path = dir + "/err";
  int out_fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int err_fd = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = Spawn(argv, env, out_fd, err_fd);
  ::close(out_fd);
  ::close(err_fd);
  CommandResult r;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s * TimeoutScale());
  int status = 0;
  for (;;) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.err = "timed out\n";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  int fd = ::open(out_path.c_str(), O_RDONLY);
  r.out = ReadAll(fd);
  ::close(fd);
  fd = ::open(err_path.c_str(), O_RDONLY);
  r.err += ReadAll(fd);
  ::close(fd);
  std::system(("rm -rf " + dir).c_str());
  return r;
}

std::string CapturedRun::All() const {
  std::string all;
  for (const auto& [at, bytes] : chunks) all += bytes;
  return all;
}

CapturedRun RunCaptured(const std::vector<std::string>& argv, bool pty,
                        const std::vector<std::string>& env, int timeout_s) {
  CapturedRun r;
  int fd = -1;
  pid_t pid = -1;
  if (pty) {
    struct winsize ws {};
    ws.ws_row = 24;
    ws.ws_col = 80;
    int slave = -1;
    if (::openpty(&fd, &slave, nullptr, nullptr, &ws) != 0) return r;
    pid = Spawn(argv, env, slave, slave, /*new_session=*/true);
    ::close(slave);
  } else {
    int p[2];
    if (::pipe(p) != 0) return r;
    pid = Spawn(argv, env, p[1], p[1]);
    ::close(p[1]);
    fd = p[0];
  }
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::seconds(timeout_s * TimeoutScale());
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, 200) == 0) continue;
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) break;  // EOF, or EIO once the terminal's last writer closed it
    r.chunks.emplace_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
        std::string(buf, static_cast<size_t>(n)));
  }
  ::close(fd);
  if (std::chrono::steady_clock::now() >= deadline) ::kill(-pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

pid_t SpawnLogged(const std::vector<std::string>& argv, const std::string& log_path,
                  const std::vector<std::string>& env) {
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  pid_t pid = Spawn(argv, env, log_fd, log_fd);
  ::close(log_fd);
  return pid;
}

Daemon::Daemon(int local_workers, std::vector<std::string> extra_flags, std::string data_dir,
               std::vector<std::string> env) {
  data_dir_ = data_dir.empty() ? MakeTempDir("daemon") : data_dir;
  metrics_port_ = FreePort();
  const std::string port_file = data_dir_ + "/port";
  ::unlink(port_file.c_str());
  std::vector<std::string> argv = {BinaryDir() + "/quantd",
                                   "--listen=127.0.0.1:0",
                                   "--metrics_listen=127.0.0.1:" + std::to_string(metrics_port_),
                                   "--data_dir=" + data_dir_,
                                   "--port_file=" + port_file,
                                   "--worker_binary=" + BinaryDir() + "/quantd-worker",
                                   "--local_workers=" + std::to_string(local_workers)};
  // Job inputs: the source tree (examples/) and the temporary directories tests make under
  // /tmp (MakeTempDir), unless the test chooses its own --input_root or --allow_any_input_path.
  bool own_inputs = false;
  for (const std::string& f : extra_flags) {
    own_inputs = own_inputs || f.rfind("--input_root", 0) == 0 || f.rfind("--allow_any_input_path", 0) == 0;
  }
  if (!own_inputs) {
    argv.push_back("--input_root=" + SourceDir());
    argv.push_back("--input_root=/tmp");
  }
  for (auto& f : extra_flags) argv.push_back(f);
  int log_fd = ::open((data_dir_ + "/quantd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  pid_ = Spawn(argv, env, log_fd, log_fd);
  ::close(log_fd);
  for (int i = 0; i < 300; ++i) {
    std::ifstream f(port_file);
    int p = 0;
    if (f >> p && p > 0) {
      port_ = p;
      return;
    }
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Daemon::~Daemon() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 200 && ::waitpid(pid_, nullptr, WNOHANG) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, nullptr, WNOHANG);
  }
}

void Daemon::Kill(int sig) {
  if (pid_ > 0) {
    ::kill(-pid_, sig);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
}

std::string Daemon::addr() const { return "127.0.0.1:" + std::to_string(port_); }

CommandResult Daemon::Quantctl(const std::vector<std::string>& args, int timeout_s) const {
  std::vector<std::string> argv = {BinaryDir() + "/quantctl", "--addr", addr()};
  argv.insert(argv.end(), args.begin(), args.end());
  return Run(argv, {}, timeout_s);
}

std::string Daemon::Log() const {
  std::ifstream f(data_dir_ + "/quantd.log");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string HttpGet(int port, const std::string& path) {
  const std::string resp = HttpGetRaw(port, path, "");
  size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

std::string HttpGetRaw(int port, const std::string& path, const std::string& headers) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return "";
  }
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n" + headers + "\r\n";
  ::write(fd, req.data(), req.size());
  std::string resp = ReadAll(fd);
  ::close(fd);
  return resp;
}

}  // namespace quantd::testing
