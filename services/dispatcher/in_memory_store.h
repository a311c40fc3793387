#pragma once

// The dispatcher's state in this process (the default, one replica). Every
// call takes one mutex for its whole, I/O-free run, which is what makes
// allocations atomic: the cap holds however many callers race.
//
// Expired leases are purged lazily, at the start of every call, from an
// index ordered by expiry, so a call costs O(servers + purged) and the
// store never scans all tokens.
//
// Thread-safety: all methods may be called from any thread.

#include "common/clock.h"
#include "services/dispatcher/placement.h"
#include "services/dispatcher/store.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

#include <memory>
#include <string>
#include <tuple>

namespace broker::dispatcher {

class InMemoryStore final : public Store {
 public:
  // `clock` must outlive the store.
  InMemoryStore(StoreOptions options, common::Clock& clock);

  absl::StatusOr<AllocationResult> Allocate(
      const std::string& token_hash, const std::string& client_id) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<bool> RegisterServer(
      const ServerRegistration& registration) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::int64_t> RemoveServer(
      const std::string& server_id) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status RefreshClient(const std::string& server_id,
                             const std::string& token_hash,
                             const std::string& client_id) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<bool> ReleaseClient(const std::string& server_id,
                                     const std::string& token_hash,
                                     const std::string& client_id) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<TokenServer>> ServersForToken(
      const std::string& token_hash) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<StoreCounts> Counts() override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Ping() override { return absl::OkStatus(); }

 private:
  struct Server {
    ServerRegistration registration;
    absl::Time live_until;
    std::int64_t load = 0;  // leases on this server
  };
  struct Lease {
    std::string server_id;
    absl::Time expires;
  };
  // client id -> lease, ordered so that iteration is deterministic.
  using TokenLeases = absl::btree_map<std::string, Lease>;
  // (expiry, token hash, client id)
  using ExpiryKey = std::tuple<absl::Time, std::string, std::string>;

  void PurgeExpired(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Creates or moves the lease of (hash, client) to `server_id`, expiring
  // at now + lease_ttl.
  void SetLease(const std::string& token_hash, const std::string& client_id,
                const std::string& server_id, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropLease(const std::string& token_hash, const std::string& client_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsLive(const std::string& server_id, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Registers `server_id` (without URLs) if unknown; extends its liveness.
  void TouchServer(const std::string& server_id, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::size_t LiveLeases(const std::string& token_hash) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const StoreOptions options_;
  const Placement placement_;
  common::Clock& clock_;

  absl::Mutex mu_;
  absl::btree_map<std::string, Server> servers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, TokenLeases> tokens_ ABSL_GUARDED_BY(mu_);
  absl::btree_set<ExpiryKey> expiry_ ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::dispatcher
