#pragma once

#include "common/clock.h"
#include "services/server/lane.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/steady_timer.hpp"

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace broker::server {

// Per hashed token, the connected workers and their parked lanes. A request
// takes a lane of the worker with the fewest requests in flight (ties broken
// round-robin), as ARCHITECTURE.md section 4 asks, with one refinement: a
// worker whose answers come markedly slower than its peers' (a moving
// average of the time to the answer's head, kSlowRatio times the token's
// typical worker's, the lower median, and kSlowMargin more) counts its load
// multiplied by that ratio, so it only gets work when the others are that
// much busier.
// Fewest-in-flight alone would still hand a 10x slower worker a quarter of a
// light load, and its slow answers would become everyone's tail latency. A
// slowed worker is probed with one request every kProbeInterval, so it earns
// its share back once it recovers.
//
// Thread-safe: gRPC reactions register and park; platform requests take.
// No callback is ever made while the lock is held.
class TunnelRegistry {
 public:
  // Idle lanes one worker may park (Welcome.max_lanes tells the worker):
  // beyond it a worker, buggy or hostile, would hold server memory and
  // streams for nothing.
  static constexpr std::size_t kMaxIdleLanesPerWorker = 1024;

  // `max_clients_per_token`: distinct workers a token may connect (0: no
  // limit), the server's second line behind the dispatcher's cap.
  // `clock` times the probes of slow workers.
  explicit TunnelRegistry(int max_clients_per_token = 4,
                          common::Clock& clock = common::SystemClock())
      : max_clients_per_token_(max_clients_per_token), clock_(clock) {}

  struct WorkerInfo {
    std::string client_id;
    std::string masked_token;  // for /connections-status; never the token
    std::string version;
    // The worker's configuration fingerprint: a token's workers must agree.
    std::string client_url;
    std::string rules_digest;
    absl::Time connected_at;
    std::size_t idle_lanes = 0;
    std::uint64_t in_flight = 0;
    // Moving average of the time from sending a request to its answer's
    // head; zero before the first answer.
    absl::Duration latency = absl::ZeroDuration();
    int latency_samples = 0;
  };

  // A worker counts as slow when its latency is at least this many times
  // the token's typical worker's (the lower median), and this much more:
  // the scheduling noise of a busy machine (or a sanitizer build) never
  // makes a worker slow.
  static constexpr double kSlowRatio = 3.0;
  static constexpr absl::Duration kSlowMargin = absl::Milliseconds(10);
  // ... and only once this many of its answers were measured.
  static constexpr int kSlowAfterSamples = 5;
  // A slow worker gets a request at least this often, to measure it again.
  static constexpr absl::Duration kProbeInterval = absl::Seconds(1);

  // A taken lane, and the token to give back when the request ends.
  struct Taken {
    std::shared_ptr<Lane> lane;
    std::string client_id;
  };

  // Registers a worker (a worker reconnecting with its client id replaces
  // its old registration) and returns the registration's serial, for
  // RemoveWorker. ResourceExhausted when the token has its maximum of
  // other workers; FailedPrecondition, naming the setting, when the
  // worker's fingerprint differs from the token's connected workers.
  absl::StatusOr<std::uint64_t> AddWorker(const std::string& token_hash,
                                          WorkerInfo info)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Removes that registration (not a newer one of the same client id).
  struct Removed {
    bool found = false;  // false: unknown, or replaced by a newer one
    std::vector<std::shared_ptr<Lane>> parked;  // for the caller to close
  };
  Removed RemoveWorker(const std::string& token_hash,
                       const std::string& client_id, std::uint64_t serial)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Whether no token has a worker (a draining server waits for that).
  bool Empty() const ABSL_LOCKS_EXCLUDED(mu_);

  // False when the worker is unknown (its Control call ended) or already
  // parks kMaxIdleLanesPerWorker lanes (then *full, if given, is set): the
  // caller closes the lane.
  bool Park(const std::string& token_hash, std::shared_ptr<Lane> lane,
            bool* full = nullptr) ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets a parked lane whose call ended while parked.
  void Unpark(const std::string& token_hash, const Lane* lane)
      ABSL_LOCKS_EXCLUDED(mu_);

  // A lane of the least loaded worker of the token, or nullopt when no
  // worker has an idle lane. A non-empty `avoid` skips that worker (a
  // request re-sent after its worker died).
  std::optional<Taken> Take(const std::string& token_hash,
                            absl::string_view avoid = "")
      ABSL_LOCKS_EXCLUDED(mu_);

  // As Take(), but when the token's workers are connected and all their
  // lanes are busy (a burst, or lanes still being opened), waits up to
  // `wait` for one to be parked. `done` runs exactly once, never under the
  // lock: inline when the answer is immediate, else on the parking gRPC
  // thread or on an `io` thread at the timeout.
  using TakeHandler = absl::AnyInvocable<void(std::optional<Taken>) &&>;
  void TakeOrWait(boost::asio::io_context& io, const std::string& token_hash,
                  absl::Duration wait, TakeHandler done,
                  absl::string_view avoid = "") ABSL_LOCKS_EXCLUDED(mu_);
  // The request on a taken lane ended. `latency`: how long its answer's
  // head took, or zero when it has none to report (it failed, or was
  // answered without the worker).
  void Release(const std::string& token_hash, const std::string& client_id,
               absl::Duration latency = absl::ZeroDuration())
      ABSL_LOCKS_EXCLUDED(mu_);

  // Runs `done(true)` once a worker of the token is here (at once if one
  // is), or `done(false)` after `wait`: a request that found no tunnel
  // anywhere while the token's workers move between servers (a rolling
  // restart) waits for them to arrive. `done` runs on an `io` thread, or
  // inline when the answer is immediate.
  void WaitForWorker(boost::asio::io_context& io, const std::string& token_hash,
                     absl::Duration wait,
                     absl::AnyInvocable<void(bool) &&> done)
      ABSL_LOCKS_EXCLUDED(mu_);

  bool HasWorkers(const std::string& token_hash) const ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<WorkerInfo> Workers(const std::string& token_hash) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // token hash -> its workers, for /connections-status.
  std::vector<std::pair<std::string, std::vector<WorkerInfo>>> Snapshot() const
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Worker {
    WorkerInfo info;
    std::uint64_t serial = 0;
    std::deque<std::shared_ptr<Lane>> idle;
    absl::Time last_taken = absl::InfinitePast();
  };
  struct Waiter {
    std::uint64_t id;
    TakeHandler done;
    std::shared_ptr<boost::asio::steady_timer> timer;
    std::string avoid;
  };
  struct Token {
    std::vector<Worker> workers;  // few (<= 4 per server in HA)
    std::size_t next = 0;         // round-robin tie breaker
    std::deque<Waiter> waiters;   // requests waiting for a lane
  };

  struct Arrival {
    std::uint64_t id;
    boost::asio::io_context* io;
    absl::AnyInvocable<void(bool) &&> done;
    std::shared_ptr<boost::asio::steady_timer> timer;
  };

  absl::StatusOr<std::uint64_t> AddWorkerLocked(const std::string& token_hash,
                                                WorkerInfo info)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The caller holds mu_ (the token lives in tokens_).
  static std::optional<Taken> TakeLocked(Token& token, absl::string_view avoid,
                                         absl::Time now);
  // Folds one answer's latency into the worker's moving average.
  static void ObserveLatency(WorkerInfo& info, absl::Duration sample);

  const int max_clients_per_token_;
  common::Clock& clock_;
  mutable absl::Mutex mu_;
  std::uint64_t next_serial_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, Token> tokens_ ABSL_GUARDED_BY(mu_);
  std::uint64_t next_waiter_id_ ABSL_GUARDED_BY(mu_) = 0;
  // Requests waiting for a token's first worker here (WaitForWorker).
  absl::flat_hash_map<std::string, std::vector<Arrival>> arrivals_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::server
