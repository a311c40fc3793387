#pragma once

// A pool of threads running one Boost.Asio io_context (STYLE 5.7): the place
// for blocking work (DNS, disk, Kubernetes calls) and for Asio/Beast I/O.
//
//   Executor executor(2);
//   executor.Post([] { ... });             // runs on broker-io-0 or -1
//   Server::Create(executor.io(), ...);    // Asio objects share the pool
//   executor.Stop();                       // or let the destructor do it
//
// Thread-safety: all methods may be called from any thread, except that
// Stop() and the destructor must not run on one of the executor's own
// threads (that would join itself; it crashes with BROKER_CHECK instead).
// Work posted after Stop() never runs; it is destroyed with the executor.

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

#include <memory>
#include <thread>
#include <vector>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace broker::common {

class Executor {
 public:
  // Starts `num_threads` (>= 1) threads named "broker-io-<i>", each running
  // io() until Stop().
  explicit Executor(int num_threads);
  // Stop(), then destroys io() with any work that never ran.
  ~Executor();

  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // The io_context the threads run, for sockets, timers and strands.
  boost::asio::io_context& io() { return *io_; }

  // Runs `work` on one of the threads, soon. `work` must not throw.
  void Post(absl::AnyInvocable<void()> work);

  // Stops the io_context (work queued but not started is dropped) and joins
  // the threads; a handler already running finishes first. Returns once all
  // threads have exited, also when called again or concurrently.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  int num_threads() const { return num_threads_; }

  // True when called from one of this executor's threads, inside a handler.
  bool RunningInThisThread() const;

 private:
  class WorkGuard;

  const int num_threads_;
  std::unique_ptr<boost::asio::io_context> io_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Keeps run() from returning while the queue is empty.
  std::unique_ptr<WorkGuard> work_guard_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  // Notified by the first Stop() once every thread has been joined.
  absl::Notification joined_;
};

}  // namespace broker::common
