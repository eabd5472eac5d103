// Integration: a real Prometheus (Debian package `prometheus`) scrapes a real quantd with 2
// local workers every second while it quantizes the bundled model; the test reads the job's
// progress, the task counters, the proxy-loss histogram and every Grafana dashboard query back
// through Prometheus' HTTP API (/api/v1/query). Skips when /usr/bin/prometheus (or
// $QUANTD_PROMETHEUS) is absent.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/file_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/process_util.h"

namespace quantd::testing {
namespace {

using json = nlohmann::json;

// $QUANTD_PROMETHEUS, else Debian's /usr/bin/prometheus.
std::string PrometheusBinary() {
  const char* p = std::getenv("QUANTD_PROMETHEUS");
  return p && *p ? p : "/usr/bin/prometheus";
}

std::string UrlEncode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += {'%', hex[c >> 4], hex[c & 15]};
    }
  }
  return out;
}

// A Prometheus server on a free loopback port with a temporary storage dir, scraping
// 127.0.0.1:<scrape_port>/metrics every second. Killed (process group) on destruction.
class Prometheus {
 public:
  explicit Prometheus(int scrape_port) : dir_(MakeTempDir("prometheus")), port_(FreePort()) {
    std::ofstream(dir_ + "/prometheus.yml")
        << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        << "scrape_configs:\n  - job_name: quantd\n    static_configs:\n"
        << "      - targets: ['127.0.0.1:" << scrape_port << "']\n";
    const std::vector<std::string> argv = {
        PrometheusBinary(), "--config.file=" + dir_ + "/prometheus.yml",
        "--storage.tsdb.path=" + dir_ + "/data",
        "--web.listen-address=127.0.0.1:" + std::to_string(port_), "--log.level=warn"};
    const int log_fd = ::open((dir_ + "/prometheus.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(log_fd, 1);
      ::dup2(log_fd, 2);
      ::setpgid(0, 0);
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(log_fd);
  }
  ~Prometheus() {
    if (pid_ > 0) {
      ::kill(-pid_, SIGTERM);
      for (int i = 0; i < 100 && ::waitpid(pid_, nullptr, WNOHANG) == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      ::kill(-pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove_all(dir_);
  }

  bool WaitReady(int seconds) const {
    for (int i = 0; i < seconds * 10; ++i) {
      if (HttpGet(port_, "/-/ready").find("Ready") != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // The `data` object of an instant query's response; a discarded json when the request or the
  // query failed (status != "success").
  json Query(const std::string& promql) const {
    json j = json::parse(HttpGet(port_, "/api/v1/query?query=" + UrlEncode(promql)), nullptr, false);
    if (j.is_discarded() || j.value("status", "") != "success") return json::value_t::discarded;
    return j["data"];
  }

  // The value of the first series of an instant vector, or NaN when there is none.
  double Value(const std::string& promql) const {
    json d = Query(promql);
    if (d.is_discarded() || d["result"].empty()) return std::nan("");
    return std::stod(d["result"][0]["value"][1].get<std::string>());
  }

  // Polls `promql` until its value satisfies `pred` (true) or `seconds` pass (false).
  template <typename Pred>
  bool WaitFor(const std::string& promql, Pred pred, int seconds) const {
    for (int i = 0; i < seconds * 5; ++i) {
      if (pred(Value(promql))) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
  }

  std::string Log() const {
    std::ifstream f(dir_ + "/prometheus.log");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

 private:
  std::string dir_;
  int port_;
  pid_t pid_ = -1;
};

json QuantctlJson(const Daemon& d, const std::vector<std::string>& args) {
  CommandResult r = d.Quantctl(args);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  return json::parse(r.out, nullptr, false);
}

TEST(PrometheusIntegration, ScrapesJobProgressTasksAndDashboardQueries) {
  if (!std::filesystem::exists(PrometheusBinary())) {
    GTEST_SKIP() << PrometheusBinary() << " not found: install the Debian package `prometheus` "
                 << "(scripts/install_deps.sh does unless QUANTD_NO_PROMETHEUS=1)";
  }
  Daemon d(2);
  ASSERT_TRUE(d.ok()) << d.Log();
  Prometheus prom(d.metrics_port());
  ASSERT_TRUE(prom.WaitReady(60)) << prom.Log();
  ASSERT_TRUE(prom.WaitFor("up{job=\"quantd\"}", [](double v) { return v == 1; }, 30))
      << "Prometheus never scraped quantd\n" << prom.Log();
  EXPECT_EQ(prom.Value("quantd_build_info"), 1);

  // A ~10 s job (64 calibration sequences, no evaluation): several 1 s scrapes see it run.
  const std::string src = SourceDir();
  json job = QuantctlJson(d, {"submit", src + "/examples/stories260K", "--calib",
                              src + "/examples/tinystories/calib_stories_0_499.u16", "--method",
                              "rtn", "--bits", "4", "--name", "prom-rtn4", "--max-calib-seqs",
                              "64", "--json"});
  ASSERT_FALSE(job.is_discarded());
  const std::string id = job["id"];
  // quantd's `job` label (the job id) is stored as `exported_job`: the scrape's `job` wins.
  const std::string progress_query = "quantd_job_progress_ratio{exported_job=\"" + id + "\"}";
  std::vector<double> seen;
  std::string state;
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
       std::chrono::steady_clock::now() < deadline;) {
    const double v = prom.Value(progress_query);
    if (!std::isnan(v)) seen.push_back(v);
    json st = QuantctlJson(d, {"status", id, "--json"});
    state = st.value("state", "");
    if (state != "JOB_STATE_QUEUED" && state != "JOB_STATE_RUNNING") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_EQ(state, "JOB_STATE_SUCCEEDED") << d.Log();
  ASSERT_FALSE(seen.empty()) << "Prometheus never returned " << progress_query << " during the job";
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_GE(seen[i], 0.0);
    EXPECT_LE(seen[i], 1.0);
    if (i > 0) EXPECT_GE(seen[i], seen[i - 1]) << "progress went backwards";
  }
  EXPECT_LT(seen.front(), 1.0) << "the first sample was taken after the work was done";
  std::printf("progress samples read from Prometheus during the job: %zu, first %.3f, last %.3f\n",
              seen.size(), seen.front(), seen.back());

  // After the job: the counters (35 matrices, every task ok) and the progress series is gone.
  ASSERT_TRUE(prom.WaitFor("quantd_tasks_total{kind=\"quantize\",outcome=\"ok\"}",
                           [](double v) { return v == 35; }, 20))
      << prom.Query("quantd_tasks_total").dump();
  EXPECT_GE(prom.Value("quantd_tasks_total{kind=\"hessian\",outcome=\"ok\"}"), 1);
  EXPECT_TRUE(std::isnan(prom.Value("quantd_tasks_total{outcome=\"error\"}")))  // no such series
      << prom.Query("quantd_tasks_total{outcome=\"error\"}").dump();
  {
    auto cfg_text = ReadFile(src + "/examples/stories260K/config.json");
    ASSERT_TRUE(cfg_text.ok());
    json cfg = json::parse(*cfg_text);
    const double dim = cfg["hidden_size"], ffn = cfg["intermediate_size"];
    const double kv = dim * cfg["num_key_value_heads"].get<double>() / cfg["num_attention_heads"].get<double>();
    const double per_layer = 2 * dim * dim + 2 * kv * dim + 3 * ffn * dim;  // q o, k v, gate up down
    EXPECT_EQ(prom.Value("quantd_weights_quantized_total"),
              per_layer * cfg["num_hidden_layers"].get<double>());
  }
  EXPECT_TRUE(prom.WaitFor(progress_query, [](double v) { return std::isnan(v); }, 20))
      << "the progress series outlived the job";
  // The job's progress series is removed a moment before the job counts are republished, so a
  // scrape can fall between the two: wait for the count rather than reading one sample.
  EXPECT_TRUE(prom.WaitFor("quantd_jobs{state=\"succeeded\"}", [](double v) { return v == 1; }, 20))
      << prom.Query("quantd_jobs").dump();
  EXPECT_EQ(prom.Value("quantd_workers{state=\"live\"}"), 2);
  EXPECT_EQ(prom.Value("quantd_hessian_tokens_total"), 64 * 512);

  // The proxy-loss histogram holds one observation per matrix, summing to the manifest's.
  auto manifest_text = ReadFile(d.data_dir() + "/registry/prom-rtn4/1/manifest.json");
  ASSERT_TRUE(manifest_text.ok());
  json m = json::parse(*manifest_text);
  double loss_sum = 0;
  for (const auto& t : m["tensors"]) loss_sum += t["proxy_loss"].get<double>();
  EXPECT_EQ(prom.Value("quantd_matrix_proxy_loss_count"), 35);
  EXPECT_NEAR(prom.Value("quantd_matrix_proxy_loss_sum"), loss_sum, 1e-9 * loss_sum);

  // Fetching the model counts its bytes.
  double artifact_bytes = 0;
  for (const auto& f : m["files"]) artifact_bytes += f["size"].get<double>();
  const std::string out = MakeTempDir("prom_fetch") + "/model";
  CommandResult f = d.Quantctl({"fetch", "prom-rtn4", "-o", out});
  ASSERT_EQ(f.exit_code, 0) << f.out << f.err;
  EXPECT_TRUE(prom.WaitFor("quantd_artifact_bytes_served_total",
                           [&](double v) { return v == artifact_bytes; }, 20))
      << prom.Value("quantd_artifact_bytes_served_total") << " vs " << artifact_bytes;
  std::this_thread::sleep_for(std::chrono::seconds(2));  // two more scrapes for rate()

  // Every Grafana dashboard query runs against this Prometheus and, except the per-job progress
  // (gone with the job), returns series.
  auto dash_text = ReadFile(src + "/deploy/grafana/quantd.json");
  ASSERT_TRUE(dash_text.ok());
  json dash = json::parse(*dash_text);
  int queries = 0;
  for (const auto& panel : dash["panels"]) {
    for (const auto& target : panel["targets"]) {
      std::string expr = target["expr"];
      for (size_t p; (p = expr.find("$__rate_interval")) != std::string::npos;) {
        expr.replace(p, std::string("$__rate_interval").size(), "1m");
      }
      json data = prom.Query(expr);
      ASSERT_FALSE(data.is_discarded()) << panel["title"] << ": " << expr;
      ++queries;
      if (expr.find("quantd_job_progress_ratio") != std::string::npos) continue;
      EXPECT_FALSE(data["result"].empty()) << panel["title"] << ": " << expr << " returned nothing";
    }
  }
  EXPECT_GE(queries, 10);
  EXPECT_GT(prom.Value("sum(rate(quantd_artifact_bytes_served_total[1m]))"), 0);
}

}  // namespace
}  // namespace quantd::testing
