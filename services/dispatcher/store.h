#pragma once

// The dispatcher's state behind one seam (STYLE 5.2): the registry of
// broker servers and the leases of (hashed token, client id) on them. Two
// implementations give the same answers to the same calls: InMemoryStore
// (one replica) and RedisStore (several replicas sharing one Redis).
//
// The model:
// - A server is live while its registration or any client event it sent is
//   younger than `server_ttl`. Dead servers get no new clients and are left
//   out of lookups; DELETE removes a server and frees its leases at once.
// - A lease holds one client's slot of its token until `lease_ttl` after
//   its last refresh (allocation, client-connected, client-pinged), or
//   until client-disconnected. At most `max_clients_per_token` leases of a
//   token are live at once, whatever the interleaving of callers.
// - Placement (services/dispatcher/placement.h) decides where a new client
//   goes.
//
// Error codes every implementation uses:
//   ResourceExhausted   the token already has its maximum of clients
//   FailedPrecondition  no live server to place a client on
//   Unavailable         the backing store cannot be reached (Redis)
//   Internal            the backing store answered nonsense
//
// Thread-safety: every method may be called from any thread, concurrently.
// Methods may block (RedisStore does network I/O, bounded by its timeouts):
// never call them on an I/O reactor thread.

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <cstdint>
#include <string>
#include <vector>

namespace broker::dispatcher {

struct StoreOptions {
  int max_clients_per_token = 4;
  absl::Duration lease_ttl = absl::Seconds(90);
  absl::Duration server_ttl = absl::Seconds(30);
  int load_slack_permille = 50;  // see PlacementOptions
};

// What a server tells about itself when it registers. Empty = not given.
struct ServerRegistration {
  std::string id;
  std::string health_check_link;
  std::string tunnel_url;    // where tunnel workers dial (gRPC)
  std::string internal_url;  // where other servers forward requests (HTTP)
};

struct AllocationResult {
  std::string server_id;
  std::string tunnel_url;  // the server's, "" if it registered none
  bool existing = false;   // the client already held this allocation
};

// A live server holding live leases of one token (the forwarding lookup).
struct TokenServer {
  std::string id;
  std::string internal_url;
  std::string tunnel_url;
  std::int64_t clients = 0;
};

// What the store holds now (GET /metrics).
struct StoreCounts {
  std::int64_t live_servers = 0;
  std::int64_t live_leases = 0;  // on live servers
};

class Store {
 public:
  virtual ~Store() = default;

  // The client's server: its existing allocation if that server is live
  // (the lease is refreshed), else a new placement. ResourceExhausted when
  // the token has max_clients_per_token other live clients.
  [[nodiscard]] virtual absl::StatusOr<AllocationResult> Allocate(
      const std::string& token_hash, const std::string& client_id) = 0;

  // Registers a server or refreshes it (its URLs are replaced by these).
  // True when it was not registered before.
  [[nodiscard]] virtual absl::StatusOr<bool> RegisterServer(
      const ServerRegistration& registration) = 0;

  // Removes a server and frees every lease it held. The number freed.
  [[nodiscard]] virtual absl::StatusOr<std::int64_t> RemoveServer(
      const std::string& server_id) = 0;

  // client-connected / client-pinged from `server_id`: refreshes the
  // server's liveness (registering it, without URLs, if unknown) and the
  // client's lease, now on that server; a lease the store did not know is
  // created (a dispatcher restarted without its state learns it this way)
  // unless the token is full (ResourceExhausted).
  [[nodiscard]] virtual absl::Status RefreshClient(
      const std::string& server_id, const std::string& token_hash,
      const std::string& client_id) = 0;

  // client-disconnected from `server_id`: frees the client's lease if it is
  // on that server (a client that moved keeps its newer lease), and
  // refreshes the server's liveness if it is registered. True if freed.
  [[nodiscard]] virtual absl::StatusOr<bool> ReleaseClient(
      const std::string& server_id, const std::string& token_hash,
      const std::string& client_id) = 0;

  // Live servers with live leases of the token, by server id.
  [[nodiscard]] virtual absl::StatusOr<std::vector<TokenServer>>
  ServersForToken(const std::string& token_hash) = 0;

  // The live servers and the live leases on them. Costs O(servers) (and
  // one round trip for Redis), not O(tokens).
  [[nodiscard]] virtual absl::StatusOr<StoreCounts> Counts() = 0;

  // OK when the backing store answers (health checks).
  [[nodiscard]] virtual absl::Status Ping() = 0;
};

}  // namespace broker::dispatcher
