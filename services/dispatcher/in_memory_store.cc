#include "services/dispatcher/in_memory_store.h"

#include "common/status.h"

#include "absl/strings/str_cat.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace broker::dispatcher {

InMemoryStore::InMemoryStore(StoreOptions options, common::Clock& clock)
    : options_(options),
      placement_(PlacementOptions{options.max_clients_per_token,
                                  options.load_slack_permille}),
      clock_(clock) {}

void InMemoryStore::PurgeExpired(absl::Time now) {
  while (!expiry_.empty() && std::get<0>(*expiry_.begin()) <= now) {
    // Copies: DropLease erases the index entry they would refer to.
    const std::string token_hash = std::get<1>(*expiry_.begin());
    const std::string client_id = std::get<2>(*expiry_.begin());
    DropLease(token_hash, client_id);
  }
}

void InMemoryStore::DropLease(const std::string& token_hash,
                              const std::string& client_id) {
  auto token = tokens_.find(token_hash);
  if (token == tokens_.end()) return;
  auto lease = token->second.find(client_id);
  if (lease == token->second.end()) return;
  expiry_.erase(ExpiryKey{lease->second.expires, token_hash, client_id});
  auto server = servers_.find(lease->second.server_id);
  // A lease's server stays registered until RemoveServer drops its leases.
  BROKER_CHECK(server != servers_.end());
  --server->second.load;
  token->second.erase(lease);
  if (token->second.empty()) tokens_.erase(token);
}

void InMemoryStore::SetLease(const std::string& token_hash,
                             const std::string& client_id,
                             const std::string& server_id, absl::Time now) {
  DropLease(token_hash, client_id);
  const absl::Time expires = now + options_.lease_ttl;
  tokens_[token_hash][client_id] = Lease{server_id, expires};
  expiry_.insert(ExpiryKey{expires, token_hash, client_id});
  auto server = servers_.find(server_id);
  BROKER_CHECK(server != servers_.end());
  ++server->second.load;
}

bool InMemoryStore::IsLive(const std::string& server_id, absl::Time now) const {
  auto server = servers_.find(server_id);
  return server != servers_.end() && server->second.live_until > now;
}

void InMemoryStore::TouchServer(const std::string& server_id, absl::Time now) {
  Server& server = servers_[server_id];
  server.registration.id = server_id;
  server.live_until = now + options_.server_ttl;
}

std::size_t InMemoryStore::LiveLeases(const std::string& token_hash) const {
  auto token = tokens_.find(token_hash);
  return token == tokens_.end() ? 0 : token->second.size();
}

absl::StatusOr<AllocationResult> InMemoryStore::Allocate(
    const std::string& token_hash, const std::string& client_id) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  PurgeExpired(now);

  const Lease* existing = nullptr;
  if (auto token = tokens_.find(token_hash); token != tokens_.end()) {
    if (auto lease = token->second.find(client_id);
        lease != token->second.end()) {
      existing = &lease->second;
    }
  }
  if (existing != nullptr && IsLive(existing->server_id, now)) {
    const std::string server_id = existing->server_id;
    SetLease(token_hash, client_id, server_id, now);
    return AllocationResult{
        server_id, servers_.at(server_id).registration.tunnel_url, true};
  }
  // A client whose server died keeps its slot and is placed again.
  const std::size_t others =
      LiveLeases(token_hash) - (existing != nullptr ? 1 : 0);
  if (others >= static_cast<std::size_t>(options_.max_clients_per_token)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the token already has ", others, " of at most ",
                     options_.max_clients_per_token, " clients"));
  }

  std::vector<std::string> live;
  for (const auto& [id, server] : servers_) {
    if (server.live_until > now) live.push_back(id);
  }
  if (live.empty()) {
    return absl::FailedPreconditionError("no broker server is registered");
  }
  const std::vector<std::string> ranked = placement_.Rank(token_hash, live);
  std::vector<PlacementCandidate> candidates;
  candidates.reserve(ranked.size());
  for (const std::string& id : ranked) {
    candidates.push_back({id, servers_.at(id).load, 0});
  }
  if (auto token = tokens_.find(token_hash); token != tokens_.end()) {
    for (const auto& [other_client, lease] : token->second) {
      if (other_client == client_id) continue;
      for (PlacementCandidate& candidate : candidates) {
        if (candidate.id == lease.server_id) ++candidate.token_clients;
      }
    }
  }
  const std::string& chosen = ranked[placement_.Choose(candidates)];
  SetLease(token_hash, client_id, chosen, now);
  return AllocationResult{chosen, servers_.at(chosen).registration.tunnel_url,
                          false};
}

absl::StatusOr<bool> InMemoryStore::RegisterServer(
    const ServerRegistration& registration) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  const bool created = servers_.find(registration.id) == servers_.end();
  TouchServer(registration.id, now);
  servers_[registration.id].registration = registration;
  return created;
}

absl::StatusOr<std::int64_t> InMemoryStore::RemoveServer(
    const std::string& server_id) {
  absl::MutexLock lock(&mu_);
  PurgeExpired(clock_.Now());
  if (servers_.find(server_id) == servers_.end()) return 0;
  std::vector<std::pair<std::string, std::string>> held;
  for (const auto& [hash, leases] : tokens_) {
    for (const auto& [client, lease] : leases) {
      if (lease.server_id == server_id) held.emplace_back(hash, client);
    }
  }
  for (const auto& [hash, client] : held) DropLease(hash, client);
  servers_.erase(server_id);
  return static_cast<std::int64_t>(held.size());
}

absl::Status InMemoryStore::RefreshClient(const std::string& server_id,
                                          const std::string& token_hash,
                                          const std::string& client_id) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  PurgeExpired(now);
  TouchServer(server_id, now);
  auto token = tokens_.find(token_hash);
  const bool known =
      token != tokens_.end() && token->second.contains(client_id);
  if (!known && LiveLeases(token_hash) >=
                    static_cast<std::size_t>(options_.max_clients_per_token)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the token already has ", LiveLeases(token_hash), " of at most ",
        options_.max_clients_per_token, " clients"));
  }
  SetLease(token_hash, client_id, server_id, now);
  return absl::OkStatus();
}

absl::StatusOr<bool> InMemoryStore::ReleaseClient(
    const std::string& server_id, const std::string& token_hash,
    const std::string& client_id) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  PurgeExpired(now);
  if (servers_.find(server_id) != servers_.end()) TouchServer(server_id, now);
  auto token = tokens_.find(token_hash);
  if (token == tokens_.end()) return false;
  auto lease = token->second.find(client_id);
  if (lease == token->second.end() || lease->second.server_id != server_id) {
    return false;
  }
  DropLease(token_hash, client_id);
  return true;
}

absl::StatusOr<std::vector<TokenServer>> InMemoryStore::ServersForToken(
    const std::string& token_hash) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  PurgeExpired(now);
  absl::btree_map<std::string, std::int64_t> counts;
  if (auto token = tokens_.find(token_hash); token != tokens_.end()) {
    for (const auto& [client, lease] : token->second) {
      if (IsLive(lease.server_id, now)) ++counts[lease.server_id];
    }
  }
  std::vector<TokenServer> out;
  out.reserve(counts.size());
  for (const auto& [id, clients] : counts) {
    const ServerRegistration& registration = servers_.at(id).registration;
    out.push_back(
        {id, registration.internal_url, registration.tunnel_url, clients});
  }
  return out;
}

absl::StatusOr<StoreCounts> InMemoryStore::Counts() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_.Now();
  PurgeExpired(now);
  StoreCounts counts;
  for (const auto& [id, server] : servers_) {
    if (server.live_until <= now) continue;
    ++counts.live_servers;
    counts.live_leases += server.load;
  }
  return counts;
}

}  // namespace broker::dispatcher
