#pragma once

// A scripted DispatcherClient for unit tests of the agent's logic: each
// Allocate() asks the current policy and answers on a thread of its own
// (never inside Allocate(), as the interface requires).

#include "common/executor.h"
#include "services/ha-agent/dispatcher_client.h"

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

#include <functional>
#include <map>
#include <string>
#include <utility>

namespace broker::ha::testing {

class FakeDispatcher final : public DispatcherClient {
 public:
  using Policy =
      std::function<absl::StatusOr<Allocation>(const std::string& client_id)>;

  explicit FakeDispatcher(Policy policy)
      : executor_(1), policy_(std::move(policy)) {}
  ~FakeDispatcher() override { executor_.Stop(); }

  // Always server `id` at `url`.
  static Policy Always(const std::string& id, const std::string& url = "") {
    return [id, url](const std::string&) -> absl::StatusOr<Allocation> {
      return Allocation{id, url};
    };
  }

  void SetPolicy(Policy policy) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    policy_ = std::move(policy);
  }

  void Allocate(const std::string& client_id, Done done) override
      ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      ++calls_[client_id];
    }
    executor_.Post([this, client_id, done = std::move(done)]() mutable {
      Policy policy;
      {
        absl::MutexLock lock(&mu_);
        policy = policy_;
      }
      std::move(done)(policy(client_id));
    });
  }

  // Waits until `client_id` has been asked for at least `n` times.
  bool WaitForCalls(const std::string& client_id, int n, absl::Duration timeout)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto it = calls_.find(client_id);
      return it != calls_.end() && it->second >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

  int calls(const std::string& client_id) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(client_id);
    return it == calls_.end() ? 0 : it->second;
  }

 private:
  common::Executor executor_;
  absl::Mutex mu_;
  Policy policy_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::ha::testing
