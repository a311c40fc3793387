#include "services/server/delivery_ledger.h"

#include <algorithm>

namespace broker::server {

DeliveryLedger::Begun DeliveryLedger::Begin(const Key& key,
                                            OnResolved on_resolved) {
  absl::MutexLock lock(&mu_);
  ExpireLocked(clock_.Now());
  Begun begun;
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    Entry& entry = it->second;
    if (entry.answer != nullptr) {
      begun.role = Role::kAnswered;
      begun.answer = entry.answer;
      return begun;
    }
    begun.role = Role::kWaiting;
    begun.ticket = next_ticket_++;
    entry.waiters.push_back({begun.ticket, std::move(on_resolved)});
    return begun;
  }
  if (entries_.size() >= options_.max_entries && !EvictOldestLocked()) {
    return begun;  // kUntracked
  }
  begun.role = Role::kOwner;
  begun.ticket = next_ticket_++;
  entries_[key].owner = begun.ticket;
  return begun;
}

void DeliveryLedger::Complete(const Key& key, std::uint64_t ticket,
                              DeliveryAnswer answer) {
  std::deque<Waiter> waiters;
  std::shared_ptr<const DeliveryAnswer> kept;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(key);
    if (it == entries_.end() || it->second.owner != ticket ||
        it->second.answer != nullptr) {
      return;
    }
    kept = std::make_shared<const DeliveryAnswer>(std::move(answer));
    it->second.answer = kept;
    waiters = std::move(it->second.waiters);
    it->second.waiters.clear();
    const absl::Time now = clock_.Now();
    // A clock that went back still keeps the queue ordered.
    const absl::Time at =
        completed_.empty() ? now : std::max(now, completed_.back().at);
    completed_.push_back({at, key, ticket});
    ExpireLocked(now);
  }
  for (Waiter& waiter : waiters) {
    std::move(waiter.on_resolved)(waiter.ticket, kept);
  }
}

void DeliveryLedger::Forget(const Key& key, std::uint64_t ticket) {
  OnResolved promoted;
  std::uint64_t promoted_ticket = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(key);
    if (it == entries_.end() || it->second.owner != ticket ||
        it->second.answer != nullptr) {
      return;
    }
    Entry& entry = it->second;
    if (entry.waiters.empty()) {
      entries_.erase(it);
      return;
    }
    // The oldest retry takes the delivery over, with its own ticket.
    entry.owner = entry.waiters.front().ticket;
    promoted_ticket = entry.owner;
    promoted = std::move(entry.waiters.front().on_resolved);
    entry.waiters.pop_front();
  }
  std::move(promoted)(promoted_ticket, nullptr);
}

void DeliveryLedger::Abandon(const Key& key, std::uint64_t ticket) {
  OnResolved dropped;  // destroyed after the lock is released
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return;
    Entry& entry = it->second;
    auto waiter =
        std::find_if(entry.waiters.begin(), entry.waiters.end(),
                     [ticket](const Waiter& w) { return w.ticket == ticket; });
    if (waiter != entry.waiters.end()) {
      dropped = std::move(waiter->on_resolved);
      entry.waiters.erase(waiter);
      return;
    }
  }
  // Not waiting any more: it may have been made the owner meanwhile.
  Forget(key, ticket);
}

std::size_t DeliveryLedger::size() {
  absl::MutexLock lock(&mu_);
  ExpireLocked(clock_.Now());
  return entries_.size();
}

void DeliveryLedger::ExpireLocked(absl::Time now) {
  while (!completed_.empty() && completed_.front().at + options_.keep <= now) {
    EvictOldestLocked();
  }
}

bool DeliveryLedger::EvictOldestLocked() {
  while (!completed_.empty()) {
    Completed oldest = std::move(completed_.front());
    completed_.pop_front();
    auto it = entries_.find(oldest.key);
    // Only the entry that completion queued (not a newer one of the key).
    if (it != entries_.end() && it->second.owner == oldest.owner &&
        it->second.answer != nullptr) {
      entries_.erase(it);
      return true;
    }
  }
  return false;
}

}  // namespace broker::server
