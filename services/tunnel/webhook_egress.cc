#include "services/tunnel/webhook_egress.h"

#include "common/grpc/rpc_metrics.h"

#include "broker/webhook/v1/egress.grpc.pb.h"

#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

#include "absl/strings/str_cat.h"

#include <optional>
#include <utility>
#include <vector>

namespace broker::tunnel {
namespace {

using broker::tunnel::v1::DeliverDown;
using broker::tunnel::v1::DeliverUp;

// Metadata from broker-webhook passed on to the server unchanged.
constexpr const char* kPassedMetadata[] = {
    "x-broker-delivery-id", "x-broker-delivery-attempt", "traceparent"};

// One event: the webhook's Egress.Deliver call joined to a Tunnel.Deliver
// call to the server. Each direction moves one message at a time (read
// one side, write the other, then read again), so flow control on either
// call holds the other back and at most one message per direction is held
// here. Deletes itself after both calls' OnDone.
//
// Threading: reactions of both calls run on gRPC threads, and each
// direction is one chain of operations, so no state is shared between
// them. Operations on the server call are started from reactions of the
// webhook call and the other way round; two holds on the server call (one
// per direction, released when that direction ends) keep its OnDone, and
// so the webhook call's Finish, after the last of them (STYLE 2, rule 4).
class Bridge {
 public:
  Bridge(grpc::CallbackServerContext* webhook_context,
         std::optional<DeliveryRoute> route, const std::string& token,
         std::atomic<std::uint64_t>& delivered)
      : webhook_(*this),
        tunnel_(*this),
        route_(std::move(route)),
        delivered_(delivered) {
    if (!route_) return;
    context_.AddMetadata("authorization", "Bearer " + token);
    context_.AddMetadata("x-broker-client-id", route_->client_id);
    for (const char* name : kPassedMetadata) {
      auto it = webhook_context->client_metadata().find(name);
      if (it != webhook_context->client_metadata().end()) {
        context_.AddMetadata(name,
                             std::string(it->second.data(), it->second.size()));
      }
    }
    context_.set_deadline(webhook_context->deadline());
  }

  grpc::ServerBidiReactor<DeliverUp, DeliverDown>* Start() {
    if (!route_) {
      // Nothing left this worker: broker-webhook may try another one.
      sides_ = 1;
      webhook_.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                   "this worker has no tunnel to a server"));
      return &webhook_;
    }
    route_->stub->async()->Deliver(&context_, &tunnel_);
    tunnel_.AddMultipleHolds(2);  // up and down
    tunnel_.StartRead(&down_);
    tunnel_.StartCall();
    webhook_.StartRead(&up_);
    return &webhook_;
  }

 private:
  class WebhookSide final
      : public grpc::ServerBidiReactor<DeliverUp, DeliverDown> {
   public:
    explicit WebhookSide(Bridge& bridge) : bridge_(bridge) {}
    void OnReadDone(bool ok) override { bridge_.OnWebhookRead(ok); }
    void OnWriteDone(bool ok) override { bridge_.OnWebhookWritten(ok); }
    void OnCancel() override { bridge_.context_.TryCancel(); }
    void OnDone() override { bridge_.OnSideDone(); }

   private:
    Bridge& bridge_;
  };

  class TunnelSide final
      : public grpc::ClientBidiReactor<DeliverUp, DeliverDown> {
   public:
    explicit TunnelSide(Bridge& bridge) : bridge_(bridge) {}
    void OnReadDone(bool ok) override { bridge_.OnTunnelRead(ok); }
    void OnWriteDone(bool ok) override { bridge_.OnTunnelWritten(ok); }
    void OnDone(const grpc::Status& status) override {
      bridge_.OnTunnelDone(status);
    }

   private:
    Bridge& bridge_;
  };

  // Up: webhook -> server.
  void OnWebhookRead(bool ok) {
    if (ok) {
      tunnel_.StartWrite(&up_);
      return;
    }
    // The webhook's side closed. If that came before the request's end
    // message, the server sees a request cut short and drops it.
    tunnel_.StartWritesDone();
    tunnel_.RemoveHold();
  }

  void OnTunnelWritten(bool ok) {
    if (ok) {
      webhook_.StartRead(&up_);
      return;
    }
    tunnel_.RemoveHold();  // the call to the server broke; OnDone says why
  }

  // Down: server -> webhook.
  void OnTunnelRead(bool ok) {
    if (ok) {
      webhook_.StartWrite(&down_);
      return;
    }
    tunnel_.RemoveHold();  // the answer is complete, or the call broke
  }

  void OnWebhookWritten(bool ok) {
    if (ok) {
      tunnel_.StartRead(&down_);
      return;
    }
    context_.TryCancel();  // broker-webhook went away
    tunnel_.RemoveHold();
  }

  // Both directions have ended, so no operation on the webhook call is in
  // flight or will start: it may finish.
  void OnTunnelDone(const grpc::Status& status) {
    if (status.ok()) delivered_.fetch_add(1);
    webhook_.Finish(status);
    OnSideDone();
  }

  void OnSideDone() {
    if (sides_.fetch_sub(1) == 1) delete this;
  }

  WebhookSide webhook_;
  TunnelSide tunnel_;
  grpc::ClientContext context_;
  const std::optional<DeliveryRoute> route_;  // holds the stub for the call
  std::atomic<std::uint64_t>& delivered_;
  std::atomic<int> sides_{2};
  DeliverUp up_;
  DeliverDown down_;
};

}  // namespace

class WebhookEgress::Service final
    : public broker::webhook::v1::Egress::CallbackService {
 public:
  Service(WebhookEgressOptions options, std::atomic<std::uint64_t>& delivered)
      : options_(std::move(options)), delivered_(delivered) {}

  grpc::ServerBidiReactor<DeliverUp, DeliverDown>* Deliver(
      grpc::CallbackServerContext* context) override {
    return (new Bridge(context, options_.route(), options_.token, delivered_))
        ->Start();
  }

 private:
  const WebhookEgressOptions options_;
  std::atomic<std::uint64_t>& delivered_;
};

absl::StatusOr<std::unique_ptr<WebhookEgress>> WebhookEgress::Start(
    WebhookEgressOptions options) {
  // Process-wide, and must precede the server's creation.
  grpc::EnableDefaultHealthCheckService(true);
  const std::string address = absl::StrCat(options.address, ":", options.port);
  // Plaintext unless a certificate is given: broker-webhook and the
  // workers share the private network (like the ha-agent), and what passes
  // is checked again by the server's private rules.
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::InsecureServerCredentials();
  if (options.tls) {
    grpc::SslServerCredentialsOptions tls;
    tls.pem_key_cert_pairs.push_back(
        {options.tls->private_key, options.tls->cert_chain});
    credentials = grpc::SslServerCredentials(tls);
  }
  common::rpc::RpcMetrics* const rpc_metrics = options.rpc_metrics;
  std::unique_ptr<WebhookEgress> egress(new WebhookEgress());
  egress->service_ =
      std::make_unique<Service>(std::move(options), egress->delivered_);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, credentials, &egress->port_);
  builder.RegisterService(egress->service_.get());
  if (rpc_metrics != nullptr) {
    std::vector<
        std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(rpc_metrics->ServerInterceptors());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  // Explicit limits: Debian's gRPC 1.51 has no backported HTTP/2 fixes.
  builder.SetMaxReceiveMessageSize(1 << 20);
  builder.SetMaxSendMessageSize(1 << 20);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 1000);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 * 1024);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // broker-webhook finds workers by DNS (a headless Service) and resolves
  // again when a connection ends: closing each connection after a while
  // makes it notice workers added behind the name. Events in flight get a
  // minute to finish, twice broker-webhook's default deadline.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, 60 * 1000);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, 60 * 1000);
  egress->server_ = builder.BuildAndStart();
  if (egress->server_ == nullptr || egress->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("BROKER_TUNNEL_EGRESS_PORT: cannot listen on ", address));
  }
  egress->SetServing(false);
  return egress;
}

WebhookEgress::~WebhookEgress() { Shutdown(absl::Now()); }

void WebhookEgress::SetServing(bool serving) {
  if (server_ == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);
}

void WebhookEgress::Shutdown(absl::Time deadline) {
  if (server_ == nullptr) return;
  SetServing(false);
  server_->Shutdown(absl::ToChronoTime(deadline));
  server_->Wait();
  server_.reset();
}

}  // namespace broker::tunnel
