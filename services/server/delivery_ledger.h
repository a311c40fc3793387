#pragma once

// At most once toward the platform per webhook event: the server remembers,
// per (hashed token, x-broker-delivery-id), which Deliver attempt owns the
// event and what the platform answered, so that a retry of the same event
// (broker-webhook retries when an attempt's tunnel call fails) is answered
// from here instead of reaching the platform a second time.

#include "common/clock.h"
#include "common/http/message.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace broker::server {

// What the first attempt of a delivery answered, kept for its retries.
struct DeliveryAnswer {
  // A Failure{status, failure_code, body} answer when `failure_code` is set
  // (the platform timed out, or failed after the request may have reached
  // it); otherwise the platform's HTTP answer.
  int status = 0;
  std::string failure_code;
  common::http::Headers headers;
  std::string body;
  // False when the answer was too big to keep (over kMaxKeptBodyBytes) or
  // was cut short: only the status and headers are kept, and a retry gets
  // Failure{502, "DUPLICATE_DELIVERY"} rather than a partial answer.
  bool whole = true;
};

class DeliveryLedger {
 public:
  // The most body of an answer the ledger keeps for retries.
  static constexpr std::size_t kMaxKeptBodyBytes = std::size_t{64} * 1024;

  struct Options {
    // Entries beyond this evict the oldest completed ones; when every entry
    // is in flight, new deliveries are not deduplicated (kUntracked).
    std::size_t max_entries = 100'000;
    // How long a completed delivery's answer is kept for retries.
    absl::Duration keep = absl::Minutes(10);
  };

  // The outcome of a Begin().
  enum class Role {
    kOwner,      // first attempt: call the platform, then Complete/Forget
    kAnswered,   // a completed delivery: `answer` is its answer
    kWaiting,    // in flight elsewhere: `on_resolved` will run
    kUntracked,  // the ledger is full of deliveries in flight: go ahead
                 // without deduplication
  };
  struct Begun {
    Role role = Role::kUntracked;
    // kOwner and kWaiting: the attempt's ticket for the calls below.
    std::uint64_t ticket = 0;
    std::shared_ptr<const DeliveryAnswer> answer;  // kAnswered
  };

  // Runs once for a waiting attempt, never under the ledger's lock, with
  // the waiter's ticket (it may run before Begin() has returned it): with
  // the owner's answer, or with null when the owner was forgotten and this
  // waiter now owns the delivery under that ticket: it calls the platform
  // itself, then Complete/Forget.
  using OnResolved =
      absl::AnyInvocable<void(std::uint64_t ticket,
                              std::shared_ptr<const DeliveryAnswer>) &&>;

  // Keys are the hashed token and the delivery id.
  struct Key {
    std::string token_hash;
    std::string delivery_id;
    bool operator==(const Key& other) const {
      return token_hash == other.token_hash && delivery_id == other.delivery_id;
    }
    template <typename H>
    friend H AbslHashValue(H h, const Key& key) {
      return H::combine(std::move(h), key.token_hash, key.delivery_id);
    }
  };

  // `clock` must outlive the ledger.
  explicit DeliveryLedger(common::Clock& clock) : DeliveryLedger(clock, {}) {}
  DeliveryLedger(common::Clock& clock, Options options)
      : clock_(clock), options_(options) {}

  // An attempt of delivery `key` arrives. `on_resolved` is kept only for
  // kWaiting (and dropped otherwise).
  Begun Begin(const Key& key, OnResolved on_resolved) ABSL_LOCKS_EXCLUDED(mu_);

  // The owner's platform call ended with `answer`: kept `keep`, and handed
  // to every waiting attempt. No-op unless `ticket` owns `key`.
  void Complete(const Key& key, std::uint64_t ticket, DeliveryAnswer answer)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The owner's platform call did not reach the platform (its request body
  // never arrived whole, or the platform was unreachable): the id is
  // forgotten, so that a retry goes through; the oldest waiting attempt,
  // if any, becomes the owner. No-op unless `ticket` owns `key`.
  void Forget(const Key& key, std::uint64_t ticket) ABSL_LOCKS_EXCLUDED(mu_);

  // A waiting attempt went away: its `on_resolved` is dropped without
  // running. When it had meanwhile been made the owner, this is Forget().
  // No-op for an unknown ticket.
  void Abandon(const Key& key, std::uint64_t ticket) ABSL_LOCKS_EXCLUDED(mu_);

  // Entries held (in flight and completed), after dropping expired ones.
  std::size_t size() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Waiter {
    std::uint64_t ticket;
    OnResolved on_resolved;
  };
  struct Entry {
    std::uint64_t owner = 0;  // the ticket of the attempt that owns it
    std::shared_ptr<const DeliveryAnswer> answer;  // null while in flight
    std::deque<Waiter> waiters;
  };
  // Completed entries, oldest first (completion times never decrease).
  struct Completed {
    absl::Time at;
    Key key;
    std::uint64_t owner;
  };

  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the oldest completed entry; false when there is none.
  bool EvictOldestLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  common::Clock& clock_;
  const Options options_;
  absl::Mutex mu_;
  std::uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::deque<Completed> completed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::server
