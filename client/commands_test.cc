// quantctl commands end to end against fake QuantService / RegistryService on a local port:
// output formats, --json, exit codes, re-attaching watch, quality gate.
#include "client/commands.h"

#include <atomic>
#include <sstream>

#include "absl/strings/str_join.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/quantd.grpc.pb.h"

namespace quantd::client {
namespace {

namespace v1 = quantd::v1;
using json = nlohmann::json;

v1::Job MakeJob(const std::string& id, v1::JobState state) {
  v1::Job j;
  j.set_id(id);
  j.set_name("m");
  j.set_state(state);
  j.mutable_spec()->set_method("rtn");
  j.mutable_spec()->set_bits(4);
  j.set_created_unix_ms(1700000000000);
  return j;
}

class FakeQuant final : public v1::QuantService::Service {
 public:
  std::atomic<int> watch_breaks{0};
  std::atomic<int> watch_calls{0};
  v1::SubmitJobRequest last_submit;

  grpc::Status SubmitJob(grpc::ServerContext*, const v1::SubmitJobRequest* req,
                         v1::SubmitJobResponse* resp) override {
    if (req->spec().method() == "magic") {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unknown method \"magic\"");
    }
    last_submit = *req;
    *resp->mutable_job() = MakeJob("job-ok", v1::JOB_STATE_QUEUED);
    resp->set_created(true);
    return grpc::Status::OK;
  }
  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest* req, v1::Job* job) override {
    if (req->id() == "job-seq") {  // a sequential job in its third of five layer stages
      *job = MakeJob("job-seq", v1::JOB_STATE_RUNNING);
      job->mutable_spec()->set_method("gptq");
      job->mutable_spec()->set_sequential(true);
      job->set_phase("hessian");
      job->set_layer_stages(5);
      job->set_layer_stage(3);
      return grpc::Status::OK;
    }
    if (req->id() != "job-ok") return grpc::Status(grpc::StatusCode::NOT_FOUND, "no job " + req->id());
    *job = Final("job-ok");
    return grpc::Status::OK;
  }
  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* resp) override {
    if (req->page_token().empty()) {
      *resp->add_jobs() = MakeJob("a", v1::JOB_STATE_RUNNING);
      *resp->add_jobs() = MakeJob("b", v1::JOB_STATE_QUEUED);
      resp->set_next_page_token("p2");
    } else if (req->page_token() == "p2") {
      *resp->add_jobs() = Final("c");
    }
    return grpc::Status::OK;
  }
  grpc::Status WatchJob(grpc::ServerContext*, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* w) override {
    ++watch_calls;
    if (req->id() == "missing") return grpc::Status(grpc::StatusCode::NOT_FOUND, "no job missing");
    v1::JobEvent e;
    *e.mutable_job() = MakeJob(req->id(), v1::JOB_STATE_RUNNING);
    e.mutable_job()->set_phase("quantize");
    e.mutable_job()->set_tasks_total(2);
    e.mutable_job()->set_progress(0.5);
    e.mutable_job()->set_tasks_done(1);
    w->Write(e);
    if (watch_breaks.fetch_sub(1) > 0) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator restarting");
    }
    e.mutable_job()->set_tasks_done(1);  // unchanged: no new plain line
    w->Write(e);
    *e.mutable_job() = Final(req->id());
    w->Write(e);
    return grpc::Status::OK;
  }
  grpc::Status CancelJob(grpc::ServerContext*, const v1::CancelJobRequest* req,
                         v1::Job* job) override {
    *job = MakeJob(req->id(), v1::JOB_STATE_CANCELLED);
    return grpc::Status::OK;
  }

  // "job-fail" fails, "job-cancel" is cancelled, everything else succeeds with fp 5, quant 6.
  static v1::Job Final(const std::string& id) {
    if (id == "job-fail") {
      v1::Job j = MakeJob(id, v1::JOB_STATE_FAILED);
      j.set_error("FAILED_PRECONDITION: layer 3 down_proj: Hessian not positive definite");
      return j;
    }
    if (id == "job-cancel") return MakeJob(id, v1::JOB_STATE_CANCELLED);
    v1::Job j = MakeJob(id, v1::JOB_STATE_SUCCEEDED);
    j.set_phase("done");
    j.set_progress(1);
    j.set_version(3);
    j.set_fp_ppl(5.0);
    j.set_quant_ppl(6.0);
    return j;
  }
};

class FakeRegistry final : public v1::RegistryService::Service {
 public:
  grpc::Status GetModel(grpc::ServerContext*, const v1::GetModelRequest* req,
                        v1::ModelVersion* mv) override {
    if (req->name() != "evil") return grpc::Status(grpc::StatusCode::NOT_FOUND, "no model " + req->name());
    mv->set_name("evil");
    mv->set_version(1);
    v1::ArtifactFile* f = mv->add_files();
    f->set_path("../../outside");
    f->set_size(1);
    return grpc::Status::OK;
  }
  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* resp) override {
    v1::ModelVersion* a = resp->add_models();
    a->set_name("stories-qs2");
    a->set_version(1);
    a->set_manifest_json(
        R"({"method":"quip-sharp","bits":2,"perplexity":{"fp":5.454,"quantized":7.25}})");
    v1::ModelVersion* d = resp->add_models();
    d->set_name("budget");
    d->set_version(1);
    d->set_manifest_json(
        R"({"method":"quip-sharp","bits":0,"bit_budget":{"code_bits_per_weight":2.4987},)"
        R"("perplexity":{"fp":5.454,"quantized":9.5}})");
    v1::ModelVersion* b = resp->add_models();
    b->set_name("odd");
    b->set_version(2);
    b->set_manifest_json(R"({"method":7,"perplexity":"n/a"})");
    v1::ModelVersion* c = resp->add_models();
    c->set_name("broken");
    c->set_version(1);
    c->set_manifest_json("{not json");
    return grpc::Status::OK;
  }
};

struct Result {
  int code;
  std::string out, err;
};

class CommandsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    quant_ = new FakeQuant;
    registry_ = new FakeRegistry;
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(quant_);
    b.RegisterService(registry_);
    server_ = b.BuildAndStart().release();
  }
  static void TearDownTestSuite() {
    server_->Shutdown();
    delete server_;
    delete quant_;
    delete registry_;
  }
  static Result Run(std::vector<std::string> args) {
    std::ostringstream out, err;
    Streams io{out, err, false, false};
    std::string addr = "127.0.0.1:" + std::to_string(port_);
    int code = RunQuantctl(args, addr.c_str(), io);
    return {code, out.str(), err.str()};
  }
  static std::vector<std::string> Submit() {
    return {"submit", "/m", "--calib", "/c.u16", "--method", "rtn", "--bits", "4", "--name", "m"};
  }

  static FakeQuant* quant_;
  static FakeRegistry* registry_;
  static grpc::Server* server_;
  static int port_;
};
FakeQuant* CommandsTest::quant_ = nullptr;
FakeRegistry* CommandsTest::registry_ = nullptr;
grpc::Server* CommandsTest::server_ = nullptr;
int CommandsTest::port_ = 0;

TEST_F(CommandsTest, SubmitPrintsIdOrStableJson) {
  Result r = Run(Submit());
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "job-ok\n");
  EXPECT_EQ(quant_->last_submit.request_id().rfind("quantctl-", 0), 0u);
  EXPECT_EQ(quant_->last_submit.request_id().size(), 9u + 32u);

  auto args = Submit();
  args.insert(args.end(), {"--json", "--request-id", "r1"});
  r = Run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(quant_->last_submit.request_id(), "r1");
  json j = json::parse(r.out);
  EXPECT_EQ(j["id"], "job-ok");
  EXPECT_EQ(j["state"], "JOB_STATE_QUEUED");
  EXPECT_EQ(j["spec"]["bits"], 4);
  EXPECT_EQ(j["fp_ppl"], 0);             // default values are printed
  EXPECT_EQ(j["error"], "");
  EXPECT_EQ(j["created_unix_ms"], "1700000000000");  // int64 as string (proto3 JSON)
  EXPECT_TRUE(j.contains("tasks_done"));
}

TEST_F(CommandsTest, ServerRefusalIsExit1WithCode) {
  auto args = Submit();
  args[5] = "magic";
  Result r = Run(args);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "quantctl: INVALID_ARGUMENT: unknown method \"magic\"\n");
  r = Run({"status", "nope"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "quantctl: NOT_FOUND: no job nope\n");
  r = Run({"watch", "missing"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("NOT_FOUND"), std::string::npos);
}

TEST_F(CommandsTest, WatchPrintsChangesAndFinalState) {
  Result r = Run({"watch", "job-ok"});
  EXPECT_EQ(r.code, 0) << r.err;
  // Not a terminal: a line per phase change (no per-event lines), then the summary.
  EXPECT_EQ(r.out,
            "[00:00] RUNNING quantize 1/2 tasks, ETA --:--\n"
            "[00:00] SUCCEEDED done\n"
            "job job-ok SUCCEEDED: m version 3, perplexity fp 5.0000 -> quantized 6.0000\n");
}

TEST_F(CommandsTest, WatchReattachesAfterUnavailable) {
  quant_->watch_breaks = 2;
  const int before = quant_->watch_calls;
  Result r = Run({"watch", "job-ok"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(quant_->watch_calls - before, 3);
  EXPECT_NE(r.out.find("re-attaching"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("job job-ok SUCCEEDED"), std::string::npos) << r.out;
}

TEST_F(CommandsTest, FailedAndCancelledJobsExit1) {
  Result r = Run({"watch", "job-fail"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("FAILED: FAILED_PRECONDITION: layer 3"), std::string::npos) << r.err;
  r = Run({"watch", "job-cancel", "--json"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(json::parse(r.out)["state"], "JOB_STATE_CANCELLED");
  EXPECT_NE(r.err.find("CANCELLED"), std::string::npos);
}

TEST_F(CommandsTest, SubmitWaitAndQualityGate) {
  auto args = Submit();
  args.insert(args.end(), {"--eval", "/e.u16", "--wait", "--max-ppl-ratio", "1.1"});
  Result r = Run(args);
  EXPECT_EQ(r.code, 3) << r.out << r.err;
  EXPECT_NE(r.err.find("quantized perplexity 6.0000 / fp perplexity 5.0000 = 1.2000 > 1.1"),
            std::string::npos)
      << r.err;
  args.back() = "1.25";
  r = Run(args);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("quality gate passed"), std::string::npos) << r.out;
  // --json --wait: stdout is exactly the final job; progress went to stderr.
  args.push_back("--json");
  r = Run(args);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["version"], 3);
  EXPECT_NE(r.err.find("RUNNING quantize"), std::string::npos);
}

TEST_F(CommandsTest, JobsFollowsPagesStatusCancel) {
  Result r = Run({"jobs", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  json j = json::parse(r.out);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[2]["id"], "c");
  r = Run({"jobs"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("ID", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("rtn/4"), std::string::npos) << r.out;
  r = Run({"status", "job-ok"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("SUCCEEDED"), std::string::npos);
  EXPECT_NE(r.out.find("phase:       done\n"), std::string::npos) << r.out;
  r = Run({"status", "job-seq"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("phase:       hessian, layer 3/5\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("method:      gptq, 4 bits, sequential\n"), std::string::npos) << r.out;
  r = Run({"cancel", "job-x"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "job job-x: CANCELLED\n");
}

TEST_F(CommandsTest, ModelsTableIsLenientAboutManifests) {
  Result r = Run({"models"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "NAME         VERSION  METHOD      BITS      FP_PPL  Q_PPL   EXPORTS\n"
            "stories-qs2  1        quip-sharp  2         5.4540  7.2500  -\n"
            "budget       1        quip-sharp  2.50 avg  5.4540  9.5000  -\n"
            "odd          2        -           -         -       -       -\n"
            "broken       1        -           -         -       -       -\n");
  r = Run({"models", "--json"});
  ASSERT_EQ(r.code, 0);
  EXPECT_EQ(json::parse(r.out)[0]["name"], "stories-qs2");
}

TEST_F(CommandsTest, FetchRefusesTraversalAndReportsNotFound) {
  const std::string dir = ::testing::TempDir() + "/quantd_commands_fetch";
  Result r = Run({"fetch", "evil", "-o", dir});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("quantctl: INVALID_ARGUMENT: server sent an unsafe file path \"../../outside\""),
            std::string::npos)
      << r.err;
  r = Run({"fetch", "nope@2", "-o", dir});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "quantctl: NOT_FOUND: no model nope\n");
}

TEST_F(CommandsTest, UsageErrorsExit2AndUnreachableServerExit4) {
  Result r = Run({"fetch", "m", "-o", "/tmp/x", "--format", "onnx"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("expected native, hf, gptq, compressed-tensors or gguf"), std::string::npos)
      << r.err;
  EXPECT_EQ(Run({"bogus"}).code, 2);
  EXPECT_EQ(Run({"--help"}).code, 0);
  r = Run({"--addr", "127.0.0.1:1", "jobs"});
  EXPECT_EQ(r.code, 4);
  EXPECT_NE(r.err.find("quantctl: UNAVAILABLE: cannot reach quantd at 127.0.0.1:1"),
            std::string::npos)
      << r.err;
}

TEST_F(CommandsTest, EveryCommandsOutputEndsWithANewline) {
  auto wait = Submit();
  wait.push_back("--wait");
  const std::vector<std::vector<std::string>> invocations = {
      Submit(), wait, {"watch", "job-ok"}, {"watch", "job-ok", "--json"}, {"watch", "job-fail"},
      {"jobs"}, {"jobs", "--json"}, {"status", "job-ok"}, {"status", "job-ok", "--json"},
      {"status", "nope"}, {"cancel", "job-x"}, {"models"}, {"models", "--json"},
      {"fetch", "nope", "-o", "/tmp/x"}, {"delete", "m@1"}, {"--help"}, {"bogus"},
      {"watch", "job-ok", "--progress-interval", "0"}};
  for (const auto& args : invocations) {
    Result r = Run(args);
    const std::string what = absl::StrJoin(args, " ");
    EXPECT_FALSE(r.out.empty() && r.err.empty()) << what;
    if (!r.out.empty()) EXPECT_EQ(r.out.back(), '\n') << what << ": " << r.out;
    if (!r.err.empty()) EXPECT_EQ(r.err.back(), '\n') << what << ": " << r.err;
  }
}

TEST_F(CommandsTest, ProgressIntervalIsValidated) {
  Result r = Run({"watch", "job-ok", "--progress-interval", "0"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--progress-interval"), std::string::npos) << r.err;
  auto args = Submit();
  args.insert(args.end(), {"--progress-interval", "5"});
  r = Run(args);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--progress-interval needs --wait"), std::string::npos) << r.err;
  EXPECT_EQ(Run({"watch", "job-ok", "--progress-interval", "5"}).code, 0);
}

}  // namespace
}  // namespace quantd::client
