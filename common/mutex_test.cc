#include "common/mutex.h"

#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace quantd {
namespace {

TEST(Mutex, LockExcludesOtherThreads) {
  Mutex mu;
  long counter = 0;  // guarded by mu; a plain long, so a lost update shows as a wrong total
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        MutexLock l(&mu);
        long v = counter;
        counter = v + 1;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, 4 * 20000);
}

// AwaitWithTimeout under the lock on a condition that stays `holds`: its result and how long
// it took.
std::pair<bool, absl::Duration> TimedAwait(bool holds, absl::Duration timeout) {
  Mutex mu;
  MutexLock l(&mu);
  const absl::Time start = absl::Now();
  const bool got = mu.AwaitWithTimeout([holds] { return holds; }, timeout);
  return {got, absl::Now() - start};
}

TEST(Mutex, AwaitTimesOutWhenConditionStaysFalse) {
  const auto [got, took] = TimedAwait(false, absl::Milliseconds(50));
  EXPECT_FALSE(got);
  EXPECT_GE(took, absl::Milliseconds(45));
}

TEST(Mutex, AwaitReturnsAtOnceWhenConditionHolds) {
  const auto [got, took] = TimedAwait(true, absl::Seconds(30));
  EXPECT_TRUE(got);
  EXPECT_LT(took, absl::Seconds(10));
}

// A writer only takes the lock and sets the flag (no explicit signal): the waiter must see it
// well before its timeout, and must hold the lock when it returns.
TEST(Mutex, AwaitWakesWhenAnotherThreadChangesStateUnderTheLock) {
  Mutex mu;
  bool ready = false;
  int observed = 0;
  std::thread writer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    MutexLock l(&mu);
    ready = true;
  });
  const absl::Time start = absl::Now();
  {
    MutexLock l(&mu);
    EXPECT_TRUE(mu.AwaitWithTimeout([&] { return ready; }, absl::Seconds(60)));
    observed = ready ? 1 : 0;
    mu.AssertHeld();
  }
  writer.join();
  EXPECT_EQ(observed, 1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

}  // namespace
}  // namespace quantd
