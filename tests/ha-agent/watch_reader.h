#pragma once

// A test's view of one Watch stream of broker-ha-agent: the sync API on a
// thread of its own, every Assignment kept, waits bounded by deadlines (no
// sleeps).

#include "broker/ha/v1/ha_agent.grpc.pb.h"
#include "broker/ha/v1/ha_agent.pb.h"

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace broker::ha::testing {

class WatchReader {
 public:
  WatchReader(const std::shared_ptr<grpc::Channel>& channel,
              v1::WatchRequest request)
      : stub_(v1::HaAgent::NewStub(channel)) {
    thread_ = std::thread([this, request = std::move(request)] {
      std::unique_ptr<grpc::ClientReader<v1::Assignment>> reader =
          stub_->Watch(&context_, request);
      v1::Assignment assignment;
      while (reader->Read(&assignment)) {
        absl::MutexLock lock(&mu_);
        received_.push_back(assignment);
        times_.push_back(absl::Now());
      }
      grpc::Status status = reader->Finish();
      absl::MutexLock lock(&mu_);
      status_ = std::move(status);
      done_ = true;
    });
  }
  explicit WatchReader(const std::shared_ptr<grpc::Channel>& channel,
                       const std::string& worker_id)
      : WatchReader(channel, Request(worker_id)) {}

  ~WatchReader() {
    context_.TryCancel();
    thread_.join();
  }

  static v1::WatchRequest Request(const std::string& worker_id) {
    v1::WatchRequest request;
    request.set_worker_id(worker_id);
    return request;
  }

  // The first message at index >= `from` that satisfies `want`, waiting up
  // to `timeout`; nullopt at the deadline or when the stream ended first.
  std::optional<v1::Assignment> WaitFor(
      const std::function<bool(const v1::Assignment&)>& want,
      absl::Duration timeout, size_t from = 0, absl::Time* at = nullptr) {
    absl::MutexLock lock(&mu_);
    const absl::Time deadline = absl::Now() + timeout;
    size_t next = from;
    while (true) {
      for (; next < received_.size(); ++next) {
        if (want(received_[next])) {
          if (at != nullptr) *at = times_[next];
          return received_[next];
        }
      }
      if (done_) return std::nullopt;
      const size_t seen = received_.size();
      auto changed = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return done_ || received_.size() != seen;
      };
      if (!mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) {
        return std::nullopt;
      }
    }
  }

  // The first message of a state.
  std::optional<v1::Assignment> WaitForState(v1::Assignment::State state,
                                             absl::Duration timeout,
                                             size_t from = 0) {
    return WaitFor(
        [state](const v1::Assignment& a) { return a.state() == state; },
        timeout, from);
  }

  // Waits for the stream to end; its status.
  std::optional<grpc::Status> WaitDone(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&done_), timeout)) {
      return std::nullopt;
    }
    return status_;
  }

  size_t count() {
    absl::MutexLock lock(&mu_);
    return received_.size();
  }
  std::vector<v1::Assignment> received() {
    absl::MutexLock lock(&mu_);
    return received_;
  }

 private:
  std::unique_ptr<v1::HaAgent::Stub> stub_;
  grpc::ClientContext context_;
  absl::Mutex mu_;
  std::vector<v1::Assignment> received_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Time> times_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;  // last: uses every member above
};

}  // namespace broker::ha::testing
