// End-to-end: bearer tokens and TLS / mutual TLS with real quantd, quantd-worker and quantctl
// processes on loopback. Certificates are made at test time with the openssl CLI: a CA, a
// server certificate for IP:127.0.0.1 and DNS:localhost, a client certificate from the same CA
// and one from another CA.
#include <dirent.h>
#include <sys/wait.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "absl/strings/escaping.h"
#include "auth/channel.h"
#include "common/file_util.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/process_util.h"

namespace quantd::testing {
namespace {

constexpr char kToken[] = "right-token-0123456789abcdef";
constexpr char kWrongToken[] = "wrong-token-0123456789abcdef";
// Lines of the shared token file with scopes (the two above have none: the default scopes).
constexpr char kReaderToken[] = "reader-token-0123456789abcdef";    // scopes=read
constexpr char kWorkerToken[] = "worker-token-0123456789abcdef";    // scopes=worker
constexpr char kTeamAToken[] = "team-a-token-0123456789abcdef";     // tenant=team-a.
constexpr char kMetricsToken[] = "metrics-token-0123456789abcdef";  // scopes=metrics

std::string Model() { return SourceDir() + "/examples/stories260K"; }
std::string Calib() { return SourceDir() + "/examples/tinystories/calib_stories_0_499.u16"; }

// Test files shared by every test: certificates and token files.
struct Files {
  std::string dir;
  std::string Path(const std::string& name) const { return dir + "/" + name; }
};
Files* files = nullptr;

void WriteFile(const std::string& path, const std::string& text, mode_t mode) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
}

// Makes the certificates with openssl; returns its output on failure, "" on success.
std::string MakeCertificates(const std::string& dir) {
  const std::string script = R"(set -e
cd ")" + dir + R"("
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {  # name
  key $1.key
  openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj "/CN=quantd test $1"
}
leaf() {  # name ca extensions [subject]
  key $1.key
  openssl req -new -key $1.key -out $1.csr -subj "${4:-/CN=quantd test $1}"
  printf '%s\n' "$3" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -CAserial $2.srl \
    -out $1.pem -days 2 -extfile $1.ext 2>/dev/null
}
ca ca
ca other-ca
leaf server ca "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth"
leaf client ca "extendedKeyUsage=clientAuth"
leaf stranger other-ca "extendedKeyUsage=clientAuth"
leaf reader ca "extendedKeyUsage=clientAuth" "/CN=cert-reader/OU=quantd:read"
)";
  CommandResult r = Run({"/bin/sh", "-c", script});
  return r.exit_code == 0 ? "" : r.out + r.err;
}

class AuthTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    files = new Files{MakeTempDir("auth")};
    setup_error_ = MakeCertificates(files->dir);
    WriteFile(files->Path("tokens"),
              std::string("# quantd tokens\n\n") + kToken + "  tester\n" +
                  "another-token-0123456789 ci runner\n" + kReaderToken +
                  " reader scopes=read\n" + kWorkerToken + " remote gpu scopes=worker\n" +
                  kTeamAToken + " team a scopes=submit,read,admin tenant=team-a.\n" +
                  kMetricsToken + " prometheus scopes=metrics\n",
              0600);
    WriteFile(files->Path("client-token"), std::string(kToken) + "\n", 0600);
    WriteFile(files->Path("wrong-token"), std::string(kWrongToken) + "\n", 0600);
    WriteFile(files->Path("reader-token"), std::string(kReaderToken) + "\n", 0600);
    WriteFile(files->Path("worker-token"), std::string(kWorkerToken) + "\n", 0600);
    WriteFile(files->Path("team-a-token"), std::string(kTeamAToken) + "\n", 0600);
  }
  static void TearDownTestSuite() {
    RemoveAll(files->dir).IgnoreError();
    delete files;
    files = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, "") << "openssl failed"; }
  static std::string setup_error_;
};
std::string AuthTest::setup_error_;

// quantctl against `d` with extra leading flags and environment entries.
CommandResult Ctl(const Daemon& d, const std::vector<std::string>& flags,
                  const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv = {BinaryDir() + "/quantctl", "--addr", d.addr()};
  argv.insert(argv.end(), flags.begin(), flags.end());
  argv.insert(argv.end(), args.begin(), args.end());
  return Run(argv, env, 120);
}

// A small job to the end: rtn 4-bit on stories260K, one calibration sequence, no evaluation
// (every phase runs on the local worker, in about 2 s).
CommandResult SmallJob(const Daemon& d, const std::vector<std::string>& flags,
                       const std::string& name) {
  return Ctl(d, flags,
             {"submit", Model(), "--calib", Calib(), "--method", "rtn", "--bits", "4",
              "--max-calib-seqs", "1", "--name", name, "--wait"});
}

// grpc.health.v1.Health/Check written out by hand (a generic call; HealthCheckRequest{} is
// empty, SERVING is field 1 = 1, i.e. bytes 08 01).
grpc::Status HealthCheck(const std::string& addr, const auth::ChannelSecurity& sec,
                         std::string* response) {
  auto channel = auth::MakeChannel(addr, sec, grpc::ChannelArguments(), "--tls-");
  if (!channel.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, channel.status().ToString());
  grpc::GenericStub stub(*channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice empty;
  grpc::ByteBuffer req(&empty, 1), resp;
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", req, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(&resp, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  std::vector<grpc::Slice> slices;
  if (status.ok() && resp.Dump(&slices).ok()) {
    for (const auto& s : slices) response->append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return status;
}

// Command lines of every process whose command line mentions `needle`.
std::vector<std::string> CommandLinesWith(const std::string& needle) {
  std::vector<std::string> out;
  DIR* proc = ::opendir("/proc");
  while (dirent* e = proc ? ::readdir(proc) : nullptr) {
    std::ifstream f(std::string("/proc/") + e->d_name + "/cmdline");
    std::stringstream ss;
    ss << f.rdbuf();
    std::string cmd = ss.str();
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(needle) != std::string::npos) out.push_back(cmd);
  }
  if (proc) ::closedir(proc);
  return out;
}

TEST_F(AuthTest, StartupRefusesBadTokenFiles) {
  const std::string data = MakeTempDir("auth_data");
  WriteFile(files->Path("open-tokens"), std::string(kToken) + "\n", 0644);
  WriteFile(files->Path("empty-tokens"), "# nothing here\n\n", 0600);
  for (const auto& [file, expected] :
       std::vector<std::pair<std::string, std::string>>{
           {files->Path("open-tokens"), "chmod 600"},
           {files->Path("empty-tokens"), "no tokens"},
           {files->Path("missing-tokens"), "No such file"}}) {
    CommandResult r = testing::Run({BinaryDir() + "/quantd", "--listen=127.0.0.1:0", "--metrics_listen=",
                           "--data_dir=" + data, "--local_workers=0", "--auth_token_file=" + file},
                          {}, 30);
    EXPECT_EQ(r.exit_code, 1) << file << "\n" << r.err;
    EXPECT_NE(r.err.find(expected), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find(kToken), std::string::npos) << "a token was logged:\n" << r.err;
  }
  RemoveAll(data).IgnoreError();
}

TEST_F(AuthTest, BearerTokens) {
  Daemon d(1, {"--auth_token_file=" + files->Path("tokens")});
  ASSERT_TRUE(d.ok()) << d.Log();

  CommandResult none = Ctl(d, {}, {"jobs"});
  EXPECT_EQ(none.exit_code, 1) << none.err;
  EXPECT_NE(none.err.find("UNAUTHENTICATED: no token sent"), std::string::npos) << none.err;

  CommandResult wrong = Ctl(d, {}, {"jobs"}, {"QUANTD_TOKEN=" + std::string(kWrongToken)});
  EXPECT_EQ(wrong.exit_code, 1) << wrong.err;
  EXPECT_NE(wrong.err.find("PERMISSION_DENIED: token rejected"), std::string::npos) << wrong.err;

  CommandResult env = Ctl(d, {}, {"jobs"}, {"QUANTD_TOKEN=" + std::string(kToken)});
  EXPECT_EQ(env.exit_code, 0) << env.err;
  CommandResult flag = Ctl(d, {"--token-file", files->Path("client-token")}, {"models"});
  EXPECT_EQ(flag.exit_code, 0) << flag.err;

  // Probes need no token.
  std::string health;
  grpc::Status hs = HealthCheck(d.addr(), {}, &health);
  EXPECT_TRUE(hs.ok()) << hs.error_message();
  EXPECT_EQ(health, std::string("\x08\x01", 2));  // SERVING

  // A remote worker with a wrong or no token cannot register, and says why.
  const std::string cache = MakeTempDir("auth_worker");
  CommandResult w = testing::Run({BinaryDir() + "/quantd-worker", "--coordinator=" + d.addr(),
                         "--cache_dir=" + cache, "--threads=1",
                         "--auth_token_file=" + files->Path("wrong-token")},
                        {}, 60);
  EXPECT_EQ(w.exit_code, 1) << w.err;
  EXPECT_NE(w.err.find("PERMISSION_DENIED"), std::string::npos) << w.err;
  CommandResult anon = testing::Run({BinaryDir() + "/quantd-worker", "--coordinator=" + d.addr(),
                            "--cache_dir=" + cache, "--threads=1"},
                           {}, 60);
  EXPECT_EQ(anon.exit_code, 1) << anon.err;
  EXPECT_NE(anon.err.find("UNAUTHENTICATED"), std::string::npos) << anon.err;
  RemoveAll(cache).IgnoreError();

  // The local worker authenticates with a token quantd made for it: a job completes.
  CommandResult job = SmallJob(d, {"--token-file", files->Path("client-token")}, "auth-rtn4");
  EXPECT_EQ(job.exit_code, 0) << job.out << job.err << d.Log();

  // That token sits in a 0600 file; no command line (what `ps` shows) contains it.
  const std::string local_token_file = d.data_dir() + "/local-worker.token";
  struct stat st;
  ASSERT_EQ(::stat(local_token_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::ifstream tf(local_token_file);
  std::string line, local_token;
  while (std::getline(tf, line)) {
    if (!line.empty() && line[0] != '#') local_token = line.substr(0, line.find(' '));
  }
  ASSERT_EQ(local_token.size(), 64u);
  const std::vector<std::string> cmds = CommandLinesWith(d.data_dir());
  EXPECT_GE(cmds.size(), 2u);  // quantd and its worker
  for (const std::string& cmd : cmds) {
    EXPECT_EQ(cmd.find(local_token), std::string::npos) << cmd;
    EXPECT_EQ(cmd.find(kToken), std::string::npos) << cmd;
  }
  // The log names who called, never a token.
  const std::string log = d.Log();
  EXPECT_NE(log.find("first call with token \"tester\""), std::string::npos) << log;
  EXPECT_NE(log.find("first call with token \"quantd local workers\""), std::string::npos) << log;
  EXPECT_EQ(log.find(kToken), std::string::npos);
  EXPECT_EQ(log.find(kWrongToken), std::string::npos);
  EXPECT_EQ(log.find(local_token), std::string::npos);
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Waits up to `seconds` for `needle` in the file at `path`.
bool WaitForText(const std::string& path, const std::string& needle, int seconds) {
  for (int i = 0; i < seconds * 10; ++i) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    if (Contains(ss.str(), needle)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// Issue 25, step 2: a client credential registered as a worker and published its results. Now
// the WorkerService needs the worker scope, which client tokens never get by default.
TEST_F(AuthTest, ClientTokenCannotRegisterAsAWorker) {
  Daemon d(0, {"--auth_token_file=" + files->Path("tokens")});
  ASSERT_TRUE(d.ok()) << d.Log();
  const std::string cache = MakeTempDir("auth_worker");
  CommandResult client = testing::Run(
      {BinaryDir() + "/quantd-worker", "--coordinator=" + d.addr(), "--cache_dir=" + cache,
       "--threads=1", "--auth_token_file=" + files->Path("client-token")},
      {}, 60);
  EXPECT_EQ(client.exit_code, 1) << client.err;
  EXPECT_TRUE(Contains(client.err, "PERMISSION_DENIED")) << client.err;
  EXPECT_TRUE(Contains(client.err,
                       "token \"tester\" lacks scope \"worker\" needed by "
                       "/quantd.v1.WorkerService/Register"))
      << client.err;
  EXPECT_TRUE(Contains(d.Log(), "/quantd.v1.WorkerService/Register refused: token \"tester\" "
                                "lacks scope worker"))
      << d.Log();
  // A token with the worker scope registers.
  const std::string log = cache + "/worker.log";
  pid_t w = SpawnLogged({BinaryDir() + "/quantd-worker", "--coordinator=" + d.addr(),
                         "--cache_dir=" + cache, "--threads=1", "--name=remote-gpu",
                         "--auth_token_file=" + files->Path("worker-token")},
                        log);
  EXPECT_TRUE(WaitForText(log, "registered as", 60)) << log;
  ::kill(w, SIGTERM);
  ::waitpid(w, nullptr, 0);
  // ...and is not a client: it cannot read jobs.
  CommandResult as_client = Ctl(d, {"--token-file", files->Path("worker-token")}, {"jobs"});
  EXPECT_EQ(as_client.exit_code, 1);
  EXPECT_TRUE(Contains(as_client.err, "PERMISSION_DENIED: token \"remote gpu\" lacks scope "
                                      "\"read\""))
      << as_client.err;
  RemoveAll(cache).IgnoreError();
}

// Scopes and tenants through quantctl, each with an allowed and a denied call; every submit,
// fetch, cancel and delete leaves an audit line naming the caller.
TEST_F(AuthTest, ScopesAndTenants) {
  Daemon d(1, {"--auth_token_file=" + files->Path("tokens")});
  ASSERT_TRUE(d.ok()) << d.Log();
  const std::vector<std::string> tester = {"--token-file", files->Path("client-token")};
  const std::vector<std::string> reader = {"--token-file", files->Path("reader-token")};
  const std::vector<std::string> team_a = {"--token-file", files->Path("team-a-token")};

  // read: reads yes, submit no (the message names the caller, the scope and the method).
  EXPECT_EQ(Ctl(d, reader, {"jobs"}).exit_code, 0);
  CommandResult submit = Ctl(d, reader,
                             {"submit", Model(), "--calib", Calib(), "--method", "rtn", "--bits",
                              "4", "--name", "reader-job"});
  EXPECT_EQ(submit.exit_code, 1) << submit.err;
  EXPECT_TRUE(Contains(submit.err, "quantctl: PERMISSION_DENIED: token \"reader\" lacks scope "
                                   "\"submit\" needed by /quantd.v1.QuantService/SubmitJob "
                                   "(it has: read)"))
      << submit.err;

  // Tenants: team A submits under its prefix, not outside it.
  CommandResult mine = SmallJob(d, team_a, "team-a.rtn4");
  EXPECT_EQ(mine.exit_code, 0) << mine.out << mine.err << d.Log();
  CommandResult outside = SmallJob(d, team_a, "shared-rtn4");
  EXPECT_EQ(outside.exit_code, 1) << outside.err;
  EXPECT_TRUE(Contains(outside.err, "PERMISSION_DENIED: \"team a\" is limited to models whose "
                                    "names start with \"team-a.\""))
      << outside.err;
  CommandResult shared = SmallJob(d, tester, "shared-rtn4");
  EXPECT_EQ(shared.exit_code, 0) << shared.out << shared.err;

  // Team A sees and fetches only its models and jobs.
  CommandResult models = Ctl(d, team_a, {"models"});
  EXPECT_EQ(models.exit_code, 0) << models.err;
  EXPECT_TRUE(Contains(models.out, "team-a.rtn4")) << models.out;
  EXPECT_FALSE(Contains(models.out, "shared-rtn4")) << models.out;
  CommandResult jobs = Ctl(d, team_a, {"jobs"});
  EXPECT_TRUE(Contains(jobs.out, "team-a.rtn4")) << jobs.out;
  EXPECT_FALSE(Contains(jobs.out, "shared-rtn4")) << jobs.out;
  EXPECT_TRUE(Contains(Ctl(d, tester, {"jobs"}).out, "shared-rtn4"));
  const std::string out = MakeTempDir("auth_fetch");
  EXPECT_EQ(Ctl(d, team_a, {"fetch", "team-a.rtn4", "-o", out + "/mine"}).exit_code, 0);
  CommandResult theirs = Ctl(d, team_a, {"fetch", "shared-rtn4", "-o", out + "/theirs"});
  EXPECT_EQ(theirs.exit_code, 1) << theirs.err;
  EXPECT_TRUE(Contains(theirs.err, "PERMISSION_DENIED")) << theirs.err;
  RemoveAll(out).IgnoreError();

  // admin: deletes need it (reader lacks it), and a tenant deletes only its own models.
  CommandResult reader_delete = Ctl(d, reader, {"delete", "team-a.rtn4@1"});
  EXPECT_EQ(reader_delete.exit_code, 1);
  EXPECT_TRUE(Contains(reader_delete.err, "lacks scope \"admin\"")) << reader_delete.err;
  CommandResult cross_delete = Ctl(d, team_a, {"delete", "shared-rtn4@1"});
  EXPECT_EQ(cross_delete.exit_code, 1);
  EXPECT_TRUE(Contains(cross_delete.err, "PERMISSION_DENIED")) << cross_delete.err;
  EXPECT_EQ(Ctl(d, team_a, {"delete", "team-a.rtn4@1"}).exit_code, 0);
  EXPECT_EQ(Ctl(d, tester, {"delete", "shared-rtn4@1"}).exit_code, 0);
  EXPECT_EQ(Ctl(d, tester, {"cancel", "j-no-such-job"}).exit_code, 1);

  // The audit log names the caller of every submit, fetch, cancel and delete, allowed or not.
  const std::string log = d.Log();
  for (const std::string& line :
       {"quantd: audit: submit by \"team a\" (tenant team-a., ",
        "quantd: audit: fetch by \"team a\" (tenant team-a., ",
        "quantd: audit: delete by \"team a\" (tenant team-a., ",
        "quantd: audit: submit by \"tester\" (", "quantd: audit: delete by \"tester\" (",
        "quantd: audit: cancel by \"tester\" ("}) {
    EXPECT_TRUE(Contains(log, line)) << line << "\n" << log;
  }
  EXPECT_TRUE(Contains(log, "name=shared-rtn4 model_dir=" + Model() + " calib=" + Calib() +
                                ": PERMISSION_DENIED: \"team a\" is limited"))
      << log;
  EXPECT_FALSE(Contains(log, kTeamAToken));
}

// Issue 25, step 1: a job read a secret file. Inputs must now resolve inside an --input_root.
TEST_F(AuthTest, InputsOutsideEveryRootAreRefused) {
  const std::string inputs = MakeTempDir("auth_inputs");
  const std::string elsewhere = MakeTempDir("auth_secret");
  WriteFile(elsewhere + "/secret.txt", "root:x:0:0:root:/root:/bin/bash\n", 0644);
  ASSERT_EQ(::symlink((elsewhere + "/secret.txt").c_str(), (inputs + "/calib.txt").c_str()), 0);
  ASSERT_EQ(::symlink(Calib().c_str(), (inputs + "/calib.u16").c_str()), 0);
  Daemon d(1, {"--input_root=" + SourceDir() + "/examples", "--input_root=" + inputs});
  ASSERT_TRUE(d.ok()) << d.Log();
  auto submit = [&](const std::string& model, const std::string& calib, const std::string& name) {
    return Ctl(d, {}, {"submit", model, "--calib", calib, "--method", "rtn", "--bits", "4",
                       "--max-calib-seqs", "1", "--name", name, "--wait"});
  };
  CommandResult secret = submit(Model(), elsewhere + "/secret.txt", "leak");
  EXPECT_EQ(secret.exit_code, 1) << secret.err;
  EXPECT_TRUE(Contains(secret.err, "PERMISSION_DENIED: calibration file " + elsewhere +
                                       "/secret.txt is outside every --input_root"))
      << secret.err;
  CommandResult link = submit(Model(), inputs + "/calib.txt", "leak");
  EXPECT_EQ(link.exit_code, 1) << link.err;
  EXPECT_TRUE(Contains(link.err, "PERMISSION_DENIED: calibration file " + inputs +
                                     "/calib.txt resolves to " + elsewhere + "/secret.txt"))
      << link.err;
  CommandResult model = submit(elsewhere, Calib(), "leak");
  EXPECT_EQ(model.exit_code, 1) << model.err;
  EXPECT_TRUE(Contains(model.err, "PERMISSION_DENIED: model directory")) << model.err;
  // A symlink inside a root to a file inside another root is fine: the job runs.
  CommandResult ok = submit(Model(), inputs + "/calib.u16", "linked-calib");
  EXPECT_EQ(ok.exit_code, 0) << ok.out << ok.err << d.Log();
  EXPECT_TRUE(Contains(d.Log(), "quantd: audit: submit by \"anonymous\" (")) << d.Log();

  // Without a root every submission is refused, saying how to configure one.
  Daemon none(0, {"--allow_any_input_path=false"});
  ASSERT_TRUE(none.ok()) << none.Log();
  CommandResult refused = Ctl(none, {}, {"submit", Model(), "--calib", Calib(), "--method", "rtn",
                                         "--bits", "4", "--name", "x"});
  EXPECT_EQ(refused.exit_code, 1) << refused.err;
  EXPECT_TRUE(Contains(refused.err, "FAILED_PRECONDITION")) << refused.err;
  EXPECT_TRUE(Contains(refused.err, "--input_root=DIR")) << refused.err;
  EXPECT_TRUE(Contains(none.Log(), "no --input_root")) << none.Log();
  RemoveAll(inputs).IgnoreError();
  RemoveAll(elsewhere).IgnoreError();
}

// --metrics_require_token: /metrics answers only HTTP Basic auth with a metrics-scope token.
TEST_F(AuthTest, MetricsCanRequireAToken) {
  Daemon d(0, {"--auth_token_file=" + files->Path("tokens"), "--metrics_require_token"});
  ASSERT_TRUE(d.ok()) << d.Log();
  auto basic = [](const std::string& password) {
    std::string encoded;
    absl::Base64Escape("prometheus:" + password, &encoded);
    return "Authorization: Basic " + encoded + "\r\n";
  };
  const std::string anonymous = HttpGetRaw(d.metrics_port(), "/metrics", "");
  EXPECT_TRUE(Contains(anonymous, " 401 ")) << anonymous;
  EXPECT_FALSE(Contains(anonymous, "quantd_jobs"));
  const std::string client = HttpGetRaw(d.metrics_port(), "/metrics", basic(kToken));
  EXPECT_TRUE(Contains(client, " 401 ")) << client;  // a client token lacks the metrics scope
  const std::string scraper = HttpGetRaw(d.metrics_port(), "/metrics", basic(kMetricsToken));
  EXPECT_TRUE(Contains(scraper, " 200 ")) << scraper;
  EXPECT_TRUE(Contains(scraper, "quantd_jobs")) << scraper;
  // Without a token file the flag cannot work: quantd refuses to start.
  CommandResult r = testing::Run({BinaryDir() + "/quantd", "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                                  "--data_dir=" + d.data_dir() + "/other", "--local_workers=0",
                                  "--metrics_require_token"},
                                 {}, 30);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "--metrics_require_token needs --auth_token_file")) << r.err;
}

// Token rotation without a restart: SIGHUP makes quantd re-read --auth_token_file. A file that
// no longer loads changes nothing; the local workers' own token survives every reload.
TEST_F(AuthTest, SighupReloadsTheTokenFile) {
  constexpr char kNewToken[] = "rotated-token-0123456789abcdef";
  const std::string path = files->Path("rotating-tokens");
  WriteFile(path, std::string(kToken) + " tester\n", 0600);
  Daemon d(1, {"--auth_token_file=" + path});
  ASSERT_TRUE(d.ok()) << d.Log();
  const std::string old_env = "QUANTD_TOKEN=" + std::string(kToken);
  const std::string new_env = "QUANTD_TOKEN=" + std::string(kNewToken);
  EXPECT_EQ(Ctl(d, {}, {"jobs"}, {old_env}).exit_code, 0);
  EXPECT_EQ(Ctl(d, {}, {"jobs"}, {new_env}).exit_code, 1);

  // Rotate: the file now holds only the new token.
  WriteFile(path + ".tmp", std::string(kNewToken) + " rotated\n", 0600);
  ASSERT_EQ(std::rename((path + ".tmp").c_str(), path.c_str()), 0);
  ASSERT_EQ(::kill(d.pid(), SIGHUP), 0);  // quantd only, not its workers
  CommandResult fresh;
  for (int i = 0; i < 100; ++i) {  // the reload runs on quantd's signal thread
    fresh = Ctl(d, {}, {"jobs"}, {new_env});
    if (fresh.exit_code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(fresh.exit_code, 0) << fresh.err << d.Log();
  CommandResult stale = Ctl(d, {}, {"jobs"}, {old_env});
  EXPECT_EQ(stale.exit_code, 1);
  EXPECT_NE(stale.err.find("PERMISSION_DENIED: token rejected"), std::string::npos) << stale.err;
  EXPECT_NE(d.Log().find("SIGHUP: now accepting the 1 token(s)"), std::string::npos) << d.Log();

  // A world-readable file is refused at reload as at startup: the current token stays valid.
  ::chmod(path.c_str(), 0644);
  ASSERT_EQ(::kill(d.pid(), SIGHUP), 0);
  for (int i = 0; i < 100 && d.Log().find("reloading") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(d.Log().find("failed, the previous 1 token(s) stay accepted"), std::string::npos)
      << d.Log();
  EXPECT_EQ(Ctl(d, {}, {"jobs"}, {new_env}).exit_code, 0);

  // The local worker still authenticates (its token is kept across reloads): a job completes.
  CommandResult job =
      Ctl(d, {},
          {"submit", Model(), "--calib", Calib(), "--method", "rtn", "--bits", "4",
           "--max-calib-seqs", "1", "--name", "auth-after-reload", "--wait"},
          {new_env});
  EXPECT_EQ(job.exit_code, 0) << job.out << job.err << d.Log();
  EXPECT_EQ(d.Log().find(kNewToken), std::string::npos);  // tokens are never logged
}

TEST_F(AuthTest, Tls) {
  Daemon d(0, {"--tls_cert=" + files->Path("server.pem"), "--tls_key=" + files->Path("server.key")});
  ASSERT_TRUE(d.ok()) << d.Log();
  CommandResult ok = Ctl(d, {"--tls-ca", files->Path("ca.pem")}, {"jobs"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  CommandResult env = Ctl(d, {}, {"models"}, {"QUANTD_TLS_CA=" + files->Path("ca.pem")});
  EXPECT_EQ(env.exit_code, 0) << env.err;
  // The failures each wait out the 5 s connect timeout; run them side by side.
  auto plaintext = std::async(std::launch::async, [&] { return Ctl(d, {}, {"jobs"}); });
  auto wrong_ca = std::async(std::launch::async,
                             [&] { return Ctl(d, {"--tls-ca", files->Path("other-ca.pem")}, {"jobs"}); });
  for (auto* f : {&plaintext, &wrong_ca}) {
    CommandResult r = f->get();
    EXPECT_EQ(r.exit_code, 4) << r.err;
    EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << r.err;
  }
  std::string health;
  auth::ChannelSecurity sec;
  sec.tls_ca_file = files->Path("ca.pem");
  EXPECT_TRUE(HealthCheck(d.addr(), sec, &health).ok());
  EXPECT_EQ(health, std::string("\x08\x01", 2));
}

// Mutual TLS without a token file: scopes come from the client certificate's quantd: OUs; a
// certificate without them gets the default (no worker); the local workers use their own token.
TEST_F(AuthTest, MutualTlsScopesFromCertificates) {
  Daemon d(1, {"--tls_cert=" + files->Path("server.pem"), "--tls_key=" + files->Path("server.key"),
               "--tls_client_ca=" + files->Path("ca.pem")});
  ASSERT_TRUE(d.ok()) << d.Log();
  auto cert = [](const std::string& name) {
    return std::vector<std::string>{"--tls-ca", files->Path("ca.pem"), "--tls-cert",
                                    files->Path(name + ".pem"), "--tls-key", files->Path(name + ".key")};
  };
  CommandResult job = SmallJob(d, cert("client"), "mtls-scopes");
  EXPECT_EQ(job.exit_code, 0) << job.out << job.err << d.Log();
  EXPECT_EQ(Ctl(d, cert("reader"), {"models"}).exit_code, 0);
  CommandResult denied = Ctl(d, cert("reader"),
                             {"submit", Model(), "--calib", Calib(), "--method", "rtn", "--bits",
                              "4", "--name", "reader-job"});
  EXPECT_EQ(denied.exit_code, 1) << denied.err;
  EXPECT_TRUE(Contains(denied.err, "PERMISSION_DENIED: certificate \"cert-reader\" lacks scope "
                                   "\"submit\""))
      << denied.err;
  EXPECT_TRUE(Contains(denied.err, "OU=quantd:submit")) << denied.err;
  // A certificate without quantd: OUs is a client, not a worker.
  const std::string cache = MakeTempDir("auth_mtls_worker");
  CommandResult w = testing::Run(
      {BinaryDir() + "/quantd-worker", "--coordinator=" + d.addr(), "--cache_dir=" + cache,
       "--threads=1", "--tls_ca=" + files->Path("ca.pem"), "--tls_cert=" + files->Path("client.pem"),
       "--tls_key=" + files->Path("client.key")},
      {}, 60);
  EXPECT_EQ(w.exit_code, 1) << w.err;
  EXPECT_TRUE(Contains(w.err, "lacks scope \"worker\"")) << w.err;
  RemoveAll(cache).IgnoreError();
  EXPECT_TRUE(Contains(d.Log(), "quantd: audit: submit by \"quantd test client\"")) << d.Log();
}

TEST_F(AuthTest, MutualTlsWithTokens) {
  Daemon d(1, {"--tls_cert=" + files->Path("server.pem"), "--tls_key=" + files->Path("server.key"),
               "--tls_client_ca=" + files->Path("ca.pem"),
               "--auth_token_file=" + files->Path("tokens")});
  ASSERT_TRUE(d.ok()) << d.Log();
  const std::vector<std::string> client = {"--tls-ca", files->Path("ca.pem"), "--tls-cert",
                                           files->Path("client.pem"), "--tls-key",
                                           files->Path("client.key")};
  std::vector<std::string> with_token = client;
  with_token.insert(with_token.end(), {"--token-file", files->Path("client-token")});
  CommandResult ok = Ctl(d, with_token, {"jobs"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  // A certificate is not a token: both are checked.
  CommandResult no_token = Ctl(d, client, {"jobs"});
  EXPECT_EQ(no_token.exit_code, 1) << no_token.err;
  EXPECT_NE(no_token.err.find("UNAUTHENTICATED"), std::string::npos) << no_token.err;

  auto without_cert = std::async(std::launch::async, [&] {
    return Ctl(d, {"--tls-ca", files->Path("ca.pem"), "--token-file", files->Path("client-token")},
               {"jobs"});
  });
  auto stranger = std::async(std::launch::async, [&] {
    return Ctl(d, {"--tls-ca", files->Path("ca.pem"), "--tls-cert", files->Path("stranger.pem"),
                   "--tls-key", files->Path("stranger.key"), "--token-file",
                   files->Path("client-token")},
               {"jobs"});
  });
  auto plaintext = std::async(std::launch::async, [&] {
    return Ctl(d, {"--token-file", files->Path("client-token")}, {"jobs"});
  });
  for (auto* f : {&without_cert, &stranger, &plaintext}) {
    CommandResult r = f->get();
    EXPECT_EQ(r.exit_code, 4) << r.err;
    EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << r.err;
  }

  // Local workers dial the TLS port with the server's certificate and their own token.
  CommandResult job = SmallJob(d, with_token, "mtls-rtn4");
  EXPECT_EQ(job.exit_code, 0) << job.out << job.err << d.Log();
  CommandResult models = Ctl(d, with_token, {"models", "mtls-rtn4"});
  EXPECT_EQ(models.exit_code, 0) << models.err;
  EXPECT_NE(models.out.find("mtls-rtn4"), std::string::npos) << models.out;
}

}  // namespace
}  // namespace quantd::testing
