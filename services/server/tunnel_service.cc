#include "services/server/tunnel_service.h"

#include "common/logging.h"
#include "common/token.h"
#include "services/server/server_metrics.h"
#include "services/server/webhook_delivery.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

#include <algorithm>
#include <deque>
#include <vector>

namespace broker::server {
namespace {

using tunnel::v1::DeliverDown;
using tunnel::v1::DeliverUp;
using tunnel::v1::ServeDown;
using tunnel::v1::ServerControl;
using tunnel::v1::ServeUp;
using tunnel::v1::WorkerControl;

std::string Metadata(const grpc::CallbackServerContext& context,
                     absl::string_view key) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(grpc::string_ref(key.data(), key.size()));
  if (it == metadata.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

}  // namespace

// One worker's Control call: Hello -> Welcome, then pings both ways until
// either side ends it. While it is open the worker is in the registry.
class ControlReactor final
    : public grpc::ServerBidiReactor<WorkerControl, ServerControl> {
 public:
  ControlReactor(TunnelService& service, TunnelRegistry& registry,
                 CallIdentity identity)
      : service_(service), registry_(registry), identity_(std::move(identity)) {
    StartRead(&in_);
  }

  // Asks an admitted worker to move elsewhere; any thread.
  void Drain(absl::string_view reason) {
    drained_.store(true, std::memory_order_relaxed);
    ServerControl drain;
    drain.mutable_drain()->set_reason(std::string(reason));
    Enqueue(std::move(drain));
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      NoteCause(drained_.load(std::memory_order_relaxed)
                    ? CloseCause::kDrained
                    : CloseCause::kWorkerEnded);
      FinishOnce(grpc::Status::OK);
      return;
    }
    if (in_.has_hello()) {
      if (!HandleHello(in_.hello())) return;
    } else if (in_.has_ping()) {
      ServerControl pong;
      pong.mutable_pong()->set_sent_unix_micros(in_.ping().sent_unix_micros());
      Enqueue(std::move(pong));
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    std::optional<ServerControl> next;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (ok && !queue_.empty()) {
        next = std::move(queue_.front());
        queue_.pop_front();
        writing_ = true;
      } else if (pending_finish_) {
        finish = std::move(pending_finish_);
        pending_finish_.reset();
        finished_ = true;
      }
    }
    if (next) StartWrite(Stash(std::move(*next)));
    if (finish) Finish(*finish);
  }

  void OnCancel() override {
    NoteCause(service_.stopping() ? CloseCause::kServerStopping
              : drained_.load(std::memory_order_relaxed)
                  ? CloseCause::kDrained
                  : CloseCause::kConnectionLost);
    FinishOnce(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    const int cause = cause_.load(std::memory_order_relaxed);
    if (service_.metrics() != nullptr &&
        (registered_ || cause == static_cast<int>(CloseCause::kRefused))) {
      service_.metrics()->CountClose(cause < 0
                                         ? CloseCause::kConnectionLost
                                         : static_cast<CloseCause>(cause));
    }
    if (registered_) {
      service_.Untrack(this);
      TunnelRegistry::Removed removed = registry_.RemoveWorker(
          identity_.token_hash, identity_.client_id, serial_);
      BROKER_LOG(kServer, kInfo,
                 {{"hashed_token", identity_.token_hash},
                  {"client_id", identity_.client_id}},
                 "broker client disconnected");
      for (auto& lane : removed.parked) {
        lane->Close(absl::UnavailableError("the worker's tunnel closed"));
      }
      // Not when a newer Control of the same client replaced this one.
      if (removed.found && service_.events() != nullptr) {
        service_.events()->OnWorkerDisconnected(identity_.token_hash,
                                                identity_.client_id);
      }
    }
    delete this;
  }

 private:
  bool HandleHello(const tunnel::v1::Hello& hello) {
    if (registered_) return true;  // a repeated Hello changes nothing
    if (!hello.token_hash().empty() &&
        hello.token_hash() != identity_.token_hash) {
      Refused(absl::StatusCode::kUnauthenticated);
      FinishOnce(grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                              "Hello.token_hash does not match the token"));
      return false;
    }
    if (!service_.TryAdmit()) {
      // Expected after a restart, while the fleet comes back: info, and
      // the refusals metric (reason "rate") counts them.
      BROKER_LOG(kServer, kInfo,
                 {{"hashed_token", identity_.token_hash},
                  {"client_id", identity_.client_id}},
                 "broker client asked to retry: admission rate cap reached");
      Refused(absl::StatusCode::kUnavailable);
      FinishOnce(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "the broker server admits workers at a capped "
                              "rate (BROKER_TUNNEL_ADMIT_PER_SECOND); retry"));
      return false;
    }
    TunnelRegistry::WorkerInfo info;
    info.client_id = identity_.client_id;
    info.masked_token = identity_.masked_token;
    info.version = hello.version();
    info.client_url = hello.client_url();
    info.rules_digest = hello.rules_digest();
    info.connected_at = absl::Now();
    absl::StatusOr<std::uint64_t> serial =
        registry_.AddWorker(identity_.token_hash, std::move(info));
    if (!serial.ok()) {
      BROKER_LOG(kServer, kWarn,
                 {{"hashed_token", identity_.token_hash},
                  {"client_id", identity_.client_id},
                  {"reason", std::string(serial.status().message())}},
                 "broker client refused");
      Refused(serial.status().code());
      FinishOnce(ToGrpc(serial.status()));
      return false;
    }
    serial_ = *serial;
    registered_ = true;
    service_.Track(this);
    if (service_.events() != nullptr) {
      service_.events()->OnWorkerConnected(identity_.token_hash,
                                           identity_.client_id);
    }
    BROKER_LOG(kServer, kInfo,
               {{"hashed_token", identity_.token_hash},
                {"client_id", identity_.client_id},
                {"version", hello.version()}},
               "broker client connected");
    ServerControl welcome;
    welcome.mutable_welcome()->set_server_id(hello.server_id());
    welcome.mutable_welcome()->set_max_lanes(
        static_cast<uint32_t>(TunnelRegistry::kMaxIdleLanesPerWorker));
    Enqueue(std::move(welcome));
    return true;
  }

  // Why the call ends, for /metrics: the first cause noted wins.
  void NoteCause(CloseCause cause) {
    int none = -1;
    cause_.compare_exchange_strong(none, static_cast<int>(cause),
                                   std::memory_order_relaxed);
  }

  void Refused(absl::StatusCode code) {
    NoteCause(CloseCause::kRefused);
    if (service_.metrics() != nullptr) service_.metrics()->CountRefusal(code);
  }

  void Enqueue(ServerControl message) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || pending_finish_) return;
      if (writing_) {
        queue_.push_back(std::move(message));
        return;
      }
      writing_ = true;
    }
    StartWrite(Stash(std::move(message)));
  }

  // Keeps the message alive until its write completes (one in flight).
  const ServerControl* Stash(ServerControl message) {
    out_ = std::move(message);
    return &out_;
  }

  void FinishOnce(grpc::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || pending_finish_) return;
      if (writing_) {
        pending_finish_ = std::move(status);
        return;
      }
      finished_ = true;
    }
    Finish(status);
  }

  TunnelService& service_;
  TunnelRegistry& registry_;
  const CallIdentity identity_;
  WorkerControl in_;
  ServerControl out_;
  // Touched only by reactions, which are serial for reads; OnDone comes
  // last.
  bool registered_ = false;
  std::uint64_t serial_ = 0;          // of the registration, for RemoveWorker
  std::atomic<bool> drained_{false};  // Drain was sent
  std::atomic<int> cause_{-1};        // a CloseCause, once known

  absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> pending_finish_ ABSL_GUARDED_BY(mu_);
  std::deque<ServerControl> queue_ ABSL_GUARDED_BY(mu_);
};

namespace {

// One Serve call. Parked in the registry after LaneReady; then owned by
// the request that takes it (through Lane). The reactor keeps itself alive
// through `self_` until OnDone, and whoever holds the Lane keeps it alive
// while calling into it; operations after Finish are refused by state, not
// by lifetime.
class ServeReactor final : public grpc::ServerBidiReactor<ServeUp, ServeDown>,
                           public Lane,
                           public std::enable_shared_from_this<ServeReactor> {
 public:
  static ServeReactor* Start(TunnelRegistry& registry, CallIdentity identity) {
    auto reactor = std::shared_ptr<ServeReactor>(
        new ServeReactor(registry, std::move(identity)));
    reactor->self_ = reactor;
    reactor->StartRead(&reactor->in_);  // LaneReady
    return reactor.get();
  }

  // Lane
  void Attach(std::shared_ptr<LaneListener> listener) override {
    absl::MutexLock lock(&mu_);
    listener_ = std::move(listener);
  }

  void Send(ServeDown message) override {
    bool refused = false;
    {
      absl::MutexLock lock(&mu_);
      refused = finish_called_ || pending_finish_.has_value();
      if (!refused) {
        writing_ = true;
        out_ = std::move(message);
      }
    }
    if (refused) {
      NotifySent(false);
      return;
    }
    StartWrite(&out_);
  }

  // The read started when the lane was parked delivers the first message;
  // call ReadNext() for each one after it.
  // Starts the read under mu_, so that it never follows a Finish() (a
  // reaction never runs inline from StartRead, so this cannot deadlock).
  void ReadNext() override {
    absl::MutexLock lock(&mu_);
    if (finish_called_ || pending_finish_ || read_closed_) return;
    StartRead(&in_);
  }

  void Close(absl::Status status) override {
    FinishOnce(status.ok() ? grpc::Status::OK : ToGrpc(status));
  }

  void Repark() override {
    {
      absl::MutexLock lock(&mu_);
      if (finish_called_ || pending_finish_ || read_closed_) return;
      listener_.reset();
    }
    // Not under mu_: Park may hand the lane to a waiting request at once,
    // which attaches to it.
    if (!registry_.Park(identity_.token_hash, shared_from_this())) {
      FinishOnce(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "the worker's tunnel closed"));
      return;
    }
    // The watch while parked, and the next answer's first message.
    ReadNext();
  }

  const std::string& client_id() const override { return identity_.client_id; }

  // Reactions
  void OnReadDone(bool ok) override {
    if (!parked_once_) {
      parked_once_ = true;
      bool full = false;
      if (!ok || !in_.has_ready() ||
          !registry_.Park(identity_.token_hash, shared_from_this(), &full)) {
        FinishOnce(full ? grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                       "this worker parks the most lanes a "
                                       "worker may (Welcome.max_lanes)")
                        : grpc::Status(
                              grpc::StatusCode::FAILED_PRECONDITION,
                              "a lane must start with LaneReady after Hello"));
        return;
      }
      StartRead(&in_);  // the answer's head, or a lane closed while parked
      return;
    }
    std::shared_ptr<LaneListener> listener;
    {
      absl::MutexLock lock(&mu_);
      listener = listener_;
      if (!ok) read_closed_ = true;
    }
    if (listener == nullptr) {
      // Still parked: the worker (or its connection) went away.
      registry_.Unpark(identity_.token_hash, this);
      FinishOnce(grpc::Status::CANCELLED);
      return;
    }
    if (!ok) {
      FinishOnce(grpc::Status::CANCELLED);
      return;
    }
    // Take the message out first: the listener may start the next read
    // (into in_) from another thread before this reaction returns.
    ServeUp message = std::move(in_);
    in_.Clear();
    listener->OnReceived(std::move(message));
  }

  void OnWriteDone(bool ok) override {
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (pending_finish_) {
        finish = std::move(pending_finish_);
        pending_finish_.reset();
        finish_called_ = true;
      }
    }
    if (finish) {
      Finish(*finish);
      return;
    }
    NotifySent(ok);
  }

  void OnCancel() override {
    registry_.Unpark(identity_.token_hash, this);
    FinishOnce(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    std::shared_ptr<LaneListener> listener;
    absl::Status status;
    {
      absl::MutexLock lock(&mu_);
      listener = std::move(listener_);
      status = final_status_;
    }
    if (listener) listener->OnClosed(status);
    self_.reset();  // may delete this: last statement
  }

 private:
  ServeReactor(TunnelRegistry& registry, CallIdentity identity)
      : registry_(registry), identity_(std::move(identity)) {}

  void NotifySent(bool ok) {
    std::shared_ptr<LaneListener> listener;
    {
      absl::MutexLock lock(&mu_);
      listener = listener_;
    }
    if (listener) listener->OnSent(ok);
  }

  void FinishOnce(grpc::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (finish_called_ || pending_finish_) return;
      final_status_ =
          status.ok()
              ? absl::OkStatus()
              : absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                             status.error_message());
      if (writing_) {
        pending_finish_ = std::move(status);
        return;
      }
      finish_called_ = true;
    }
    Finish(status);
  }

  TunnelRegistry& registry_;
  const CallIdentity identity_;
  std::shared_ptr<ServeReactor> self_;
  ServeUp in_;
  ServeDown out_;
  bool parked_once_ = false;  // reactions only (reads are serial)

  absl::Mutex mu_;
  std::shared_ptr<LaneListener> listener_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> pending_finish_ ABSL_GUARDED_BY(mu_);
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
};

// Ends a call that cannot be served, without a reactor of its own.
template <typename In, typename Out>
class RejectReactor final : public grpc::ServerBidiReactor<In, Out> {
 public:
  explicit RejectReactor(grpc::Status status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

absl::StatusOr<CallIdentity> IdentifyCall(
    const grpc::CallbackServerContext& context) {
  std::string authorization = Metadata(context, "authorization");
  if (!absl::StartsWithIgnoreCase(authorization, "Bearer ") ||
      authorization.size() <= 7) {
    return absl::UnauthenticatedError(
        "missing \"authorization: Bearer <token>\" metadata");
  }
  CallIdentity identity;
  identity.token_hash = common::HashToken(authorization.substr(7));
  identity.masked_token = common::MaskToken(authorization.substr(7));
  identity.client_id = Metadata(context, "x-broker-client-id");
  if (identity.client_id.empty()) {
    return absl::UnauthenticatedError("missing x-broker-client-id metadata");
  }
  return identity;
}

grpc::ServerBidiReactor<WorkerControl, ServerControl>* TunnelService::Control(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<CallIdentity> identity = IdentifyCall(*context);
  if (!identity.ok()) {
    return new RejectReactor<WorkerControl, ServerControl>(
        ToGrpc(identity.status()));
  }
  return new ControlReactor(*this, registry_, *std::move(identity));
}

void TunnelService::LimitAdmissions(int per_second) {
  admissions_ = std::make_unique<common::TokenBucket>(per_second, per_second);
}

void TunnelService::Track(ControlReactor* reactor) {
  absl::MutexLock lock(&mu_);
  controls_.insert(reactor);
}

void TunnelService::Untrack(ControlReactor* reactor) {
  absl::MutexLock lock(&mu_);
  controls_.erase(reactor);
}

int TunnelService::DrainAll(absl::string_view reason) {
  // Under mu_: a reactor leaves the set (in OnDone) before it is deleted.
  // Drain() only queues a write.
  absl::MutexLock lock(&mu_);
  for (ControlReactor* reactor : controls_) reactor->Drain(reason);
  return static_cast<int>(controls_.size());
}

grpc::ServerBidiReactor<DeliverUp, DeliverDown>* TunnelService::Deliver(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<CallIdentity> identity = IdentifyCall(*context);
  if (!identity.ok()) {
    return new RejectReactor<DeliverUp, DeliverDown>(ToGrpc(identity.status()));
  }
  if (deliveries_ == nullptr) {
    return new RejectReactor<DeliverUp, DeliverDown>(grpc::Status(
        grpc::StatusCode::UNIMPLEMENTED, "this server takes no webhooks"));
  }
  // Only a worker admitted here (its Control call is open) delivers: the
  // token is not checked otherwise, so a token nobody connected with is
  // refused as unknown.
  const std::vector<TunnelRegistry::WorkerInfo> workers =
      registry_.Workers(identity->token_hash);
  const bool admitted = std::any_of(workers.begin(), workers.end(),
                                    [&](const TunnelRegistry::WorkerInfo& w) {
                                      return w.client_id == identity->client_id;
                                    });
  if (!admitted) {
    BROKER_LOG(kServer, kWarn,
               {{"hashed_token", identity->token_hash},
                {"client_id", identity->client_id}},
               "webhook delivery refused: {}",
               workers.empty() ? "no broker client of this token is connected"
                               : "this client has no admitted Control call");
    return new RejectReactor<DeliverUp, DeliverDown>(
        workers.empty()
            ? grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                           "no broker client of this token is connected to "
                           "this server")
            : grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                           "deliver after Hello: this client has no "
                           "admitted Control call on this server"));
  }
  // IdentifyCall checked the "Bearer " prefix.
  std::string token = Metadata(*context, "authorization").substr(7);
  return deliveries_->Start(*context, *std::move(identity), std::move(token));
}

grpc::ServerBidiReactor<ServeUp, ServeDown>* TunnelService::Serve(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<CallIdentity> identity = IdentifyCall(*context);
  if (!identity.ok()) {
    return new RejectReactor<ServeUp, ServeDown>(ToGrpc(identity.status()));
  }
  return ServeReactor::Start(registry_, *std::move(identity));
}

}  // namespace broker::server
