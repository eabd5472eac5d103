#include "common/work_queue.h"

#include <pthread.h>

#include <utility>

#include "absl/time/time.h"

namespace quantd {

WorkQueue::WorkQueue(int threads, std::string name) {
  if (threads < 1) threads = 1;
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { Run(); });
    // Linux limits thread names to 15 characters.
    pthread_setname_np(threads_.back().native_handle(), name.substr(0, 15).c_str());
  }
}

WorkQueue::~WorkQueue() {
  {
    MutexLock l(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void WorkQueue::Post(std::function<void()> work) {
  MutexLock l(&mu_);
  queue_.push_back(std::move(work));
}

void WorkQueue::Run() {
  for (;;) {
    std::function<void()> work;
    {
      MutexLock l(&mu_);
      while (queue_.empty() && !stopping_) {
        mu_.AwaitWithTimeout([this]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return !queue_.empty() || stopping_;
        }, absl::Seconds(1));
      }
      if (queue_.empty()) return;  // stopping, and everything posted has run
      work = std::move(queue_.front());
      queue_.pop_front();
    }
    work();
  }
}

}  // namespace quantd
