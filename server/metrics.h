// Metrics: the one injected object that owns the prometheus-cpp registry and every quantd_*
// metric family (no global singleton). Label values are bounded: job ids appear only on the
// progress gauge and are removed when the job ends; worker names come from the finite set of
// registered workers.
// Thread-safety: all methods are thread-safe (prometheus-cpp metrics are atomic; the maps here
// are guarded by a mutex).
#ifndef QUANTD_SERVER_METRICS_H_
#define QUANTD_SERVER_METRICS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace quantd::server {

class Metrics {
 public:
  Metrics();

  // Serves /metrics on `listen` ("host:port"). With `authorize`, every scrape needs HTTP Basic
  // authentication that it accepts (called with the user name and the password, from
  // prometheus-cpp's server threads); others get 401. Returns UNAVAILABLE when the address
  // cannot be bound. Optional: without it the metrics are only counted.
  using Authorizer = std::function<bool(const std::string& user, const std::string& password)>;
  absl::Status Serve(const std::string& listen, Authorizer authorize = nullptr);

  void SetJobsByState(const std::map<std::string, int>& counts);
  void SetJobProgress(const std::string& job_id, double ratio);
  void RemoveJobProgress(const std::string& job_id);
  void TaskFinished(const std::string& kind, const std::string& outcome, double seconds);
  void WorkerTaskCompleted(const std::string& worker_name);
  // The coordinator's count of task leases `worker_name` holds moves by `delta` (+1 on a lease,
  // -1 when it is reported, expires or is dropped with its job). Exported as
  // quantd_worker_leases{worker}: how busy each worker is, and which one holds work right now.
  void WorkerLeases(const std::string& worker_name, int delta);
  void SetWorkers(int live, int lost);
  void LeaseExpired();
  void HessianTokens(int64_t n);
  // A fine-tuned block of job `job_id` (issue 27): counts it and sets its held-out relative
  // loss gauges (before and after tuning; removed with the job's progress).
  void FinetuneBlock(const std::string& job_id, int block, double heldout_before,
                     double heldout_best);
  // A job's finished end-to-end KL stage: counts it and sets quantd_finetune_e2e_heldout_kl
  // {job, when="before"|"best"} (mean held-out KL per token in nats; removed with the job's
  // progress).
  void FinetuneE2e(const std::string& job_id, double heldout_before, double heldout_best);
  // A running KL stage's held-out KL after its latest epoch: {when="before"|"current"}.
  void FinetuneE2eProgress(const std::string& job_id, double heldout_before, double current);
  void WeightsQuantized(int64_t n);
  // One quantized matrix's relative proxy loss (tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), unitless).
  void MatrixProxyLoss(double loss);
  void BytesServed(int64_t n);

  prometheus::Registry& registry() { return *registry_; }

 private:
  void SetE2eGauges(const std::string& job_id,
                    const std::vector<std::pair<const char*, double>>& values);

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Gauge>& progress_;
  prometheus::Family<prometheus::Counter>& tasks_;
  prometheus::Family<prometheus::Histogram>& task_seconds_;
  prometheus::Family<prometheus::Gauge>& workers_;
  prometheus::Family<prometheus::Counter>& worker_tasks_;
  prometheus::Family<prometheus::Gauge>& worker_leases_;
  prometheus::Counter& lease_expirations_;
  prometheus::Counter& hessian_tokens_;
  prometheus::Counter& finetune_blocks_;
  prometheus::Family<prometheus::Gauge>& finetune_loss_;
  prometheus::Counter& finetune_e2e_;
  prometheus::Family<prometheus::Gauge>& finetune_e2e_kl_;
  prometheus::Counter& weights_quantized_;
  prometheus::Histogram& matrix_proxy_loss_;
  prometheus::Counter& bytes_served_;

  Mutex mu_;
  std::map<std::string, prometheus::Gauge*> progress_by_job_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<prometheus::Gauge*>> finetune_by_job_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<prometheus::Gauge*>> finetune_e2e_by_job_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_METRICS_H_
