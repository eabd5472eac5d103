#include "server/metrics.h"

#include <algorithm>

#include <exception>

#include "absl/strings/str_cat.h"

namespace quantd::server {
namespace {

const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600};
  return *b;
}

// Relative proxy loss: ~0.001 (8 bit) to ~0.1 (2 bit) on real models; > 1 means worse than zero.
prometheus::Histogram::BucketBoundaries ProxyLossBuckets() {
  return {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1};
}

// Registers the metric family `name` in `r` from BuildGauge(), BuildCounter() or
// BuildHistogram(): a prometheus::Family<Gauge|Counter|Histogram>&.
template <typename Builder>
auto& Family(prometheus::Registry& r, Builder builder, const char* name, const char* help) {
  return builder.Name(name).Help(help).Register(r);
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      jobs_(Family(*registry_, prometheus::BuildGauge(), "quantd_jobs", "Jobs by state")),
      progress_(Family(*registry_, prometheus::BuildGauge(), "quantd_job_progress_ratio",
                       "Fraction of a running job's tasks that are done")),
      tasks_(Family(*registry_, prometheus::BuildCounter(), "quantd_tasks_total",
                    "Tasks finished, by kind and outcome")),
      task_seconds_(Family(*registry_, prometheus::BuildHistogram(), "quantd_task_duration_seconds",
                           "Task run time reported by workers")),
      workers_(Family(*registry_, prometheus::BuildGauge(), "quantd_workers",
                      "Registered workers by state")),
      worker_tasks_(Family(*registry_, prometheus::BuildCounter(),
                           "quantd_worker_tasks_completed_total",
                           "Tasks completed successfully, by worker name")),
      worker_leases_(Family(*registry_, prometheus::BuildGauge(), "quantd_worker_leases",
                            "Task leases held now, by worker name")),
      lease_expirations_(Family(*registry_, prometheus::BuildCounter(),
                                "quantd_lease_expirations_total",
                                "Task leases that expired and were re-queued")
                             .Add({})),
      hessian_tokens_(Family(*registry_, prometheus::BuildCounter(), "quantd_hessian_tokens_total",
                             "Calibration tokens pushed through Hessian accumulation")
                          .Add({})),
      finetune_blocks_(Family(*registry_, prometheus::BuildCounter(),
                              "quantd_finetune_blocks_total",
                              "Decoder blocks fine-tuned after rounding")
                           .Add({})),
      finetune_loss_(Family(*registry_, prometheus::BuildGauge(), "quantd_finetune_heldout_loss",
                            "Held-out relative output error of a running job's fine-tuned "
                            "block, before and after tuning")),
      finetune_e2e_(Family(*registry_, prometheus::BuildCounter(), "quantd_finetune_e2e_total",
                           "End-to-end KL fine-tuning stages finished")
                        .Add({})),
      finetune_e2e_kl_(Family(*registry_, prometheus::BuildGauge(),
                              "quantd_finetune_e2e_heldout_kl",
                              "Held-out KL(p_fp || p_q) per token (nats) of a running job's "
                              "end-to-end fine-tuning stage: before it, after its latest epoch "
                              "(current), kept (best)")),
      weights_quantized_(Family(*registry_, prometheus::BuildCounter(),
                                "quantd_weights_quantized_total",
                                "Weights (matrix entries) quantized")
                             .Add({})),
      matrix_proxy_loss_(Family(*registry_, prometheus::BuildHistogram(),
                                "quantd_matrix_proxy_loss",
                                "Relative proxy loss of each quantized matrix, observed when "
                                "its quantize task's report is accepted")
                             .Add({}, ProxyLossBuckets())),
      bytes_served_(Family(*registry_, prometheus::BuildCounter(),
                           "quantd_artifact_bytes_served_total",
                           "Artifact bytes streamed by FetchArtifact")
                        .Add({})) {
  Family(*registry_, prometheus::BuildGauge(), "quantd_build_info", "Build information")
      .Add({{"version", QUANTD_VERSION}})
      .Set(1);
  for (const char* s : {"queued", "running", "succeeded", "failed", "cancelled"}) {
    jobs_.Add({{"state", s}}).Set(0);
  }
  for (const char* s : {"live", "lost"}) workers_.Add({{"state", s}}).Set(0);
}

absl::Status Metrics::Serve(const std::string& listen, Authorizer authorize) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  if (authorize) exposer_->RegisterAuth(std::move(authorize), "quantd");
  exposer_->RegisterCollectable(registry_);
  return absl::OkStatus();
}

void Metrics::SetJobsByState(const std::map<std::string, int>& counts) {
  for (const auto& [state, n] : counts) jobs_.Add({{"state", state}}).Set(n);
}

void Metrics::SetJobProgress(const std::string& job_id, double ratio) {
  MutexLock l(&mu_);
  auto it = progress_by_job_.find(job_id);
  if (it == progress_by_job_.end()) {
    it = progress_by_job_.emplace(job_id, &progress_.Add({{"job", job_id}})).first;
  }
  it->second->Set(ratio);
}

void Metrics::FinetuneBlock(const std::string& job_id, int block, double heldout_before,
                            double heldout_best) {
  finetune_blocks_.Increment();
  MutexLock l(&mu_);
  const std::string b = std::to_string(block);
  std::vector<prometheus::Gauge*>& gauges = finetune_by_job_[job_id];
  for (const auto& [when, v] : {std::pair<const char*, double>{"before", heldout_before},
                                std::pair<const char*, double>{"best", heldout_best}}) {
    prometheus::Gauge* g = &finetune_loss_.Add({{"job", job_id}, {"block", b}, {"when", when}});
    if (std::find(gauges.begin(), gauges.end(), g) == gauges.end()) gauges.push_back(g);
    g->Set(v);
  }
}

void Metrics::FinetuneE2e(const std::string& job_id, double heldout_before, double heldout_best) {
  finetune_e2e_.Increment();
  SetE2eGauges(job_id, {{"before", heldout_before}, {"best", heldout_best}});
}

void Metrics::FinetuneE2eProgress(const std::string& job_id, double heldout_before,
                                  double current) {
  SetE2eGauges(job_id, {{"before", heldout_before}, {"current", current}});
}

void Metrics::SetE2eGauges(const std::string& job_id,
                           const std::vector<std::pair<const char*, double>>& values) {
  MutexLock l(&mu_);
  std::vector<prometheus::Gauge*>& gauges = finetune_e2e_by_job_[job_id];
  for (const auto& [when, v] : values) {
    prometheus::Gauge* g = &finetune_e2e_kl_.Add({{"job", job_id}, {"when", when}});
    if (std::find(gauges.begin(), gauges.end(), g) == gauges.end()) gauges.push_back(g);
    g->Set(v);
  }
}

void Metrics::RemoveJobProgress(const std::string& job_id) {
  MutexLock l(&mu_);
  if (auto f = finetune_by_job_.find(job_id); f != finetune_by_job_.end()) {
    for (prometheus::Gauge* g : f->second) finetune_loss_.Remove(g);
    finetune_by_job_.erase(f);
  }
  if (auto f = finetune_e2e_by_job_.find(job_id); f != finetune_e2e_by_job_.end()) {
    for (prometheus::Gauge* g : f->second) finetune_e2e_kl_.Remove(g);
    finetune_e2e_by_job_.erase(f);
  }
  auto it = progress_by_job_.find(job_id);
  if (it == progress_by_job_.end()) return;
  progress_.Remove(it->second);
  progress_by_job_.erase(it);
}

void Metrics::TaskFinished(const std::string& kind, const std::string& outcome, double seconds) {
  tasks_.Add({{"kind", kind}, {"outcome", outcome}}).Increment();
  if (seconds >= 0) task_seconds_.Add({{"kind", kind}}, DurationBuckets()).Observe(seconds);
}

void Metrics::WorkerTaskCompleted(const std::string& worker_name) {
  worker_tasks_.Add({{"worker", worker_name}}).Increment();
}

void Metrics::WorkerLeases(const std::string& worker_name, int delta) {
  worker_leases_.Add({{"worker", worker_name}}).Increment(delta);
}

void Metrics::SetWorkers(int live, int lost) {
  workers_.Add({{"state", "live"}}).Set(live);
  workers_.Add({{"state", "lost"}}).Set(lost);
}

void Metrics::LeaseExpired() { lease_expirations_.Increment(); }
void Metrics::HessianTokens(int64_t n) { hessian_tokens_.Increment(static_cast<double>(n)); }
void Metrics::WeightsQuantized(int64_t n) { weights_quantized_.Increment(static_cast<double>(n)); }
void Metrics::MatrixProxyLoss(double loss) { matrix_proxy_loss_.Observe(loss); }
void Metrics::BytesServed(int64_t n) { bytes_served_.Increment(static_cast<double>(n)); }

}  // namespace quantd::server
