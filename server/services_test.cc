// The gRPC services in-process: heavy work (SubmitJob's build, a report's storing) runs on the
// services' WorkQueue threads, not on gRPC's callback threads, and the server keeps answering
// while submissions block (issue 20).
#include "server/services.h"

#include <pthread.h>

#include <atomic>
#include <cstdlib>
#include <future>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/mutex.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/test_util.h"

namespace quantd::server {
namespace {

std::string ThreadName() {
  char name[32] = {};
  pthread_getname_np(pthread_self(), name, sizeof(name));
  return name;
}

quantd::v1::SubmitJobRequest Request(const std::string& id) {
  return testing::StoriesRequest(id, id, "rtn");
}

class ServicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/quantd_services_XXXXXX";
    CoordinatorOptions o;
    o.data_dir = ::mkdtemp(tmpl);
    o.lease_timeout = absl::Seconds(600);
    o.input_roots = {model::testing::SourcePath("examples")};
    auto c = Coordinator::Create(o, &metrics_);
    ASSERT_TRUE(c.ok()) << c.status();
    coord_ = std::move(*c);
    submit_work_ = std::make_unique<WorkQueue>(2, "quantd-submit");
    report_work_ = std::make_unique<WorkQueue>(2, "quantd-report");
    quant_ = std::make_unique<QuantServiceImpl>(coord_.get(), submit_work_.get());
    workers_ = std::make_unique<WorkerServiceImpl>(coord_.get(), report_work_.get());
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(quant_.get());
    b.RegisterService(workers_.get());
    server_ = b.BuildAndStart();
    ASSERT_NE(port, 0);
    auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                  grpc::InsecureChannelCredentials());
    jobs_ = quantd::v1::QuantService::NewStub(ch);
    wk_ = quantd::v1::WorkerService::NewStub(ch);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    submit_work_.reset();
    report_work_.reset();
    coord_.reset();
  }

  grpc::Status Submit(const quantd::v1::SubmitJobRequest& r, quantd::v1::SubmitJobResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return jobs_->SubmitJob(&ctx, r, out);
  }

  Metrics metrics_;
  std::unique_ptr<Coordinator> coord_;
  std::unique_ptr<WorkQueue> submit_work_, report_work_;
  std::unique_ptr<QuantServiceImpl> quant_;
  std::unique_ptr<WorkerServiceImpl> workers_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<quantd::v1::QuantService::Stub> jobs_;
  std::unique_ptr<quantd::v1::WorkerService::Stub> wk_;
};

TEST_F(ServicesTest, SubmissionsBuildOnTheSubmitQueueWhileTheServerKeepsAnswering) {
  Mutex mu;
  std::vector<std::string> build_threads;  // guarded by mu
  absl::Notification release;
  std::atomic<int> blocked{0};
  coord_->SetBuildHookForTesting([&](const quantd::v1::SubmitJobRequest& r) {
    {
      MutexLock l(&mu);
      build_threads.push_back(ThreadName());
    }
    if (r.request_id().rfind("slow", 0) == 0) {
      ++blocked;
      release.WaitForNotification();
    }
  });
  // Both submit threads block in their builds.
  auto slow1 = std::async(std::launch::async, [&] {
    quantd::v1::SubmitJobResponse resp;
    return Submit(Request("slow1"), &resp).error_code();
  });
  auto slow2 = std::async(std::launch::async, [&] {
    quantd::v1::SubmitJobResponse resp;
    return Submit(Request("slow2"), &resp).error_code();
  });
  for (int i = 0; i < 600 && blocked.load() < 2; ++i) absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(blocked.load(), 2);
  // The server still answers reads and worker calls at once.
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    quantd::v1::ListJobsRequest req;
    quantd::v1::ListJobsResponse resp;
    ASSERT_TRUE(jobs_->ListJobs(&ctx, req, &resp).ok());
    grpc::ClientContext ctx2;
    ctx2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    quantd::v1::RegisterRequest reg;
    reg.set_api_version(kWorkerApiVersion);
    reg.set_worker_name("w" + std::to_string(i));
    reg.set_memory_bytes(uint64_t{1} << 30);
    quantd::v1::RegisterResponse rr;
    grpc::Status st = wk_->Register(&ctx2, reg, &rr);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  release.Notify();
  EXPECT_EQ(slow1.get(), grpc::StatusCode::OK);
  EXPECT_EQ(slow2.get(), grpc::StatusCode::OK);
  quantd::v1::SubmitJobResponse resp;
  ASSERT_TRUE(Submit(Request("fast"), &resp).ok());
  EXPECT_TRUE(resp.created());
  MutexLock l(&mu);
  ASSERT_EQ(build_threads.size(), 3u);
  for (const std::string& t : build_threads) EXPECT_EQ(t, "quantd-submit");
}

TEST_F(ServicesTest, AReportIsStoredOnTheReportQueueAndItsStatusReturns) {
  // A report for a lease that does not exist: the coordinator refuses it, from a report thread,
  // and the worker gets that status (not a hang, not OK).
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  quantd::v1::TaskReportResponse resp;
  auto writer = wk_->ReportTask(&ctx, &resp);
  quantd::v1::TaskReport msg;
  auto* h = msg.mutable_header();
  h->set_worker_id("w");
  h->set_lease_id("no-such-lease");
  h->set_job_id("no-such-job");
  h->set_task_id(1);
  h->set_ok(true);
  h->set_result_size(3);
  ASSERT_TRUE(writer->Write(msg));
  quantd::v1::TaskReport data;
  data.set_data("abc");
  ASSERT_TRUE(writer->Write(data));
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_NE(st.error_message().find("no-such"), std::string::npos) << st.error_message();
}

}  // namespace
}  // namespace quantd::server
