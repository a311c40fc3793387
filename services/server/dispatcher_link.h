#pragma once

// The server's side of the dispatcher contract (docs/dispatcher.md; the
// behaviour reference 1.8): register at start and every `refresh`, report
// each worker connected (then pinged on every refresh) and disconnected,
// deregister on shutdown, and look up which servers hold a token's tunnels
// (for forwarding). Calls never block the caller and failures never
// propagate: the data path keeps working with the dispatcher away.

#include "common/http/client.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "boost/asio/steady_timer.hpp"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace broker::server {

class ServerMetrics;

struct DispatcherConfig {
  std::string url;        // DISPATCHER_URL (base, no trailing slash); "" = off
  std::string server_id;  // from HOSTNAME, after its last '-'
  std::string health_check_link;
  std::string tunnel_url;    // BROKER_SERVER_ADVERTISE_URL: what workers dial
  std::string internal_url;  // BROKER_SERVER_INTERNAL_URL: where peers forward
  std::string version = "2022-12-02~experimental";  // DISPATCHER_VERSION
  absl::Duration refresh = absl::Seconds(10);
  absl::Duration call_timeout = absl::Milliseconds(2500);
  absl::Duration lookup_cache = absl::Seconds(2);
  std::string ca_file;  // CA_CERT, for an https dispatcher
};

// The id Snyk derives from a pod's hostname: the text after the last '-'
// ("broker-server-3" -> "3"), the whole name without one, "0" when empty.
std::string ServerIdFromHostname(const std::string& hostname);

// Another server that holds tunnels of a token.
struct PeerServer {
  std::string server_id;
  std::string internal_url;
};

class DispatcherLink {
 public:
  // Null when config.url is empty (no dispatcher: every call is a no-op).
  // `metrics` (may be null) counts the calls that change the dispatcher's
  // state; it must outlive the calls in flight on `io`.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<DispatcherLink>> Create(
      boost::asio::io_context& io, DispatcherConfig config,
      ServerMetrics* metrics = nullptr);
  ~DispatcherLink();  // NOLINT(bugprone-exception-escape): see the .cc

  const DispatcherConfig& config() const { return config_; }

  // Registers now and then every `refresh` (each refresh also pings every
  // connected worker's lease).
  void Start() ABSL_LOCKS_EXCLUDED(mu_);
  void ClientConnected(const std::string& token_hash,
                       const std::string& client_id) ABSL_LOCKS_EXCLUDED(mu_);
  void ClientDisconnected(const std::string& token_hash,
                          const std::string& client_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Deregisters (the dispatcher frees this server's leases and places its
  // clients elsewhere) and stops refreshing; waits for the answer until
  // `deadline`.
  void Stop(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);

  // The live servers other than this one that hold tunnels of the token,
  // cached for `lookup_cache`. `done` runs once: inline from the cache,
  // else on an io thread.
  using LookupDone =
      absl::AnyInvocable<void(absl::StatusOr<std::vector<PeerServer>>) &&>;
  void LookupPeers(const std::string& token_hash, LookupDone done)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  DispatcherLink(boost::asio::io_context& io, DispatcherConfig config,
                 std::unique_ptr<common::http::Client> client,
                 ServerMetrics* metrics);

  void Register();
  void Refresh() ABSL_LOCKS_EXCLUDED(mu_);
  void ArmRefresh() ABSL_LOCKS_EXCLUDED(mu_);
  void SendClientEvent(const std::string& token_hash,
                       const std::string& client_id,
                       const std::string& request_type);
  // Fire and forget: logs a failure or a status >= 300.
  void Call(std::string method, std::string url, std::string body,
            std::string what);
  std::string Url(const std::string& path, const std::string& query = "") const;

  const DispatcherConfig config_;
  const std::unique_ptr<common::http::Client> client_;
  ServerMetrics* const metrics_;
  boost::asio::steady_timer timer_;

  struct CachedLookup {
    absl::Time at;
    std::vector<PeerServer> peers;
  };
  // Shared with lookups in flight, which may finish after this is gone.
  struct LookupCache {
    absl::Mutex mu;
    absl::flat_hash_map<std::string, CachedLookup> lookups ABSL_GUARDED_BY(mu);
  };
  const std::shared_ptr<LookupCache> cache_ = std::make_shared<LookupCache>();
  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<std::pair<std::string, std::string>> clients_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::server
