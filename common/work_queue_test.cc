#include "common/work_queue.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace quantd {
namespace {

TEST(WorkQueue, RunsEverythingPostedBeforeDestructionInOrderOnOneThread) {
  std::vector<int> order;  // one thread: no lock needed, and the order must be FIFO
  {
    WorkQueue q(1, "test");
    for (int i = 0; i < 100; ++i) q.Post([&order, i] { order.push_back(i); });
  }
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

// A closure that blocks does not hold up the others while a thread is free: with two threads,
// the second closure completes although the first waits for it.
TEST(WorkQueue, ABlockedClosureLeavesTheOtherThreadsWorking) {
  absl::Notification second_ran;
  std::atomic<bool> first_saw_second{false};
  {
    WorkQueue q(2, "test");
    q.Post([&] { first_saw_second = second_ran.WaitForNotificationWithTimeout(absl::Seconds(30)); });
    q.Post([&] { second_ran.Notify(); });
  }
  EXPECT_TRUE(first_saw_second.load());
}

TEST(WorkQueue, RunsClosuresOffTheCallersThread) {
  std::thread::id ran_on;
  {
    WorkQueue q(1, "test");
    q.Post([&] { ran_on = std::this_thread::get_id(); });
  }
  EXPECT_NE(ran_on, std::this_thread::get_id());
  EXPECT_NE(ran_on, std::thread::id());
}

}  // namespace
}  // namespace quantd
