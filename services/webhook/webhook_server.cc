#include "services/webhook/webhook_server.h"

#include "common/executor.h"
#include "common/grpc/rpc_metrics.h"
#include "common/http/server.h"
#include "common/http/trace_context.h"
#include "common/http/whole_body.h"
#include "common/logging.h"
#include "common/pem.h"
#include "common/status.h"
#include "common/uuid.h"
#include "filters/blocked.h"
#include "filters/rule_set.h"
#include "services/webhook/api_fallback.h"
#include "services/webhook/delivery.h"
#include "services/webhook/egress_channel.h"
#include "services/webhook/event.h"
#include "services/webhook/request_body.h"
#include "services/webhook/webhook_metrics.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

#include <algorithm>
#include <utility>
#include <vector>

namespace broker::webhook {
namespace {

namespace http = common::http;
using json = nlohmann::json;

// Answers leave this much before the event's deadline, so that the SCM
// has its answer (503, 504, ...) within BROKER_WEBHOOK_TIMEOUT_MS.
absl::Duration AnswerReserve(absl::Duration timeout) {
  return std::min(timeout / 5, absl::Milliseconds(200));
}

std::vector<
    std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
ClientInterceptors(common::rpc::RpcMetrics& rpc_metrics) {
  std::vector<
      std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(rpc_metrics.ClientInterceptors());
  return interceptors;
}

// How long Shutdown() waits for deliveries past its deadline, after they
// were cancelled.
constexpr absl::Duration kCancelGrace = absl::Seconds(2);

class DefaultWebhookServer final : public WebhookServer {
 public:
  // `egress_root_certs`: BROKER_TUNNEL_EGRESS_CA's text (empty: plaintext).
  DefaultWebhookServer(WebhookConfig config,
                       std::shared_ptr<const filters::RuleSet> rules,
                       const std::string& egress_root_certs)
      : config_(std::move(config)),
        rules_(std::move(rules)),
        executor_(config_.io_threads),
        rpc_metrics_(metrics_.registry(),
                     common::rpc::RpcMetrics::Side::kClient),
        channel_(EgressChannel::Create(config_.egress_target, egress_root_certs,
                                       ClientInterceptors(rpc_metrics_))),
        env_{executor_.io(),
             *channel_,
             metrics_,
             tracker_,
             nullptr,
             RetryPolicy{config_.retry_backoff_initial,
                         config_.retry_backoff_max, config_.no_tunnel_wait},
             config_.retry_after_seconds} {
    metrics_.registry().AddCallback(
        "broker_webhook_tunnel_available",
        "Whether some tunnel worker can take events now (the egress "
        "channel is READY).",
        {}, [this] {
          return std::vector<common::metrics::Sample>{
              {{}, channel_->Available() ? 1.0 : 0.0}};
        });
  }

  ~DefaultWebhookServer() override { Shutdown(absl::Now()); }

  [[nodiscard]] absl::Status Init() {
    if (config_.api_fallback) {
      BROKER_ASSIGN_OR_RETURN(fallback_,
                              ApiFallback::Create(executor_.io(), config_));
      env_.fallback = fallback_.get();
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int> Start() override {
    http::ServerOptions options;
    options.address = config_.address;
    options.port = config_.port;
    options.limits.max_body_bytes = config_.max_body_bytes;
    options.tls_cert_file = config_.tls_cert_file;
    options.tls_key_file = config_.tls_key_file;
    BROKER_ASSIGN_OR_RETURN(
        http_server_,
        http::Server::Create(executor_.io(), std::move(options),
                             [this](std::shared_ptr<http::Exchange> exchange) {
                               Handle(std::move(exchange));
                             }));
    BROKER_ASSIGN_OR_RETURN(const int port, http_server_->Start());
    BROKER_LOG(kWebhook, kInfo,
               {{"port", port},
                {"egress_target", config_.egress_target},
                {"egress_tls", !config_.egress_ca_file.empty()},
                {"api_fallback", config_.api_fallback}},
               "broker-webhook is listening");
    return port;
  }

  void Shutdown(absl::Time deadline) override {
    {
      absl::MutexLock lock(&shutdown_mu_);
      if (shut_down_) return;
      shut_down_ = true;
    }
    // Exchanges in flight may finish until the deadline; then their
    // connections close, which cancels their deliveries.
    if (http_server_) http_server_->Shutdown(deadline);
    tracker_.CancelAll();
    if (!tracker_.WaitIdle(std::max(deadline, absl::Now()) + kCancelGrace)) {
      BROKER_LOG(kWebhook, kWarn, {{"live", tracker_.live()}},
                 "deliveries still running at shutdown");
    }
    executor_.Stop();
  }

 private:
  void Handle(std::shared_ptr<http::Exchange> exchange) {
    const http::RequestHead& request = exchange->request();
    const absl::string_view path = PathOf(request.target);
    if (request.method == "GET" || request.method == "HEAD") {
      if (path == config_.healthcheck_path) {
        Health(*exchange);
        return;
      }
      if (path == "/metrics") {
        exchange->RespondSimple(
            200, {{"content-type", common::metrics::Registry::kContentType}},
            metrics_.Render());
        return;
      }
    }
    Event event;
    event.received = absl::Now();
    event.deadline =
        event.received + config_.timeout - AnswerReserve(config_.timeout);
    event.delivery_id = common::NewUuid();
    event.request_id = RequestIdOf(request.headers, event.delivery_id);
    event.method = request.method;
    event.url = request.target;
    for (const http::Header& h : request.headers) {
      if (PassedOn(h.name)) event.headers.push_back(h);
    }
    // broker-webhook's span of the SCM's trace (or the trace's start).
    event.trace_id = http::ContinueTrace(event.headers);
    event.fallback_allowed = absl::StartsWith(path, "/webhook/");

    if (!rules_->NeedsBody(filters::RuleList::kPublic, event.method,
                           event.url)) {
      if (!Allowed(*exchange, event, "")) return;
      std::shared_ptr<RequestBody> body =
          RequestBody::Streamed(exchange, config_.retry_buffer_bytes);
      StartDelivery(env_, std::move(exchange), std::move(body),
                    std::move(event));
      return;
    }
    // A body rule may decide: read the body whole (bounded by the body
    // limit), check it, then deliver it from the copy (always replayable).
    http::ReadWholeBody(
        exchange, config_.max_body_bytes,
        [this, exchange,
         event = std::move(event)](absl::StatusOr<std::string> body) mutable {
          if (!body.ok()) {
            BodyError(*exchange, event, body.status());
            return;
          }
          if (!Allowed(*exchange, event, *body)) return;
          StartDelivery(env_, exchange, RequestBody::Held(*std::move(body)),
                        std::move(event));
        });
  }

  // Answers 401 FILTER_BLOCKED, as the server's ingress does, and returns
  // false when no public rule allows the event.
  bool Allowed(http::Exchange& exchange, const Event& event,
               absl::string_view body) {
    std::vector<filters::HeaderField> fields;
    fields.reserve(exchange.request().headers.size());
    for (const http::Header& h : exchange.request().headers) {
      fields.push_back({h.name, h.value});
    }
    const filters::Decision decision = rules_->Evaluate(
        filters::RuleList::kPublic,
        filters::RequestView{event.method, event.url, fields, body});
    if (decision.allowed()) return true;
    metrics_.CountOutcome(Outcome::kBlocked);
    const std::string reason =
        filters::BlockedReason(filters::BlockedFlow::kHttp, decision);
    BROKER_LOG(kWebhook, kWarn,
               {{"request_id", event.request_id},
                {"trace_id", event.trace_id},
                {"method", event.method},
                {"path", PathOf(event.url)},
                {"reason", decision.reason}},
               "{}", reason);
    http::Headers headers = {
        {"content-type", "application/json; charset=utf-8"}};
    AddRequestId(headers, event.request_id);
    exchange.RespondSimple(filters::kBlockedStatus, std::move(headers),
                           filters::BlockedBody(reason, event.url));
    return false;
  }

  // The body could not be read whole for the body rules.
  void BodyError(http::Exchange& exchange, const Event& event,
                 const absl::Status& status) {
    if (status.code() == absl::StatusCode::kResourceExhausted) {
      metrics_.CountOutcome(Outcome::kTooLarge);
      RespondError(exchange, 413, "", "PAYLOAD_TOO_LARGE", status.message(),
                   event.request_id);
    } else if (status.code() == absl::StatusCode::kInvalidArgument) {
      metrics_.CountOutcome(Outcome::kBadRequest);
      RespondError(exchange, 400, "", "BAD_REQUEST_BODY", status.message(),
                   event.request_id);
    } else {
      metrics_.CountOutcome(Outcome::kCancelled);  // the SCM left
    }
  }

  // Whether at least one tunnel worker can take events now, in the shape
  // of the worker's own /healthcheck.
  void Health(http::Exchange& exchange) {
    const grpc_connectivity_state state = channel_->State();
    const bool up = state == GRPC_CHANNEL_READY;
    const json body = {{"ok", up},
                       {"websocketConnectionOpen", up},
                       {"tunnelAvailable", up},
                       {"channelState", ChannelStateName(state)},
                       {"egressTarget", config_.egress_target},
                       {"version", config_.version},
                       {"transport", "grpc"}};
    exchange.RespondSimple(
        up ? 200 : 503, {{"content-type", "application/json; charset=utf-8"}},
        body.dump(-1, ' ', false, json::error_handler_t::replace));
  }

  const WebhookConfig config_;
  const std::shared_ptr<const filters::RuleSet> rules_;
  // Declared before everything that runs on it, so destroyed after.
  common::Executor executor_;
  WebhookMetrics metrics_;
  common::rpc::RpcMetrics rpc_metrics_;  // grpc_client_* of the channel
  DeliveryTracker tracker_;
  std::unique_ptr<EgressChannel> channel_;
  std::unique_ptr<ApiFallback> fallback_;
  DeliveryEnv env_;
  std::unique_ptr<http::Server> http_server_;

  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<WebhookServer>> WebhookServer::Create(
    WebhookConfig config) {
  BROKER_RETURN_IF_ERROR(Validate(config));
  absl::StatusOr<std::shared_ptr<const filters::RuleSet>> rules =
      filters::RuleSet::FromFile(config.accept_path);
  if (!rules.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ACCEPT: ", rules.status().message()));
  }
  std::string egress_root_certs;
  if (!config.egress_ca_file.empty()) {
    absl::StatusOr<std::string> ca =
        common::ReadPemCertificates(config.egress_ca_file);
    if (!ca.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("BROKER_TUNNEL_EGRESS_CA: ", ca.status().message()));
    }
    egress_root_certs = *std::move(ca);
  }
  auto server = std::make_unique<DefaultWebhookServer>(
      std::move(config), *std::move(rules), egress_root_certs);
  BROKER_RETURN_IF_ERROR(server->Init());
  return server;
}

}  // namespace broker::webhook
