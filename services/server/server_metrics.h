#pragma once

// broker-server's /metrics (docs/observability.md): Snyk's server metric
// names where Snyk has them (the behaviour reference, section 6), and ours,
// prefixed broker_server_, for what Snyk's server does not have (tunnels
// per token, lanes, failovers, drains...). One registry per server.
//
// Thread-safety: every method may be called from any thread; counting is a
// few atomic operations (and, for labelled children made on demand, one
// short lock).

#include "common/http/server.h"
#include "common/metrics.h"
#include "filters/rule_set.h"

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace broker::server {

class TunnelRegistry;

// Why a worker's Control call ended, as Snyk's socket close reasons
// (broker_socket_close_reason_total{reason}):
//   kWorkerEnded     the worker half-closed its Control call     "end"
//   kDrained         it left after the server's Drain            "close"
//   kConnectionLost  the call was cancelled: the connection
//                    dropped, the worker died, or a keepalive
//                    ping went unanswered "disconnection"
//   kRefused         the server refused it at Hello (cap,
//                    fingerprint, token mismatch)                "destroy"
//   kServerStopping  the server ended it while shutting down     "destroy"
// gRPC reports an unanswered keepalive ping as a cancellation like any
// other lost connection, so Snyk's "timeout" is never produced.
enum class CloseCause {
  kWorkerEnded,
  kDrained,
  kConnectionLost,
  kRefused,
  kServerStopping,
};
absl::string_view CloseReasonName(CloseCause cause);

// The method label of http_request_duration_seconds: the standard methods
// as sent, anything else "other" (the label set stays bounded whatever a
// client sends).
absl::string_view MethodLabel(absl::string_view method);

// The reason label of broker_server_refusals_total for a status
// TunnelRegistry::AddWorker (or the Hello check) refused a worker with.
absl::string_view RefusalReason(absl::StatusCode code);

class ServerMetrics {
 public:
  // `enabled` (BROKER_METRICS_ENABLED): false serves no /metrics and skips
  // the per-request timing; the counters still count (atomic adds).
  explicit ServerMetrics(bool enabled = true);
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  bool enabled() const { return enabled_; }
  common::metrics::Registry& registry() { return registry_; }
  std::string Render() const { return registry_.Render(); }

  // Adds the gauges read from `tunnels` at each Render(): connected
  // workers, tunnels per (hashed) token, idle and busy lanes. `tunnels`
  // must outlive the registry's renders.
  void Watch(const TunnelRegistry& tunnels);

  // A platform request (inbound) or a webhook (outbound) decided by the
  // accept rules: http_request_total{rejectedByFilter,flowDirection}, and
  // broker_filter_blocks_total{list} when rejected.
  enum class Flow { kInbound, kOutbound };
  void CountRequest(Flow flow, bool rejected);
  // An answer's head from a worker: its size when it has a Content-Length
  // (`bytes`), else broker_unable_to_size_response_count. `streaming`: the
  // body follows in messages of its own (not whole in the head).
  void ObserveResponse(std::optional<std::uint64_t> bytes, bool streaming);
  void CountClose(CloseCause cause);
  void CountRefusal(absl::StatusCode code);
  // A dispatcher call that changes its state (register, client events,
  // deregister): broker_dispatcher_write_total{target,result}.
  void CountDispatcherWrite(bool ok);
  enum class Failover { kResend, kForward };
  void CountFailover(Failover kind);
  // A server drain that asked `workers` workers to move.
  void CountDrain(int workers);
  enum class Webhook { kDelivered, kFailed, kDuplicate };
  void CountWebhook(Webhook result);

  // Times the exchange (http_request_duration_seconds, from now until its
  // last reference goes) and counts it outstanding meanwhile. Returns
  // `exchange` itself when disabled.
  std::shared_ptr<common::http::Exchange> Track(
      std::shared_ptr<common::http::Exchange> exchange);

  // For the tracked exchanges.
  void RequestEnded(absl::string_view method, int status, absl::Duration took);

 private:
  const bool enabled_;
  common::metrics::Registry registry_;
  // Snyk's.
  common::metrics::Counter* requests_[2][2] = {};      // [flow][rejected]
  common::metrics::Counter* blocks_[2] = {};           // [public, private]
  common::metrics::Histogram* response_size_[2] = {};  // [streaming]
  common::metrics::Counter* unsized_ = nullptr;
  common::metrics::Family<common::metrics::Counter>* close_reasons_ = nullptr;
  common::metrics::Counter* dispatcher_writes_[2] = {};  // [ok]
  common::metrics::Family<common::metrics::Histogram>* durations_ = nullptr;
  // Ours.
  common::metrics::Gauge* outstanding_ = nullptr;
  common::metrics::Counter* failovers_[2] = {};
  common::metrics::Counter* drains_server_ = nullptr;
  common::metrics::Counter* drains_workers_ = nullptr;
  common::metrics::Family<common::metrics::Counter>* refusals_ = nullptr;
  common::metrics::Counter* webhooks_[3] = {};
};

}  // namespace broker::server
