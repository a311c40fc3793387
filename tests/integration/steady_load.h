#pragma once

// Steady GET load for the fault tests: `threads` threads, each sending one
// GET after another (keep-alive) to the URLs in turn, counting every
// answer that is not a whole 200 as failed. The tests break a piece of the
// mesh while it runs and then require zero failures.

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace broker::testing {

class SteadyLoad {
 public:
  SteadyLoad(std::vector<std::string> urls, int threads);
  ~SteadyLoad();  // Stop()s
  SteadyLoad(const SteadyLoad&) = delete;
  SteadyLoad& operator=(const SteadyLoad&) = delete;

  // Waits until `more` GETs beyond the current count succeeded; false at
  // the deadline (the load stalled).
  bool WaitForMore(int more, absl::Duration timeout) const;
  // Stops the threads and joins them (idempotent).
  void Stop();

  int ok() const { return ok_.load(); }
  int failed() const { return failed_.load(); }
  // "status body x-broker-failure" or the transport error of the first
  // failure, "" if none.
  std::string first_failure() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run(int thread);

  const std::vector<std::string> urls_;
  std::atomic<bool> stop_{false};
  std::atomic<int> ok_{0};
  std::atomic<int> failed_{0};
  mutable absl::Mutex mu_;
  std::string first_failure_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

}  // namespace broker::testing
