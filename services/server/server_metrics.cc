#include "services/server/server_metrics.h"

#include "services/server/tunnel_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include <atomic>
#include <utility>
#include <vector>

namespace broker::server {
namespace {

namespace http = common::http;
namespace metrics = common::metrics;

// Snyk's buckets: answers from 1 KiB to 20 MiB, requests from half a second
// to five minutes.
std::vector<double> ResponseSizeBuckets() {
  return {1024,
          4 * 1024,
          16 * 1024,
          64 * 1024,
          256 * 1024,
          1024 * 1024,
          4 * 1024 * 1024,
          10 * 1024 * 1024,
          20 * 1024 * 1024};
}

std::vector<double> RequestSecondsBuckets() {
  return {0.5, 1, 2, 5, 10, 30, 60, 120, 300};
}

// Delegates everything; notes the first answer's status and reports the
// exchange's time when the last reference goes.
class TrackedExchange final : public http::Exchange {
 public:
  TrackedExchange(ServerMetrics& metrics, std::shared_ptr<http::Exchange> inner)
      : metrics_(metrics), inner_(std::move(inner)) {}
  ~TrackedExchange() override {
    const int status = status_.load(std::memory_order_relaxed);
    // Released unanswered: the server answers 500.
    metrics_.RequestEnded(inner_->request().method, status == 0 ? 500 : status,
                          absl::Now() - started_);
  }
  TrackedExchange(const TrackedExchange&) = delete;
  TrackedExchange& operator=(const TrackedExchange&) = delete;

  const http::RequestHead& request() const override {
    return inner_->request();
  }
  std::string remote_address() const override {
    return inner_->remote_address();
  }
  http::BodyReader& body() override { return inner_->body(); }
  http::BodyWriter& Respond(http::ResponseHead head,
                            http::BodyWriter::DoneHandler done) override {
    Note(head.status);
    return inner_->Respond(std::move(head), std::move(done));
  }
  void RespondWhole(http::ResponseHead head, std::string body,
                    http::BodyWriter::DoneHandler done) override {
    Note(head.status);
    inner_->RespondWhole(std::move(head), std::move(body), std::move(done));
  }
  void RespondSimple(int status, http::Headers headers,
                     std::string body) override {
    Note(status);
    inner_->RespondSimple(status, std::move(headers), std::move(body));
  }
  void OnCancel(absl::AnyInvocable<void() &&> callback) override {
    inner_->OnCancel(std::move(callback));
  }

 private:
  // The first answer counts (a later RespondSimple() is ignored).
  void Note(int status) {
    int none = 0;
    status_.compare_exchange_strong(none, status, std::memory_order_relaxed);
  }

  ServerMetrics& metrics_;
  const std::shared_ptr<http::Exchange> inner_;
  const absl::Time started_ = absl::Now();
  std::atomic<int> status_{0};
};

}  // namespace

absl::string_view CloseReasonName(CloseCause cause) {
  switch (cause) {
    case CloseCause::kWorkerEnded:
      return "end";
    case CloseCause::kDrained:
      return "close";
    case CloseCause::kConnectionLost:
      return "disconnection";
    case CloseCause::kRefused:
    case CloseCause::kServerStopping:
      return "destroy";
  }
  return "close";
}

absl::string_view MethodLabel(absl::string_view method) {
  for (absl::string_view known : {"GET", "HEAD", "POST", "PUT", "PATCH",
                                  "DELETE", "OPTIONS", "CONNECT", "TRACE"}) {
    if (method == known) return known;
  }
  return "other";
}

absl::string_view RefusalReason(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kResourceExhausted:
      return "cap";  // the token has its maximum of workers here
    case absl::StatusCode::kFailedPrecondition:
      return "fingerprint";  // its configuration differs from its peers'
    case absl::StatusCode::kUnauthenticated:
      return "token_mismatch";  // Hello.token_hash is not the call's token
    case absl::StatusCode::kUnavailable:
      return "rate";  // over BROKER_TUNNEL_ADMIT_PER_SECOND; told to retry
    default:
      return "other";
  }
}

ServerMetrics::ServerMetrics(bool enabled) : enabled_(enabled) {
  registry_.AddGauge("up", "1 while the broker server runs.").With({}).Set(1);
  metrics::Family<metrics::Counter>& requests = registry_.AddCounter(
      "http_request_total",
      "Requests decided by the accept rules: platform requests "
      "(inbound-request, public rules) and webhooks (outbound-request, "
      "private rules).",
      {"rejectedByFilter", "flowDirection"});
  for (int flow = 0; flow < 2; ++flow) {
    for (int rejected = 0; rejected < 2; ++rejected) {
      requests_[flow][rejected] =
          &requests.With({rejected != 0 ? "true" : "false",
                          flow == 0 ? "inbound-request" : "outbound-request"});
    }
  }
  metrics::Family<metrics::Histogram>& sizes = registry_.AddHistogram(
      "broker_response_size_bytes",
      "Sizes of the answers relayed from broker clients (their "
      "Content-Length).",
      {"isStreaming"}, ResponseSizeBuckets());
  response_size_[0] = &sizes.With({"false"});
  response_size_[1] = &sizes.With({"true"});
  unsized_ = &registry_
                  .AddCounter("broker_unable_to_size_response_count",
                              "Relayed answers without a Content-Length.")
                  .With({});
  close_reasons_ = &registry_.AddCounter(
      "broker_socket_close_reason_total",
      "Broker client tunnels that ended, by reason.", {"reason"});
  metrics::Family<metrics::Counter>& writes = registry_.AddCounter(
      "broker_dispatcher_write_total",
      "Calls to the dispatcher that change its state, by result.",
      {"target", "result"});
  dispatcher_writes_[0] = &writes.With({"node-dispatcher", "failure"});
  dispatcher_writes_[1] = &writes.With({"node-dispatcher", "success"});
  durations_ = &registry_.AddHistogram(
      "http_request_duration_seconds",
      "Time to answer the platform's HTTP requests (not /metrics).",
      {"method", "status_code"}, RequestSecondsBuckets());
  // The filter-block family every binary shares (docs/observability.md).
  metrics::Family<metrics::Counter>& blocks =
      registry_.AddCounter("broker_filter_blocks_total",
                           "Requests blocked by the accept rules.", {"list"});
  blocks_[0] = &blocks.With({"public"});
  blocks_[1] = &blocks.With({"private"});

  outstanding_ = &registry_
                      .AddGauge("broker_server_outstanding_requests",
                                "Platform HTTP requests being answered now.")
                      .With({});
  metrics::Family<metrics::Counter>& failovers = registry_.AddCounter(
      "broker_server_failovers_total",
      "Requests re-sent on another worker after theirs failed (resend), and "
      "requests forwarded to the server holding their token (forward).",
      {"kind"});
  failovers_[0] = &failovers.With({"resend"});
  failovers_[1] = &failovers.With({"forward"});
  metrics::Family<metrics::Counter>& drains = registry_.AddCounter(
      "broker_server_drains_total",
      "Drains of this server (server), and Drain messages sent to workers "
      "(worker).",
      {"kind"});
  drains_server_ = &drains.With({"server"});
  drains_workers_ = &drains.With({"worker"});
  refusals_ = &registry_.AddCounter(
      "broker_server_refusals_total",
      "Broker clients refused at Hello, by reason.", {"reason"});
  metrics::Family<metrics::Counter>& webhooks = registry_.AddCounter(
      "broker_server_webhooks_total",
      "Webhooks (You => Snyk) the rules allowed, by how the platform call "
      "ended; duplicate: a retry answered from the delivery ledger.",
      {"result"});
  webhooks_[0] = &webhooks.With({"delivered"});
  webhooks_[1] = &webhooks.With({"failed"});
  webhooks_[2] = &webhooks.With({"duplicate"});
}

void ServerMetrics::Watch(const TunnelRegistry& tunnels) {
  registry_.AddCallback(
      "broker_server_tunnels",
      "Connected workers per token, by hashed token (never the token).",
      {"hashed_token"}, [&tunnels] {
        std::vector<metrics::Sample> out;
        for (const auto& [hash, workers] : tunnels.Snapshot()) {
          out.push_back({{hash}, static_cast<double>(workers.size())});
        }
        return out;
      });
  registry_.AddCallback(
      "broker_server_lanes",
      "Workers' parked lanes (idle) and lanes carrying a request (busy).",
      {"state"}, [&tunnels] {
        double idle = 0;
        double busy = 0;
        for (const auto& [hash, workers] : tunnels.Snapshot()) {
          for (const TunnelRegistry::WorkerInfo& worker : workers) {
            idle += static_cast<double>(worker.idle_lanes);
            busy += static_cast<double>(worker.in_flight);
          }
        }
        return std::vector<metrics::Sample>{{{"idle"}, idle}, {{"busy"}, busy}};
      });
  registry_.AddCallback("broker_socket_connection_total",
                        "Connected broker clients (admitted workers).", {},
                        [&tunnels] {
                          double workers = 0;
                          for (const auto& [hash, list] : tunnels.Snapshot()) {
                            workers += static_cast<double>(list.size());
                          }
                          return std::vector<metrics::Sample>{{{}, workers}};
                        });
}

void ServerMetrics::CountRequest(Flow flow, bool rejected) {
  const int f = flow == Flow::kInbound ? 0 : 1;
  requests_[f][rejected ? 1 : 0]->Increment();
  if (rejected) blocks_[f]->Increment();  // public rules inbound, private out
}

void ServerMetrics::ObserveResponse(std::optional<std::uint64_t> bytes,
                                    bool streaming) {
  if (!bytes) {
    unsized_->Increment();
    return;
  }
  response_size_[streaming ? 1 : 0]->Observe(static_cast<double>(*bytes));
}

void ServerMetrics::CountClose(CloseCause cause) {
  close_reasons_->With({std::string(CloseReasonName(cause))}).Increment();
}

void ServerMetrics::CountRefusal(absl::StatusCode code) {
  refusals_->With({std::string(RefusalReason(code))}).Increment();
}

void ServerMetrics::CountDispatcherWrite(bool ok) {
  dispatcher_writes_[ok ? 1 : 0]->Increment();
}

void ServerMetrics::CountFailover(Failover kind) {
  failovers_[kind == Failover::kResend ? 0 : 1]->Increment();
}

void ServerMetrics::CountDrain(int workers) {
  drains_server_->Increment();
  if (workers > 0)
    drains_workers_->Increment(static_cast<std::uint64_t>(workers));
}

void ServerMetrics::CountWebhook(Webhook result) {
  webhooks_[static_cast<int>(result)]->Increment();
}

std::shared_ptr<http::Exchange> ServerMetrics::Track(
    std::shared_ptr<http::Exchange> exchange) {
  if (!enabled_) return exchange;
  outstanding_->Add(1);
  return std::make_shared<TrackedExchange>(*this, std::move(exchange));
}

void ServerMetrics::RequestEnded(absl::string_view method, int status,
                                 absl::Duration took) {
  outstanding_->Add(-1);
  durations_->With({std::string(MethodLabel(method)), absl::StrCat(status)})
      .Observe(absl::ToDoubleSeconds(took));
}

}  // namespace broker::server
