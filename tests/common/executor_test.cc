#include "common/executor.h"

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <memory>
#include <pthread.h>
#include <string>
#include <thread>
#include <vector>

namespace broker::common {
namespace {

using ::testing::UnorderedElementsAre;

std::string CurrentThreadName() {
  char name[16] = {};
  pthread_getname_np(pthread_self(), name, sizeof(name));
  return name;
}

TEST(ExecutorTest, RunsPostedWorkOnItsOwnThread) {
  Executor executor(1);
  EXPECT_EQ(executor.num_threads(), 1);
  absl::Notification done;
  std::thread::id worker;
  std::string name;
  bool running_in_executor = false;
  executor.Post([&] {
    worker = std::this_thread::get_id();
    name = CurrentThreadName();
    running_in_executor = executor.RunningInThisThread();
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_NE(worker, std::this_thread::get_id());
  EXPECT_EQ(name, "broker-io-0");
  EXPECT_TRUE(running_in_executor);
  EXPECT_FALSE(executor.RunningInThisThread());
}

TEST(ExecutorTest, AllThreadsRunWorkConcurrently) {
  constexpr int kThreads = 4;
  Executor executor(kThreads);
  // Each task waits until all have started: this only finishes if the
  // executor really has kThreads threads running at once.
  absl::BlockingCounter started(kThreads);
  absl::Notification all_started;
  absl::BlockingCounter finished(kThreads);
  absl::Mutex mu;
  std::vector<std::string> names;
  for (int i = 0; i < kThreads; ++i) {
    executor.Post([&] {
      {
        absl::MutexLock lock(&mu);
        names.push_back(CurrentThreadName());
      }
      started.DecrementCount();
      all_started.WaitForNotification();
      finished.DecrementCount();
    });
  }
  started.Wait();
  all_started.Notify();
  finished.Wait();
  absl::MutexLock lock(&mu);
  EXPECT_THAT(names, UnorderedElementsAre("broker-io-0", "broker-io-1",
                                          "broker-io-2", "broker-io-3"));
}

TEST(ExecutorTest, AcceptsMoveOnlyWork) {
  Executor executor(1);
  absl::Notification done;
  auto value = std::make_unique<int>(42);
  int seen = 0;
  executor.Post([value = std::move(value), &seen, &done] {
    seen = *value;
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_EQ(seen, 42);
}

TEST(ExecutorTest, IoContextRunsAsioHandlers) {
  Executor executor(2);
  absl::Notification done;
  boost::asio::post(executor.io(), [&] { done.Notify(); });
  done.WaitForNotification();
}

TEST(ExecutorTest, StopWaitsForTheRunningHandlerAndJoins) {
  Executor executor(2);
  absl::Notification started;
  absl::Notification release;
  std::atomic<bool> finished{false};
  executor.Post([&] {
    started.Notify();
    release.WaitForNotification();
    finished = true;
  });
  started.WaitForNotification();
  std::atomic<bool> finished_when_stop_returned{false};
  std::thread stopper([&] {
    executor.Stop();
    finished_when_stop_returned = finished.load();
  });
  release.Notify();
  stopper.join();
  EXPECT_TRUE(finished_when_stop_returned);
  EXPECT_TRUE(executor.io().stopped());
}

TEST(ExecutorTest, StopIsIdempotentAndSafeConcurrently) {
  Executor executor(2);
  std::vector<std::thread> stoppers;
  stoppers.reserve(3);
  for (int i = 0; i < 3; ++i) stoppers.emplace_back([&] { executor.Stop(); });
  for (std::thread& t : stoppers) t.join();
  executor.Stop();
  EXPECT_TRUE(executor.io().stopped());
}

TEST(ExecutorTest, WorkPostedAfterStopNeverRuns) {
  auto executor = std::make_unique<Executor>(2);
  executor->Stop();
  bool ran = false;
  // The threads are joined, so nothing can run this.
  executor->Post([&ran] { ran = true; });
  executor.reset();  // destroys the pending work
  EXPECT_FALSE(ran);
}

TEST(ExecutorTest, DestructorStopsAndJoins) {
  std::atomic<int> runs{0};
  {
    Executor executor(3);
    absl::BlockingCounter done(10);
    for (int i = 0; i < 10; ++i) {
      executor.Post([&] {
        ++runs;
        done.DecrementCount();
      });
    }
    done.Wait();
  }
  EXPECT_EQ(runs.load(), 10);
}

TEST(ExecutorDeathTest, StopFromItsOwnThreadCrashes) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Executor executor(1);
        absl::Notification never;
        executor.Post([&] { executor.Stop(); });
        never.WaitForNotification();
      },
      "BROKER_CHECK failed: !RunningInThisThread\\(\\)");
}

TEST(ExecutorDeathTest, ZeroThreadsCrashes) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(Executor executor(0), "num_threads >= 1");
}

}  // namespace
}  // namespace broker::common
