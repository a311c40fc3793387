#pragma once

// broker-ha-agent: the sidecar that asks the dispatcher where each tunnel
// worker goes and tells the workers over gRPC (proto/broker/ha/v1).
//
// Per worker (per distinct WatchRequest.worker_id) the agent keeps a slot:
// a broker client id of its own (a UUID, or the one the worker brings back
// after an agent restart), the current Assignment, and a retry loop
// against the dispatcher that never blocks a gRPC thread:
// - refused (the token has its maximum of clients): WAITING, polled every
//   250..500 ms, so the worker is admitted within a second of a slot
//   freeing;
// - unreachable or nonsense: jittered exponential backoff, 100 ms to 10 s;
//   a worker that already has a server keeps it (no WAITING);
// - a worker reporting DRAINING or UNREACHABLE (or CONNECTING/DISCONNECTED
//   for BROKER_HA_AGENT_UNREACHABLE_AFTER_MS) is allocated again with the
//   same client id; while the dispatcher still answers with the server it
//   leaves, the agent asks again with backoff (up to move_timeout).
// A slot whose Watch ended is forgotten after `forget_after`; its
// dispatcher slot is freed by the server's disconnect event, not here.
//
// With HA mode off, Watch answers HA_DISABLED with tunnel_url =
// BROKER_SERVER_URL, so a worker can always use the agent.
//
// The standard gRPC health service reports SERVING (for "" and for
// "broker.ha.v1.HaAgent") from Start() until Shutdown().
//
// Threads: gRPC's callback threads run the reactions, which only take the
// agent's mutex briefly; dispatcher calls, timers and preflight checks run
// on the agent's own executor.

#include "services/ha-agent/config.h"
#include "services/ha-agent/dispatcher_client.h"

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <memory>

namespace broker::ha {

class HaAgent {
 public:
  // `dispatcher`: null for the real one over HTTP(S) at
  // config.dispatcher.url; tests pass their own. It must not call back
  // inside Allocate().
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<HaAgent>> Create(
      HaAgentConfig config,
      std::unique_ptr<DispatcherClient> dispatcher = nullptr);
  virtual ~HaAgent() = default;

  // Binds the gRPC listener (returns its port), starts the preflight
  // checks. Once only.
  [[nodiscard]] virtual absl::StatusOr<int> Start() = 0;
  // Health NOT_SERVING, ends every Watch with UNAVAILABLE, waits for the
  // calls to end until `deadline` (then cancels them), stops the
  // executor. Idempotent; the destructor calls it.
  virtual void Shutdown(absl::Time deadline) = 0;
  // A channel to this agent without sockets (tests). After Start().
  virtual std::shared_ptr<grpc::Channel> InProcessChannel() = 0;
  // The bound port of the HTTP listener (/healthcheck, /metrics), 0 without
  // one (config.http_port -1). After Start().
  virtual int http_port() const { return 0; }
};

}  // namespace broker::ha
