// Reliability with real processes (issue 7, docs/reliability.md): a worker killed with SIGKILL
// mid-task, the coordinator killed with SIGKILL mid-job and restarted on the same data dir,
// resume refusal when a job's inputs changed, disk-full faults while publishing, a corrupted
// registry file, memory admission, and malformed requests. The 50-job load test is in the slow
// tier (QUANTD_SLOW_TESTS=1).
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "common/file_util.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "proto/quantd.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_util.h"
#include "tests/process_util.h"

namespace quantd::testing {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

json Parse(const std::string& s) { return ParseJson(s); }
json Submit(const Daemon& d, std::vector<std::string> args) { return SubmitJson(d, args); }
json Status(const Daemon& d, const std::string& id) { return StatusJson(d, id); }

json WaitTerminal(const Daemon& d, const std::string& id, int timeout_s = 600) {
  return WaitFor(d, id, Terminal, timeout_s);
}

// The quantd-worker children of `parent` (a quantd's local workers; a sanitizer build's quantd
// may also have a symbolizer child).
std::vector<pid_t> WorkerPids(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string n = e.path().filename().string();
    if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit)) continue;
    std::ifstream f(e.path() / "stat");
    std::string line;
    if (!std::getline(f, line)) continue;
    // pid (comm) state ppid ...; comm may contain spaces, so parse after the last ')'.
    const size_t rp = line.rfind(')');
    if (rp == std::string::npos) continue;
    std::istringstream rest(line.substr(rp + 1));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    const size_t lp = line.find('(');
    const std::string comm = lp < rp ? line.substr(lp + 1, rp - lp - 1) : "";
    if (ppid == parent && state != "Z" && comm == "quantd-worker") out.push_back(std::stoi(n));
  }
  return out;
}

// Sum of the samples of `name` (any labels) whose label text contains `label_filter`.
double MetricSum(const std::string& metrics, const std::string& name,
                 const std::string& label_filter = "") {
  double sum = 0;
  std::istringstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0 || line.size() <= name.size()) continue;
    const char next = line[name.size()];
    if (next != '{' && next != ' ') continue;
    if (!label_filter.empty() && line.find(label_filter) == std::string::npos) continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// The pid of `parent`'s local worker started with --name=<name>, or -1.
pid_t WorkerPidByName(pid_t parent, const std::string& name) {
  for (pid_t p : WorkerPids(parent)) {
    std::ifstream f("/proc/" + std::to_string(p) + "/cmdline", std::ios::binary);
    std::string arg;
    while (std::getline(f, arg, '\0')) {
      if (arg == "--name=" + name) return p;
    }
  }
  return -1;
}

// The names of the workers the coordinator counts as holding a lease (quantd_worker_leases).
std::vector<std::string> LeaseHolders(const std::string& metrics) {
  std::vector<std::string> out;
  static const std::regex re("^quantd_worker_leases\\{worker=\"([^\"]+)\"\\} ([0-9.e+-]+)$");
  std::istringstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, re) && std::stod(m[2]) >= 1) out.push_back(m[1]);
  }
  return out;
}

double WorkerLeases(const std::string& metrics, const std::string& name) {
  return MetricSum(metrics, "quantd_worker_leases", "worker=\"" + name + "\"");
}

// Finds a local worker that the coordinator counts as holding a lease of a running job, freezes it
// with SIGSTOP and waits until that lease is gone. A frozen worker can neither report nor
// heartbeat, so its lease ends in one of two ways: a report already on the wire lands (the lease
// disappears and quantd_lease_expirations_total does not move: thaw it and try again), or the
// lease expires (the counter moved first, see Coordinator's expiry). Returns the frozen worker's
// pid in the second case, i.e. a worker that provably held a lease until it was lost; -1 if none
// was caught before `job` left the quantize phase or 60 s passed.
pid_t FreezeALeaseHolderUntilItsLeaseExpires(const Daemon& d, const std::string& job) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (StatusJson(d, job).value("phase", "") != "quantize") return -1;
    const std::string before = HttpGet(d.metrics_port(), "/metrics");
    const double expired = MetricSum(before, "quantd_lease_expirations_total");
    for (const std::string& name : LeaseHolders(before)) {
      const pid_t pid = WorkerPidByName(d.pid(), name);
      if (pid <= 0 || ::kill(pid, SIGSTOP) != 0) continue;
      // Frozen: wait for the lease to end (by report or expiry; lease_timeout bounds it).
      std::string now = HttpGet(d.metrics_port(), "/metrics");
      while (WorkerLeases(now, name) >= 1 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        now = HttpGet(d.metrics_port(), "/metrics");
      }
      if (MetricSum(now, "quantd_lease_expirations_total") > expired) return pid;
      ::kill(pid, SIGCONT);  // it had finished its task: not a lease holder any more
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return -1;
}

json ReadManifest(const std::string& data_dir, const std::string& name, int version) {
  auto text = ReadFile(data_dir + "/registry/" + name + "/" + std::to_string(version) +
                       "/manifest.json");
  return text.ok() ? Parse(*text) : json();
}

std::string FileSha(const json& manifest, const std::string& path) {
  for (const auto& f : manifest["files"]) {
    if (f["path"] == path) return f["sha256"];
  }
  return "";
}

// A small job (rtn 4-bit, 8 calibration sequences) for the fault tests, where the method does
// not matter.
std::vector<std::string> RtnJob(const std::string& name) {
  return {ExampleModel(), "--calib", ExampleCalib(), "--method", "rtn", "--bits", "4", "--name",
          name, "--max-calib-seqs", "8"};
}

std::vector<std::string> QuipSharpJob(const std::string& name, bool eval) {
  std::vector<std::string> a = {ExampleModel(), "--calib", ExampleCalib(), "--method", "quip-sharp",
                                "--bits", "2", "--name", name, "--max-calib-seqs", "64"};
  if (eval) {
    a.push_back("--eval");
    a.push_back(ExampleEval());
  }
  return a;
}

// Files under `dir` whose name marks an interrupted atomic write.
std::vector<std::string> TmpFiles(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->path().filename().string().find(".tmp.") != std::string::npos) {
      out.push_back(it->path().string());
    }
  }
  return out;
}

// --- Worker loss --------------------------------------------------------------------------

TEST(Reliability, WorkerKilledMidTaskGivesABitIdenticalArtifact) {
  // Each task is held 250 ms before it runs (QUANTD_FAULT_TASK_DELAY_MS), so the workers hold
  // leases most of the time and the quantize phase lasts long enough to catch one; the delay
  // changes no result (the artifacts must be bit-identical).
  Daemon d(2, {"--lease_timeout_s=2"}, "", {"QUANTD_FAULT_TASK_DELAY_MS=250"});
  ASSERT_TRUE(d.ok()) << d.Log();
  // Undisturbed reference run.
  json a = Submit(d, QuipSharpJob("undisturbed", false));
  json ja = WaitTerminal(d, a["id"]);
  ASSERT_EQ(ja["state"], "JOB_STATE_SUCCEEDED") << ja.dump();
  // Same job; once quantize tasks are flowing, SIGKILL a worker that holds a lease.
  json b = Submit(d, QuipSharpJob("disturbed", false));
  json start = WaitFor(d, b["id"], [](const json& j) {
    return Terminal(j) || j.value("phase", "") == "quantize";
  });
  const int done0 = start.value("tasks_done", 0);
  json mid = WaitFor(d, b["id"], [done0](const json& j) {
    return Terminal(j) || j.value("tasks_done", 0) >= done0 + 4;
  });
  ASSERT_EQ(mid.value("phase", ""), "quantize") << "job finished before the worker could be killed";
  ASSERT_EQ(WorkerPids(d.pid()).size(), 2u);
  // Kill only a worker that provably holds a lease (a worker between two short tasks holds
  // none, and killing it would expire nothing): see FreezeALeaseHolderUntilItsLeaseExpires.
  const double expired0 = MetricSum(HttpGet(d.metrics_port(), "/metrics"),
                                    "quantd_lease_expirations_total");
  const pid_t victim = FreezeALeaseHolderUntilItsLeaseExpires(d, b["id"]);
  ASSERT_GT(victim, 0) << "no worker could be caught holding a lease" << d.Log();
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  json jb = WaitTerminal(d, b["id"]);
  ASSERT_EQ(jb["state"], "JOB_STATE_SUCCEEDED") << jb.dump() << d.Log();

  const std::string metrics = HttpGet(d.metrics_port(), "/metrics");
  EXPECT_GE(MetricSum(metrics, "quantd_lease_expirations_total"), expired0 + 1) << d.Log();
  // The killed worker was restarted by the pool.
  EXPECT_NE(d.Log().find("exited"), std::string::npos) << d.Log();
  // Determinism: the rerun task produced the same bytes, so the artifacts are identical.
  json ma = ReadManifest(d.data_dir(), "undisturbed", 1), mb = ReadManifest(d.data_dir(), "disturbed", 1);
  ASSERT_TRUE(ma.is_object() && mb.is_object());
  EXPECT_FALSE(FileSha(ma, "model.safetensors").empty());
  EXPECT_EQ(FileSha(ma, "model.safetensors"), FileSha(mb, "model.safetensors"));
}

// --- Coordinator crash ----------------------------------------------------------------------

TEST(Reliability, CoordinatorKilledMidJobResumesWithoutRedoingTasks) {
  const std::string data = MakeTempDir("crash");
  std::string job_id;
  int total = 0, seen_done = 0;
  {
    // Tasks held 100 ms each (QUANTD_FAULT_TASK_DELAY_MS) keep the quantize phase open for
    // seconds after the 12th task, so the status poll below cannot miss the kill window.
    Daemon d1(2, {}, data, {"QUANTD_FAULT_TASK_DELAY_MS=100"});
    ASSERT_TRUE(d1.ok()) << d1.Log();
    json j = Submit(d1, QuipSharpJob("crashy", true));
    job_id = j["id"];
    json mid = WaitFor(d1, job_id, [](const json& s) {
      return Terminal(s) || (s.value("phase", "") == "quantize" && s.value("tasks_done", 0) >= 12);
    });
    ASSERT_EQ(mid.value("phase", ""), "quantize") << mid.dump();
    seen_done = mid["tasks_done"];
    total = mid["tasks_total"];
    d1.Kill(SIGKILL);  // the whole process group: coordinator and its workers
  }
  Daemon d2(2, {}, data);
  ASSERT_TRUE(d2.ok()) << d2.Log();
  json done = WaitTerminal(d2, job_id);
  ASSERT_EQ(done["state"], "JOB_STATE_SUCCEEDED") << done.dump() << d2.Log();
  // The restarted coordinator logged how many tasks it found finished; only the rest ran again.
  std::smatch m;
  const std::string log = d2.Log();
  const std::regex re("resuming job " + job_id + ": ([0-9]+)/([0-9]+) tasks already done");
  ASSERT_TRUE(std::regex_search(log, m, re)) << log;
  const int recovered = std::stoi(m[1]);
  EXPECT_EQ(std::stoi(m[2]), total);
  EXPECT_GE(recovered, seen_done);  // everything acknowledged before the crash survived it
  const std::string metrics = HttpGet(d2.metrics_port(), "/metrics");
  const double ran_after = MetricSum(metrics, "quantd_tasks_total", "outcome=\"ok\"");
  EXPECT_EQ(ran_after, total - recovered) << metrics;
  std::printf("coordinator crash: %d/%d tasks done at restart (%d seen before the kill), %g run "
              "after\n", recovered, total, seen_done, ran_after);
  // The manifest's perplexity is a real evaluation and the artifact verifies.
  json man = ReadManifest(data, "crashy", 1);
  ASSERT_TRUE(man.is_object());
  EXPECT_GT(man["perplexity"]["quantized"].get<double>(), man["perplexity"]["fp"].get<double>());
  const std::string out = MakeTempDir("crash-fetch");
  CommandResult f = d2.Quantctl({"fetch", "crashy", "-o", out});
  EXPECT_EQ(f.exit_code, 0) << f.out << f.err;
}

TEST(Reliability, ResumeIsRefusedWhenTheJobsInputsChanged) {
  const std::string data = MakeTempDir("refuse");
  std::string calib_job, model_job;
  {
    Daemon d1(0, {}, data);  // no workers: the jobs stay queued
    ASSERT_TRUE(d1.ok());
    calib_job = Submit(d1, QuipSharpJob("calib-changed", false))["id"];
    model_job = Submit(d1, QuipSharpJob("model-changed", false))["id"];
    d1.Kill(SIGKILL);
  }
  // Change one job's calibration snapshot and the other's model snapshot, in place.
  {
    std::fstream f(data + "/jobs/" + calib_job + "/inputs/calib.u32",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x07');
  }
  {
    const std::string cfg = data + "/jobs/" + model_job + "/inputs/model/config.json";
    auto text = ReadFile(cfg);
    ASSERT_TRUE(text.ok());
    fs::remove(cfg);  // the snapshot may be a hard link to the user's file: do not write through
    ASSERT_TRUE(WriteFileAtomic(cfg, *text + " ").ok());
  }
  Daemon d2(0, {}, data);
  ASSERT_TRUE(d2.ok()) << d2.Log();
  // The inputs are re-hashed on the engine thread after quantd starts serving (not before), so
  // the refusal shows within moments, not at once.
  json a = WaitTerminal(d2, calib_job, 60), b = WaitTerminal(d2, model_job, 60);
  EXPECT_EQ(a["state"], "JOB_STATE_FAILED");
  EXPECT_NE(a.value("error", "").find("calibration data changed"), std::string::npos) << a.dump();
  EXPECT_EQ(b["state"], "JOB_STATE_FAILED");
  EXPECT_NE(b.value("error", "").find("model files changed"), std::string::npos) << b.dump();
  // The daemon is fine and takes new work.
  EXPECT_EQ(d2.Quantctl({"jobs"}).exit_code, 0);
}

// --- Atomic artifacts -------------------------------------------------------------------------

TEST(Reliability, TransientDiskFullWhilePublishingIsRetried) {
  // The 1st and 2nd writes into the registry fail (half-written temp files, like ENOSPC).
  Daemon d(2, {}, "", {"QUANTD_FAULT_WRITE=/registry/:1-2"});
  ASSERT_TRUE(d.ok()) << d.Log();
  json j = Submit(d, RtnJob("flaky-disk"));
  json done = WaitTerminal(d, j["id"]);
  ASSERT_EQ(done["state"], "JOB_STATE_SUCCEEDED") << done.dump() << d.Log();
  EXPECT_NE(d.Log().find("step failed (attempt 1 of"), std::string::npos) << d.Log();
  EXPECT_TRUE(TmpFiles(d.data_dir() + "/registry").empty());
  const std::string out = MakeTempDir("flaky-fetch");
  CommandResult f = d.Quantctl({"fetch", "flaky-disk", "-o", out});
  EXPECT_EQ(f.exit_code, 0) << f.out << f.err;
}

TEST(Reliability, PersistentDiskFullLeavesNoVersionAndNoPartialFiles) {
  Daemon d(2, {}, "", {"QUANTD_FAULT_WRITE=/registry/:1-1000000"});
  ASSERT_TRUE(d.ok()) << d.Log();
  json j = Submit(d, RtnJob("full-disk"));
  json done = WaitTerminal(d, j["id"]);
  ASSERT_EQ(done["state"], "JOB_STATE_FAILED") << done.dump();
  EXPECT_NE(done.value("error", "").find("RESOURCE_EXHAUSTED"), std::string::npos) << done.dump();
  CommandResult m = d.Quantctl({"models", "full-disk", "--json"});
  EXPECT_EQ(m.exit_code, 0) << m.err;
  EXPECT_EQ(Parse(m.out), json::array()) << m.out;
  EXPECT_FALSE(fs::exists(d.data_dir() + "/registry/full-disk/1"));
  EXPECT_FALSE(fs::exists(d.data_dir() + "/registry/.staging/" + done["id"].get<std::string>()));
  EXPECT_TRUE(TmpFiles(d.data_dir() + "/registry").empty());
  CommandResult f = d.Quantctl({"fetch", "full-disk", "-o", MakeTempDir("nofetch")});
  EXPECT_EQ(f.exit_code, 1) << f.out << f.err;
  EXPECT_NE(f.err.find("NOT_FOUND"), std::string::npos) << f.err;
}

TEST(Reliability, RealFullFilesystemUnderTheRegistry) {
  const std::string data = MakeTempDir("tmpfs");
  const std::string reg = data + "/registry";
  fs::create_directories(reg);
  if (::mount("tmpfs", reg.c_str(), "tmpfs", 0, "size=96k") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno)
                 << "); the injected-fault tests cover the same paths";
  }
  // Unmounted however the test ends (an ASSERT returns early).
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{reg};
  {
    Daemon d(1, {}, data);
    ASSERT_TRUE(d.ok()) << d.Log();
    json j = Submit(d, RtnJob("too-big"));
    json done = WaitTerminal(d, j["id"]);
    EXPECT_EQ(done["state"], "JOB_STATE_FAILED") << done.dump();
    EXPECT_NE(done.value("error", "").find("RESOURCE_EXHAUSTED"), std::string::npos) << done.dump();
    EXPECT_FALSE(fs::exists(reg + "/too-big/1"));
    EXPECT_TRUE(TmpFiles(reg).empty());
    EXPECT_EQ(d.Quantctl({"jobs"}).exit_code, 0);  // still serving
  }
}

TEST(Reliability, FetchOfAFileChangedOnDiskIsDataLoss) {
  Daemon d(2);
  ASSERT_TRUE(d.ok());
  json j = Submit(d, RtnJob("bitrot"));
  ASSERT_EQ(WaitTerminal(d, j["id"])["state"], "JOB_STATE_SUCCEEDED");
  const std::string file = d.data_dir() + "/registry/bitrot/1/model.safetensors";
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(4096);
    const char c = static_cast<char>(f.get());
    f.seekp(4096);
    f.put(static_cast<char>(c ^ 0x10));  // same size, one bit flipped
  }
  CommandResult f = d.Quantctl({"fetch", "bitrot", "-o", MakeTempDir("rot")});
  EXPECT_EQ(f.exit_code, 1) << f.out << f.err;
  EXPECT_NE(f.err.find("DATA_LOSS"), std::string::npos) << f.err;
  EXPECT_EQ(d.Quantctl({"models"}).exit_code, 0);
}

// --- Memory admission -------------------------------------------------------------------------

TEST(Reliability, WorkersOnlyTakeTasksThatFitTheirMemory) {
  Daemon d(0);
  ASSERT_TRUE(d.ok());
  const std::string worker = BinaryDir() + "/quantd-worker";
  // A worker offering 16 MiB: less than any task's estimate (64 MiB process baseline + data).
  pid_t small = SpawnLogged({worker, "--coordinator=" + d.addr(), "--name=small",
                             "--cache_dir=" + MakeTempDir("small"), "--memory_mb=16", "--threads=1"},
                            d.data_dir() + "/small.log");
  json j = Submit(d, RtnJob("admission"));
  std::this_thread::sleep_for(std::chrono::seconds(3));
  json s = Status(d, j["id"]);
  EXPECT_EQ(s.value("tasks_done", -1), 0) << s.dump();
  EXPECT_NE(d.Log().find("worker small offers 16 MiB"), std::string::npos) << d.Log();
  pid_t big = SpawnLogged({worker, "--coordinator=" + d.addr(), "--name=big",
                           "--cache_dir=" + MakeTempDir("big"), "--threads=1"},
                          d.data_dir() + "/big.log");
  json done = WaitTerminal(d, j["id"]);
  EXPECT_EQ(done["state"], "JOB_STATE_SUCCEEDED") << done.dump();
  const std::string metrics = HttpGet(d.metrics_port(), "/metrics");
  EXPECT_EQ(MetricSum(metrics, "quantd_worker_tasks_completed_total", "worker=\"small\""), 0);
  EXPECT_GT(MetricSum(metrics, "quantd_worker_tasks_completed_total", "worker=\"big\""), 0);
  for (pid_t p : {small, big}) {
    ::kill(p, SIGTERM);
    ::waitpid(p, nullptr, 0);
  }
}

// --- Hostile requests -------------------------------------------------------------------------

TEST(Reliability, MalformedRequestsGetClearErrorsAndTheDaemonSurvives) {
  Daemon d(0);
  ASSERT_TRUE(d.ok());
  const std::string tmp = MakeTempDir("hostile");
  // A model directory whose config claims absurd dimensions.
  fs::create_directories(tmp + "/huge");
  fs::copy_file(ExampleModel() + "/model.safetensors", tmp + "/huge/model.safetensors");
  {
    auto cfg = Parse(*ReadFile(ExampleModel() + "/config.json"));
    cfg["hidden_size"] = 1 << 30;
    cfg["intermediate_size"] = -5;
    std::ofstream(tmp + "/huge/config.json") << cfg.dump();
  }
  fs::create_directories(tmp + "/nocfg");
  std::ofstream(tmp + "/empty.u16").close();
  std::ofstream(tmp + "/odd.u16") << "abc";  // 3 bytes: not a whole number of u16
  struct Case {
    std::string what;
    std::vector<std::string> args;
    std::string expect;  // substring of quantctl's stderr
  };
  const std::string long_name(10000, 'n');
  std::vector<Case> cases = {
      {"path traversal in the name", {ExampleModel(), "--calib", ExampleCalib(), "--name", "../../etc"}, "name"},
      {"slash in the name", {ExampleModel(), "--calib", ExampleCalib(), "--name", "a/b"}, "name"},
      {"10k-character name", {ExampleModel(), "--calib", ExampleCalib(), "--name", long_name}, "name"},
      {"unknown method", {ExampleModel(), "--calib", ExampleCalib(), "--name", "x", "--method", "zip"}, "method"},
      {"bits out of range",
       {ExampleModel(), "--calib", ExampleCalib(), "--name", "x", "--method", "quip-sharp", "--bits", "7"},
       "bits"},
      {"negative group size",
       {ExampleModel(), "--calib", ExampleCalib(), "--name", "x", "--method", "rtn", "--bits", "4",
        "--group-size", "-64"},
       "group"},
      {"missing model dir", {tmp + "/nope", "--calib", ExampleCalib(), "--name", "x"}, "NOT_FOUND"},
      {"model dir without config", {tmp + "/nocfg", "--calib", ExampleCalib(), "--name", "x"}, "config"},
      {"huge dims in config.json", {tmp + "/huge", "--calib", ExampleCalib(), "--name", "x"}, "hidden_size"},
      {"empty calibration file", {ExampleModel(), "--calib", tmp + "/empty.u16", "--name", "x"}, "empty"},
      {"ragged calibration file", {ExampleModel(), "--calib", tmp + "/odd.u16", "--name", "x"}, "multiple"},
      {"calibration is a directory", {ExampleModel(), "--calib", tmp, "--name", "x"}, "INVALID_ARGUMENT"},
      {"model weights as calibration",
       {ExampleModel(), "--calib", ExampleModel() + "/model.safetensors", "--name", "x"}, "INVALID_ARGUMENT"},
  };
  int tried = 0;
  for (const Case& c : cases) {
    std::vector<std::string> a = {"submit"};
    a.insert(a.end(), c.args.begin(), c.args.end());
    // Cases that are not about the method or bits use a valid pair.
    if (std::find(a.begin(), a.end(), "--method") == a.end()) {
      a.insert(a.end(), {"--method", "rtn"});
    }
    if (std::find(a.begin(), a.end(), "--bits") == a.end()) a.insert(a.end(), {"--bits", "4"});
    CommandResult r = d.Quantctl(a, 60);
    ++tried;
    EXPECT_TRUE(r.exit_code == 1 || r.exit_code == 2) << c.what << ": exit " << r.exit_code;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.what << ": " << r.err;
    ASSERT_EQ(d.Quantctl({"jobs"}, 30).exit_code, 0) << "daemon died after: " << c.what;
  }
  // Path traversal through the registry API: fetch of a name or version that tries to escape.
  for (const std::string& ref : {"../jobs", "..", "a/../../b", "x@-1"}) {
    CommandResult r = d.Quantctl({"fetch", ref, "-o", tmp + "/out"}, 30);
    ++tried;
    EXPECT_NE(r.exit_code, 0) << ref;
    ASSERT_EQ(d.Quantctl({"jobs"}, 30).exit_code, 0) << "daemon died after fetch " << ref;
  }
  std::printf("malformed requests tried: %d, all rejected, daemon alive\n", tried);
  EXPECT_EQ(Parse(d.Quantctl({"jobs", "--json"}).out), json::array());  // nothing was accepted
}

// --- Load (slow tier) ---------------------------------------------------------------------------

TEST(ReliabilitySlow, FiftyConcurrentSubmissionsCompleteExactlyOnce) {
  if (std::getenv("QUANTD_SLOW_TESTS") == nullptr) {
    GTEST_SKIP() << "slow tier: set QUANTD_SLOW_TESTS=1 (scripts/test.sh --slow)";
  }
  Daemon d(2);
  ASSERT_TRUE(d.ok());
  auto channel = grpc::CreateChannel(d.addr(), grpc::InsecureChannelCredentials());
  auto stub = quantd::v1::QuantService::NewStub(channel);
  // 50 submissions from 50 threads: 40 distinct requests, 10 of them sent twice.
  constexpr int kUnique = 40, kTotal = 50;
  std::vector<quantd::v1::SubmitJobResponse> responses(kTotal);
  std::vector<grpc::Status> statuses(kTotal);
  std::vector<std::thread> threads;
  for (int i = 0; i < kTotal; ++i) {
    threads.emplace_back([&, i] {
      const int u = i % kUnique;
      quantd::v1::SubmitJobRequest req;
      req.set_request_id("load-req-" + std::to_string(u));
      req.set_name("load-" + std::to_string(u));
      req.set_model_dir(ExampleModel());
      req.set_calib_path(ExampleCalib());
      req.set_max_calib_seqs(4);
      req.mutable_spec()->set_method("rtn");
      req.mutable_spec()->set_bits(4);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
      statuses[i] = stub->SubmitJob(&ctx, req, &responses[i]);
    });
  }
  // Meanwhile: GetJob latency under load.
  std::atomic<bool> stop{false};
  std::vector<double> latencies_ms;
  std::thread prober([&] {
    while (!stop.load()) {
      quantd::v1::GetJobRequest req;
      req.set_id("j-does-not-matter");
      quantd::v1::Job job;
      grpc::ClientContext ctx;
      const auto t0 = std::chrono::steady_clock::now();
      stub->GetJob(&ctx, req, &job);
      latencies_ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  for (auto& t : threads) t.join();
  std::map<int, std::string> job_of;
  int created = 0;
  for (int i = 0; i < kTotal; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    created += responses[i].created();
    const int u = i % kUnique;
    if (job_of.count(u)) {
      EXPECT_EQ(job_of[u], responses[i].job().id()) << "request " << u << " made two jobs";
    } else {
      job_of[u] = responses[i].job().id();
    }
  }
  EXPECT_EQ(created, kUnique);
  for (const auto& [u, id] : job_of) {
    json j = WaitTerminal(d, id, 1800);
    EXPECT_EQ(j["state"], "JOB_STATE_SUCCEEDED") << j.dump();
  }
  stop = true;
  prober.join();
  // Exactly one job and one published version per distinct request.
  json jobs = Parse(d.Quantctl({"jobs", "--json"}).out);
  EXPECT_EQ(jobs.size(), static_cast<size_t>(kUnique));
  for (int u = 0; u < kUnique; ++u) {
    const std::string dir = d.data_dir() + "/registry/load-" + std::to_string(u);
    EXPECT_TRUE(fs::exists(dir + "/1/manifest.json")) << dir;
    EXPECT_FALSE(fs::exists(dir + "/2")) << dir;
  }
  std::sort(latencies_ms.begin(), latencies_ms.end());
  ASSERT_FALSE(latencies_ms.empty());
  const double p50 = latencies_ms[latencies_ms.size() / 2];
  const double p99 = latencies_ms[std::min(latencies_ms.size() - 1, latencies_ms.size() * 99 / 100)];
  std::printf("load: %d submissions (%d distinct), %zu GetJob probes: p50 %.2f ms, p99 %.2f ms, "
              "max %.2f ms\n", kTotal, kUnique, latencies_ms.size(), p50, p99, latencies_ms.back());
}

}  // namespace
}  // namespace quantd::testing
