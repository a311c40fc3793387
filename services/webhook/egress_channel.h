#pragma once

// The one gRPC channel from broker-webhook to every tunnel worker's egress
// (broker.webhook.v1.Egress): round_robin over all the addresses the
// target resolves to, with standard client-side health checking
// (grpc.health.v1, service ""), so only workers that report SERVING (their
// tunnel is up) get events.

#include "broker/webhook/v1/egress.grpc.pb.h"

#include "grpcpp/channel.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/support/client_interceptor.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace broker::webhook {

// The service config every egress channel gets.
inline constexpr char kEgressServiceConfig[] =
    R"({"loadBalancingConfig":[{"round_robin":{}}],)"
    R"("healthCheckConfig":{"serviceName":""}})";

// Thread-safe (gRPC channels and stubs are).
class EgressChannel {
 public:
  // `target` is a gRPC target (NormalizeEgressTarget); `tls_root_certs`
  // (PEM), when not empty, makes the channel TLS, trusting only them;
  // `interceptors` see every call (the RPC metrics). Connects at once, and
  // stays connected (no idle timeout), so health is always known.
  static std::unique_ptr<EgressChannel> Create(
      const std::string& target, const std::string& tls_root_certs = "",
      std::vector<std::unique_ptr<
          grpc::experimental::ClientInterceptorFactoryInterface>>
          interceptors = {});

  ~EgressChannel();
  EgressChannel(const EgressChannel&) = delete;
  EgressChannel& operator=(const EgressChannel&) = delete;

  broker::webhook::v1::Egress::Stub& stub() { return *stub_; }
  // Whether some worker is READY and SERVING: the channel is READY.
  bool Available() { return State() == GRPC_CHANNEL_READY; }
  // The channel's state (asking it to connect when idle).
  grpc_connectivity_state State() { return channel_->GetState(true); }
  const std::string& target() const { return target_; }

 private:
  EgressChannel(std::string target, std::shared_ptr<grpc::Channel> channel);
  // The watcher thread. gRPC's pollers only run while some call or watch
  // waits on a completion queue; between events nothing would, so
  // connecting to a worker and its health watch would move only with the
  // 5 s backup poller. A connectivity watch kept pending here keeps a
  // thread polling, and logs the channel's changes.
  void Watch() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string target_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<broker::webhook::v1::Egress::Stub> stub_;
  grpc::CompletionQueue watch_queue_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watcher_;  // last: starts once the rest is built
};

// "IDLE", "CONNECTING", "READY", "TRANSIENT_FAILURE", "SHUTDOWN".
absl::string_view ChannelStateName(grpc_connectivity_state state);

}  // namespace broker::webhook
