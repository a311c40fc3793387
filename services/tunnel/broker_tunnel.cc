#include "services/tunnel/broker_tunnel.h"

#include "common/env_config.h"
#include "common/executor.h"
#include "common/file.h"
#include "common/grpc/rpc_metrics.h"
#include "common/http/client.h"
#include "common/http/server.h"
#include "common/http/trace_context.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/pem.h"
#include "common/status.h"
#include "common/token.h"
#include "common/uuid.h"
#include "filters/blocked.h"
#include "filters/rule_set_holder.h"
#include "services/tunnel/ha_assignment.h"
#include "services/tunnel/webhook_egress.h"

#include "broker/tunnel/v1/tunnel.grpc.pb.h"

#include "grpcpp/grpcpp.h"

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/steady_timer.hpp"
#include "nlohmann/json.hpp"

#include <atomic>
#include <deque>
#include <optional>

namespace broker::tunnel {
namespace {

namespace http = common::http;
namespace v1 = ::broker::tunnel::v1;
using nlohmann::json;

constexpr absl::Duration kBackoffFirst = absl::Milliseconds(100);
constexpr absl::Duration kBackoffMax = absl::Seconds(10);
// The most lanes a busy worker keeps open beyond BROKER_TUNNEL_LANES (each
// costs the server a stream); the server accepts up to Welcome.max_lanes.
constexpr int kMaxPeakLanes = 256;
// Answers of known length up to this size travel whole in their head
// message (one tunnel message per small request instead of three).
constexpr std::uint64_t kInlineBodyBytes = std::uint64_t{64} * 1024;
// Origin body chunks read ahead of the tunnel's writes, per request.
constexpr int kChunksAhead = 2;
// The most body bytes one Serve message carries when chunks join while the
// stream is busy (under the 1 MiB message limit of both ends).
constexpr std::size_t kCoalescedBodyBytes = std::size_t{512} * 1024;

// Headers Snyk's client removes before calling the origin
// (reference section 2.7), plus hop-by-hop headers.
bool IsStrippedHeader(absl::string_view name) {
  for (absl::string_view strip : {"x-forwarded-for",
                                  "x-forwarded-proto",
                                  "x-forwarded-host",
                                  "x-forwarded-port",
                                  "content-length",
                                  "host",
                                  "snyk-acting-group-public-id",
                                  "snyk-acting-org-public-id",
                                  "snyk-acting-user-public-id",
                                  "snyk-flow-name",
                                  "snyk-product-line",
                                  "snyk-project-type",
                                  "snyk-integration-type",
                                  "x-snyk-broker-context-id",
                                  "content-encoding",
                                  "connection",
                                  "keep-alive",
                                  "transfer-encoding",
                                  "te",
                                  "upgrade",
                                  "trailer",
                                  "proxy-connection"}) {
    if (absl::EqualsIgnoreCase(name, strip)) return true;
  }
  return false;
}

bool IsResponseHopHeader(absl::string_view name) {
  for (absl::string_view hop :
       {"connection", "keep-alive", "transfer-encoding", "te", "trailer",
        "upgrade", "proxy-connection", "content-length"}) {
    if (absl::EqualsIgnoreCase(name, hop)) return true;
  }
  return false;
}

std::string FailureJson(absl::string_view code, absl::string_view message) {
  return json{{"code", std::string(code)}, {"message", std::string(message)}}
      .dump(-1, ' ', false, json::error_handler_t::replace);
}

class ControlCall;
class ServeLane;

class Worker final : public BrokerTunnel {
 public:
  Worker(TunnelConfig config, std::shared_ptr<const filters::RuleSet> rules)
      : config_(std::move(config)),
        executor_(config_.io_threads),
        rules_(std::move(rules)),
        resolver_(config_.variables),
        client_id_(common::NewUuid()),
        server_url_(config_.server_url),
        reconnect_timer_(executor_.io()) {
    AddMetrics();
  }

  // Creates the origin client (needs the executor).
  [[nodiscard]] absl::Status Init() {
    http::ClientOptions options;
    options.ca_file = config_.ca_file;
    BROKER_ASSIGN_OR_RETURN(client_,
                            http::Client::Create(executor_.io(), options));
    SystemCheckConfig systemcheck = config_.systemcheck;
    systemcheck.version = config_.version;
    systemcheck_ =
        std::make_unique<SystemCheck>(std::move(systemcheck), *client_);
    if (!config_.tunnel_client_cert_file.empty()) {
      absl::StatusOr<common::PemKeyCertPair> pair = common::ReadPemKeyCertPair(
          config_.tunnel_client_cert_file, config_.tunnel_client_key_file);
      if (!pair.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("BROKER_TUNNEL_CLIENT_CERT/BROKER_TUNNEL_CLIENT_KEY: ",
                         pair.status().message()));
      }
      tunnel_client_cert_ = *std::move(pair);
      BROKER_LOG(kTunnel, kInfo,
                 {{"client_cert", config_.tunnel_client_cert_file}},
                 "mutual TLS: the tunnel presents a client certificate");
    }
    if (!config_.egress_cert_file.empty()) {
      absl::StatusOr<common::PemKeyCertPair> pair = common::ReadPemKeyCertPair(
          config_.egress_cert_file, config_.egress_key_file);
      if (!pair.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("BROKER_TUNNEL_EGRESS_CERT/BROKER_TUNNEL_EGRESS_KEY: ",
                         pair.status().message()));
      }
      egress_tls_ = *std::move(pair);
      BROKER_LOG(kTunnel, kInfo, {{"egress_cert", config_.egress_cert_file}},
                 "webhook egress: TLS");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Ports> Start() override;
  void Shutdown(absl::Time deadline) override;
  bool Connected() const override {
    absl::MutexLock lock(&mu_);
    // Moving to a new server, the old tunnel still serves.
    return connected_ || leaving_control_ != nullptr;
  }

  // Called by lanes and the control call (any thread).
  void OnLaneTaken() ABSL_LOCKS_EXCLUDED(mu_);
  // A relayed request the private rules blocked.
  void CountFilterBlock() { filter_blocks_->Increment(); }
  // A lane finished an exchange cleanly: true when the pool wants it idle
  // again (it then counts as idle), false when it should end.
  bool KeepIdleLane(int generation) ABSL_LOCKS_EXCLUDED(mu_);
  // Undoes KeepIdleLane() for a lane whose call ended before it parked.
  void ForgetIdleLane() ABSL_LOCKS_EXCLUDED(mu_);
  void OnLaneDone(bool was_idle) ABSL_LOCKS_EXCLUDED(mu_);
  void OnControlUp(const ControlCall* call) ABSL_LOCKS_EXCLUDED(mu_);
  void OnControlDown(const ControlCall* call, const grpc::Status& status)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The server asked this worker to move (it is stopping).
  void OnDrain(const ControlCall* call, const std::string& reason)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The tunnel generation lanes are opened in; a lane of an older one (the
  // server this worker moved away from) ends after its request.
  int generation() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return generation_;
  }

  // Held as the first member of every call object (Control, lanes) so that
  // it counts from construction to the end of destruction. A reactor's
  // OnDone tells the worker it is over and then deletes itself, and the
  // ClientContext it destroys drops gRPC's last reference to the call,
  // and with it one to gRPC's callback completion queue. Shutdown() waits
  // for every call object to be gone: a process that exits (tearing gRPC
  // down) while a gRPC thread is still releasing a call frees that queue
  // twice.
  class CallObject {
   public:
    explicit CallObject(Worker& worker) : worker_(worker) {
      absl::MutexLock lock(&worker_.call_objects_mu_);
      ++worker_.call_objects_;
    }
    ~CallObject() {
      absl::MutexLock lock(&worker_.call_objects_mu_);
      --worker_.call_objects_;
    }
    CallObject(const CallObject&) = delete;
    CallObject& operator=(const CallObject&) = delete;

   private:
    Worker& worker_;
  };

  filters::RuleSetHolder& rules() { return rules_; }
  const filters::OriginResolver& resolver() const { return resolver_; }
  http::Client& client() { return *client_; }
  const TunnelConfig& config() const { return config_; }

 private:
  // /metrics (docs/observability.md); the gRPC interceptors only when
  // metrics are enabled.
  void AddMetrics() ABSL_LOCKS_EXCLUDED(mu_);
  void Connect() ABSL_LOCKS_EXCLUDED(mu_);
  void OpenLanes() ABSL_LOCKS_EXCLUDED(mu_);
  int ReserveLanesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lanes open (idle or serving): as many as the most requests this
  // worker has had in flight at once, plus BROKER_TUNNEL_LANES idle ones.
  // Lanes are reused, so a burst as large as the load seen so far finds
  // them parked instead of waiting for new calls to reach the server, and
  // a worker that stays idle stays cheap.
  int LaneTargetLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::min(peak_requests_, kMaxPeakLanes) + config_.lanes;
  }
  void OpenReserved(int count) ABSL_LOCKS_EXCLUDED(mu_);
  void ScheduleReconnect() ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<std::shared_ptr<ServeLane>> LiveLanes() ABSL_LOCKS_EXCLUDED(mu_);
  void HandleLocal(std::shared_ptr<http::Exchange> exchange);
  // Where a webhook goes now: the admitted tunnel, if any.
  std::optional<DeliveryRoute> WebhookRoute() const ABSL_LOCKS_EXCLUDED(mu_);
  // Tells broker-webhook (through the egress health status) whether this
  // worker can pass events on.
  void SetWebhookServing(bool serving) {
    if (egress_) egress_->SetServing(serving);
  }
  std::shared_ptr<grpc::Channel> MakeChannel(const std::string& url) const;
  // HA mode: a new assignment from broker-ha-agent (watcher thread).
  void Reassign(const ha::v1::Assignment& assignment) ABSL_LOCKS_EXCLUDED(mu_);
  void Report(ha::v1::ReportRequest::TunnelState state,
              const std::string& detail) ABSL_LOCKS_EXCLUDED(mu_);
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return active_requests_ == 0;
  }
  bool ControlEnded() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return control_ == nullptr && leaving_control_ == nullptr;
  }
  bool AllLanesEnded() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return lanes_alive_ == 0;
  }
  bool CallObjectsGone() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(call_objects_mu_) {
    return call_objects_ == 0;
  }

  const TunnelConfig config_;
  // Before everything that counts into it (channels, servers, calls).
  common::metrics::Registry metrics_;
  common::metrics::Counter* requests_relayed_ = nullptr;
  common::metrics::Counter* filter_blocks_ = nullptr;
  // Null when metrics are disabled: then no interceptor is registered.
  std::unique_ptr<common::rpc::RpcMetrics> client_rpcs_;
  std::unique_ptr<common::rpc::RpcMetrics> server_rpcs_;
  // Before the executor and the channels, whose handlers and threads may
  // release the last call objects. Its own lock: a call object may be
  // destroyed where mu_ is held.
  mutable absl::Mutex call_objects_mu_;
  int call_objects_ ABSL_GUARDED_BY(call_objects_mu_) = 0;
  common::Executor executor_;
  filters::RuleSetHolder rules_;
  filters::OriginResolver resolver_;
  std::unique_ptr<http::Client> client_;
  std::unique_ptr<SystemCheck> systemcheck_;  // calls through client_
  std::unique_ptr<http::Server> http_server_;
  std::unique_ptr<AssignmentWatcher> watcher_;  // HA mode only
  std::unique_ptr<WebhookEgress> egress_;  // with BROKER_TUNNEL_EGRESS_PORT
  // Mutual TLS: presented to the server (read once, in Init()).
  std::optional<common::PemKeyCertPair> tunnel_client_cert_;
  // TLS on the webhook egress endpoint (read once, in Init()).
  std::optional<common::PemKeyCertPair> egress_tls_;

  mutable absl::Mutex mu_;
  // The tunnel: where it goes and as whom. Fixed without HA; in HA mode
  // each new assignment replaces them (and bumps generation_).
  std::string client_id_ ABSL_GUARDED_BY(mu_);
  std::string server_url_ ABSL_GUARDED_BY(mu_);
  std::string server_id_ ABSL_GUARDED_BY(mu_);
  std::optional<ha::v1::Assignment> assignment_ ABSL_GUARDED_BY(mu_);
  int generation_ ABSL_GUARDED_BY(mu_) = 0;
  boost::asio::steady_timer reconnect_timer_;
  // Set in Start() (HA: at the first assignment), before any call. Channels
  // of earlier assignments stay alive while their last calls end.
  std::shared_ptr<grpc::Channel> channel_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<v1::Tunnel::Stub> stub_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<std::shared_ptr<grpc::Channel>,
                       std::shared_ptr<v1::Tunnel::Stub>>>
      retired_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<ControlCall> control_ ABSL_GUARDED_BY(mu_);
  // The previous assignment's Control, kept until the new one is welcomed
  // ("connect, then let the old tunnel go").
  std::shared_ptr<ControlCall> leaving_control_ ABSL_GUARDED_BY(mu_);
  std::vector<std::weak_ptr<ServeLane>> lanes_ ABSL_GUARDED_BY(mu_);
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int idle_lanes_ ABSL_GUARDED_BY(mu_) = 0;
  int lanes_alive_ ABSL_GUARDED_BY(mu_) = 0;
  int active_requests_ ABSL_GUARDED_BY(mu_) = 0;
  int peak_requests_ ABSL_GUARDED_BY(mu_) = 0;  // most at once, ever
  absl::Duration backoff_ ABSL_GUARDED_BY(mu_) = kBackoffFirst;
  absl::BitGen bitgen_ ABSL_GUARDED_BY(mu_);
};

// --- Control ---------------------------------------------------------------

class ControlCall final
    : public grpc::ClientBidiReactor<v1::WorkerControl, v1::ServerControl> {
 public:
  ControlCall(Worker& worker, v1::Tunnel::Stub& stub, const std::string& token,
              const std::string& client_id, v1::WorkerControl hello)
      : counted_(worker),
        worker_(worker),
        stub_(stub),
        hello_(std::move(hello)) {
    context_.AddMetadata("authorization", "Bearer " + token);
    context_.AddMetadata("x-broker-client-id", client_id);
  }

  // Starts the call; `self` keeps this alive until OnDone.
  void Begin(std::shared_ptr<ControlCall> self) {
    self_ = std::move(self);
    stub_.async()->Control(&context_, this);
    StartWrite(&hello_);
    StartRead(&in_);
    StartCall();
  }

  void OnWriteDone(bool /*ok*/) override { writing_ = false; }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows with the status
    if (in_.has_welcome()) worker_.OnControlUp(this);
    if (in_.has_drain()) worker_.OnDrain(this, in_.drain().reason());
    if (in_.has_ping()) {
      // Pongs are best effort: skip one while the previous write is busy.
      bool expected = false;
      if (writing_.compare_exchange_strong(expected, true)) {
        pong_.mutable_pong()->set_sent_unix_micros(
            in_.ping().sent_unix_micros());
        StartWrite(&pong_);
      }
    }
    StartRead(&in_);
  }

  void OnDone(const grpc::Status& status) override {
    worker_.OnControlDown(this, status);
    self_.reset();  // may delete this: last statement
  }

  void Cancel() { context_.TryCancel(); }

 private:
  const Worker::CallObject counted_;  // first: destroyed last
  Worker& worker_;
  v1::Tunnel::Stub& stub_;
  std::shared_ptr<ControlCall> self_;
  grpc::ClientContext context_;
  v1::WorkerControl hello_;
  v1::WorkerControl pong_;
  v1::ServerControl in_;
  std::atomic<bool> writing_{true};  // the Hello
};

// --- Serve lanes -------------------------------------------------------------

// One Serve call: parked at the server until a request arrives, then serves
// it (accept rules, origin call). After a clean exchange (the whole request
// read, the whole answer sent) the lane parks again for the next request
// when the worker wants to keep it idle, else it ends. Owned by itself
// (`self_`) until OnDone; callbacks from the origin client hold it through
// shared_ptr and start operations under the reactor's hold
// (AddHold/RemoveHold), so OnDone cannot race with them.
//
// Threading: reactions run on gRPC threads, origin callbacks on io threads;
// the state below is guarded by mu_. The origin body is pumped by one chain
// of callbacks at a time.
class ServeLane final
    : public grpc::ClientBidiReactor<v1::ServeUp, v1::ServeDown>,
      public std::enable_shared_from_this<ServeLane> {
 public:
  static std::shared_ptr<ServeLane> Open(Worker& worker, v1::Tunnel::Stub& stub,
                                         const std::string& token,
                                         const std::string& client_id,
                                         int generation) {
    auto lane = std::shared_ptr<ServeLane>(new ServeLane(worker, generation));
    lane->self_ = lane;
    lane->context_.AddMetadata("authorization", "Bearer " + token);
    lane->context_.AddMetadata("x-broker-client-id", client_id);
    stub.async()->Serve(&lane->context_, lane.get());
    v1::ServeUp ready;
    ready.mutable_ready();
    lane->Write(std::move(ready), nullptr);
    lane->StartRead(&lane->in_);
    lane->AddHold();
    lane->StartCall();
    return lane;
  }

  // Ends a parked lane (shutdown).
  void Cancel() { context_.TryCancel(); }
  // Ends the lane if it waits for a request (a tunnel being left); a lane
  // serving one finishes it first and then ends by itself.
  void CancelIfParked() {
    absl::MutexLock lock(&mu_);
    if (state_ == State::kParked) context_.TryCancel();
  }
  int generation() const { return generation_; }

  void OnReadDone(bool ok) override {
    State state;
    {
      absl::MutexLock lock(&mu_);
      state = state_;
    }
    switch (state) {
      case State::kParked:
        if (!ok) {
          // The server ended the call, or sent what does not parse (the
          // call may still be open then): either way it is over.
          context_.TryCancel();
          Release();
          return;
        }
        if (!in_.has_head()) {
          // A request starts with its head: a server that sends anything
          // else is broken, and the lane ends (not left open, uncounted,
          // until that server ends it) so that a fresh one replaces it.
          BROKER_LOG(kTunnel, kWarn, {},
                     "the broker server sent a parked lane something other "
                     "than a request head; ending the lane");
          context_.TryCancel();
          Release();
          return;
        }
        {
          absl::MutexLock lock(&mu_);
          state_ = State::kActive;
          cancelled_ = false;
          origin_cancellation_ = std::make_shared<http::CallCancellation>();
        }
        worker_.OnLaneTaken();
        {
          // Out of in_ first: HandleRequest starts the next read into it.
          const v1::RequestHead head = std::move(*in_.mutable_head());
          HandleRequest(head);
        }
        return;
      case State::kActive: {
        // A body read for the origin call.
        http::BodyReader::ReadHandler handler;
        {
          absl::MutexLock lock(&mu_);
          handler = std::move(body_handler_);
        }
        if (!handler) return;
        if (!ok) {
          std::move(handler)(absl::CancelledError("the server ended the call"),
                             {});
        } else if (in_.has_body()) {
          std::move(handler)(absl::OkStatus(),
                             {std::move(*in_.mutable_body()), false});
        } else if (in_.has_end()) {
          {
            absl::MutexLock lock(&mu_);
            state_ = State::kWatching;
          }
          std::move(handler)(absl::OkStatus(), {"", true});
          StartRead(&in_);  // the server ending the call early
        } else {
          std::move(handler)(absl::InternalError("unexpected message"), {});
        }
        return;
      }
      case State::kWatching:
        // The request is read whole and the answer not finished: the server
        // ended the call (or broke the protocol), so the platform went away.
        Abandon();
        return;
      case State::kEnding: {
        // The answer ended first (an origin that answered before reading
        // the whole body): a body read still waiting learns it is over.
        http::BodyReader::ReadHandler handler;
        {
          absl::MutexLock lock(&mu_);
          handler = std::move(body_handler_);
        }
        if (handler) {
          std::move(handler)(absl::CancelledError("the answer has ended"), {});
        }
        return;
      }
      case State::kDone:
        return;
    }
  }

  void OnWriteDone(bool ok) override {
    absl::AnyInvocable<void(bool) &&> then;
    std::optional<std::pair<v1::ServeUp, absl::AnyInvocable<void(bool) &&>>>
        next;
    {
      absl::MutexLock lock(&mu_);
      then = std::move(current_then_);
      if (!queue_.empty()) {
        next = std::move(queue_.front());
        queue_.pop_front();
      } else {
        writing_ = false;
      }
    }
    if (next) {
      {
        absl::MutexLock lock(&mu_);
        out_ = std::move(next->first);
        current_then_ = std::move(next->second);
      }
      StartWrite(&out_);
    }
    if (then) std::move(then)(ok);
  }

  void OnDone(const grpc::Status& /*status*/) override {
    bool was_idle = false;
    {
      absl::MutexLock lock(&mu_);
      was_idle = state_ == State::kParked;
      state_ = State::kDone;
    }
    worker_.OnLaneDone(was_idle);
    self_.reset();  // may delete this: last statement
  }

  // The request body, pulled by the origin client from the lane.
  class BodyFromLane final : public http::BodyReader {
   public:
    explicit BodyFromLane(std::shared_ptr<ServeLane> lane)
        : lane_(std::move(lane)) {}
    void Read(ReadHandler handler) override {
      {
        absl::MutexLock lock(&lane_->mu_);
        if (!lane_->released_ && lane_->state_ == State::kActive) {
          lane_->body_handler_ = std::move(handler);
          lane_->StartRead(&lane_->in_);
          return;
        }
      }
      std::move(handler)(absl::CancelledError("the request was abandoned"), {});
    }

   private:
    std::shared_ptr<ServeLane> lane_;
  };

 private:
  // kParked: a read is pending for the next request's head. kActive: the
  // origin client pulls the request body. kWatching: the request is read
  // whole; a read stays pending to notice the server ending the call early.
  // kEnding: the answer ended and the lane will not be kept.
  enum class State { kParked, kActive, kWatching, kEnding, kDone };

  ServeLane(Worker& worker, int generation)
      : counted_(worker), worker_(worker), generation_(generation) {}

  // Queues a write; `then` runs when it completed (ok=false: call broken).
  // Operations start under mu_, and only before Release() removed the hold
  // (checked under the same lock): after that gRPC may end the call and
  // free this lane at any time. gRPC never runs a reaction inline from
  // StartWrite, so holding mu_ there cannot deadlock.
  void Write(v1::ServeUp message, absl::AnyInvocable<void(bool) &&> then) {
    {
      absl::MutexLock lock(&mu_);
      if (!released_) {
        if (writing_) {
          queue_.emplace_back(std::move(message), std::move(then));
          return;
        }
        writing_ = true;
        out_ = std::move(message);
        current_then_ = std::move(then);
        StartWrite(&out_);
        return;
      }
    }
    // The call is over anyway.
    if (then) std::move(then)(false);
  }

  // Writes the answer's last message: a head carrying its end, or an end.
  // When the
  // request was read whole and the worker wants another idle lane, the lane
  // parks again at once (the read pending since the request's end then
  // delivers the next head: the server sends one only after this end).
  // Otherwise the call ends once the message is out.
  void WriteLast(v1::ServeUp message) {
    v1::BodyEnd& end = message.has_head()
                           ? *message.mutable_head()->mutable_end()
                           : *message.mutable_end();
    bool keep = false;
    {
      absl::MutexLock lock(&mu_);
      keep = state_ == State::kWatching && !cancelled_ && !end.aborted();
    }
    // Reserves an idle slot in the worker's pool; given back below if the
    // call ended meanwhile.
    if (keep) keep = worker_.KeepIdleLane(generation_);
    bool give_back = false;
    {
      absl::MutexLock lock(&mu_);
      if (keep && (state_ != State::kWatching || cancelled_)) {
        keep = false;
        give_back = true;
      }
      if (keep) {
        state_ = State::kParked;
      } else if (state_ != State::kDone) {
        state_ = State::kEnding;
      }
    }
    if (give_back) worker_.ForgetIdleLane();
    end.set_keep_lane(keep);
    auto self = shared_from_this();
    Write(std::move(message), [self, keep](bool ok) {
      if (!ok) {
        self->Abandon();
      } else if (!keep) {
        self->Finish();
      }
    });
  }

  // The answer is complete (or failed) and the lane is not kept:
  // half-close and let OnDone come.
  void Finish() {
    absl::MutexLock lock(&mu_);
    if (released_) return;
    released_ = true;
    StartWritesDone();
    RemoveHold();
  }

  // No more operations from outside reactions: let OnDone come.
  void Release() {
    absl::MutexLock lock(&mu_);
    if (released_) return;
    released_ = true;
    RemoveHold();
  }

  // The platform (or the tunnel) went away: stop pumping, drop the origin
  // call (its connection closes, whether it answered yet or not), and end.
  void Abandon() {
    std::shared_ptr<http::CallCancellation> cancellation;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      cancellation = origin_cancellation_;
    }
    if (cancellation) cancellation->Cancel();
    context_.TryCancel();
    Release();
  }

  void SendFailure(int status, absl::string_view code, std::string body) {
    v1::ServeUp failure;
    failure.mutable_failure()->set_status(status);
    failure.mutable_failure()->set_code(std::string(code));
    failure.mutable_failure()->set_body(std::move(body));
    {
      absl::MutexLock lock(&mu_);
      if (state_ != State::kDone) state_ = State::kEnding;
    }
    auto self = shared_from_this();
    Write(std::move(failure), [self](bool) { self->Finish(); });
  }

  void HandleRequest(const v1::RequestHead& head) {
    std::vector<filters::HeaderField> fields;
    fields.reserve(head.headers_size());
    for (const v1::Header& h : head.headers())
      fields.push_back({h.name(), h.value()});
    std::shared_ptr<const filters::RuleSet> rules = worker_.rules().Current();
    filters::Decision decision = rules->Evaluate(
        filters::RuleList::kPrivate,
        filters::RequestView{head.method(), head.url(), fields, ""});
    request_log_ = {head.request_id(), "", head.method(),
                    head.url().substr(0, head.url().find('?'))};
    if (!decision.allowed()) {
      worker_.CountFilterBlock();
      BROKER_LOG(
          kTunnel, kWarn,
          {{"request_id", request_log_.request_id},
           {"method", request_log_.method},
           {"path", request_log_.path}},
          "{}",
          filters::BlockedReason(filters::BlockedFlow::kTunnel, decision));
      SendFailure(
          filters::kBlockedStatus, "FILTER_BLOCKED",
          filters::BlockedBody(
              filters::BlockedReason(filters::BlockedFlow::kTunnel, decision),
              head.url()));
      return;
    }
    absl::StatusOr<filters::ForwardTarget> target =
        worker_.resolver().Resolve(*decision.rule, head.url());
    if (!target.ok()) {
      SendFailure(502, "DOWNSTREAM_ERROR",
                  FailureJson("DOWNSTREAM_ERROR", target.status().message()));
      return;
    }

    http::ClientRequest request;
    request.method = head.method();
    request.url = target->url;
    bool has_request_id = false;
    std::string user_agent;
    for (const v1::Header& h : head.headers()) {
      if (IsStrippedHeader(h.name())) continue;
      if (absl::EqualsIgnoreCase(h.name(), "authorization") &&
          target->authorization) {
        continue;
      }
      if (absl::EqualsIgnoreCase(h.name(), "user-agent")) {
        user_agent = h.value();
        continue;
      }
      if (absl::EqualsIgnoreCase(h.name(), "x-request-id"))
        has_request_id = true;
      request.headers.push_back({h.name(), h.value()});
    }
    if (target->authorization) {
      request.headers.push_back({"authorization", *target->authorization});
    }
    request.headers.push_back(
        {"user-agent",
         absl::StrCat("Snyk Broker Client ", worker_.config().version)});
    request.headers.push_back({"x-broker-origin-ua", user_agent.empty()
                                                         ? "not-provided"
                                                         : user_agent});
    if (!has_request_id && !head.request_id().empty()) {
      request.headers.push_back({"x-request-id", head.request_id()});
    }
    // The origin call is this worker's span of the platform's trace.
    request_log_.trace_id = http::ContinueTrace(request.headers);
    if (head.body_length() != 0) {
      request.body = std::make_unique<BodyFromLane>(shared_from_this());
      if (head.body_length() > 0) {
        request.body_length = static_cast<std::uint64_t>(head.body_length());
      }
    } else {
      // No body and no end marker follow: the request is read whole.
      {
        absl::MutexLock lock(&mu_);
        state_ = State::kWatching;
      }
      StartRead(&in_);  // the server ending the call early
    }
    absl::Time deadline = absl::Now() + worker_.config().request_timeout;
    if (head.deadline_unix_micros() > 0) {
      deadline =
          std::min(deadline, absl::FromUnixMicros(head.deadline_unix_micros()));
    }
    request.deadline = deadline;
    {
      absl::MutexLock lock(&mu_);
      request.cancellation = origin_cancellation_;
    }

    auto self = shared_from_this();
    worker_.client().Send(
        std::move(request),
        [self](absl::StatusOr<http::ClientResponse> response) {
          self->OnOriginResponse(std::move(response));
        });
  }

  void OnOriginResponse(absl::StatusOr<http::ClientResponse> response) {
    if (!response.ok()) {
      const absl::string_view code =
          http::DownstreamErrorCode(response.status());
      BROKER_LOG(kTunnel, kWarn,
                 {{"request_id", request_log_.request_id},
                  {"trace_id", request_log_.trace_id},
                  {"method", request_log_.method},
                  {"path", request_log_.path},
                  {"code", code},
                  {"error", response.status().message()}},
                 "the origin request failed");
      SendFailure(code == "DOWNSTREAM_TIMEOUT" ? 504 : 502, code,
                  FailureJson(code, response.status().message()));
      return;
    }
    BROKER_LOG(kTunnel, kDebug,
               {{"request_id", request_log_.request_id},
                {"trace_id", request_log_.trace_id},
                {"method", request_log_.method},
                {"path", request_log_.path},
                {"status", response->head.status}},
               "the origin answered");
    v1::ServeUp head;
    v1::ResponseHead* h = head.mutable_head();
    h->set_status(response->head.status);
    for (const http::Header& header : response->head.headers) {
      if (IsResponseHopHeader(header.name)) continue;
      v1::Header* out = h->add_headers();
      out->set_name(header.name);
      out->set_value(header.value);
    }
    const std::optional<std::uint64_t> length = response->head.content_length;
    h->set_body_length(length ? static_cast<int64_t>(*length) : -1);
    origin_body_ = std::move(response->body);
    if (length && *length <= kInlineBodyBytes) {
      // A small answer of known length: wait for its first bytes (usually
      // all of it) to send head, body and end as one message.
      auto self = shared_from_this();
      origin_body_->Read(
          [self, head = std::move(head)](const absl::Status& status,
                                         http::BodyChunk chunk) mutable {
            if (!status.ok()) {
              self->Write(std::move(head), nullptr);
              v1::ServeUp end;
              end.mutable_end()->set_aborted(true);
              self->WriteLast(std::move(end));
              return;
            }
            head.mutable_head()->set_body(std::move(chunk.data));
            if (chunk.last) {
              head.mutable_head()->mutable_end();
              self->WriteLast(std::move(head));
              return;
            }
            self->WriteThenPump(std::move(head));
          });
      return;
    }
    WriteThenPump(std::move(head));
  }

  // Writes `message` (head or body), then pumps the next chunk.
  void WriteThenPump(v1::ServeUp message) {
    auto self = shared_from_this();
    Write(std::move(message), [self](bool ok) {
      if (!ok) {
        self->Abandon();
        return;
      }
      self->PumpBody();
    });
  }

  // A body chunk to the lane, reading the next one from the origin while
  // it is written, so that the origin socket and the tunnel stream work at
  // once instead of taking turns. At most kChunksAhead messages wait for
  // gRPC; while they wait, further chunks join the last one, up to
  // kCoalescedBodyBytes. A fast origin behind a busy stream so sends a few
  // large messages instead of many 64 KiB ones, each of which costs a write
  // and a thread hand-off, and memory stays bounded per request.
  void WriteAheadThenPump(v1::ServeUp message) {
    bool joined = false;
    bool again = false;
    {
      absl::MutexLock lock(&mu_);
      if (writing_ && !released_ && !queue_.empty() &&
          queue_.back().first.has_body() &&
          queue_.back().first.body().size() + message.body().size() <=
              kCoalescedBodyBytes) {
        queue_.back().first.mutable_body()->append(message.body());
        joined = true;
        again = queue_.back().first.body().size() < kCoalescedBodyBytes;
        pump_paused_ = !again;
      } else {
        ++pump_writes_;
      }
    }
    if (joined) {
      if (again) PumpBody();
      return;
    }
    auto self = shared_from_this();
    Write(std::move(message), [self](bool ok) {
      if (!ok) {
        self->Abandon();
        return;
      }
      bool resume = false;
      {
        absl::MutexLock lock(&self->mu_);
        --self->pump_writes_;
        resume = self->pump_paused_;
        self->pump_paused_ = false;
      }
      if (resume) self->PumpBody();
    });
    {
      absl::MutexLock lock(&mu_);
      // Room for another message, or for more bytes in the waiting one.
      again = pump_writes_ < kChunksAhead ||
              (!queue_.empty() && queue_.back().first.has_body() &&
               queue_.back().first.body().size() < kCoalescedBodyBytes);
      pump_paused_ = !again;
    }
    if (again) PumpBody();
  }

  // Origin body -> lane: one origin read at a time, writes ahead of it.
  void PumpBody() {
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return;
    }
    if (origin_body_ == nullptr) return;
    auto self = shared_from_this();
    origin_body_->Read(
        [self](const absl::Status& status, http::BodyChunk chunk) {
          v1::ServeUp message;
          if (!status.ok()) {
            message.mutable_end()->set_aborted(true);
            self->WriteLast(std::move(message));
            return;
          }
          if (!chunk.data.empty()) {
            const bool last = chunk.last;
            message.set_body(std::move(chunk.data));
            if (!last) {
              self->WriteAheadThenPump(std::move(message));
              return;
            }
            self->Write(std::move(message), nullptr);
            v1::ServeUp end;
            end.mutable_end();
            self->WriteLast(std::move(end));
            return;
          }
          if (!chunk.last) {
            self->PumpBody();
            return;
          }
          message.mutable_end();
          self->WriteLast(std::move(message));
        });
  }

  const Worker::CallObject counted_;  // first: destroyed last
  Worker& worker_;
  const int generation_;  // of the tunnel this lane belongs to
  std::shared_ptr<ServeLane> self_;
  grpc::ClientContext context_;
  v1::ServeDown in_;
  std::unique_ptr<http::BodyReader> origin_body_;  // pump only
  // The request's for its log lines (the path without its query, which may
  // carry secrets). Set when the request arrives, before the origin call.
  struct RequestLog {
    std::string request_id;
    std::string trace_id;
    std::string method;
    std::string path;
  };
  RequestLog request_log_;

  absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kParked;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  v1::ServeUp out_;  // the write in flight: set under mu_, read by gRPC
  absl::AnyInvocable<void(bool) &&> current_then_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<v1::ServeUp, absl::AnyInvocable<void(bool) &&>>> queue_
      ABSL_GUARDED_BY(mu_);
  http::BodyReader::ReadHandler body_handler_ ABSL_GUARDED_BY(mu_);
  // The current request's: a new one for each request on the lane.
  std::shared_ptr<http::CallCancellation> origin_cancellation_
      ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  // Origin body chunks queued or being written to the lane, and whether the
  // pump waits for one of them to finish.
  int pump_writes_ ABSL_GUARDED_BY(mu_) = 0;
  bool pump_paused_ ABSL_GUARDED_BY(mu_) = false;
};

// --- Worker ------------------------------------------------------------------

std::shared_ptr<grpc::Channel> Worker::MakeChannel(
    const std::string& server_url) const {
  absl::StatusOr<common::Url> url = common::ParseHttpUrl(server_url);
  const std::string target = absl::StrCat(url->host, ":", url->port);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::InsecureChannelCredentials();
  if (url->scheme == "https") {
    grpc::SslCredentialsOptions options;
    if (!config_.ca_file.empty()) {
      // Extra trust on top of the system store, as CA_CERT means. Validate()
      // checked that the file is readable.
      options.pem_root_certs =
          common::ReadFileToString("/etc/ssl/certs/ca-certificates.crt")
              .value_or("") +
          "\n" + common::ReadFileToString(config_.ca_file).value_or("");
    }
    if (tunnel_client_cert_) {
      options.pem_cert_chain = tunnel_client_cert_->cert_chain;
      options.pem_private_key = tunnel_client_cert_->private_key;
    }
    credentials = grpc::SslCredentials(options);
  }
  grpc::ChannelArguments args;
  // A frozen or unreachable server is noticed within about three seconds,
  // and the worker reconnects (to its next assignment, in HA mode). The
  // timeout leaves a busy server room to answer.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 10000);
  // A connection of this worker's own: workers sharing a process (the fault
  // tests' fleet) would otherwise share one through gRPC's global
  // subchannel pool, and a tunnel is one worker's connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(1 << 20);
  args.SetMaxSendMessageSize(1 << 20);
  // A fixed receive window per stream (no bandwidth-delay probing): an
  // upload waiting for a slow origin holds at most this much here.
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1 << 20);
  if (client_rpcs_ == nullptr) {
    return grpc::CreateCustomChannel(target, credentials, args);
  }
  std::vector<
      std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(client_rpcs_->ClientInterceptors());
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      target, credentials, args, std::move(interceptors));
}

void Worker::AddMetrics() {
  namespace metrics = common::metrics;
  requests_relayed_ =
      &metrics_
           .AddCounter("broker_tunnel_requests_total",
                       "Requests the broker server relayed through this "
                       "worker.")
           .With({});
  metrics_.AddCallback(
      "broker_tunnel_connected",
      "Whether the tunnel to the broker server is up and admitted.", {},
      [this] {
        return std::vector<metrics::Sample>{{{}, Connected() ? 1.0 : 0.0}};
      });
  metrics_.AddCallback(
      "broker_tunnel_webhooks_total",
      "Webhook events this worker passed to the broker server.", {},
      [this] {
        return std::vector<metrics::Sample>{
            {{}, egress_ ? static_cast<double>(egress_->delivered()) : 0.0}};
      },
      /*counter=*/true);
  metrics_.AddCallback(
      "broker_tunnel_lanes",
      "Lanes parked at the server (idle) and carrying a request (busy).",
      {"state"}, [this] {
        absl::MutexLock lock(&mu_);
        return std::vector<metrics::Sample>{
            {{"idle"}, static_cast<double>(idle_lanes_)},
            {{"busy"}, static_cast<double>(active_requests_)}};
      });
  // The filter-block family every binary shares (docs/observability.md).
  filter_blocks_ =
      &metrics_
           .AddCounter("broker_filter_blocks_total",
                       "Requests blocked by the accept rules.", {"list"})
           .With({"private"});
  if (config_.metrics_enabled) {
    client_rpcs_ = std::make_unique<common::rpc::RpcMetrics>(
        metrics_, common::rpc::RpcMetrics::Side::kClient);
    server_rpcs_ = std::make_unique<common::rpc::RpcMetrics>(
        metrics_, common::rpc::RpcMetrics::Side::kServer);
  }
}

std::optional<DeliveryRoute> Worker::WebhookRoute() const {
  absl::MutexLock lock(&mu_);
  if (!connected_ || stopping_) return std::nullopt;
  return DeliveryRoute{stub_, client_id_};
}

absl::StatusOr<BrokerTunnel::Ports> Worker::Start() {
  if (config_.ha_agent_address.empty()) {
    absl::MutexLock lock(&mu_);
    channel_ = MakeChannel(server_url_);
    stub_ = v1::Tunnel::NewStub(channel_);
  }
  http::ServerOptions options;
  options.address = config_.address;
  options.port = config_.http_port;
  BROKER_ASSIGN_OR_RETURN(
      http_server_,
      http::Server::Create(executor_.io(), options,
                           [this](std::shared_ptr<http::Exchange> exchange) {
                             HandleLocal(std::move(exchange));
                           }));
  Ports ports;
  BROKER_ASSIGN_OR_RETURN(ports.http, http_server_->Start());
  if (config_.egress_port >= 0) {
    WebhookEgressOptions egress;
    egress.address = config_.address;
    egress.port = config_.egress_port;
    egress.token = config_.token;
    egress.route = [this] { return WebhookRoute(); };
    egress.tls = egress_tls_;
    egress.rpc_metrics = server_rpcs_.get();
    BROKER_ASSIGN_OR_RETURN(egress_, WebhookEgress::Start(std::move(egress)));
    ports.egress = egress_->port();
  }
  if (config_.ha_agent_address.empty()) {
    Connect();
    return ports;
  }
  // HA mode: broker-ha-agent says where to connect, and as which client.
  AssignmentWatcherOptions watch;
  watch.agent_address = config_.ha_agent_address;
  watch.rpc_metrics = client_rpcs_.get();
  BROKER_ASSIGN_OR_RETURN(
      watcher_,
      AssignmentWatcher::Create(
          watch, [this](const ha::v1::Assignment& a) { Reassign(a); }));
  BROKER_LOG(kTunnel, kInfo, {{"agent", config_.ha_agent_address}},
             "waiting for a server assignment from the HA agent");
  return ports;
}

void Worker::Reassign(const ha::v1::Assignment& assignment) {
  if (assignment.state() == ha::v1::Assignment::WAITING) {
    BROKER_LOG(kTunnel, kInfo, {{"detail", assignment.detail()}},
               "no broker server assigned yet; waiting");
    return;
  }
  absl::StatusOr<TunnelEndpoint> endpoint = EndpointFor(assignment);
  if (!endpoint.ok()) {
    BROKER_LOG(kTunnel, kWarn, {{"error", endpoint.status().ToString()}},
               "unusable assignment from the HA agent");
    return;
  }
  std::shared_ptr<ControlCall> leaving;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    if (assignment_ && SameTunnel(*assignment_, assignment)) return;
    assignment_ = assignment;
    // Connect to the new server first; the old tunnel serves until then.
    if (channel_) {
      retired_.emplace_back(std::move(channel_), std::move(stub_));
      if (retired_.size() > 4) retired_.pop_front();
    }
    server_url_ = endpoint->server_url;
    server_id_ = endpoint->server_id;
    if (!endpoint->client_id.empty()) client_id_ = endpoint->client_id;
    channel_ = MakeChannel(server_url_);
    stub_ = v1::Tunnel::NewStub(channel_);
    ++generation_;
    if (control_) {
      leaving = std::move(leaving_control_);  // a move that never finished
      leaving_control_ = std::move(control_);
    }
    connected_ = false;
    backoff_ = kBackoffFirst;
    reconnect_timer_.cancel();
  }
  SetWebhookServing(false);  // until the new tunnel is admitted
  if (leaving) leaving->Cancel();
  Connect();
}

void Worker::Report(ha::v1::ReportRequest::TunnelState state,
                    const std::string& detail) {
  if (watcher_ == nullptr) return;
  std::string server_id;
  {
    absl::MutexLock lock(&mu_);
    server_id = server_id_;
  }
  watcher_->Report(state, server_id, detail);
}

void Worker::Connect() {
  std::string client_id;
  std::string server_url;
  std::string server_id;
  std::shared_ptr<v1::Tunnel::Stub> stub;
  {
    absl::MutexLock lock(&mu_);
    client_id = client_id_;
    server_url = server_url_;
    server_id = server_id_;
    stub = stub_;
  }
  v1::WorkerControl hello;
  v1::Hello* h = hello.mutable_hello();
  h->set_client_id(client_id);
  h->set_server_id(server_id);
  h->set_role("primary");
  h->set_version(config_.version);
  h->add_capabilities("lanes");
  h->set_token_hash(common::HashToken(config_.token));
  h->set_client_url(config_.client_url);
  h->set_rules_digest(rules_.Current()->digest());
  h->set_lane_pool_size(static_cast<uint32_t>(config_.lanes));
  BROKER_LOG(
      kTunnel, kInfo,
      {{"url", server_url}, {"serverId", server_id}, {"client_id", client_id}},
      "broker client is connecting to broker server (url={}, "
      "serverId={})",
      server_url, server_id);
  Report(ha::v1::ReportRequest::CONNECTING, "");
  auto control = std::make_shared<ControlCall>(*this, *stub, config_.token,
                                               client_id, std::move(hello));
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || stub != stub_) return;  // stopped, or reassigned
    control_ = control;
  }
  control->Begin(control);
}

void Worker::OnControlUp(const ControlCall* call) {
  std::shared_ptr<ControlCall> leaving;
  std::vector<std::shared_ptr<ServeLane>> old_lanes;
  std::string server_url;
  {
    absl::MutexLock lock(&mu_);
    if (call != control_.get()) return;  // a call being left behind
    connected_ = true;
    backoff_ = kBackoffFirst;
    server_url = server_url_;
    // The new tunnel is up: now let the old one go. Its parked lanes end
    // now, the ones serving a request after it.
    leaving = leaving_control_;
    if (leaving) {
      for (const auto& weak : lanes_) {
        auto lane = weak.lock();
        if (lane && lane->generation() != generation_) {
          old_lanes.push_back(std::move(lane));
        }
      }
    }
  }
  BROKER_LOG(
      kTunnel, kInfo,
      {{"url", server_url}, {"hashed_token", common::HashToken(config_.token)}},
      "tunnel connected to the broker server");
  Report(ha::v1::ReportRequest::CONNECTED, "");
  SetWebhookServing(true);
  OpenLanes();
  for (const auto& lane : old_lanes) lane->CancelIfParked();
  if (leaving) leaving->Cancel();
}

void Worker::OnDrain(const ControlCall* call, const std::string& reason) {
  bool current = false;
  {
    absl::MutexLock lock(&mu_);
    current = call == control_.get();
  }
  if (!current) return;
  BROKER_LOG(kTunnel, kInfo, {{"reason", reason}, {"ha", watcher_ != nullptr}},
             "the broker server asked this client to move");
  // With HA the agent finds another server and the move follows its new
  // assignment; without, the tunnel stays until the server closes it and
  // then reconnects as usual.
  Report(ha::v1::ReportRequest::DRAINING, reason);
}

int Worker::ReserveLanesLocked() {
  if (!connected_ || stopping_) return 0;
  // At least BROKER_TUNNEL_LANES idle, and the whole target open.
  const int to_open =
      std::max(config_.lanes - idle_lanes_,
               LaneTargetLocked() - (idle_lanes_ + active_requests_));
  if (to_open <= 0) return 0;
  idle_lanes_ += to_open;
  lanes_alive_ += to_open;
  return to_open;
}

void Worker::OpenLanes() {
  int to_open = 0;
  {
    absl::MutexLock lock(&mu_);
    to_open = ReserveLanesLocked();
  }
  OpenReserved(to_open);
}

// The lanes were counted in lanes_alive_ by ReserveLanesLocked(), so a
// concurrent Shutdown() waits for them.
void Worker::OpenReserved(int count) {
  if (count <= 0) return;
  std::shared_ptr<v1::Tunnel::Stub> stub;
  std::string client_id;
  int generation = 0;
  {
    absl::MutexLock lock(&mu_);
    stub = stub_;
    client_id = client_id_;
    generation = generation_;
  }
  std::vector<std::shared_ptr<ServeLane>> opened;
  opened.reserve(count);
  for (int i = 0; i < count; ++i) {
    opened.push_back(
        ServeLane::Open(*this, *stub, config_.token, client_id, generation));
  }
  absl::MutexLock lock(&mu_);
  lanes_.erase(std::remove_if(lanes_.begin(), lanes_.end(),
                              [](const std::weak_ptr<ServeLane>& lane) {
                                return lane.expired();
                              }),
               lanes_.end());
  for (auto& lane : opened) lanes_.push_back(lane);
}

std::vector<std::shared_ptr<ServeLane>> Worker::LiveLanes() {
  std::vector<std::shared_ptr<ServeLane>> out;
  absl::MutexLock lock(&mu_);
  for (const auto& weak : lanes_) {
    if (auto lane = weak.lock()) out.push_back(std::move(lane));
  }
  return out;
}

void Worker::OnLaneTaken() {
  requests_relayed_->Increment();
  {
    absl::MutexLock lock(&mu_);
    --idle_lanes_;
    ++active_requests_;
    peak_requests_ = std::max(peak_requests_, active_requests_);
  }
  OpenLanes();
}

bool Worker::KeepIdleLane(int generation) {
  absl::MutexLock lock(&mu_);
  if (!connected_ || stopping_ || generation != generation_ ||
      idle_lanes_ + active_requests_ > LaneTargetLocked()) {
    return false;
  }
  ++idle_lanes_;
  --active_requests_;
  return true;
}

void Worker::ForgetIdleLane() {
  absl::MutexLock lock(&mu_);
  --idle_lanes_;
  ++active_requests_;
}

void Worker::OnLaneDone(bool was_idle) {
  int replacements = 0;
  {
    absl::MutexLock lock(&mu_);
    if (was_idle) {
      --idle_lanes_;
    } else {
      --active_requests_;
    }
    // A parked lane that died is replaced only while the control call is
    // up; when the server is away the reconnect path reopens them. The
    // replacements are counted before this lane stops counting, and the
    // decrement is this call's last touch of the worker when there are
    // none: Shutdown() may destroy it right after.
    if (was_idle) replacements = ReserveLanesLocked();
    --lanes_alive_;
  }
  if (replacements > 0) OpenReserved(replacements);
}

void Worker::OnControlDown(const ControlCall* call,
                           const grpc::Status& status) {
  std::string server_url;
  {
    absl::MutexLock lock(&mu_);
    if (call == leaving_control_.get()) {
      // The tunnel this worker moved away from: nothing to reconnect.
      leaving_control_.reset();
      return;
    }
    if (call != control_.get()) return;  // replaced before it ever started
    connected_ = false;
    server_url = server_url_;
    if (stopping_) {
      control_.reset();
      return;
    }
  }
  SetWebhookServing(false);
  const bool refused =
      status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
      status.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
      status.error_code() == grpc::StatusCode::UNAUTHENTICATED;
  Report(ha::v1::ReportRequest::DISCONNECTED, status.error_message());
  BROKER_LOG(kTunnel, kWarn,
             {{"url", server_url},
              {"grpc_status", static_cast<int>(status.error_code())},
              {"error", status.error_message()}},
             refused ? "the broker server refused this client; retrying"
                     : "tunnel connection to the broker server was closed; "
                       "reconnecting");
  ScheduleReconnect();
  // Shutdown() waits for control_ to clear, so this stays the last touch of
  // the worker. The reconnect may already have installed a newer call.
  absl::MutexLock lock(&mu_);
  if (control_.get() == call) control_.reset();
}

void Worker::ScheduleReconnect() {
  // Armed under the lock that Shutdown() takes to cancel it, so a stopping
  // worker never arms it again.
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  // Full jitter over an exponential backoff, capped.
  const absl::Duration delay = absl::Milliseconds(
      absl::Uniform<int64_t>(bitgen_, absl::ToInt64Milliseconds(backoff_) / 2,
                             absl::ToInt64Milliseconds(backoff_) + 1));
  backoff_ = std::min(backoff_ * 2, kBackoffMax);
  reconnect_timer_.expires_after(absl::ToChronoMilliseconds(delay));
  reconnect_timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec) Connect();
  });
}

void Worker::HandleLocal(std::shared_ptr<http::Exchange> exchange) {
  const http::RequestHead& request = exchange->request();
  absl::string_view target = request.target;
  absl::string_view path = target.substr(0, target.find('?'));
  auto respond = [&](int status, const json& body) {
    exchange->RespondSimple(
        status, {{"content-type", "application/json; charset=utf-8"}},
        body.dump(-1, ' ', false, json::error_handler_t::replace));
  };
  if (path == config_.systemcheck_path && request.method == "GET") {
    // HA mode: the agent's preflight checks (dispatcher, server, rules,
    // BROKER_CLIENT_URL) join the answer; a failed one fails it.
    std::vector<ha::v1::PreflightCheck> preflight;
    {
      absl::MutexLock lock(&mu_);
      if (assignment_) {
        preflight.assign(assignment_->checks().begin(),
                         assignment_->checks().end());
      }
    }
    systemcheck_->Run([exchange, preflight = std::move(preflight)](
                          const SystemCheckAnswer& answer) {
      int status = answer.status;
      nlohmann::ordered_json body = answer.body;
      for (const ha::v1::PreflightCheck& check : preflight) {
        body.push_back({{"haPreflightCheck", check.name()},
                        {"ok", check.ok()},
                        {"detail", check.detail()}});
        if (check.result() == ha::v1::PreflightCheck::FAILED) status = 500;
      }
      exchange->RespondSimple(
          status, {{"content-type", "application/json; charset=utf-8"}},
          body.dump(-1, ' ', false, json::error_handler_t::replace));
    });
    return;
  }
  if (path == config_.healthcheck_path && request.method == "GET") {
    const bool up = Connected();
    std::string server_url;
    {
      absl::MutexLock lock(&mu_);
      server_url = server_url_;
    }
    respond(up ? 200 : 500, {{"ok", up},
                             {"websocketConnectionOpen", up},
                             {"brokerServerUrl", server_url},
                             {"version", config_.version},
                             {"transport", "grpc"}});
    return;
  }
  if (path == "/metrics" && request.method == "GET" &&
      config_.metrics_enabled) {
    exchange->RespondSimple(
        200, {{"content-type", common::metrics::Registry::kContentType}},
        metrics_.Render());
    return;
  }
  if (path == "/filters" && request.method == "GET") {
    respond(200, rules_.Current()->source());
    return;
  }
  if (path == "/filters" && request.method == "POST") {
    absl::Status reloaded = rules_.ReloadFromFile(config_.accept_path);
    if (!reloaded.ok()) {
      respond(500, {{"ok", false}, {"error", std::string(reloaded.message())}});
      return;
    }
    respond(200, rules_.Current()->source());
    return;
  }
  respond(404, {{"ok", false}});
}

void Worker::Shutdown(absl::Time deadline) {
  // No assignment arrives after this returns.
  if (watcher_) watcher_->Shutdown();
  std::shared_ptr<ControlCall> control;
  std::shared_ptr<ControlCall> leaving;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    connected_ = false;
    control = control_;
    leaving = leaving_control_;
    reconnect_timer_.cancel();
  }
  if (leaving) leaving->Cancel();
  if (http_server_) http_server_->Shutdown(deadline);
  // Events in flight finish through the tunnel, which stays until then.
  if (egress_) egress_->Shutdown(deadline);
  {
    // In-flight requests finish first.
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(absl::Condition(this, &Worker::Idle), deadline);
  }
  if (control || leaving) {
    if (control) control->Cancel();
    control.reset();
    leaving.reset();
    // Its OnDone calls back into this worker: wait for it.
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(absl::Condition(this, &Worker::ControlEnded),
                          deadline + absl::Seconds(1));
  }
  // Parked lanes: cancel them all and wait for their OnDone.
  std::vector<std::shared_ptr<ServeLane>> lanes = LiveLanes();
  for (const auto& lane : lanes) lane->Cancel();
  lanes.clear();
  {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(absl::Condition(this, &Worker::AllLanesEnded),
                          deadline + absl::Seconds(1));
  }
  {
    // A call that ended may not be destroyed yet: see CallObject.
    absl::MutexLock lock(&call_objects_mu_);
    if (!call_objects_mu_.AwaitWithDeadline(
            absl::Condition(this, &Worker::CallObjectsGone),
            deadline + absl::Seconds(1))) {
      BROKER_LOG(kTunnel, kWarn, {{"calls", call_objects_}},
                 "stopping with tunnel calls not yet released");
    }
  }
  executor_.Stop();
}

}  // namespace

absl::Status Validate(const TunnelConfig& config) {
  if (config.token.empty()) {
    return absl::InvalidArgumentError("BROKER_TOKEN is required");
  }
  absl::StatusOr<common::Url> url = common::ParseHttpUrl(config.server_url);
  if (!url.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("BROKER_SERVER_URL: ", url.status().message()));
  }
  if (config.accept_path.empty()) {
    return absl::InvalidArgumentError(
        "ACCEPT is required: the client's accept rules (private rules filter "
        "relayed requests)");
  }
  if (!config.ca_file.empty()) {
    absl::StatusOr<std::string> ca = common::ReadFileToString(config.ca_file);
    if (!ca.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("CA_CERT: ", ca.status().message()));
    }
  }
  if (config.tunnel_client_cert_file.empty() !=
      config.tunnel_client_key_file.empty()) {
    return absl::InvalidArgumentError(
        "BROKER_TUNNEL_CLIENT_CERT and BROKER_TUNNEL_CLIENT_KEY must be set "
        "together");
  }
  if (!config.tunnel_client_cert_file.empty() && url->scheme != "https") {
    return absl::InvalidArgumentError(
        "BROKER_TUNNEL_CLIENT_CERT needs an https BROKER_SERVER_URL: a client "
        "certificate is only presented over TLS");
  }
  if (config.egress_cert_file.empty() != config.egress_key_file.empty()) {
    return absl::InvalidArgumentError(
        "BROKER_TUNNEL_EGRESS_CERT and BROKER_TUNNEL_EGRESS_KEY must be set "
        "together");
  }
  if (!config.egress_cert_file.empty() && config.egress_port < 0) {
    return absl::InvalidArgumentError(
        "BROKER_TUNNEL_EGRESS_CERT needs BROKER_TUNNEL_EGRESS_PORT: there is "
        "no egress endpoint to serve TLS on");
  }
  if (config.lanes < 1 || config.lanes > 1024) {
    return absl::InvalidArgumentError("BROKER_TUNNEL_LANES must be 1..1024");
  }
  if (!absl::StartsWith(config.healthcheck_path, "/") ||
      !absl::StartsWith(config.systemcheck_path, "/")) {
    return absl::InvalidArgumentError(
        "BROKER_HEALTHCHECK_PATH and BROKER_SYSTEMCHECK_PATH must start with "
        "\"/\"");
  }
  BROKER_RETURN_IF_ERROR(Validate(config.systemcheck));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BrokerTunnel>> BrokerTunnel::Create(
    TunnelConfig config) {
  BROKER_RETURN_IF_ERROR(Validate(config));
  BROKER_ASSIGN_OR_RETURN(auto rules,
                          filters::RuleSet::FromFile(config.accept_path));
  auto worker = std::make_unique<Worker>(std::move(config), std::move(rules));
  BROKER_RETURN_IF_ERROR(worker->Init());
  return worker;
}

}  // namespace broker::tunnel
