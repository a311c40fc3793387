#pragma once

#include "common/token_bucket.h"
#include "services/server/tunnel_registry.h"

#include "broker/tunnel/v1/tunnel.grpc.pb.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

#include <atomic>
#include <functional>
#include <memory>
#include <string>

namespace broker::server {

// The gRPC side of the server: accepts workers' Control calls and parks
// their Serve lanes in the registry. Reactors follow STYLE section 2: one
// read and one write in flight, nothing blocking in a reaction, Finish never
// with a write outstanding, each reactor freed after OnDone.
// Told when a worker is admitted and when it is gone (the dispatcher's
// client-connected and client-disconnected). Called on gRPC threads; must
// not block.
class WorkerEvents {
 public:
  virtual ~WorkerEvents() = default;
  virtual void OnWorkerConnected(const std::string& token_hash,
                                 const std::string& client_id) = 0;
  virtual void OnWorkerDisconnected(const std::string& token_hash,
                                    const std::string& client_id) = 0;
};

class ControlReactor;
class ServerMetrics;
class WebhookDeliveries;

class TunnelService final : public tunnel::v1::Tunnel::CallbackService {
 public:
  // `events`, `deliveries` and `metrics` may be null (without
  // `deliveries`, Deliver is UNIMPLEMENTED); all must outlive the service.
  explicit TunnelService(TunnelRegistry& registry,
                         WorkerEvents* events = nullptr,
                         WebhookDeliveries* deliveries = nullptr,
                         ServerMetrics* metrics = nullptr)
      : registry_(registry),
        events_(events),
        deliveries_(deliveries),
        metrics_(metrics) {}

  // Admits at most `per_second` workers per second, in bursts of as many
  // (BrokerServerConfig::admit_per_second); no cap unless called. Call
  // before the server starts.
  void LimitAdmissions(int per_second);

  grpc::ServerBidiReactor<tunnel::v1::WorkerControl, tunnel::v1::ServerControl>*
  Control(grpc::CallbackServerContext* context) override;

  grpc::ServerBidiReactor<tunnel::v1::ServeUp, tunnel::v1::ServeDown>* Serve(
      grpc::CallbackServerContext* context) override;

  // A webhook from an admitted worker (webhook_delivery.h): UNAUTHENTICATED
  // without a bearer token or when no worker of the token is connected
  // here, FAILED_PRECONDITION when this client id has no admitted Control.
  grpc::ServerBidiReactor<tunnel::v1::DeliverUp, tunnel::v1::DeliverDown>*
  Deliver(grpc::CallbackServerContext* context) override;

  // Sends Drain to every admitted worker: move to another server (in HA
  // mode, the next assignment), then let this tunnel go. Returns how many
  // were told.
  int DrainAll(absl::string_view reason) ABSL_LOCKS_EXCLUDED(mu_);

  // For the reactors.
  void Track(ControlReactor* reactor) ABSL_LOCKS_EXCLUDED(mu_);
  void Untrack(ControlReactor* reactor) ABSL_LOCKS_EXCLUDED(mu_);
  WorkerEvents* events() const { return events_; }
  ServerMetrics* metrics() const { return metrics_; }
  // Whether a worker may be admitted now (takes an admission).
  bool TryAdmit() { return admissions_ == nullptr || admissions_->TryTake(); }
  // The server is shutting down: tunnels ending now end because of it.
  void SetStopping() { stopping_.store(true, std::memory_order_relaxed); }
  bool stopping() const { return stopping_.load(std::memory_order_relaxed); }

 private:
  TunnelRegistry& registry_;
  WorkerEvents* const events_;
  WebhookDeliveries* const deliveries_;
  ServerMetrics* const metrics_;
  std::unique_ptr<common::TokenBucket> admissions_;  // null: no cap
  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  absl::flat_hash_set<ControlReactor*> controls_ ABSL_GUARDED_BY(mu_);
};

// The caller of a tunnel call, from its metadata: `authorization: Bearer
// <token>` and `x-broker-client-id`. The token itself is only hashed.
struct CallIdentity {
  std::string token_hash;
  std::string masked_token;
  std::string client_id;
};
absl::StatusOr<CallIdentity> IdentifyCall(
    const grpc::CallbackServerContext& context);

}  // namespace broker::server
