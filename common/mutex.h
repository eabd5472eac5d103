// quantd::Mutex and quantd::MutexLock: the project's one lock type.
//
// In every normal build Mutex is absl::Mutex. In a ThreadSanitizer build it is a std::mutex
// plus a condition variable: Debian's libabsl_synchronization is not built with TSan, so the
// happens-before edges of an absl::Mutex (futexes inside an uninstrumented library) are
// invisible to TSan, which then reports every guarded access as a race. std::mutex is a
// pthread mutex, whose calls TSan intercepts, so under TSan our locking is actually checked.
//
// Only the operations the code base uses exist: Lock, Unlock, AssertHeld and AwaitWithTimeout.
// AwaitWithTimeout keeps absl's contract in both builds: the lock is held on entry and on
// return, the condition is evaluated with the lock held, and it is re-evaluated whenever
// another thread releases the lock (the TSan variant wakes waiters on every Unlock), so
// writers need no explicit signal.
// Thread-safety: these are the synchronization primitives; all methods are thread-safe.
#ifndef QUANTD_COMMON_MUTEX_H_
#define QUANTD_COMMON_MUTEX_H_

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/tsan.h"  // QUANTD_TSAN

#ifdef QUANTD_TSAN
#include <chrono>
#include <condition_variable>
#include <mutex>
#else
#include "absl/synchronization/mutex.h"
#endif

namespace quantd {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

#ifdef QUANTD_TSAN
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    const bool wake = waiters_ > 0;
    mu_.unlock();
    if (wake) cv_.notify_all();
  }
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

  // Waits (lock held) until cond() is true or timeout has passed; returns cond(). Callers are
  // checked (the lock must be held); the body is not: cond may be annotated with the caller's
  // name for this mutex, which the analysis cannot equate with `this`.
  template <typename Cond>
  bool AwaitWithTimeout(Cond cond, absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this)
      ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const auto deadline =
        std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    ++waiters_;
    bool ok = cond();
    while (!ok && cv_.wait_until(lock, deadline) != std::cv_status::timeout) ok = cond();
    if (!ok) ok = cond();
    --waiters_;
    lock.release();  // the caller still owns the lock
    return ok;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiters_ = 0;  // threads inside AwaitWithTimeout; read and written under mu_
#else
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.Lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.Unlock(); }
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() { mu_.AssertHeld(); }

  // Waits (lock held) until cond() is true or timeout has passed; returns cond().
  template <typename Cond>
  bool AwaitWithTimeout(Cond cond, absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this)
      ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return mu_.AwaitWithTimeout(absl::Condition(&cond), timeout);
  }

 private:
  absl::Mutex mu_;
#endif
};

// Holds a Mutex for its scope.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }

 private:
  Mutex* const mu_;
};

}  // namespace quantd

#endif  // QUANTD_COMMON_MUTEX_H_
