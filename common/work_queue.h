// WorkQueue: a fixed set of threads that run posted closures in FIFO order.
//
// The gRPC server's callback threads are shared by every RPC (heartbeats and leases included);
// work that takes seconds (a submission snapshotting and tokenizing its inputs, a report
// hashing, fsyncing and decoding a multi-GB result) is posted here and finishes its reactor
// from a queue thread, so the callback threads stay free.
// Thread-safety: Post may be called from any thread. The destructor runs every closure posted
// before it and joins the threads; nothing may be posted once it has started.
#ifndef QUANTD_COMMON_WORK_QUEUE_H_
#define QUANTD_COMMON_WORK_QUEUE_H_

#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"

namespace quantd {

class WorkQueue {
 public:
  // `threads` >= 1; `name` appears in the threads' names (for debuggers and top -H).
  WorkQueue(int threads, std::string name);
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Post(std::function<void()> work);

 private:
  void Run();

  Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace quantd

#endif  // QUANTD_COMMON_WORK_QUEUE_H_
