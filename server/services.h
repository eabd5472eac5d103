// gRPC front of the coordinator: QuantService, RegistryService and WorkerService on the callback
// API. Handlers only translate between protos and Coordinator/Registry calls; streaming RPCs are
// reactors that read files in <= 2 MiB chunks.
// Thread-safety: the services are stateless apart from the Coordinator they point to.
#ifndef QUANTD_SERVER_SERVICES_H_
#define QUANTD_SERVER_SERVICES_H_

#include "proto/quantd.grpc.pb.h"
#include "common/work_queue.h"
#include "server/coordinator.h"

namespace quantd::server {

inline constexpr size_t kChunkBytes = 2 << 20;  // 2 MiB, under gRPC's 4 MiB receive default

// `work` runs what takes seconds (SubmitJob's validation, snapshot and tokenization; a report's
// fsync, hash and decode) off the gRPC callback threads; it must outlive the server's Shutdown.
class QuantServiceImpl final : public quantd::v1::QuantService::CallbackService {
 public:
  QuantServiceImpl(Coordinator* c, WorkQueue* work) : c_(c), work_(work) {}
  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                      const quantd::v1::SubmitJobRequest* req,
                                      quantd::v1::SubmitJobResponse* resp) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx,
                                   const quantd::v1::GetJobRequest* req,
                                   quantd::v1::Job* resp) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const quantd::v1::ListJobsRequest* req,
                                     quantd::v1::ListJobsResponse* resp) override;
  grpc::ServerWriteReactor<quantd::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* ctx, const quantd::v1::WatchJobRequest* req) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const quantd::v1::CancelJobRequest* req,
                                      quantd::v1::Job* resp) override;

 private:
  Coordinator* c_;
  WorkQueue* work_;
};

class RegistryServiceImpl final : public quantd::v1::RegistryService::CallbackService {
 public:
  explicit RegistryServiceImpl(Coordinator* c) : c_(c) {}
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const quantd::v1::ListModelsRequest* req,
                                       quantd::v1::ListModelsResponse* resp) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const quantd::v1::GetModelRequest* req,
                                     quantd::v1::ModelVersion* resp) override;
  grpc::ServerWriteReactor<quantd::v1::Chunk>* FetchArtifact(
      grpc::CallbackServerContext* ctx, const quantd::v1::FetchArtifactRequest* req) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* ctx,
                                        const quantd::v1::DeleteModelRequest* req,
                                        quantd::v1::ModelVersion* resp) override;

 private:
  Coordinator* c_;
};

class WorkerServiceImpl final : public quantd::v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl(Coordinator* c, WorkQueue* work) : c_(c), work_(work) {}
  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* ctx,
                                     const quantd::v1::RegisterRequest* req,
                                     quantd::v1::RegisterResponse* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const quantd::v1::HeartbeatRequest* req,
                                      quantd::v1::HeartbeatResponse* resp) override;
  grpc::ServerUnaryReactor* LeaseTask(grpc::CallbackServerContext* ctx,
                                      const quantd::v1::LeaseTaskRequest* req,
                                      quantd::v1::LeaseTaskResponse* resp) override;
  grpc::ServerWriteReactor<quantd::v1::Chunk>* FetchBlob(
      grpc::CallbackServerContext* ctx, const quantd::v1::FetchBlobRequest* req) override;
  grpc::ServerReadReactor<quantd::v1::TaskReport>* ReportTask(
      grpc::CallbackServerContext* ctx, quantd::v1::TaskReportResponse* resp) override;

 private:
  Coordinator* c_;
  WorkQueue* work_;
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_SERVICES_H_
