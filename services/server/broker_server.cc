#include "services/server/broker_server.h"

#include "common/executor.h"
#include "common/file.h"
#include "common/grpc/rpc_metrics.h"
#include "common/http/server.h"
#include "common/http/trace_context.h"
#include "common/logging.h"
#include "common/pem.h"
#include "common/status.h"
#include "common/token.h"
#include "common/uuid.h"
#include "filters/blocked.h"
#include "filters/rule_set_holder.h"
#include "services/server/buffered_body.h"
#include "services/server/peer_forward.h"
#include "services/server/relay.h"
#include "services/server/server_metrics.h"
#include "services/server/tunnel_registry.h"
#include "services/server/tunnel_service.h"
#include "services/server/webhook_delivery.h"

#include "grpcpp/grpcpp.h"

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "nlohmann/json.hpp"

#include <algorithm>
#include <atomic>

namespace broker::server {
namespace {

namespace http = common::http;
using nlohmann::json;

// The request-id headers Snyk takes, in order.
constexpr absl::string_view kRequestIdHeaders[] = {
    "x-akamai-request-id", "x-request-id", "snyk-request-id",
    "x-github-delivery", "x-gitlab-event-uuid"};

std::string RequestIdOf(const http::RequestHead& request) {
  for (absl::string_view name : kRequestIdHeaders) {
    auto value = http::FindHeader(request.headers, name);
    if (value && common::IsUuid(std::string(*value))) {
      return std::string(*value);
    }
  }
  return common::NewUuid();
}

// Removes every `connection_role` parameter from a query string.
std::string StripConnectionRole(absl::string_view query) {
  std::vector<absl::string_view> kept;
  for (absl::string_view part : absl::StrSplit(query, '&')) {
    if (part == "connection_role" ||
        absl::StartsWith(part, "connection_role=")) {
      continue;
    }
    kept.push_back(part);
  }
  return absl::StrJoin(kept, "&");
}

void RespondJson(http::Exchange& exchange, int status, const json& body,
                 http::Headers extra = {}) {
  extra.push_back({"content-type", "application/json; charset=utf-8"});
  exchange.RespondSimple(
      status, std::move(extra),
      body.dump(-1, ' ', false, json::error_handler_t::replace));
}

// TLS on the tunnel listener (HTTPS_CERT/KEY), and with
// BROKER_TUNNEL_CLIENT_CA mutual TLS: no worker without a certificate that
// bundle verifies gets past the handshake.
absl::StatusOr<grpc::SslServerCredentialsOptions> TunnelTlsOptions(
    const ServerConfig& config) {
  absl::StatusOr<common::PemKeyCertPair> pair =
      common::ReadPemKeyCertPair(config.tls_cert_file, config.tls_key_file);
  if (!pair.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTPS_CERT/HTTPS_KEY: ", pair.status().message()));
  }
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back(
      {std::move(pair->private_key), std::move(pair->cert_chain)});
  if (config.tunnel_client_ca_file.empty()) {
    BROKER_LOG(kServer, kInfo, {},
               "tunnel listener: TLS, no client certificate required");
    return options;
  }
  absl::StatusOr<std::string> client_ca =
      common::ReadPemCertificates(config.tunnel_client_ca_file);
  if (!client_ca.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BROKER_TUNNEL_CLIENT_CA: ", client_ca.status().message()));
  }
  options.pem_root_certs = *std::move(client_ca);
  options.client_certificate_request =
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  BROKER_LOG(kServer, kInfo, {{"client_ca", config.tunnel_client_ca_file}},
             "tunnel listener: mutual TLS, workers must present a client "
             "certificate");
  return options;
}

// How long a request waits for a parked lane when all are busy.
constexpr absl::Duration kLaneWait = absl::Seconds(2);
// The receive window of each tunnel stream: 1 MiB keeps a 1 GB/s stream
// moving at 1 ms of round trip, and bounds what one answer can park here.
constexpr int kTunnelStreamWindowBytes = 1 << 20;

class DefaultBrokerServer final : public BrokerServer, public WorkerEvents {
 public:
  DefaultBrokerServer(ServerConfig config,
                      std::shared_ptr<const filters::RuleSet> rules)
      : config_(std::move(config)),
        metrics_(config_.metrics_enabled),
        rpc_metrics_(metrics_.registry(),
                     common::rpc::RpcMetrics::Side::kServer),
        executor_(config_.io_threads),
        rules_(std::move(rules)),
        registry_(config_.max_clients_per_token) {
    metrics_.Watch(registry_);
  }

  void OnWorkerConnected(const std::string& token_hash,
                         const std::string& client_id) override {
    if (dispatcher_) dispatcher_->ClientConnected(token_hash, client_id);
  }
  void OnWorkerDisconnected(const std::string& token_hash,
                            const std::string& client_id) override {
    if (dispatcher_) dispatcher_->ClientDisconnected(token_hash, client_id);
    absl::MutexLock lock(&drain_mu_);
    if (draining_ && registry_.Empty() && !drained_.HasBeenNotified()) {
      drained_.Notify();
    }
  }

  absl::StatusOr<BoundPorts> Start() override {
    BoundPorts ports;
    // Webhooks (Tunnel.Deliver): the private rules and the platform client.
    WebhookDeliveryOptions delivery_options;
    delivery_options.ca_file = config_.ca_file;
    delivery_options.request_timeout = config_.request_timeout;
    delivery_options.metrics = &metrics_;
    BROKER_ASSIGN_OR_RETURN(
        deliveries_,
        WebhookDeliveries::Create(executor_.io(), rules_, config_.variables,
                                  std::move(delivery_options)));
    tunnel_service_ = std::make_unique<TunnelService>(
        registry_, this, deliveries_.get(), &metrics_);
    if (config_.admit_per_second > 0) {
      tunnel_service_->LimitAdmissions(config_.admit_per_second);
    }
    grpc::ServerBuilder builder;
    std::shared_ptr<grpc::ServerCredentials> credentials =
        grpc::InsecureServerCredentials();
    if (!config_.tls_cert_file.empty()) {
      BROKER_ASSIGN_OR_RETURN(grpc::SslServerCredentialsOptions options,
                              TunnelTlsOptions(config_));
      credentials = grpc::SslServerCredentials(options);
    }
    builder.AddListeningPort(
        absl::StrCat(config_.address, ":", config_.tunnel_port), credentials,
        &ports.tunnel);
    builder.RegisterService(tunnel_service_.get());
    if (metrics_.enabled()) {
      std::vector<std::unique_ptr<
          grpc::experimental::ServerInterceptorFactoryInterface>>
          interceptors;
      interceptors.push_back(rpc_metrics_.ServerInterceptors());
      builder.experimental().SetInterceptorCreators(std::move(interceptors));
    }
    // Explicit limits: Debian's gRPC 1.51 has no HTTP/2 DoS backports.
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 1100);
    builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 * 1024);
    builder.SetMaxReceiveMessageSize(1 << 20);
    builder.SetMaxSendMessageSize(1 << 20);
    // Each stream's receive window is fixed (kTunnelStreamWindowBytes):
    // gRPC's bandwidth-delay probing would grow it to many MiB per stream
    // on a fast loopback, and that much of an answer would then wait in
    // this process whenever the platform reads slower than the worker
    // sends.
    builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                               kTunnelStreamWindowBytes);
    // Liveness of each worker connection is the transport's keepalive: an
    // unanswered ping closes the connection, which ends its Control and
    // lanes at once (failover), whether the worker died, froze or lost
    // its network path.
    builder.AddChannelArgument(
        GRPC_ARG_KEEPALIVE_TIME_MS,
        static_cast<int>(absl::ToInt64Milliseconds(config_.tunnel_keepalive)));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                               static_cast<int>(absl::ToInt64Milliseconds(
                                   config_.tunnel_keepalive_timeout)));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    // Workers ping every second to notice a frozen server; more often is
    // abuse.
    builder.AddChannelArgument(
        GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
    grpc_server_ = builder.BuildAndStart();
    if (grpc_server_ == nullptr || ports.tunnel == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen for tunnels on ", config_.address, ":",
                       config_.tunnel_port));
    }

    http::ServerOptions options;
    options.address = config_.address;
    options.port = config_.http_port;
    options.limits.max_body_bytes = config_.max_body_bytes;
    options.tls_cert_file = config_.tls_cert_file;
    options.tls_key_file = config_.tls_key_file;
    BROKER_ASSIGN_OR_RETURN(
        http_server_,
        http::Server::Create(executor_.io(), options,
                             [this](std::shared_ptr<http::Exchange> exchange) {
                               Route(std::move(exchange));
                             }));
    BROKER_ASSIGN_OR_RETURN(ports.http, http_server_->Start());
    // After both listeners: the default URLs need the bound ports.
    RegisterWithDispatcher(ports);
    return ports;
  }

  ~DefaultBrokerServer() override { Shutdown(absl::Now()); }

  // Idempotent. The executor stops last: reactors and timers refer to the
  // registry, which must outlive them.
  void Shutdown(absl::Time deadline) override {
    if (dispatcher_) {
      // HA: leave the dispatcher first (new allocations, and the workers'
      // next assignments, go elsewhere), then ask the workers to move and
      // give them a moment; requests keep flowing meanwhile.
      dispatcher_->Stop(std::min(deadline, absl::Now() + absl::Seconds(3)));
      {
        absl::MutexLock lock(&drain_mu_);
        draining_ = true;
      }
      const int told =
          tunnel_service_
              ? tunnel_service_->DrainAll("the broker server is stopping")
              : 0;
      metrics_.CountDrain(told);
      BROKER_LOG(kServer, kInfo, {{"workers", told}},
                 "draining: asked the workers to move to another server");
      if (told > 0 && !registry_.Empty()) {
        drained_.WaitForNotificationWithDeadline(
            std::min(deadline, absl::Now() + config_.drain_wait));
      }
    }
    // The HTTP side returns once every relayed request has ended (or the
    // deadline cut it). What is left on the tunnel endpoint are the workers'
    // Control calls and parked lanes, which never end by themselves: end them
    // now (the workers reconnect, elsewhere in HA) rather than at the
    // deadline.
    if (http_server_) http_server_->Shutdown(deadline);
    if (tunnel_service_) tunnel_service_->SetStopping();
    if (grpc_server_) {
      grpc_server_->Shutdown(std::chrono::system_clock::now());
      grpc_server_->Wait();
      grpc_server_.reset();
    }
    executor_.Stop();
  }

 private:
  void RegisterWithDispatcher(const BoundPorts& ports) {
    DispatcherConfig dispatcher = config_.dispatcher;
    if (dispatcher.url.empty()) return;
    const std::string scheme = config_.tls_cert_file.empty() ? "http" : "https";
    if (dispatcher.tunnel_url.empty()) {
      dispatcher.tunnel_url = absl::StrCat(
          scheme, "://", config_.advertise_host, ":", ports.tunnel);
    }
    if (dispatcher.internal_url.empty()) {
      dispatcher.internal_url =
          absl::StrCat(scheme, "://", config_.advertise_host, ":", ports.http);
    }
    auto link = DispatcherLink::Create(executor_.io(), std::move(dispatcher),
                                       &metrics_);
    if (!link.ok()) {
      BROKER_LOG(kServer, kError, {{"error", link.status().ToString()}},
                 "cannot reach the broker dispatcher; running without it");
      return;
    }
    http::ClientOptions peer_options;
    peer_options.ca_file = config_.dispatcher.ca_file;
    auto peer_client = http::Client::Create(executor_.io(), peer_options);
    if (!peer_client.ok()) {
      BROKER_LOG(kServer, kError, {{"error", peer_client.status().ToString()}},
                 "cannot forward to other servers");
      return;
    }
    peer_client_ = *std::move(peer_client);
    dispatcher_ = *std::move(link);
    dispatcher_->Start();
  }

  void Route(std::shared_ptr<http::Exchange> exchange) {
    absl::string_view target = exchange->request().target;
    absl::string_view path = target.substr(0, target.find('?'));
    if (path == "/metrics" && exchange->request().method == "GET" &&
        metrics_.enabled()) {
      exchange->RespondSimple(
          200, {{"content-type", common::metrics::Registry::kContentType}},
          metrics_.Render());
      return;
    }
    // Timed (http_request_duration_seconds) from here.
    exchange = metrics_.Track(std::move(exchange));
    const http::RequestHead& request = exchange->request();
    if (absl::StartsWith(path, "/broker/")) {
      Relay(std::move(exchange));
      return;
    }
    if (request.method != "GET" && request.method != "HEAD") {
      RespondJson(*exchange, 404, {{"ok", false}});
      return;
    }
    if (path == "/healthcheck" || path == "/") {
      RespondJson(*exchange, 200, {{"ok", true}, {"version", config_.version}});
      return;
    }
    if (absl::StartsWith(path, "/connection-status/")) {
      ConnectionStatus(*exchange, path.substr(19));
      return;
    }
    if (path == "/connections-status") {
      ConnectionsStatus(*exchange);
      return;
    }
    RespondJson(*exchange, 404, {{"ok", false}});
  }

  void ConnectionStatus(http::Exchange& exchange, absl::string_view rest) {
    absl::string_view token = rest.substr(0, rest.find('/'));
    auto workers = registry_.Workers(common::HashToken(token));
    if (workers.empty()) {
      RespondJson(exchange, 404, {{"ok", false}},
                  {{"x-broker-failure", "no-connection"}});
      return;
    }
    json clients = json::array();
    for (const auto& worker : workers) {
      clients.push_back(
          {{"version", worker.version}, {"rulesDigest", worker.rules_digest}});
    }
    RespondJson(exchange, 200, {{"ok", true}, {"clients", clients}});
  }

  void ConnectionsStatus(http::Exchange& exchange) {
    json out = json::array();
    for (const auto& [hash, workers] : registry_.Snapshot()) {
      json versions = json::array();
      json ids = json::array();
      std::string masked;
      for (const auto& worker : workers) {
        versions.push_back(worker.version);
        ids.push_back(worker.client_id);
        masked = worker.masked_token;
      }
      out.push_back({{"identifier", masked},
                     {"hashedIdentifier", hash},
                     {"versions", versions},
                     {"brokerClientIds", ids}});
    }
    RespondJson(exchange, 200, out);
  }

  void Relay(std::shared_ptr<http::Exchange> exchange) {
    const http::RequestHead& request = exchange->request();
    absl::string_view target = request.target;
    absl::string_view rest = target.substr(8);  // after "/broker/"
    size_t slash = rest.find('/');
    size_t question = rest.find('?');
    if (slash == absl::string_view::npos || (question < slash)) {
      RespondJson(*exchange, 404, {{"ok", false}});
      return;
    }
    const std::string token_hash = common::HashToken(rest.substr(0, slash));
    std::string url(rest.substr(slash));
    http::Headers headers;
    // "/ctx/<uuid>" becomes the x-snyk-broker-context-id header.
    if (absl::StartsWith(url, "/ctx/") && url.size() >= 5 + 36 &&
        common::IsUuid(url.substr(5, 36)) &&
        (url.size() == 41 || url[41] == '/' || url[41] == '?')) {
      headers.push_back({"x-snyk-broker-context-id", url.substr(5, 36)});
      url.erase(0, 41);
      if (url.empty() || url[0] != '/') url.insert(0, "/");
    }
    size_t q = url.find('?');
    if (q != std::string::npos) {
      std::string query =
          StripConnectionRole(absl::string_view(url).substr(q + 1));
      url.resize(q);
      if (!query.empty()) absl::StrAppend(&url, "?", query);
    }
    const std::string request_id = RequestIdOf(request);
    http::Headers reply_headers = {{"snyk-request-id", request_id}};

    if (!registry_.HasWorkers(token_hash)) {
      NoTunnelHere(exchange, token_hash, request_id);
      return;
    }
    PendingRelay pending{token_hash, std::move(url), std::move(headers),
                         request_id};
    if (!rules_->NeedsBody(filters::RuleList::kPublic, request.method,
                           pending.url)) {
      if (!PublicRulesAllow(*exchange, pending, "")) return;
      const std::uint64_t length =
          request.chunked ? 0 : request.content_length.value_or(0);
      if (length == 0 || length > kResendableBodyBytes) {
        Forward(std::move(exchange), std::move(pending));
        return;
      }
      // A small body is read whole first, so that the request can be
      // re-sent if its worker dies (RelayRequest::held_body).
      http::ReadWholeBody(
          exchange, kResendableBodyBytes,
          [this, exchange, pending = std::move(pending)](
              absl::StatusOr<std::string> body) mutable {
            if (!body.ok()) {
              RespondBodyError(*exchange, pending, body.status());
              return;
            }
            ForwardHeld(exchange, std::move(pending), *std::move(body));
          });
      return;
    }
    // A body-check rule could decide: read the body (bounded), then relay
    // it from the buffer. Everything else above streams.
    const std::uint64_t limit =
        std::min(kMaxInspectedBodyBytes, config_.max_body_bytes);
    http::ReadWholeBody(exchange, limit,
                        [this, exchange, pending = std::move(pending)](
                            absl::StatusOr<std::string> body) mutable {
                          if (!body.ok()) {
                            RespondBodyError(*exchange, pending, body.status());
                            return;
                          }
                          if (PublicRulesAllow(*exchange, pending, *body)) {
                            ForwardHeld(exchange, std::move(pending),
                                        *std::move(body));
                          }
                        });
  }

  // No worker of the token here. In HA mode another server may hold one:
  // forward once (a forwarded request is never forwarded again).
  void NoTunnelHere(const std::shared_ptr<http::Exchange>& exchange,
                    const std::string& token_hash,
                    const std::string& request_id) {
    auto no_connection = [request_id](http::Exchange& e) {
      RespondNoConnection(e, request_id);
    };
    if (dispatcher_ == nullptr || IsForwarded(exchange->request())) {
      no_connection(*exchange);
      return;
    }
    // While the token's workers move between servers (one of them
    // stopping), no server may hold its tunnel for a moment: wait for the
    // workers to arrive here rather than answer 404, then relay afresh.
    auto wait_here = [this, exchange, token_hash, no_connection]() mutable {
      registry_.WaitForWorker(
          executor_.io(), token_hash, kLaneWait,
          [this, exchange, no_connection](bool arrived) mutable {
            if (arrived) {
              Relay(exchange);
            } else {
              no_connection(*exchange);
            }
          });
    };
    dispatcher_->LookupPeers(
        token_hash, [this, exchange, request_id, no_connection,
                     wait_here = std::move(wait_here)](
                        absl::StatusOr<std::vector<PeerServer>> peers) mutable {
          if (!peers.ok() || peers->empty()) {
            if (!exchange->request().chunked &&
                exchange->request().content_length.value_or(0) == 0) {
              wait_here();
              return;
            }
            no_connection(*exchange);
            return;
          }
          metrics_.CountFailover(ServerMetrics::Failover::kForward);
          // Spread over the servers holding the token, in turn.
          const PeerServer& peer =
              (*peers)[next_peer_.fetch_add(1, std::memory_order_relaxed) %
                       peers->size()];
          ForwardToPeer(*peer_client_, exchange, peer.internal_url,
                        dispatcher_->config().server_id, request_id,
                        absl::Now() + config_.request_timeout,
                        std::move(wait_here));
        });
  }

  // A platform request between its token check and its lane.
  struct PendingRelay {
    std::string token_hash;
    std::string url;        // for the worker, /broker/<token> removed
    http::Headers headers;  // added by the server (context id)
    std::string request_id;
  };

  // Answers 401 and returns false when no public rule allows the request.
  bool PublicRulesAllow(http::Exchange& exchange, const PendingRelay& pending,
                        absl::string_view body) {
    const http::RequestHead& request = exchange.request();
    std::vector<filters::HeaderField> fields;
    fields.reserve(request.headers.size());
    for (const http::Header& h : request.headers) {
      fields.push_back({h.name, h.value});
    }
    filters::Decision decision = rules_->Evaluate(
        filters::RuleList::kPublic,
        filters::RequestView{request.method, pending.url, fields, body});
    metrics_.CountRequest(ServerMetrics::Flow::kInbound,
                          /*rejected=*/!decision.allowed());
    if (decision.allowed()) return true;
    exchange.RespondSimple(
        filters::kBlockedStatus,
        {{"content-type", "application/json; charset=utf-8"},
         {"snyk-request-id", pending.request_id}},
        filters::BlockedBody(
            filters::BlockedReason(filters::BlockedFlow::kHttp, decision),
            pending.url));
    return false;
  }

  // The body could not be read whole for the body checks.
  static void RespondBodyError(http::Exchange& exchange,
                               const PendingRelay& pending,
                               const absl::Status& status) {
    const bool too_large =
        status.code() == absl::StatusCode::kResourceExhausted;
    RespondJson(exchange, too_large ? 413 : 400,
                {{"ok", false},
                 {"code", too_large ? "PAYLOAD_TOO_LARGE" : "BAD_REQUEST_BODY"},
                 {"message", std::string(status.message())}},
                {{"snyk-request-id", pending.request_id}});
  }

  // Relays a request whose body was read whole from `exchange`; a small
  // one is kept for a re-send.
  void ForwardHeld(const std::shared_ptr<http::Exchange>& exchange,
                   PendingRelay pending, std::string body) {
    std::shared_ptr<const std::string> held;
    if (body.size() <= kResendableBodyBytes) {
      held = std::make_shared<const std::string>(body);
    }
    Forward(WithBufferedBody(executor_.io(), exchange, std::move(body)),
            std::move(pending), std::move(held), exchange);
  }

  void Forward(std::shared_ptr<http::Exchange> exchange, PendingRelay pending,
               std::shared_ptr<const std::string> held_body = nullptr,
               std::shared_ptr<http::Exchange> unbuffered = nullptr) {
    http::Headers headers = std::move(pending.headers);
    for (const http::Header& h : exchange->request().headers) {
      if (IsHopByHopHeader(h.name)) continue;
      headers.push_back(h);
    }
    headers.push_back({"snyk-request-id", pending.request_id});
    // The relay is this server's span of the platform's trace.
    http::ContinueTrace(headers);
    RelayRequest relay{std::move(pending.token_hash),
                       std::move(pending.request_id),
                       std::move(pending.url),
                       std::move(headers),
                       absl::Now() + config_.request_timeout,
                       /*attempt=*/0,
                       std::move(held_body),
                       std::move(unbuffered),
                       &metrics_};
    const std::string token_hash = relay.token_hash;
    // All lanes busy (a burst, or a worker still opening them): wait a
    // little for one rather than failing at once.
    registry_.TakeOrWait(
        executor_.io(), token_hash, kLaneWait,
        [this, exchange, relay = std::move(relay)](
            std::optional<TunnelRegistry::Taken> lane) mutable {
          if (!lane && !registry_.HasWorkers(relay.token_hash)) {
            // The token's last worker left while this waited: as if it
            // had never been here (forwarded in HA mode, else 404).
            NoTunnelHere(exchange, relay.token_hash, relay.request_id);
            return;
          }
          if (!lane) {
            RespondJson(*exchange, 503, {{"ok", false}},
                        {{"snyk-request-id", relay.request_id},
                         {"x-broker-failure", "connection-not-ready"},
                         {"retry-after", "1"}});
            return;
          }
          StartRelay(executor_.io(), registry_, *std::move(lane),
                     std::move(exchange), std::move(relay));
        });
  }

  const ServerConfig config_;
  // Before everything that counts into it; the executor's calls (and the
  // gRPC server's interceptors) end before it goes.
  ServerMetrics metrics_;
  common::rpc::RpcMetrics rpc_metrics_;
  common::Executor executor_;
  std::shared_ptr<const filters::RuleSet> rules_;
  TunnelRegistry registry_;
  // Set once in Start(), before the gRPC server; webhooks' platform calls
  // end on executor_ (stopped first in Shutdown).
  std::unique_ptr<WebhookDeliveries> deliveries_;
  std::unique_ptr<TunnelService> tunnel_service_;
  // Set once in Start(), before the first worker can connect.
  std::unique_ptr<DispatcherLink> dispatcher_;
  std::unique_ptr<http::Client> peer_client_;  // forwarding, with dispatcher_
  std::atomic<std::size_t> next_peer_{0};
  absl::Mutex drain_mu_;
  bool draining_ ABSL_GUARDED_BY(drain_mu_) = false;
  absl::Notification drained_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<http::Server> http_server_;
};

}  // namespace

absl::Status Validate(const ServerConfig& config) {
  if (config.accept_path.empty()) {
    return absl::InvalidArgumentError(
        "ACCEPT is required: the server's accept rules (public rules filter "
        "platform requests)");
  }
  if (config.tls_cert_file.empty() != config.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "HTTPS_CERT and HTTPS_KEY must be set together");
  }
  if (!config.tunnel_client_ca_file.empty() && config.tls_cert_file.empty()) {
    return absl::InvalidArgumentError(
        "BROKER_TUNNEL_CLIENT_CA needs TLS: set HTTPS_CERT and HTTPS_KEY too");
  }
  if (config.admit_per_second < 0) {
    return absl::InvalidArgumentError(
        "BROKER_TUNNEL_ADMIT_PER_SECOND: must be 0 (no cap) or more");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BrokerServer>> BrokerServer::Create(
    ServerConfig config) {
  BROKER_RETURN_IF_ERROR(Validate(config));
  BROKER_ASSIGN_OR_RETURN(auto rules,
                          filters::RuleSet::FromFile(config.accept_path));
  return std::make_unique<DefaultBrokerServer>(std::move(config),
                                               std::move(rules));
}

}  // namespace broker::server
