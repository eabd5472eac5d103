// Coordinator in-process: save-then-apply under store failures, SubmitJob idempotency by the
// request's fingerprint, and concurrent submissions (issue 20).
#include "server/coordinator.h"

#include <cstdlib>
#include <functional>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/file_util.h"
#include "engine/spec/quant_spec.h"
#include "gtest/gtest.h"
#include "server/test_util.h"

namespace quantd::server {
namespace {

std::string TempDir() {
  char tmpl[] = "/tmp/quantd_coord_XXXXXX";
  return ::mkdtemp(tmpl);
}

quantd::v1::SubmitJobRequest Request(const std::string& request_id, const std::string& name) {
  return testing::StoriesRequest(request_id, name, "gptq");
}

// The value of the one-series family `family` (counter or gauge; 0 when absent).
double Value(Metrics& m, const std::string& family) {
  for (const auto& f : m.registry().Collect()) {
    if (f.name != family || f.metric.empty()) continue;
    return f.type == prometheus::MetricType::Counter ? f.metric[0].counter.value
                                                     : f.metric[0].gauge.value;
  }
  return 0;
}

// quantd_worker_leases{worker=name} from the metrics registry (0 when absent).
double WorkerLeases(Metrics& m, const std::string& name) {
  for (const auto& family : m.registry().Collect()) {
    if (family.name != "quantd_worker_leases") continue;
    for (const auto& metric : family.metric) {
      for (const auto& label : metric.label) {
        if (label.name == "worker" && label.value == name) return metric.gauge.value;
      }
    }
  }
  return 0;
}

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(absl::Seconds(600)); }  // no expiry during a test
  void Start(absl::Duration lease_timeout) {
    coord_.reset();
    CoordinatorOptions o;
    o.data_dir = TempDir();
    o.lease_timeout = lease_timeout;
    o.heartbeat_interval = absl::Milliseconds(100);
    // Job inputs are read only under a root.
    o.input_roots = {model::testing::SourcePath("examples")};
    auto c = Coordinator::Create(o, &metrics_);
    ASSERT_TRUE(c.ok()) << c.status();
    coord_ = std::move(*c);
  }
  // Polls `cond` every 50 ms for up to 20 s.
  static bool Eventually(const std::function<bool()>& cond) {
    for (int i = 0; i < 400; ++i) {
      if (cond()) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return cond();
  }
  std::string RegisterWorker(const std::string& name) {
    quantd::v1::RegisterRequest r;
    r.set_api_version(kWorkerApiVersion);
    r.set_worker_name(name);
    auto resp = coord_->Register(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->worker_id() : "";
  }
  // One LeaseTask call by `worker_id`.
  absl::StatusOr<quantd::v1::LeaseTaskResponse> LeaseFor(const std::string& worker_id) {
    quantd::v1::LeaseTaskRequest lr;
    lr.set_worker_id(worker_id);
    return coord_->Lease(lr);
  }
  // True when the coordinator still counts `lease` as held by `worker_id`.
  bool LeaseHeld(const std::string& worker_id, const std::string& lease) {
    quantd::v1::HeartbeatRequest hb;
    hb.set_worker_id(worker_id);
    hb.add_lease_ids(lease);
    auto r = coord_->Heartbeat(hb);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && r->cancelled_lease_ids_size() == 0;
  }
  void FailWrites(bool on) {
    coord_->store_for_testing().SetWriteFaultForTesting(
        on ? std::function<absl::Status()>(
                 [] { return absl::UnavailableError("injected: the job store's disk is gone"); })
           : nullptr);
  }

  Metrics metrics_;
  std::unique_ptr<Coordinator> coord_;
};

TEST_F(CoordinatorTest, AFailedStoreWriteChangesNothingInMemory) {
  auto sub = coord_->Submit(Request("req-store", "store-faults"));
  ASSERT_TRUE(sub.ok()) << sub.status();
  const std::string job = sub->job().id();
  const std::string w = RegisterWorker("w0");

  // Lease: the job's first lease makes it RUNNING, which must be stored first.
  FailWrites(true);
  auto lease = LeaseFor(w);
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kUnavailable) << lease.status();
  EXPECT_EQ(coord_->GetJob(job)->state(), quantd::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(WorkerLeases(metrics_, "w0"), 0);
  FailWrites(false);
  lease = LeaseFor(w);
  ASSERT_TRUE(lease.ok() && lease->found()) << lease.status();
  const quantd::v1::Task task = lease->task();
  EXPECT_EQ(task.task_id(), 0);  // the failed call took nothing
  EXPECT_EQ(coord_->GetJob(job)->state(), quantd::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(WorkerLeases(metrics_, "w0"), 1);

  // Report, failure and success alike: the lease and the task stay as they were.
  quantd::v1::TaskReportHeader err;
  err.set_job_id(job);
  err.set_task_id(task.task_id());
  err.set_lease_id(task.lease_id());
  err.set_worker_id(w);
  err.set_ok(false);
  err.set_error_code(static_cast<int>(absl::StatusCode::kUnavailable));
  err.set_error("worker lost its device");
  const std::string data = "result bytes";
  quantd::v1::TaskReportHeader ok = err;
  ok.set_ok(true);
  ok.set_error_code(0);
  ok.set_error("");
  ok.set_result_size(data.size());
  ok.set_result_sha256(Sha256Hex(data));
  FailWrites(true);
  EXPECT_EQ(coord_->Report(err, "").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(coord_->Report(ok, data).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(coord_->GetJob(job)->tasks_done(), 0);
  EXPECT_TRUE(LeaseHeld(w, task.lease_id()));
  EXPECT_EQ(WorkerLeases(metrics_, "w0"), 1);
  // Cancel too.
  EXPECT_EQ(coord_->Cancel(job).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(coord_->GetJob(job)->state(), quantd::v1::JOB_STATE_RUNNING);

  FailWrites(false);
  ASSERT_TRUE(coord_->Report(ok, data).ok());  // the same report, now stored
  EXPECT_EQ(coord_->GetJob(job)->tasks_done(), 1);
  EXPECT_FALSE(LeaseHeld(w, task.lease_id()));
  EXPECT_EQ(WorkerLeases(metrics_, "w0"), 0);
  auto cancelled = coord_->Cancel(job);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), quantd::v1::JOB_STATE_CANCELLED);
}

// The engine's own write paths: a lease expiry (Scheduler) and a phase step's end (PhaseRunner)
// whose store write fails change nothing in memory and are retried once the store is back.
TEST_F(CoordinatorTest, AFailedStoreWriteDuringExpiryOrAStepIsRetriedWithMemoryUnchanged) {
  Start(absl::Milliseconds(300));
  auto sub = coord_->Submit(Request("req-expiry", "expiry-faults"));
  ASSERT_TRUE(sub.ok()) << sub.status();
  const std::string job = sub->job().id();
  const std::string w = RegisterWorker("w-exp");
  auto lease = LeaseFor(w);
  ASSERT_TRUE(lease.ok() && lease->found()) << lease.status();
  EXPECT_EQ(coord_->GetJob(job)->tasks_running(), 1);

  // The lease runs out (no heartbeat) while the store fails: the expiry is not applied.
  FailWrites(true);
  absl::SleepFor(absl::Seconds(1));  // several engine passes past the expiry
  EXPECT_EQ(WorkerLeases(metrics_, "w-exp"), 1);
  EXPECT_EQ(Value(metrics_, "quantd_lease_expirations_total"), 0);
  EXPECT_EQ(coord_->GetJob(job)->tasks_running(), 1);
  EXPECT_EQ(coord_->GetJob(job)->state(), quantd::v1::JOB_STATE_RUNNING);
  // Back: the next pass stores the failed attempt and ends the lease.
  FailWrites(false);
  EXPECT_TRUE(Eventually([&] { return WorkerLeases(metrics_, "w-exp") == 0; }));
  EXPECT_EQ(Value(metrics_, "quantd_lease_expirations_total"), 1);
  EXPECT_EQ(coord_->GetJob(job)->tasks_running(), 0);

  // A step's end: an rtn job without calibration steps past its empty hessian phase only once
  // that change is stored.
  quantd::v1::SubmitJobRequest rtn = Request("req-step", "step-faults");
  rtn.clear_calib_path();
  rtn.mutable_spec()->set_method("rtn");
  FailWrites(true);
  EXPECT_EQ(coord_->Submit(rtn).status().code(), absl::StatusCode::kUnavailable);  // not stored
  FailWrites(false);
  auto rsub = coord_->Submit(rtn);  // the failed submission left no reservation behind
  ASSERT_TRUE(rsub.ok()) << rsub.status();
  EXPECT_TRUE(rsub->created());
  FailWrites(true);
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(coord_->GetJob(rsub->job().id())->phase(), "hessian");
  EXPECT_EQ(coord_->GetJob(rsub->job().id())->state(), quantd::v1::JOB_STATE_QUEUED);
  FailWrites(false);
  EXPECT_TRUE(Eventually([&] { return coord_->GetJob(rsub->job().id())->phase() == "quantize"; }));
  EXPECT_EQ(coord_->GetJob(rsub->job().id())->state(), quantd::v1::JOB_STATE_RUNNING);
}

// Version 2 of the worker API sends each task kind's fields in its own message (a worker of
// version 1 would read none of them); version 3 adds the KL fine-tuning task, which a version-2
// worker cannot run. Either is refused at Register, naming both versions.
TEST_F(CoordinatorTest, AWorkerOfAnotherApiVersionIsRefusedAtRegister) {
  quantd::v1::RegisterRequest r;
  r.set_worker_name("old-worker");
  for (int old : {1, 2}) {
    r.set_api_version(old);
    auto resp = coord_->Register(r);
    EXPECT_EQ(resp.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(resp.status().message().find(absl::StrCat(
                  "old-worker speaks worker API version ", old, ", this coordinator 3")),
              absl::string_view::npos)
        << resp.status();
  }
  r.set_api_version(kWorkerApiVersion);
  EXPECT_TRUE(coord_->Register(r).ok());
}

TEST_F(CoordinatorTest, AReusedRequestIdIsTheSameJobOnlyForTheSameRequest) {
  quantd::v1::SubmitJobRequest a = Request("req-same", "idem");
  a.mutable_spec()->set_seed(1);
  auto first = coord_->Submit(a);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->created());
  auto again = coord_->Submit(a);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->created());
  EXPECT_EQ(again->job().id(), first->job().id());
  // Any field that shapes the job, not only name/paths/method/bits, makes it another request.
  quantd::v1::SubmitJobRequest other_seed = a;
  other_seed.mutable_spec()->set_seed(2);
  quantd::v1::SubmitJobRequest other_group = a;
  other_group.mutable_spec()->set_group_size(64);
  quantd::v1::SubmitJobRequest other_sequential = a;
  other_sequential.mutable_spec()->set_sequential(true);
  quantd::v1::SubmitJobRequest other_seqs = a;
  other_seqs.set_max_calib_seqs(3);
  // The issue-24 fields are in the request fingerprint too.
  quantd::v1::SubmitJobRequest other_sink = a;
  other_sink.mutable_spec()->set_sink_weight(16);
  quantd::v1::SubmitJobRequest other_calib_seed = a;
  other_calib_seed.set_calib_seed(5);
  quantd::v1::SubmitJobRequest other_start = a;
  other_start.set_start_token("none");
  for (const auto& r : {other_seed, other_group, other_sequential, other_seqs, other_sink,
                        other_calib_seed, other_start}) {
    auto s = coord_->Submit(r);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kAlreadyExists) << r.ShortDebugString();
    EXPECT_NE(s.status().message().find("req-same"), absl::string_view::npos) << s.status();
  }
}

// Issue 24: the Hessian token weighting and the calibration sampling are filled with their
// defaults, recorded in the job and its spec fingerprint, and carried to the Hessian tasks;
// values the server does not know are INVALID_ARGUMENT naming them.
TEST_F(CoordinatorTest, TokenWeightingAndCalibrationSamplingAreRecordedAndValidated) {
  auto sub = coord_->Submit(Request("req-sink", "sink-default"));
  ASSERT_TRUE(sub.ok()) << sub.status();
  const quantd::v1::Job& job = sub->job();
  EXPECT_EQ(job.spec().token_weighting(), "sink");
  EXPECT_EQ(job.spec().sink_weight(), runner::kDefaultSinkWeight);
  EXPECT_EQ(job.calib_sampling(), "random");  // max_calib_seqs 2 given: GPTQ's random windows
  EXPECT_EQ(job.calib_seed(), 0u);
  EXPECT_FALSE(job.has_start_token_id());  // stories260K has no tokenizer.json

  quantd::v1::SubmitJobRequest none = Request("req-sink-none", "sink-none");
  none.mutable_spec()->set_token_weighting("none");
  none.set_calib_sampling("first");
  auto sub_none = coord_->Submit(none);
  ASSERT_TRUE(sub_none.ok()) << sub_none.status();
  EXPECT_EQ(sub_none->job().spec().token_weighting(), "none");
  EXPECT_EQ(sub_none->job().spec().sink_weight(), 0);
  EXPECT_EQ(sub_none->job().calib_sampling(), "first");
  EXPECT_NE(sub_none->job().spec_fingerprint(), job.spec_fingerprint());
  // Different windows, different calibration tokens.
  EXPECT_NE(sub_none->job().calib_fingerprint(), job.calib_fingerprint());
  // "sink+massive" is recorded with its ratio's default, and fingerprinted apart from "sink".
  quantd::v1::SubmitJobRequest massive = Request("req-sink-massive", "sink-massive");
  massive.mutable_spec()->set_token_weighting("sink+massive");
  auto sub_massive = coord_->Submit(massive);
  ASSERT_TRUE(sub_massive.ok()) << sub_massive.status();
  EXPECT_EQ(sub_massive->job().spec().token_weighting(), "sink+massive");
  EXPECT_EQ(sub_massive->job().spec().sink_weight(), runner::kDefaultSinkWeight);
  EXPECT_EQ(sub_massive->job().spec().massive_ratio(), model::kDefaultMassiveRatio);
  EXPECT_NE(sub_massive->job().spec_fingerprint(), job.spec_fingerprint());

  // The Hessian tasks carry the spec (the worker weights the rows from it).
  const std::string w = RegisterWorker("w-sink");
  auto lease = LeaseFor(w);
  ASSERT_TRUE(lease.ok() && lease->found()) << lease.status();
  EXPECT_EQ(lease->task().kind(), quantd::v1::TASK_KIND_HESSIAN);
  ASSERT_TRUE(lease->task().has_hessian());  // the kind's own message
  EXPECT_GT(lease->task().hessian().token_end(), lease->task().hessian().token_begin());
  EXPECT_EQ(lease->task().spec().token_weighting(), "sink");
  EXPECT_EQ(lease->task().spec().sink_weight(), runner::kDefaultSinkWeight);

  struct Bad {
    std::function<void(quantd::v1::SubmitJobRequest*)> set;
    std::string named;
  } bad[] = {
      {[](auto* r) { r->mutable_spec()->set_token_weighting("massive"); }, "massive"},
      {[](auto* r) { r->mutable_spec()->set_sink_weight(0.5); }, "0.5"},
      {[](auto* r) { r->mutable_spec()->set_sink_weight(1e9); }, "1e+09"},
      {[](auto* r) { r->mutable_spec()->set_massive_ratio(50); }, "massive_ratio 50"},
      {[](auto* r) {
         r->mutable_spec()->set_token_weighting("sink+massive");
         r->mutable_spec()->set_massive_ratio(1);
       },
       "massive_ratio 1"},
      {[](auto* r) {
         r->mutable_spec()->set_token_weighting("none");
         r->mutable_spec()->set_sink_weight(8);
       },
       "sink_weight 8"},
      {[](auto* r) { r->set_calib_sampling("shuffled"); }, "shuffled"},
      {[](auto* r) {
         r->set_calib_sampling("random");
         r->set_max_calib_seqs(0);
       },
       "max_calib_seqs"},
      {[](auto* r) { r->set_start_token("eos"); }, "eos"},
  };
  int i = 0;
  for (const Bad& b : bad) {
    quantd::v1::SubmitJobRequest r = Request(absl::StrCat("req-bad-", i), absl::StrCat("bad-", i));
    ++i;
    b.set(&r);
    auto s = coord_->Submit(r);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << r.ShortDebugString();
    EXPECT_NE(s.status().message().find(b.named), absl::string_view::npos) << s.status();
  }
}

TEST_F(CoordinatorTest, SubmissionsBuildConcurrently) {
  // The first submission blocks while it builds its job; another request is built and stored
  // meanwhile, and a retry of the blocked request waits for it and gets the same job.
  absl::Notification release, blocked;
  coord_->SetBuildHookForTesting([&](const quantd::v1::SubmitJobRequest& r) {
    if (r.request_id() == "req-slow") {
      blocked.Notify();
      release.WaitForNotification();
    }
  });
  auto slow = std::async(std::launch::async, [&] { return coord_->Submit(Request("req-slow", "slow")); });
  blocked.WaitForNotification();
  auto retry = std::async(std::launch::async, [&] { return coord_->Submit(Request("req-slow", "slow")); });
  auto fast = coord_->Submit(Request("req-fast", "fast"));  // returns while "slow" is blocked
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_TRUE(fast->created());
  EXPECT_EQ(retry.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  release.Notify();
  auto s = slow.get();
  auto r = retry.get();
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(s->created());
  EXPECT_FALSE(r->created());
  EXPECT_EQ(r->job().id(), s->job().id());
}

// An rtn job without calibration or evaluation data has no task in its first (hessian) phase:
// the engine steps it into the quantize phase without waiting for a lease that cannot come.
TEST_F(CoordinatorTest, AJobWhoseFirstPhaseIsEmptyStartsWithoutALease) {
  quantd::v1::SubmitJobRequest req = Request("req-empty-phase", "rtn-no-calib");
  req.clear_calib_path();
  req.mutable_spec()->set_method("rtn");
  auto sub = coord_->Submit(req);
  ASSERT_TRUE(sub.ok()) << sub.status();
  const std::string job = sub->job().id();
  absl::StatusOr<quantd::v1::Job> j;
  for (int i = 0; i < 300; ++i) {
    j = coord_->GetJob(job);
    ASSERT_TRUE(j.ok()) << j.status();
    if (j->phase() == "quantize") break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(j->phase(), "quantize");
  EXPECT_EQ(j->state(), quantd::v1::JOB_STATE_RUNNING);
  // Its first lease is a quantize task without a Hessian input.
  const std::string w = RegisterWorker("w-empty");
  auto lease = LeaseFor(w);
  ASSERT_TRUE(lease.ok() && lease->found()) << lease.status();
  EXPECT_EQ(lease->task().kind(), quantd::v1::TASK_KIND_QUANTIZE);
  ASSERT_TRUE(lease->task().has_quantize());
  EXPECT_FALSE(lease->task().quantize().tensor_name().empty());
  for (const auto& in : lease->task().inputs()) EXPECT_NE(in.name().rfind("hessians/", 0), 0u);
}

}  // namespace
}  // namespace quantd::server
