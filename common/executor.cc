#include "common/executor.h"

#include "common/status.h"

#include "absl/strings/str_cat.h"
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <pthread.h>
#include <string>
#include <utility>

namespace broker::common {

class Executor::WorkGuard {
 public:
  explicit WorkGuard(boost::asio::io_context& io)
      : guard_(boost::asio::make_work_guard(io)) {}

 private:
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type>
      guard_;
};

Executor::Executor(int num_threads)
    : num_threads_(num_threads),
      io_(std::make_unique<boost::asio::io_context>(num_threads)) {
  BROKER_CHECK(num_threads >= 1);
  absl::MutexLock lock(&mu_);
  work_guard_ = std::make_unique<WorkGuard>(*io_);
  threads_.reserve(static_cast<size_t>(num_threads));
  for (int i = 0; i < num_threads; ++i) {
    threads_.emplace_back([this, i] {
      // At most 15 characters: "broker-io-" leaves room for 5 digits.
      const std::string name = absl::StrCat("broker-io-", i);
      pthread_setname_np(pthread_self(), name.c_str());
      io_->run();
    });
  }
}

Executor::~Executor() { Stop(); }

void Executor::Post(absl::AnyInvocable<void()> work) {
  boost::asio::post(*io_, [work = std::move(work)]() mutable { work(); });
}

bool Executor::RunningInThisThread() const {
  return io_->get_executor().running_in_this_thread();
}

void Executor::Stop() {
  BROKER_CHECK(!RunningInThisThread());
  std::unique_ptr<WorkGuard> work_guard;
  std::vector<std::thread> threads;
  bool first_call = false;
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      stopping_ = true;
      first_call = true;
      work_guard = std::move(work_guard_);
      threads.swap(threads_);
    }
  }
  if (!first_call) {
    // Another caller is joining (or has joined) the threads.
    joined_.WaitForNotification();
    return;
  }
  work_guard.reset();
  io_->stop();
  for (std::thread& thread : threads) thread.join();
  joined_.Notify();
}

}  // namespace broker::common
