#pragma once

// The tunnel worker's side of broker-ha-agent (proto/broker/ha/v1): where
// to open the tunnel, and telling the agent how the tunnel is doing.
//
//   AssignmentWatcherOptions options;
//   options.agent_address = "127.0.0.1:7343";     // BROKER_HA_AGENT_ADDR
//   auto watcher = AssignmentWatcher::Create(
//       options, [&](const ha::v1::Assignment& a) { worker.Reassign(a); });
//   ...
//   watcher->Report(ha::v1::ReportRequest::CONNECTED, a.server_id(), "");
//   watcher->Shutdown();                          // before destroying `worker`
//
// The watcher keeps one Watch stream open (gRPC callback API, a
// ClientReadReactor), reopening it with jittered backoff whenever the agent
// goes away; the stream waits for the agent (wait_for_ready), so a
// restarted agent is picked up as soon as it listens. Each reopened stream
// carries the last assignment, so a restarted agent keeps this worker on
// its client id and server instead of taking a second slot of the token.

#include "broker/ha/v1/ha_agent.pb.h"

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <memory>
#include <optional>
#include <string>

namespace broker::common::rpc {
class RpcMetrics;
}  // namespace broker::common::rpc

namespace broker::tunnel {

// Where an assignment says to dial, split for the worker's channel.
struct TunnelEndpoint {
  std::string url;  // the assignment's tunnel_url, as given (for logs)
  std::string
      server_url;  // without query or fragment: scheme://host:port[/path]
  std::string grpc_target;  // "host:port" for grpc::CreateChannel
  bool tls = false;         // https
  // The query of tunnel_url ("server_id=0" when the agent added one for a
  // routing ingress); a gRPC ingress cannot see it, so a worker that needs
  // routing sends the server id as metadata (x-broker-server-id).
  std::string query;
  std::string server_id;  // Hello.server_id ("" with HA off)
  std::string client_id;  // Hello.client_id, x-broker-client-id
};

// The endpoint of an ASSIGNED or HA_DISABLED assignment (pure).
// FailedPrecondition for WAITING (do not dial), InvalidArgument for a
// tunnel_url that is not an absolute http(s) URL.
[[nodiscard]] absl::StatusOr<TunnelEndpoint> EndpointFor(
    const ha::v1::Assignment& assignment);

// Whether `a` and `b` send the worker to the same tunnel as the same
// client (state, client id, server id, tunnel URL): a worker reconnects
// only when this is false. Generation, checks and detail do not count.
bool SameTunnel(const ha::v1::Assignment& a, const ha::v1::Assignment& b);

struct AssignmentWatcherOptions {
  std::string agent_address;  // host:port (BROKER_HA_AGENT_ADDR)
  std::string worker_id;      // "" = a random UUID
  // Pause between two Watch streams (the agent refused or went away);
  // jittered, doubling up to max, reset once a stream delivered something.
  absl::Duration backoff_initial = absl::Milliseconds(100);
  absl::Duration backoff_max = absl::Seconds(2);
  absl::Duration report_timeout = absl::Seconds(2);  // each Report call
  // Client-side RPC metrics of the agent channel (null: none); must
  // outlive the watcher.
  common::rpc::RpcMetrics* rpc_metrics = nullptr;
};

class AssignmentWatcher {
 public:
  // Runs on the watcher's own thread, one call at a time and in order, for
  // every Assignment the agent sends (each stream starts with the current
  // one, so the same tunnel may come again: see SameTunnel). Never called
  // under a lock of the watcher, nor after Shutdown() returned. It may
  // call Report() and Current(), not Shutdown().
  using Callback = absl::AnyInvocable<void(const ha::v1::Assignment&)>;

  // Starts watching at once. InvalidArgument without an agent address.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<AssignmentWatcher>>
  Create(AssignmentWatcherOptions options, Callback on_assignment);
  virtual ~AssignmentWatcher() = default;  // implementations Shutdown()

  // The last assignment received, nullopt before the first.
  virtual std::optional<ha::v1::Assignment> Current() const = 0;

  // Tells the agent the tunnel's state, for `server_id` (the server the
  // state is about: the assignment's). Asynchronous and fire-and-forget,
  // each call bounded by report_timeout; reports leave one at a time, in
  // order (a burst keeps the newest 32). Thread-safe; nothing after
  // Shutdown().
  virtual void Report(ha::v1::ReportRequest::TunnelState state,
                      const std::string& server_id,
                      const std::string& detail) = 0;

  // Cancels the stream and any report in flight, waits for them to end and
  // for a callback in progress to return. Idempotent; safe to destroy the
  // watcher afterwards. Not from inside the callback.
  virtual void Shutdown() = 0;

  virtual const std::string& worker_id() const = 0;
};

}  // namespace broker::tunnel
