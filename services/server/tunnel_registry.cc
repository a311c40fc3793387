#include "services/server/tunnel_registry.h"

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/post.hpp"

#include <algorithm>

namespace broker::server {

absl::StatusOr<std::uint64_t> TunnelRegistry::AddWorker(
    const std::string& token_hash, WorkerInfo info) {
  absl::StatusOr<std::uint64_t> serial;
  std::vector<Arrival> arrived;
  {
    absl::MutexLock lock(&mu_);
    serial = AddWorkerLocked(token_hash, std::move(info));
    auto it = arrivals_.find(token_hash);
    if (serial.ok() && it != arrivals_.end()) {
      arrived = std::move(it->second);
      arrivals_.erase(it);
    }
  }
  // Off this (gRPC) thread: the waiters go on to relay their requests.
  for (Arrival& arrival : arrived) {
    arrival.timer->cancel();
    boost::asio::post(*arrival.io, [done = std::move(arrival.done)]() mutable {
      std::move(done)(true);
    });
  }
  return serial;
}

void TunnelRegistry::WaitForWorker(boost::asio::io_context& io,
                                   const std::string& token_hash,
                                   absl::Duration wait,
                                   absl::AnyInvocable<void(bool) &&> done) {
  {
    absl::MutexLock lock(&mu_);
    auto it = tokens_.find(token_hash);
    const bool here = it != tokens_.end() && !it->second.workers.empty();
    if (!here && wait > absl::ZeroDuration()) {
      const std::uint64_t id = ++next_waiter_id_;
      auto timer = std::make_shared<boost::asio::steady_timer>(io);
      timer->expires_after(absl::ToChronoMilliseconds(wait));
      timer->async_wait([this, token_hash, id](boost::system::error_code ec) {
        if (ec) return;  // a worker arrived: AddWorker cancelled the timer
        std::optional<Arrival> expired;
        {
          absl::MutexLock timer_lock(&mu_);
          auto a = arrivals_.find(token_hash);
          if (a == arrivals_.end()) return;
          auto& waiting = a->second;
          for (auto w = waiting.begin(); w != waiting.end(); ++w) {
            if (w->id == id) {
              expired = std::move(*w);
              waiting.erase(w);
              break;
            }
          }
          if (waiting.empty()) arrivals_.erase(a);
        }
        if (expired) std::move(expired->done)(false);
      });
      arrivals_[token_hash].push_back(
          Arrival{id, &io, std::move(done), std::move(timer)});
      return;
    }
  }
  std::move(done)(HasWorkers(token_hash));
}

absl::StatusOr<std::uint64_t> TunnelRegistry::AddWorkerLocked(
    const std::string& token_hash, WorkerInfo info) {
  Token& token = tokens_[token_hash];
  Worker* same = nullptr;
  for (Worker& worker : token.workers) {
    if (worker.info.client_id == info.client_id) {
      same = &worker;
      continue;
    }
    // All clients of a token serve the same systems with the same rules;
    // a different one would answer some requests differently.
    if (worker.info.client_url != info.client_url) {
      return absl::FailedPreconditionError(absl::StrCat(
          "BROKER_CLIENT_URL differs from the token's connected client ",
          worker.info.client_id));
    }
    if (worker.info.rules_digest != info.rules_digest) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the accept rules (ACCEPT) differ from the token's connected "
          "client ",
          worker.info.client_id));
    }
  }
  const std::uint64_t serial = ++next_serial_;
  if (same != nullptr) {
    same->info = std::move(info);
    same->serial = serial;
    return serial;
  }
  if (max_clients_per_token_ > 0 &&
      token.workers.size() >=
          static_cast<std::size_t>(max_clients_per_token_)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the token already has ", max_clients_per_token_,
                     " connected clients (BROKER_MAX_CLIENTS_PER_TOKEN)"));
  }
  token.workers.push_back(Worker{std::move(info), serial, {}});
  return serial;
}

TunnelRegistry::Removed TunnelRegistry::RemoveWorker(
    const std::string& token_hash, const std::string& client_id,
    std::uint64_t serial) {
  Removed removed;
  std::deque<Waiter> orphans;
  {
    absl::MutexLock lock(&mu_);
    auto it = tokens_.find(token_hash);
    if (it == tokens_.end()) return removed;
    auto& workers = it->second.workers;
    for (auto w = workers.begin(); w != workers.end(); ++w) {
      if (w->info.client_id != client_id || w->serial != serial) continue;
      removed.found = true;
      removed.parked.assign(w->idle.begin(), w->idle.end());
      workers.erase(w);
      break;
    }
    if (workers.empty()) {
      orphans = std::move(it->second.waiters);
      tokens_.erase(it);
    }
  }
  // Requests waiting for a lane of the last worker get their answer now.
  for (Waiter& waiter : orphans) {
    waiter.timer->cancel();
    std::move(waiter.done)(std::nullopt);
  }
  return removed;
}

bool TunnelRegistry::Empty() const {
  absl::MutexLock lock(&mu_);
  return tokens_.empty();
}

bool TunnelRegistry::Park(const std::string& token_hash,
                          std::shared_ptr<Lane> lane, bool* full) {
  std::optional<Waiter> waiter;
  std::optional<Taken> taken;
  {
    absl::MutexLock lock(&mu_);
    auto it = tokens_.find(token_hash);
    if (it == tokens_.end()) return false;
    Token& token = it->second;
    Worker* owner = nullptr;
    for (Worker& worker : token.workers) {
      if (worker.info.client_id == lane->client_id()) owner = &worker;
    }
    if (owner == nullptr) return false;
    if (owner->idle.size() >= kMaxIdleLanesPerWorker) {
      if (full != nullptr) *full = true;
      return false;
    }
    owner->idle.push_back(std::move(lane));
    owner->info.idle_lanes = owner->idle.size();
    // The first waiter this lane can serve (not one avoiding its worker).
    for (auto w = token.waiters.begin(); w != token.waiters.end(); ++w) {
      if (w->avoid == owner->info.client_id) continue;
      taken = TakeLocked(token, w->avoid, clock_.Now());
      if (!taken) break;
      waiter = std::move(*w);
      token.waiters.erase(w);
      break;
    }
  }
  if (waiter) {
    waiter->timer->cancel();
    std::move(waiter->done)(std::move(taken));
  }
  return true;
}

void TunnelRegistry::Unpark(const std::string& token_hash, const Lane* lane) {
  absl::MutexLock lock(&mu_);
  auto it = tokens_.find(token_hash);
  if (it == tokens_.end()) return;
  for (Worker& worker : it->second.workers) {
    auto& idle = worker.idle;
    auto found = std::find_if(
        idle.begin(), idle.end(),
        [lane](const std::shared_ptr<Lane>& l) { return l.get() == lane; });
    if (found != idle.end()) {
      idle.erase(found);
      worker.info.idle_lanes = idle.size();
      return;
    }
  }
}

std::optional<TunnelRegistry::Taken> TunnelRegistry::Take(
    const std::string& token_hash, absl::string_view avoid) {
  absl::MutexLock lock(&mu_);
  auto it = tokens_.find(token_hash);
  if (it == tokens_.end()) return std::nullopt;
  return TakeLocked(it->second, avoid, clock_.Now());
}

void TunnelRegistry::TakeOrWait(boost::asio::io_context& io,
                                const std::string& token_hash,
                                absl::Duration wait, TakeHandler done,
                                absl::string_view avoid) {
  std::optional<Taken> taken;
  {
    absl::MutexLock lock(&mu_);
    auto it = tokens_.find(token_hash);
    if (it != tokens_.end()) {
      taken = TakeLocked(it->second, avoid, clock_.Now());
      if (!taken && wait > absl::ZeroDuration()) {
        const std::uint64_t id = ++next_waiter_id_;
        auto timer = std::make_shared<boost::asio::steady_timer>(io);
        timer->expires_after(absl::ToChronoMilliseconds(wait));
        timer->async_wait(
            [this, token_hash, id, timer](boost::system::error_code ec) {
              if (ec) return;  // served by Park(), which cancelled the timer
              std::optional<Waiter> expired;
              {
                absl::MutexLock timer_lock(&mu_);
                auto t = tokens_.find(token_hash);
                if (t == tokens_.end()) return;
                auto& waiters = t->second.waiters;
                for (auto w = waiters.begin(); w != waiters.end(); ++w) {
                  if (w->id == id) {
                    expired = std::move(*w);
                    waiters.erase(w);
                    break;
                  }
                }
              }
              if (expired) std::move(expired->done)(std::nullopt);
            });
        it->second.waiters.push_back(
            Waiter{id, std::move(done), timer, std::string(avoid)});
        return;
      }
    }
  }
  std::move(done)(std::move(taken));
}

std::optional<TunnelRegistry::Taken> TunnelRegistry::TakeLocked(
    Token& token, absl::string_view avoid, absl::Time now) {
  const std::size_t n = token.workers.size();
  // The typical measured latency (the lower median) of the workers that
  // could serve: one lucky fast worker does not make the others slow.
  absl::Duration typical = absl::InfiniteDuration();
  {
    absl::InlinedVector<absl::Duration, 4> measured;
    for (const Worker& worker : token.workers) {
      if (worker.idle.empty() || worker.info.client_id == avoid) continue;
      if (worker.info.latency_samples >= kSlowAfterSamples) {
        measured.push_back(worker.info.latency);
      }
    }
    if (!measured.empty()) {
      absl::Duration* median = measured.begin() + (measured.size() - 1) / 2;
      std::nth_element(measured.begin(), median, measured.end());
      typical = *median;
    }
  }
  Worker* best = nullptr;
  std::size_t best_index = 0;
  double best_cost = 0;
  // Lowest cost wins; among equals, the first after the last pick.
  for (std::size_t k = 0; k < n; ++k) {
    std::size_t i = (token.next + k) % n;
    Worker& worker = token.workers[i];
    if (worker.idle.empty() || worker.info.client_id == avoid) continue;
    double slowness = 1;
    if (typical != absl::InfiniteDuration() &&
        worker.info.latency_samples >= kSlowAfterSamples &&
        worker.info.latency >= typical * kSlowRatio &&
        worker.info.latency - typical >= kSlowMargin) {
      if (now - worker.last_taken >= kProbeInterval) {
        best = &worker;  // time to measure it again
        best_index = i;
        break;
      }
      slowness = absl::FDivDuration(worker.info.latency, typical);
    }
    const double cost =
        static_cast<double>(worker.info.in_flight + 1) * slowness;
    if (best == nullptr || cost < best_cost) {
      best = &worker;
      best_index = i;
      best_cost = cost;
    }
  }
  if (best == nullptr) return std::nullopt;
  token.next = (best_index + 1) % n;
  Taken taken{std::move(best->idle.front()), best->info.client_id};
  best->idle.pop_front();
  best->info.idle_lanes = best->idle.size();
  ++best->info.in_flight;
  best->last_taken = now;
  return taken;
}

void TunnelRegistry::ObserveLatency(WorkerInfo& info, absl::Duration sample) {
  if (sample <= absl::ZeroDuration()) return;
  ++info.latency_samples;
  // The first answer, or one much faster than the average: a worker that
  // was slow and recovered gets its share back with its first fast answer.
  if (info.latency == absl::ZeroDuration() || sample * 2 < info.latency) {
    info.latency = sample;
    return;
  }
  // One odd request (a large git fetch among small API calls) moves the
  // average by less than kSlowRatio; a worker must be slow repeatedly to
  // count as slow.
  sample = std::min(sample, info.latency * 4);
  constexpr double kWeight = 0.3;
  info.latency += (sample - info.latency) * kWeight;
}

void TunnelRegistry::Release(const std::string& token_hash,
                             const std::string& client_id,
                             absl::Duration latency) {
  absl::MutexLock lock(&mu_);
  auto it = tokens_.find(token_hash);
  if (it == tokens_.end()) return;
  for (Worker& worker : it->second.workers) {
    if (worker.info.client_id == client_id && worker.info.in_flight > 0) {
      --worker.info.in_flight;
      ObserveLatency(worker.info, latency);
      return;
    }
  }
}

bool TunnelRegistry::HasWorkers(const std::string& token_hash) const {
  absl::MutexLock lock(&mu_);
  return tokens_.contains(token_hash);
}

std::vector<TunnelRegistry::WorkerInfo> TunnelRegistry::Workers(
    const std::string& token_hash) const {
  std::vector<WorkerInfo> out;
  absl::MutexLock lock(&mu_);
  auto it = tokens_.find(token_hash);
  if (it == tokens_.end()) return out;
  for (const Worker& worker : it->second.workers) out.push_back(worker.info);
  return out;
}

std::vector<std::pair<std::string, std::vector<TunnelRegistry::WorkerInfo>>>
TunnelRegistry::Snapshot() const {
  std::vector<std::pair<std::string, std::vector<WorkerInfo>>> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [hash, token] : tokens_) {
    std::vector<WorkerInfo> workers;
    for (const Worker& worker : token.workers) workers.push_back(worker.info);
    out.emplace_back(hash, std::move(workers));
  }
  return out;
}

}  // namespace broker::server
