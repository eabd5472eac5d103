// WorkerPool: spawns and supervises local quantd-worker processes (the embedded mode,
// `quantd --local_workers=N`). A worker that exits is restarted after a back-off; Stop()
// terminates them (SIGTERM, then SIGKILL after a grace period).
// Thread-safety: Start/Stop from one thread; the supervisor runs on its own thread.
#ifndef QUANTD_SERVER_WORKER_POOL_H_
#define QUANTD_SERVER_WORKER_POOL_H_

#include <sys/types.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "common/mutex.h"

namespace quantd::server {

struct WorkerPoolOptions {
  std::string worker_binary;      // path of quantd-worker
  std::string coordinator;        // address the workers dial
  std::string cache_root;         // each worker gets cache_root/local-<i>
  std::string device = "auto";    // Default: auto
  int count = 1;                  // Default: 1
  int threads_per_worker = 0;     // Default: 0 = cores / count
  // Passed as --auth_token_file / --tls_ca / --tls_cert / --tls_key: paths only, so no secret
  // shows in `ps`. Default: empty = flag not passed.
  std::string auth_token_file;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
};

class WorkerPool {
 public:
  explicit WorkerPool(WorkerPoolOptions options);
  ~WorkerPool();
  absl::Status Start();
  void Stop();

 private:
  pid_t Spawn(int index);
  void Supervise();

  WorkerPoolOptions options_;
  Mutex mu_;
  std::vector<pid_t> pids_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread supervisor_;
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_WORKER_POOL_H_
