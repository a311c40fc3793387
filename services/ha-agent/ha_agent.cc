#include "services/ha-agent/ha_agent.h"

#include "common/executor.h"
#include "common/grpc/rpc_metrics.h"
#include "common/http/client.h"
#include "common/http/server.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/token.h"
#include "common/uuid.h"
#include "services/ha-agent/backoff.h"
#include "services/ha-agent/preflight.h"

#include "broker/ha/v1/ha_agent.grpc.pb.h"
#include "broker/ha/v1/ha_agent.pb.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/server_callback.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace broker::ha {
namespace {

namespace http = common::http;

constexpr absl::string_view kServiceName = "broker.ha.v1.HaAgent";
// A misbehaving caller cannot make the agent keep unbounded state.
constexpr size_t kMaxWorkers = 64;
constexpr size_t kMaxIdBytes = 253;

// A client id a worker brings back: what the dispatcher accepts in a path.
bool IsAcceptableClientId(absl::string_view id) {
  if (id.empty() || id.size() > kMaxIdBytes) return false;
  for (char c : id) {
    const auto u = static_cast<unsigned char>(c);
    if (!(absl::ascii_isalnum(u) || c == '-' || c == '.' || c == '_' ||
          c == '~')) {
      return false;
    }
  }
  return true;
}

class AgentImpl;

// One Watch stream: the agent pushes assignments, the reactor writes them,
// one at a time; a push while a write is in flight replaces any assignment
// still waiting (only the newest matters), and older generations than one
// already queued are dropped, so concurrent pushes cannot reorder.
//
// Owned by itself (`self_`) until OnDone; the agent holds weak_ptrs and
// starts operations only through Push()/Close(), which never start an
// operation after Finish().
class WatchCall final : public grpc::ServerWriteReactor<v1::Assignment> {
 public:
  WatchCall(AgentImpl& agent, std::string worker_id)
      : agent_(agent), worker_id_(std::move(worker_id)) {}

  static std::shared_ptr<WatchCall> Make(AgentImpl& agent,
                                         std::string worker_id) {
    auto call = std::make_shared<WatchCall>(agent, std::move(worker_id));
    call->self_ = call;
    return call;
  }

  void Push(const v1::Assignment& assignment) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (finishing_ || assignment.generation() <= queued_generation_) return;
      queued_generation_ = assignment.generation();
      pending_ = assignment;
      has_pending_ = true;
      if (writing_) return;
      out_ = std::move(pending_);
      has_pending_ = false;
      writing_ = true;
    }
    StartWrite(&out_);
  }

  // Ends the stream with `status` once the write in flight (if any) is done.
  void Close(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (finishing_) return;
      finishing_ = true;
      final_status_ = status;
      if (writing_) return;  // OnWriteDone finishes
      finish_called_ = true;
    }
    Finish(status);
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    bool write = false;
    grpc::Status finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok && !finishing_) {
        // The stream is broken (the worker left): end it.
        finishing_ = true;
        final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "gone");
      }
      if (finishing_) {
        if (finish_called_) return;
        finish_called_ = true;
        finish = final_status_;
      } else if (has_pending_) {
        out_ = std::move(pending_);
        has_pending_ = false;
        writing_ = true;
        write = true;
      } else {
        return;
      }
    }
    if (write) {
      StartWrite(&out_);
    } else {
      Finish(finish);
    }
  }

  void OnCancel() override {
    Close(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override;

  const std::string& worker_id() const { return worker_id_; }

 private:
  AgentImpl& agent_;
  const std::string worker_id_;
  std::shared_ptr<WatchCall> self_;

  absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
  std::int64_t queued_generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  v1::Assignment pending_ ABSL_GUARDED_BY(mu_);
  // Written by gRPC while writing_; only touched when no write is in flight.
  v1::Assignment out_;
};

// A one-shot timer that can be re-armed; handlers of earlier arms are
// recognised by their sequence number. Used under the agent's mutex only.
struct SlotTimer {
  std::unique_ptr<boost::asio::steady_timer> timer;
  std::uint64_t seq = 0;
  bool armed = false;

  void Cancel() {
    if (!armed) return;
    armed = false;
    ++seq;
    timer->cancel();
  }
};

enum class TimerKind { kRetry, kForget, kDown };

enum class Outcome { kNone, kAssigned, kRefused, kUnavailable };

// One worker's state.
struct Slot {
  std::uint64_t id = 0;  // unique per Slot object: stale callbacks no-op
  std::string worker_id;
  std::string client_id;
  // state() is STATE_UNSPECIFIED until the first dispatcher outcome.
  v1::Assignment assignment;
  std::weak_ptr<WatchCall> watcher;
  const WatchCall* watcher_raw = nullptr;

  bool call_in_flight = false;
  // ASSIGNED but not confirmed by the dispatcher (adopted after an agent
  // restart): keep asking, with backoff.
  bool unconfirmed = false;
  bool moving = false;
  std::string leaving_server;
  absl::Time move_started;
  Outcome last_outcome = Outcome::kNone;
  std::string logged_server_id;
  Backoff backoff;

  SlotTimer retry;
  SlotTimer forget;
  SlotTimer down;  // armed while the worker reports its tunnel down

  explicit Slot(Backoff b) : backoff(b) {}

  bool NeedsAllocation() const {
    return assignment.state() != v1::Assignment::ASSIGNED || moving ||
           unconfirmed;
  }
};

// Work decided under the agent's mutex, done after it is released (gRPC
// operations and dispatcher calls never run under it).
struct Outbox {
  struct Call {
    std::string worker_id;
    std::uint64_t slot_id;
    std::string client_id;
  };
  std::vector<std::pair<std::shared_ptr<WatchCall>, v1::Assignment>> pushes;
  std::vector<std::pair<std::shared_ptr<WatchCall>, grpc::Status>> closes;
  std::vector<Call> calls;
};

class AgentImpl final : public HaAgent {
 public:
  AgentImpl(HaAgentConfig config, std::unique_ptr<DispatcherClient> dispatcher)
      : config_(std::move(config)),
        hashed_token_(common::HashToken(config_.token)),
        rpc_metrics_(metrics_, common::rpc::RpcMetrics::Side::kServer),
        executor_(std::max(1, config_.io_threads)),
        dispatcher_(std::move(dispatcher)),
        service_(*this) {
    AddMetrics();
  }

  // NOLINTNEXTLINE(bugprone-exception-escape): only allocation failures.
  ~AgentImpl() override { Shutdown(absl::Now()); }

  [[nodiscard]] absl::Status Init() {
    http::ClientOptions options;
    options.ca_file = config_.ca_file;
    options.connect_timeout = config_.dispatcher_timeout;
    BROKER_ASSIGN_OR_RETURN(http_client_,
                            http::Client::Create(executor_.io(), options));
    if (dispatcher_ == nullptr) {
      DispatcherClientOptions d;
      d.base_url = config_.dispatcher.url;
      d.prefix = config_.dispatcher_url_prefix;
      d.token = config_.token;
      d.deployment_location = config_.deployment_location;
      d.version = config_.version;
      d.timeout = config_.dispatcher_timeout;
      dispatcher_ = MakeDefaultDispatcherClient(*http_client_, std::move(d));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int> Start() override;
  void Shutdown(absl::Time deadline) override;
  std::shared_ptr<grpc::Channel> InProcessChannel() override {
    return server_->InProcessChannel(grpc::ChannelArguments());
  }
  int http_port() const override { return http_port_; }

  // --- Called by the reactors (gRPC threads) -------------------------------
  void Attach(const v1::WatchRequest& request,
              const std::shared_ptr<WatchCall>& call) ABSL_LOCKS_EXCLUDED(mu_);
  void Detach(const std::string& worker_id, const WatchCall* call)
      ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status HandleReport(const v1::ReportRequest& report)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  class Service final : public v1::HaAgent::CallbackService {
   public:
    explicit Service(AgentImpl& agent) : agent_(agent) {}

    grpc::ServerWriteReactor<v1::Assignment>* Watch(
        grpc::CallbackServerContext* /*context*/,
        const v1::WatchRequest* request) override {
      auto call = WatchCall::Make(agent_, request->worker_id());
      if (request->worker_id().empty()) {
        call->Close(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "worker_id is required"));
      } else {
        agent_.Attach(*request, call);
      }
      return call.get();
    }

    grpc::ServerUnaryReactor* Report(
        grpc::CallbackServerContext* context, const v1::ReportRequest* request,
        v1::ReportResponse* /*response*/) override {
      grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
      reactor->Finish(agent_.HandleReport(*request));
      return reactor;
    }

   private:
    AgentImpl& agent_;
  };

  Slot* FindLocked(const std::string& worker_id, std::uint64_t slot_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = slots_.find(worker_id);
    if (it == slots_.end() || it->second->id != slot_id) return nullptr;
    return it->second.get();
  }

  // Makes `next` (generation and checks filled in here) the slot's
  // assignment if it differs from the current one, and queues the push.
  void EmitLocked(Slot& slot, v1::Assignment next, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeAllocateLocked(Slot& slot, Outbox& out) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ArmLocked(Slot& slot, TimerKind kind, absl::Duration delay)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartMoveLocked(Slot& slot, absl::string_view reason, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnTimer(const std::string& worker_id, std::uint64_t slot_id,
               TimerKind kind, std::uint64_t seq) ABSL_LOCKS_EXCLUDED(mu_);
  void OnAllocated(const std::string& worker_id, std::uint64_t slot_id,
                   absl::StatusOr<Allocation> result) ABSL_LOCKS_EXCLUDED(mu_);
  void OnAssignedLocked(Slot& slot, const Allocation& allocation, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnFailedLocked(Slot& slot, const absl::Status& status, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnCheckDone(size_t index, v1::PreflightCheck check)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Flush(Outbox& out);
  // /metrics (docs/observability.md), served with /healthcheck by the
  // optional HTTP listener.
  void AddMetrics() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status StartHttp(const std::string& host);
  void HandleHttp(const std::shared_ptr<http::Exchange>& exchange);

  static v1::Assignment Assigned(const Slot& slot, const std::string& server_id,
                                 const std::string& tunnel_url,
                                 absl::string_view detail) {
    v1::Assignment a;
    a.set_state(v1::Assignment::ASSIGNED);
    a.set_client_id(slot.client_id);
    a.set_server_id(server_id);
    a.set_tunnel_url(tunnel_url);
    a.set_detail(OneLine(detail));
    return a;
  }
  static v1::Assignment Waiting(const Slot& slot, absl::string_view detail) {
    v1::Assignment a;
    a.set_state(v1::Assignment::WAITING);
    a.set_client_id(slot.client_id);
    a.set_detail(OneLine(detail));
    return a;
  }

  const HaAgentConfig config_;
  const std::string hashed_token_;
  // Before everything that counts into it; children made up front, so
  // counting under mu_ takes no other lock.
  common::metrics::Registry metrics_;
  common::rpc::RpcMetrics rpc_metrics_;
  common::metrics::Counter* assignments_[3] = {};  // assigned, waiting, off
  common::metrics::Counter* allocations_[3] = {};  // allocated, refused, failed
  // First member with threads, last destroyed: the client, the dispatcher
  // and the slots' timers below live on its io_context.
  common::Executor executor_;
  std::unique_ptr<http::Client> http_client_;
  std::unique_ptr<DispatcherClient> dispatcher_;
  Service service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<http::Server> http_server_;  // with config_.http_port >= 0
  int http_port_ = 0;                          // set in Start()

  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::uint64_t next_slot_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<std::string, std::unique_ptr<Slot>> slots_
      ABSL_GUARDED_BY(mu_);
  std::vector<v1::PreflightCheck> checks_ ABSL_GUARDED_BY(mu_);
  absl::BitGen gen_ ABSL_GUARDED_BY(mu_);
};

void WatchCall::OnDone() {
  agent_.Detach(worker_id_, this);
  std::shared_ptr<WatchCall> self = std::move(self_);  // may delete this
}

void AgentImpl::AddMetrics() {
  namespace metrics = common::metrics;
  metrics::Family<metrics::Counter>& assignments = metrics_.AddCounter(
      "broker_ha_agent_assignments_total",
      "Assignments given to workers (each change counts), by state.",
      {"state"});
  assignments_[0] = &assignments.With({"assigned"});
  assignments_[1] = &assignments.With({"waiting"});
  assignments_[2] = &assignments.With({"ha_disabled"});
  metrics::Family<metrics::Counter>& allocations = metrics_.AddCounter(
      "broker_ha_agent_dispatcher_calls_total",
      "Allocation calls to the dispatcher, by result (refused: the token "
      "has its maximum of clients).",
      {"result"});
  allocations_[0] = &allocations.With({"allocated"});
  allocations_[1] = &allocations.With({"refused"});
  allocations_[2] = &allocations.With({"failed"});
  metrics_.AddCallback("broker_ha_agent_workers",
                       "Workers the agent keeps a slot for.", {}, [this] {
                         absl::MutexLock lock(&mu_);
                         return std::vector<metrics::Sample>{
                             {{}, static_cast<double>(slots_.size())}};
                       });
}

absl::Status AgentImpl::StartHttp(const std::string& host) {
  if (config_.http_port < 0) return absl::OkStatus();
  http::ServerOptions options;
  options.address = config_.address;
  options.port = config_.http_port;
  options.limits.max_body_bytes = std::uint64_t{64} * 1024;  // GETs only
  auto server = http::Server::Create(
      executor_.io(), options,
      [this](const std::shared_ptr<http::Exchange>& exchange) {
        HandleHttp(exchange);
      });
  if (!server.ok()) return server.status();
  http_server_ = *std::move(server);
  absl::StatusOr<int> port = http_server_->Start();
  if (!port.ok()) {
    return absl::UnavailableError(
        absl::StrCat("BROKER_HA_AGENT_HTTP_PORT: cannot listen on ", host, ":",
                     config_.http_port, ": ", port.status().message()));
  }
  http_port_ = *port;
  return absl::OkStatus();
}

void AgentImpl::HandleHttp(const std::shared_ptr<http::Exchange>& exchange) {
  const http::RequestHead& request = exchange->request();
  absl::string_view target = request.target;
  absl::string_view path = target.substr(0, target.find('?'));
  if (request.method == "GET" && path == "/metrics") {
    exchange->RespondSimple(
        200, {{"content-type", common::metrics::Registry::kContentType}},
        metrics_.Render());
    return;
  }
  const bool health = request.method == "GET" && path == "/healthcheck";
  exchange->RespondSimple(
      health ? 200 : 404, {{"content-type", "application/json; charset=utf-8"}},
      health ? nlohmann::json{{"ok", true},
                              {"version", config_.version},
                              {"haEnabled", config_.ha_enabled}}
                   .dump()
             : R"({"ok":false})");
}

absl::StatusOr<int> AgentImpl::Start() {
  {
    absl::MutexLock lock(&mu_);
    if (started_) return absl::FailedPreconditionError("already started");
    started_ = true;
  }
  BROKER_LOG(kHa, kInfo, {{"enabled", config_.ha_enabled}},
             "checking for HA mode (enabled={})", config_.ha_enabled);
  if (config_.ha_enabled) {
    BROKER_LOG(kHa, kInfo,
               {{"url", config_.dispatcher.url},
                {"from", DispatcherBaseSourceName(config_.dispatcher.source)},
                {"hashed_token", hashed_token_}},
               "using the broker dispatcher at {}", config_.dispatcher.url);
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  const std::string host = absl::StrContains(config_.address, ':') &&
                                   !absl::StartsWith(config_.address, "[")
                               ? absl::StrCat("[", config_.address, "]")
                               : config_.address;
  int bound = 0;
  builder.AddListeningPort(absl::StrCat(host, ":", config_.port),
                           grpc::InsecureServerCredentials(), &bound);
  builder.RegisterService(&service_);
  if (config_.http_port >= 0) {
    // Only with a /metrics to read them from.
    std::vector<
        std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(rpc_metrics_.ServerInterceptors());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  // Limits set explicitly (Debian's 1.51 has no backported HTTP/2 fixes);
  // the callers are a handful of local workers.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 100);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 * 1024);
  builder.SetMaxReceiveMessageSize(64 * 1024);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || bound == 0) {
    server_.reset();
    return absl::UnavailableError(absl::StrCat(
        "BROKER_HA_AGENT_PORT: cannot listen on ", host, ":", config_.port));
  }
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus(std::string(kServiceName), true);
  }
  BROKER_RETURN_IF_ERROR(StartHttp(host));

  // Preflight: the file and URL checks now, the HTTP ones in the
  // background (each updates every worker's assignment when it ends).
  const HealthTarget server_health =
      ServerHealthTarget(config_.server_http_url, config_.server_url);
  std::vector<v1::PreflightCheck> checks;
  checks.push_back(config_.ha_enabled ? PendingCheck(kCheckDispatcher)
                                      : MakeCheck(kCheckDispatcher,
                                                  v1::PreflightCheck::SKIPPED,
                                                  "HA mode is off"));
  checks.push_back(server_health.url.empty()
                       ? MakeCheck(kCheckServer, v1::PreflightCheck::SKIPPED,
                                   server_health.skip_reason)
                       : PendingCheck(kCheckServer));
  checks.push_back(CheckAcceptRules(config_.accept_path));
  checks.push_back(CheckClientUrl(config_.client_url));
  for (const v1::PreflightCheck& check : checks) {
    if (check.result() == v1::PreflightCheck::FAILED) {
      BROKER_LOG(
          kHa, kWarn, {{"check", check.name()}, {"detail", check.detail()}},
          "preflight check failed: {}: {}", check.name(), check.detail());
    }
  }
  {
    absl::MutexLock lock(&mu_);
    checks_ = checks;
  }
  if (config_.ha_enabled) {
    RunHttpCheck(
        *http_client_, kCheckDispatcher,
        absl::StrCat(config_.dispatcher.url, "/healthcheck"),
        config_.preflight_timeout, /*any_status_passes=*/true,
        [this](v1::PreflightCheck check) { OnCheckDone(0, std::move(check)); });
  }
  if (!server_health.url.empty()) {
    RunHttpCheck(
        *http_client_, kCheckServer, server_health.url,
        config_.preflight_timeout, /*any_status_passes=*/false,
        [this](v1::PreflightCheck check) { OnCheckDone(1, std::move(check)); });
  }
  return bound;
}

void AgentImpl::Shutdown(absl::Time deadline) {
  std::vector<std::shared_ptr<WatchCall>> watchers;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [id, slot] : slots_) {
      slot->retry.Cancel();
      slot->forget.Cancel();
      slot->down.Cancel();
      if (auto watcher = slot->watcher.lock()) {
        watchers.push_back(std::move(watcher));
      }
    }
  }
  if (server_ != nullptr) {
    grpc::HealthCheckServiceInterface* health =
        server_->GetHealthCheckService();
    if (health != nullptr) health->Shutdown();
  }
  for (auto& watcher : watchers) {
    watcher->Close(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                "broker-ha-agent is shutting down"));
  }
  watchers.clear();
  if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(deadline));
  if (http_server_ != nullptr) http_server_->Shutdown(deadline);
  // No callback of the executor runs after this; then the dispatcher (a
  // test's may have threads of its own) goes before what it calls back.
  executor_.Stop();
  dispatcher_.reset();
}

void AgentImpl::Attach(const v1::WatchRequest& request,
                       const std::shared_ptr<WatchCall>& call) {
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      out.closes.emplace_back(call,
                              grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                           "broker-ha-agent is shutting down"));
    } else {
      auto it = slots_.find(request.worker_id());
      if (it == slots_.end() && slots_.size() >= kMaxWorkers) {
        out.closes.emplace_back(
            call, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                               "too many workers on this agent"));
      } else {
        bool fresh = false;
        if (it == slots_.end()) {
          auto slot = std::make_unique<Slot>(
              Backoff(config_.backoff_initial, config_.backoff_max));
          slot->id = next_slot_id_++;
          slot->worker_id = request.worker_id();
          const bool adopt = IsAcceptableClientId(request.client_id());
          slot->client_id = adopt ? request.client_id() : common::NewUuid();
          it = slots_.emplace(request.worker_id(), std::move(slot)).first;
          fresh = true;
          BROKER_LOG(kHa, kInfo,
                     {{"worker_id", request.worker_id()},
                      {"client_id", it->second->client_id},
                      {"adopted", adopt}},
                     "new tunnel worker");
        }
        Slot& slot = *it->second;
        if (auto old = slot.watcher.lock(); old != nullptr && old != call) {
          out.closes.emplace_back(
              std::move(old),
              grpc::Status(grpc::StatusCode::ABORTED,
                           "replaced by a newer Watch of this worker"));
        }
        slot.watcher = call;
        slot.watcher_raw = call.get();
        slot.forget.Cancel();
        if (fresh && !config_.ha_enabled) {
          v1::Assignment a;
          a.set_state(v1::Assignment::HA_DISABLED);
          a.set_client_id(slot.client_id);
          a.set_tunnel_url(config_.server_url);
          a.set_detail(
              "HA mode is off (BROKER_HA_MODE_ENABLED): connect to "
              "BROKER_SERVER_URL without a server id");
          EmitLocked(slot, std::move(a), out);
        } else if (fresh) {
          // A worker coming back to a restarted agent keeps its server
          // while the dispatcher confirms it.
          if (IsAcceptableClientId(request.client_id()) &&
              !request.server_id().empty()) {
            const std::string url =
                request.tunnel_url().empty()
                    ? ResolveTunnelUrl(request.server_id(), "",
                                       config_.server_url_template,
                                       config_.server_url)
                    : request.tunnel_url();
            if (!url.empty()) {
              slot.unconfirmed = true;
              EmitLocked(slot,
                         Assigned(slot, request.server_id(), url,
                                  "kept from the worker's earlier agent; "
                                  "asking the dispatcher to confirm"),
                         out);
            }
          }
          MaybeAllocateLocked(slot, out);
        }
        if (!fresh &&
            slot.assignment.state() != v1::Assignment::STATE_UNSPECIFIED) {
          out.pushes.emplace_back(call, slot.assignment);
        }
      }
    }
  }
  Flush(out);
}

void AgentImpl::Detach(const std::string& worker_id, const WatchCall* call) {
  absl::MutexLock lock(&mu_);
  auto it = slots_.find(worker_id);
  if (it == slots_.end() || it->second->watcher_raw != call) return;
  Slot& slot = *it->second;
  slot.watcher.reset();
  slot.watcher_raw = nullptr;
  if (stopping_) return;
  BROKER_LOG(kHa, kInfo,
             {{"worker_id", worker_id}, {"client_id", slot.client_id}},
             "tunnel worker stopped watching; forgetting it in {}",
             absl::FormatDuration(config_.forget_after));
  ArmLocked(slot, TimerKind::kForget, config_.forget_after);
}

grpc::Status AgentImpl::HandleReport(const v1::ReportRequest& report) {
  if (report.worker_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "worker_id is required");
  }
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "broker-ha-agent is shutting down");
    }
    auto it = slots_.find(report.worker_id());
    if (it == slots_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "unknown worker_id: open Watch first");
    }
    Slot& slot = *it->second;
    if (!report.client_id().empty() && report.client_id() != slot.client_id) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "client_id is not this worker's");
    }
    const bool about_current =
        slot.assignment.state() == v1::Assignment::ASSIGNED &&
        report.server_id() == slot.assignment.server_id();
    BROKER_LOG(kHa, kDebug,
               {{"worker_id", slot.worker_id},
                {"client_id", slot.client_id},
                {"server_id", report.server_id()},
                {"state", v1::ReportRequest::TunnelState_Name(report.state())},
                {"current", about_current},
                {"detail", OneLine(report.detail())}},
               "tunnel worker report");
    if (config_.ha_enabled && about_current) {
      switch (report.state()) {
        case v1::ReportRequest::CONNECTED:
          slot.down.Cancel();
          break;
        case v1::ReportRequest::CONNECTING:
        case v1::ReportRequest::DISCONNECTED:
          if (!slot.down.armed && !slot.moving) {
            ArmLocked(slot, TimerKind::kDown, config_.unreachable_after);
          }
          break;
        case v1::ReportRequest::DRAINING:
          StartMoveLocked(slot, "the broker server asked the worker to move",
                          out);
          break;
        case v1::ReportRequest::UNREACHABLE:
          StartMoveLocked(slot, "the worker cannot reach its broker server",
                          out);
          break;
        default:
          break;
      }
    }
  }
  Flush(out);
  return grpc::Status::OK;
}

void AgentImpl::EmitLocked(Slot& slot, v1::Assignment next, Outbox& out) {
  for (const v1::PreflightCheck& check : checks_) *next.add_checks() = check;
  v1::Assignment current = slot.assignment;
  current.set_generation(0);
  if (slot.assignment.state() != v1::Assignment::STATE_UNSPECIFIED &&
      current.SerializeAsString() == next.SerializeAsString()) {
    return;
  }
  if (next.server_id() != slot.assignment.server_id()) slot.down.Cancel();
  next.set_generation(slot.assignment.generation() + 1);
  switch (next.state()) {
    case v1::Assignment::ASSIGNED:
      assignments_[0]->Increment();
      break;
    case v1::Assignment::WAITING:
      assignments_[1]->Increment();
      break;
    case v1::Assignment::HA_DISABLED:
      assignments_[2]->Increment();
      break;
    default:
      break;
  }
  slot.assignment = std::move(next);
  if (auto watcher = slot.watcher.lock()) {
    out.pushes.emplace_back(std::move(watcher), slot.assignment);
  }
}

void AgentImpl::MaybeAllocateLocked(Slot& slot, Outbox& out) const {
  if (stopping_ || !config_.ha_enabled) return;
  if (slot.call_in_flight || slot.retry.armed || !slot.NeedsAllocation()) {
    return;
  }
  slot.call_in_flight = true;
  out.calls.push_back({slot.worker_id, slot.id, slot.client_id});
}

void AgentImpl::ArmLocked(Slot& slot, TimerKind kind, absl::Duration delay) {
  if (stopping_) return;
  SlotTimer& timer = kind == TimerKind::kRetry    ? slot.retry
                     : kind == TimerKind::kForget ? slot.forget
                                                  : slot.down;
  timer.Cancel();
  if (timer.timer == nullptr) {
    timer.timer = std::make_unique<boost::asio::steady_timer>(executor_.io());
  }
  timer.armed = true;
  const std::uint64_t seq = ++timer.seq;
  timer.timer->expires_after(absl::ToChronoNanoseconds(delay));
  timer.timer->async_wait([this, worker_id = slot.worker_id, slot_id = slot.id,
                           kind, seq](const boost::system::error_code& ec) {
    if (!ec) OnTimer(worker_id, slot_id, kind, seq);
  });
}

void AgentImpl::OnTimer(const std::string& worker_id, std::uint64_t slot_id,
                        TimerKind kind, std::uint64_t seq) {
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    Slot* slot = FindLocked(worker_id, slot_id);
    if (slot == nullptr) return;
    SlotTimer& timer = kind == TimerKind::kRetry    ? slot->retry
                       : kind == TimerKind::kForget ? slot->forget
                                                    : slot->down;
    if (!timer.armed || timer.seq != seq) return;
    timer.armed = false;
    switch (kind) {
      case TimerKind::kRetry:
        MaybeAllocateLocked(*slot, out);
        break;
      case TimerKind::kForget:
        if (slot->watcher_raw == nullptr) {
          BROKER_LOG(kHa, kInfo,
                     {{"worker_id", worker_id}, {"client_id", slot->client_id}},
                     "forgot a tunnel worker that stopped watching");
          slot->retry.Cancel();
          slot->down.Cancel();
          slots_.erase(worker_id);
        }
        break;
      case TimerKind::kDown:
        StartMoveLocked(
            *slot,
            absl::StrCat("the worker has had no tunnel to its broker server "
                         "for ",
                         absl::FormatDuration(config_.unreachable_after)),
            out);
        break;
    }
  }
  Flush(out);
}

void AgentImpl::StartMoveLocked(Slot& slot, absl::string_view reason,
                                Outbox& out) {
  if (slot.assignment.state() != v1::Assignment::ASSIGNED || slot.moving) {
    return;
  }
  slot.moving = true;
  slot.leaving_server = slot.assignment.server_id();
  slot.move_started = absl::Now();
  slot.backoff.Reset();
  slot.down.Cancel();
  slot.retry.Cancel();
  BROKER_LOG(kHa, kInfo,
             {{"worker_id", slot.worker_id},
              {"client_id", slot.client_id},
              {"serverId", slot.leaving_server},
              {"reason", reason}},
             "moving a tunnel worker off server {}: {}", slot.leaving_server,
             std::string(reason));
  MaybeAllocateLocked(slot, out);
}

void AgentImpl::OnAllocated(const std::string& worker_id, std::uint64_t slot_id,
                            absl::StatusOr<Allocation> result) {
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    Slot* slot = FindLocked(worker_id, slot_id);
    if (slot == nullptr) return;
    slot->call_in_flight = false;
    allocations_[result.ok()                                  ? 0
                 : absl::IsResourceExhausted(result.status()) ? 1
                                                              : 2]
        ->Increment();
    if (result.ok()) {
      OnAssignedLocked(*slot, *result, out);
    } else {
      OnFailedLocked(*slot, result.status(), out);
    }
  }
  Flush(out);
}

void AgentImpl::OnAssignedLocked(Slot& slot, const Allocation& allocation,
                                 Outbox& out) {
  if (slot.moving && allocation.server_id == slot.leaving_server) {
    if (absl::Now() - slot.move_started < config_.move_timeout) {
      // The server it leaves has not deregistered yet: ask again.
      BROKER_LOG(
          kHa, kDebug,
          {{"worker_id", slot.worker_id}, {"serverId", allocation.server_id}},
          "the dispatcher still answers the server being left");
      ArmLocked(slot, TimerKind::kRetry, slot.backoff.Next(gen_));
      return;
    }
    BROKER_LOG(kHa, kInfo,
               {{"worker_id", slot.worker_id},
                {"client_id", slot.client_id},
                {"serverId", allocation.server_id}},
               "the dispatcher keeps the worker on server {}",
               allocation.server_id);
  }
  const std::string url =
      ResolveTunnelUrl(allocation.server_id, allocation.tunnel_url,
                       config_.server_url_template, config_.server_url);
  if (url.empty()) {
    OnFailedLocked(
        slot,
        absl::FailedPreconditionError(absl::StrCat(
            "no tunnel URL for server ", allocation.server_id,
            ": the dispatcher gave none, and neither "
            "BROKER_SERVER_URL_TEMPLATE nor BROKER_SERVER_URL is set")),
        out);
    return;
  }
  slot.moving = false;
  slot.unconfirmed = false;
  slot.backoff.Reset();
  slot.last_outcome = Outcome::kAssigned;
  if (allocation.server_id != slot.logged_server_id) {
    slot.logged_server_id = allocation.server_id;
    BROKER_LOG(kHa, kInfo,
               {{"serverId", allocation.server_id},
                {"worker_id", slot.worker_id},
                {"client_id", slot.client_id},
                {"tunnel_url", url},
                {"hashed_token", hashed_token_}},
               "received server id (serverId={})", allocation.server_id);
  }
  EmitLocked(
      slot,
      Assigned(slot, allocation.server_id, url, "allocated by the dispatcher"),
      out);
}

void AgentImpl::OnFailedLocked(Slot& slot, const absl::Status& status,
                               Outbox& out) {
  const bool refused = absl::IsResourceExhausted(status);
  const Outcome outcome = refused ? Outcome::kRefused : Outcome::kUnavailable;
  const std::string message = OneLine(status.message());
  if (slot.last_outcome != outcome) {
    if (refused) {
      BROKER_LOG(kHa, kInfo,
                 {{"worker_id", slot.worker_id},
                  {"client_id", slot.client_id},
                  {"hashed_token", hashed_token_},
                  {"error", message}},
                 "the dispatcher refused this broker client (the token has "
                 "its maximum of clients); retrying until a slot frees");
    } else {
      BROKER_LOG(kHa, kWarn,
                 {{"worker_id", slot.worker_id},
                  {"client_id", slot.client_id},
                  {"url", config_.dispatcher.url},
                  {"error", message}},
                 "could not get a server id from the broker dispatcher; "
                 "retrying");
    }
  }
  slot.last_outcome = outcome;
  if (slot.assignment.state() != v1::Assignment::ASSIGNED) {
    const absl::string_view prefix =
        absl::IsUnavailable(status) ? "dispatcher unreachable: " : "";
    EmitLocked(slot, Waiting(slot, absl::StrCat(prefix, message, "; retrying")),
               out);
  }
  if (!slot.NeedsAllocation()) return;
  // A refused newcomer polls fast (the dispatcher answered, and a slot may
  // free at any time); everything else backs off.
  const bool poll = refused && !slot.moving && !slot.unconfirmed;
  if (poll) slot.backoff.Reset();
  ArmLocked(slot, TimerKind::kRetry,
            poll ? UniformDelay(gen_, config_.refused_poll_min,
                                config_.refused_poll_max)
                 : slot.backoff.Next(gen_));
}

void AgentImpl::OnCheckDone(size_t index, v1::PreflightCheck check) {
  if (check.result() == v1::PreflightCheck::FAILED) {
    BROKER_LOG(kHa, kWarn,
               {{"check", check.name()}, {"detail", check.detail()}},
               "preflight check failed: {}: {}", check.name(), check.detail());
  } else {
    BROKER_LOG(kHa, kInfo,
               {{"check", check.name()}, {"detail", check.detail()}},
               "preflight check passed: {}", check.name());
  }
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || index >= checks_.size()) return;
    checks_[index] = std::move(check);
    for (auto& [id, slot] : slots_) {
      if (slot->assignment.state() == v1::Assignment::STATE_UNSPECIFIED) {
        continue;
      }
      v1::Assignment next = slot->assignment;
      next.clear_checks();
      next.set_generation(0);
      EmitLocked(*slot, std::move(next), out);
    }
  }
  Flush(out);
}

void AgentImpl::Flush(Outbox& out) {
  for (auto& [call, status] : out.closes) call->Close(status);
  for (auto& [call, assignment] : out.pushes) call->Push(assignment);
  for (Outbox::Call& call : out.calls) {
    dispatcher_->Allocate(
        call.client_id,
        [this, worker_id = std::move(call.worker_id),
         slot_id = call.slot_id](absl::StatusOr<Allocation> result) {
          OnAllocated(worker_id, slot_id, std::move(result));
        });
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<HaAgent>> HaAgent::Create(
    HaAgentConfig config, std::unique_ptr<DispatcherClient> dispatcher) {
  BROKER_RETURN_IF_ERROR(Validate(config));
  auto agent =
      std::make_unique<AgentImpl>(std::move(config), std::move(dispatcher));
  BROKER_RETURN_IF_ERROR(agent->Init());
  return agent;
}

}  // namespace broker::ha
