#include "services/dispatcher/dispatcher_server.h"

#include "common/clock.h"
#include "common/executor.h"
#include "common/http/server.h"
#include "common/status.h"
#include "services/dispatcher/api.h"
#include "services/dispatcher/in_memory_store.h"
#include "services/dispatcher/redis_store.h"

#include "absl/functional/any_invocable.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

#include <atomic>
#include <cstdint>
#include <optional>
#include <utility>

namespace broker::dispatcher {
namespace {

namespace http = common::http;

// Dispatcher bodies are a few hundred bytes of JSON.
constexpr std::uint64_t kMaxBodyBytes = std::uint64_t{64} * 1024;
// The most clients per token the placement spreads (two slots per probe).
constexpr int kMaxClientsPerTokenLimit = 64;

// Reads the rest of `exchange`'s body into `*body`; `done` runs once, on
// the exchange's strand, with the outcome: ResourceExhausted as soon as the
// body grows over kMaxBodyBytes.
void ReadBody(std::shared_ptr<http::Exchange> exchange,
              std::shared_ptr<std::string> body,
              absl::AnyInvocable<void(absl::Status) &&> done) {
  http::Exchange& ex = *exchange;
  ex.body().Read(
      [exchange = std::move(exchange), body = std::move(body),
       done = std::move(done)](absl::Status status,
                               const http::BodyChunk& chunk) mutable {
        if (!status.ok()) {
          std::move(done)(std::move(status));
          return;
        }
        body->append(chunk.data);
        if (body->size() > kMaxBodyBytes) {
          std::move(done)(absl::ResourceExhaustedError("body too large"));
          return;
        }
        if (chunk.last) {
          std::move(done)(absl::OkStatus());
          return;
        }
        ReadBody(std::move(exchange), std::move(body), std::move(done));
      });
}

class DefaultDispatcherServer final : public DispatcherServer {
 public:
  DefaultDispatcherServer(DispatcherConfig config, std::unique_ptr<Store> store,
                          std::string store_kind)
      : config_(std::move(config)),
        store_kind_(std::move(store_kind)),
        store_(std::move(store)),
        api_(*store_, ApiOptions{config_.version}, common::SystemClock()),
        io_executor_(config_.io_threads),
        store_executor_(config_.store_threads) {}

  ~DefaultDispatcherServer() override { Shutdown(absl::Now()); }

  absl::StatusOr<int> Start() override {
    http::ServerOptions options;
    options.address = config_.address;
    options.port = config_.port;
    // The limit is enforced here (OnRequest, ReadBody) rather than by the
    // server, so that a too large body gets a JSON:API answer.
    options.limits.max_body_bytes = 0;
    // Clients hold no long requests here: a stalled one is abuse.
    options.limits.header_timeout = absl::Seconds(10);
    options.limits.io_timeout = absl::Seconds(10);
    options.tls_cert_file = config_.tls_cert_file;
    options.tls_key_file = config_.tls_key_file;
    BROKER_ASSIGN_OR_RETURN(
        http_server_,
        http::Server::Create(io_executor_.io(), options,
                             [this](std::shared_ptr<http::Exchange> exchange) {
                               OnRequest(std::move(exchange));
                             }));
    return http_server_->Start();
  }

  // Idempotent. The HTTP side first (it waits for answers in progress,
  // which need the store threads), then the store threads, then I/O.
  void Shutdown(absl::Time deadline) override {
    if (http_server_) http_server_->Shutdown(deadline);
    store_executor_.Stop();
    io_executor_.Stop();
  }

  std::string store_kind() const override { return store_kind_; }

 private:
  void OnRequest(std::shared_ptr<http::Exchange> exchange) {
    const std::optional<std::uint64_t> declared =
        exchange->request().content_length;
    if (declared && *declared > kMaxBodyBytes) {
      Respond(*exchange, TooLarge());
      return;
    }
    auto body = std::make_shared<std::string>();
    ReadBody(exchange, body,
             [this, exchange, body](const absl::Status& status) mutable {
               if (!status.ok()) {
                 if (absl::IsResourceExhausted(status)) {
                   Respond(*exchange, TooLarge());
                 } else {
                   Respond(*exchange,
                           ErrorResponse(400, "INVALID_BODY", "Bad request",
                                         "the body could not be read"));
                 }
                 return;
               }
               Dispatch(std::move(exchange), std::move(*body));
             });
  }

  void Dispatch(std::shared_ptr<http::Exchange> exchange, std::string body) {
    if (pending_.fetch_add(1, std::memory_order_relaxed) >=
        config_.max_pending_requests) {
      pending_.fetch_sub(1, std::memory_order_relaxed);
      Respond(*exchange,
              ErrorResponse(503, "OVERLOADED", "Dispatcher overloaded",
                            "too many requests are waiting; retry later"));
      return;
    }
    ApiRequest request{exchange->request().method, exchange->request().target,
                       std::move(body)};
    store_executor_.Post(
        [this, exchange = std::move(exchange), request = std::move(request)]() {
          ApiResponse response = api_.Handle(request);
          pending_.fetch_sub(1, std::memory_order_relaxed);
          Respond(*exchange, std::move(response));
        });
  }

  static ApiResponse TooLarge() {
    return ErrorResponse(413, "BODY_TOO_LARGE", "Body too large",
                         "the body is over 64 KiB");
  }

  static void Respond(http::Exchange& exchange, ApiResponse response) {
    exchange.RespondSimple(response.status, std::move(response.headers),
                           std::move(response.body));
  }

  const DispatcherConfig config_;
  const std::string store_kind_;
  const std::unique_ptr<Store> store_;
  Api api_;
  std::atomic<int> pending_{0};
  // Declared after what their work uses, so that they stop (and destroy
  // queued work, which holds exchanges) first.
  common::Executor io_executor_;
  common::Executor store_executor_;
  std::unique_ptr<http::Server> http_server_;
};

}  // namespace

absl::Status Validate(const DispatcherConfig& config) {
  if (config.port < 0 || config.port > 65535) {
    return absl::InvalidArgumentError("PORT: must be 0..65535");
  }
  if (config.tls_cert_file.empty() != config.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "HTTPS_CERT, HTTPS_KEY: set both for TLS, or neither");
  }
  if (config.max_clients_per_token < 1 ||
      config.max_clients_per_token > kMaxClientsPerTokenLimit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BROKER_MAX_CLIENTS_PER_TOKEN: must be 1..", kMaxClientsPerTokenLimit));
  }
  if (config.lease_ttl < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        "BROKER_DISPATCHER_LEASE_TTL_MS: must be at least 1");
  }
  if (config.server_ttl < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        "BROKER_DISPATCHER_SERVER_TTL_MS: must be at least 1");
  }
  if (!config.redis_url.empty()) {
    absl::StatusOr<RedisEndpoint> endpoint = ParseRedisUrl(config.redis_url);
    if (!endpoint.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "BROKER_DISPATCHER_REDIS_URL: ", endpoint.status().message()));
    }
  }
  if (config.redis_timeout < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        "BROKER_DISPATCHER_REDIS_TIMEOUT_MS: must be at least 1");
  }
  if (config.redis_key_prefix.empty() ||
      absl::StrContains(config.redis_key_prefix, '{') ||
      absl::StrContains(config.redis_key_prefix, '}')) {
    return absl::InvalidArgumentError(
        "BROKER_DISPATCHER_REDIS_KEY_PREFIX: must be non-empty, without { }");
  }
  if (config.io_threads < 1 || config.store_threads < 1 ||
      config.max_pending_requests < 1) {
    return absl::InvalidArgumentError(
        "threads and max_pending_requests must be at least 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DispatcherServer>> DispatcherServer::Create(
    DispatcherConfig config) {
  BROKER_RETURN_IF_ERROR(Validate(config));
  StoreOptions options;
  options.max_clients_per_token = config.max_clients_per_token;
  options.lease_ttl = config.lease_ttl;
  options.server_ttl = config.server_ttl;
  std::unique_ptr<Store> store;
  std::string kind;
  if (config.redis_url.empty()) {
    store = std::make_unique<InMemoryStore>(options, common::SystemClock());
    kind = "memory";
  } else {
    RedisOptions redis;
    BROKER_ASSIGN_OR_RETURN(redis.endpoint, ParseRedisUrl(config.redis_url));
    redis.timeout = config.redis_timeout;
    redis.key_prefix = config.redis_key_prefix;
    BROKER_ASSIGN_OR_RETURN(store,
                            RedisStore::Create(options, std::move(redis)));
    kind = "redis";
  }
  return std::unique_ptr<DispatcherServer>(new DefaultDispatcherServer(
      std::move(config), std::move(store), std::move(kind)));
}

}  // namespace broker::dispatcher
