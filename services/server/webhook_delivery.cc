#include "services/server/webhook_delivery.h"

#include "common/http/trace_context.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/token.h"
#include "filters/blocked.h"
#include "services/server/buffered_body.h"
#include "services/server/relay.h"
#include "services/server/server_metrics.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/steady_timer.hpp"
#include "nlohmann/json.hpp"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace broker::server {
namespace {

namespace http = common::http;
namespace v1 = tunnel::v1;

// Body chunks written down the call, and the largest answer that travels
// whole in its ResponseHead (docs/tunnel.md).
constexpr std::size_t kChunkBytes = std::size_t{64} * 1024;
constexpr std::uint64_t kInlineBodyBytes = std::uint64_t{64} * 1024;
// x-broker-delivery-id is a uuid; anything much longer is refused.
constexpr std::size_t kMaxDeliveryIdBytes = 128;

std::string FailureJson(absl::string_view code, absl::string_view message) {
  return nlohmann::json{{"code", std::string(code)},
                        {"message", std::string(message)}}
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string Metadata(const grpc::CallbackServerContext& context,
                     absl::string_view key) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(grpc::string_ref(key.data(), key.size()));
  if (it == metadata.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

// Headers of the webhook not passed to the platform: each hop's own
// (framing, Host), and the broker headers the server sets itself, which a
// worker must not be able to choose.
bool IsDroppedRequestHeader(absl::string_view name) {
  return IsHopByHopHeader(name) || absl::EqualsIgnoreCase(name, "host") ||
         absl::EqualsIgnoreCase(name, "x-snyk-broker") ||
         absl::EqualsIgnoreCase(name, "x-broker-token");
}

// The path of a url, for logs (the query may carry secrets).
absl::string_view PathOf(absl::string_view url) {
  return url.substr(0, url.find_first_of("?#"));
}

// A body held whole (read for the body rules), handed to the platform
// client in chunks.
class HeldBody final : public http::BodyReader {
 public:
  explicit HeldBody(std::string body) : body_(std::move(body)) {}
  void Read(ReadHandler handler) override {
    const std::size_t n = std::min(kChunkBytes, body_.size() - offset_);
    std::string chunk = body_.substr(offset_, n);
    offset_ += n;
    std::move(handler)(absl::OkStatus(),
                       {std::move(chunk), offset_ == body_.size()});
  }

 private:
  const std::string body_;
  std::size_t offset_ = 0;
};

// Ends a call that cannot be served, without a reactor of its own.
class RejectDelivery final
    : public grpc::ServerBidiReactor<v1::DeliverUp, v1::DeliverDown> {
 public:
  explicit RejectDelivery(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// One Deliver call: the request head (and, for body rules, the body),
// the private rules, the ledger, the platform call, the answer.
//
// Phases: kHead (reading the RequestHead) -> kHoldingBody (body rules: the
// body is read whole) -> kDeciding (rules and ledger) -> kWaiting (a
// retry waits for the first attempt) -> kCalling (the platform call runs;
// the request body streams from the call into it, one read in flight) ->
// kAnswering (the answer, or a Failure, is written down the call).
//
// Ownership: the reactor keeps itself alive through `self_` until OnDone;
// the platform call's handlers, the request body reader and a ledger
// waiter hold it through shared_ptr, so it may outlive its call: when the
// worker leaves after its request body was complete, the platform call
// goes on and its answer is recorded for the retry. Operations on the call
// after Finish are refused by state (mu_), never started.
//
// Threading: reactions on gRPC threads, platform callbacks and the deadline
// timer on io threads, the ledger's resolution on whichever thread
// completes the first attempt. The answer pump is one chain of callbacks:
// `pump_` is touched by one step at a time.
class DeliverReactor final
    : public grpc::ServerBidiReactor<v1::DeliverUp, v1::DeliverDown>,
      public std::enable_shared_from_this<DeliverReactor> {
 public:
  struct Caller {
    CallIdentity identity;
    std::string token;        // never logged
    std::string delivery_id;  // "" when absent: no deduplication
    std::string attempt;      // for logs
    // The webhook's trace as its worker passed it on ("" when absent).
    std::string traceparent;
  };

  static DeliverReactor* Start(WebhookDeliveries& shared, Caller caller) {
    auto reactor = std::shared_ptr<DeliverReactor>(
        new DeliverReactor(shared, std::move(caller)));
    reactor->self_ = reactor;
    {
      absl::MutexLock lock(&reactor->mu_);
      reactor->StartRead(&reactor->in_);  // the RequestHead
    }
    return reactor.get();
  }

  // --- Reactions ------------------------------------------------------------

  void OnReadDone(bool ok) override {
    Phase phase;
    {
      absl::MutexLock lock(&mu_);
      phase = phase_;
    }
    switch (phase) {
      case Phase::kHead:
        OnHead(ok);
        return;
      case Phase::kHoldingBody:
        OnHeldBodyRead(ok);
        return;
      case Phase::kCalling:
        OnStreamedBodyRead(ok);
        return;
      case Phase::kDeciding:
      case Phase::kWaiting:
      case Phase::kAnswering:
        return;  // nothing reads then
    }
  }

  void OnWriteDone(bool ok) override {
    absl::AnyInvocable<void(bool) &&> then;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      then = std::move(write_then_);
      write_then_ = nullptr;
      if (pending_finish_) {
        finish = std::move(pending_finish_);
        pending_finish_.reset();
        finish_called_ = true;
      }
    }
    if (finish) Finish(*finish);
    if (then) std::move(then)(ok && !finish);
  }

  // The worker cancelled the call, its connection died, or the call's
  // deadline passed.
  void OnCancel() override {
    std::shared_ptr<http::CallCancellation> cancel;
    bool forget = false;
    bool abandon = false;
    std::uint64_t ticket = 0;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      ticket = ticket_;
      if (phase_ == Phase::kCalling && !body_complete_) {
        // The platform cannot have taken an incomplete request: drop the
        // call, and let a retry go through.
        cancel = cancellation_;
        forget = owner_;
      } else if (phase_ == Phase::kWaiting) {
        abandon = true;
      }
    }
    if (cancel) cancel->Cancel();
    if (forget) shared_.ledger().Forget(*key_, ticket);
    if (abandon) shared_.ledger().Abandon(*key_, ticket);
    FinishOnce(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    CancelTimer();
    self_.reset();  // may delete this: last statement
  }

  // --- The request body, pulled by the platform client ----------------------

  class StreamedBody final : public http::BodyReader {
   public:
    explicit StreamedBody(std::shared_ptr<DeliverReactor> reactor)
        : reactor_(std::move(reactor)) {}
    // The client may drop the body with a Read outstanding: its handler
    // (which refers to the client's call) is dropped too.
    ~StreamedBody() override { reactor_->DropBodyHandler(); }
    StreamedBody(const StreamedBody&) = delete;
    StreamedBody& operator=(const StreamedBody&) = delete;
    void Read(ReadHandler handler) override {
      reactor_->ReadBody(std::move(handler));
    }

   private:
    const std::shared_ptr<DeliverReactor> reactor_;
  };

 private:
  enum class Phase {
    kHead,
    kHoldingBody,
    kDeciding,
    kWaiting,
    kCalling,
    kAnswering
  };

  DeliverReactor(WebhookDeliveries& shared, Caller caller)
      : shared_(shared), caller_(std::move(caller)) {
    if (!caller_.delivery_id.empty()) {
      key_ =
          DeliveryLedger::Key{caller_.identity.token_hash, caller_.delivery_id};
    }
  }

  // The fields every log line of this delivery carries (never the token).
  // They refer to members: use them within the line's statement.
  std::vector<common::LogField> Fields() const {
    return {{"hashed_token", caller_.identity.token_hash},
            {"client_id", caller_.identity.client_id},
            {"delivery_id", caller_.delivery_id},
            {"attempt", caller_.attempt},
            {"method", head_.method()},
            {"path", PathOf(head_.url())}};
  }

  // --- The request ----------------------------------------------------------

  void OnHead(bool ok) {
    if (!ok) {
      FinishOnce(grpc::Status::CANCELLED);  // the worker left first
      return;
    }
    if (!in_.has_head()) {
      FinishOnce(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "a delivery starts with its RequestHead"));
      return;
    }
    head_ = std::move(*in_.mutable_head());
    in_.Clear();
    if (head_.method().empty() || !absl::StartsWith(head_.url(), "/") ||
        head_.body_length() < -1) {
      FinishOnce(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "RequestHead needs a method, a url starting "
                              "with '/' and a body_length of -1 or more"));
      return;
    }
    const absl::Time now = absl::Now();
    deadline_ = now + shared_.options().request_timeout;
    if (head_.deadline_unix_micros() > 0) {
      deadline_ = std::min(deadline_,
                           absl::FromUnixMicros(head_.deadline_unix_micros()));
    }
    ArmTimer();
    if (head_.body_length() == 0) {
      absl::MutexLock lock(&mu_);
      body_complete_ = true;
    }
    if (head_.body_length() != 0 &&
        shared_.rules().NeedsBody(filters::RuleList::kPrivate, head_.method(),
                                  head_.url())) {
      // A body rule could decide: hold the body whole, bounded like the
      // platform requests' bodies (buffered_body.h).
      if (head_.body_length() > 0 &&
          static_cast<std::uint64_t>(head_.body_length()) >
              kMaxInspectedBodyBytes) {
        AnswerTooLarge();
        return;
      }
      absl::MutexLock lock(&mu_);
      if (phase_ != Phase::kHead) return;  // the deadline came first
      phase_ = Phase::kHoldingBody;
      if (!finish_called_ && !pending_finish_) StartRead(&in_);
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (phase_ != Phase::kHead) return;
      phase_ = Phase::kDeciding;
    }
    Decide();
  }

  void OnHeldBodyRead(bool ok) {
    if (!ok) {
      AnswerFailure(400, kBadRequestBodyCode,
                    FailureJson(kBadRequestBodyCode,
                                "the request body ended before its end"));
      return;
    }
    if (in_.has_body()) {
      if (in_.body().size() > kMaxInspectedBodyBytes - held_body_.size()) {
        AnswerTooLarge();
        return;
      }
      held_body_ += in_.body();
      in_.Clear();
      absl::MutexLock lock(&mu_);
      if (phase_ == Phase::kHoldingBody && !finish_called_ && !pending_finish_)
        StartRead(&in_);
      return;
    }
    if (!in_.has_end() || in_.end().aborted() ||
        (head_.body_length() > 0 &&
         held_body_.size() !=
             static_cast<std::uint64_t>(head_.body_length()))) {
      AnswerFailure(400, kBadRequestBodyCode,
                    FailureJson(kBadRequestBodyCode,
                                "the request body was cut short or does not "
                                "match its body_length"));
      return;
    }
    in_.Clear();
    {
      absl::MutexLock lock(&mu_);
      if (phase_ != Phase::kHoldingBody) return;  // the deadline came first
      phase_ = Phase::kDeciding;
      body_complete_ = true;
    }
    BROKER_LOG(kServer, kDebug, Fields(),
               "webhook request body received whole");
    Decide();
  }

  // Private rules, origin, ledger.
  void Decide() {
    std::vector<filters::HeaderField> fields;
    fields.reserve(head_.headers_size());
    for (const v1::Header& h : head_.headers()) {
      fields.push_back({h.name(), h.value()});
    }
    const filters::Decision decision = shared_.rules().Evaluate(
        filters::RuleList::kPrivate,
        filters::RequestView{head_.method(), head_.url(), fields, held_body_});
    if (ServerMetrics* metrics = shared_.options().metrics) {
      metrics->CountRequest(ServerMetrics::Flow::kOutbound,
                            /*rejected=*/!decision.allowed());
    }
    if (!decision.allowed()) {
      // The same answer a worker gives for its own private rules.
      const std::string reason =
          filters::BlockedReason(filters::BlockedFlow::kTunnel, decision);
      std::vector<common::LogField> log = Fields();
      log.emplace_back("reason", decision.reason);
      BROKER_LOG(kServer, kWarn, log,
                 "webhook blocked by the server's private accept rules: {}",
                 reason);
      AnswerFailure(filters::kBlockedStatus, "FILTER_BLOCKED",
                    filters::BlockedBody(reason, head_.url()));
      return;
    }
    absl::StatusOr<filters::ForwardTarget> target =
        shared_.resolver().Resolve(*decision.rule, head_.url());
    if (!target.ok()) {
      const std::string rule = decision.rule->Label();
      std::vector<common::LogField> log = Fields();
      log.emplace_back("rule", rule);
      log.emplace_back("error", target.status().message());
      BROKER_LOG(kServer, kWarn, log,
                 "webhook allowed by a server rule without a usable origin");
      AnswerFailure(502, "DOWNSTREAM_ERROR",
                    FailureJson("DOWNSTREAM_ERROR", target.status().message()));
      return;
    }
    target_ = *std::move(target);
    if (!key_) {
      CallPlatform(0, /*owner=*/false);
      return;
    }
    DeliveryLedger::Begun begun = shared_.ledger().Begin(
        *key_, [self = shared_from_this()](
                   std::uint64_t ticket,
                   const std::shared_ptr<const DeliveryAnswer>& answer) {
          self->OnResolved(ticket, answer);
        });
    switch (begun.role) {
      case DeliveryLedger::Role::kOwner:
        CallPlatform(begun.ticket, /*owner=*/true);
        return;
      case DeliveryLedger::Role::kUntracked:
        BROKER_LOG(kServer, kWarn, Fields(),
                   "the delivery ledger is full of deliveries in flight; "
                   "this one is not deduplicated");
        CallPlatform(0, /*owner=*/false);
        return;
      case DeliveryLedger::Role::kAnswered:
        BROKER_LOG(kServer, kInfo, Fields(),
                   "webhook already delivered; answering the retry with the "
                   "platform's first answer");
        CountWebhook(ServerMetrics::Webhook::kDuplicate);
        {
          absl::MutexLock lock(&mu_);
          if (phase_ != Phase::kDeciding) return;
          phase_ = Phase::kAnswering;
        }
        Replay(*begun.answer);
        return;
      case DeliveryLedger::Role::kWaiting: {
        bool abandon = false;
        {
          absl::MutexLock lock(&mu_);
          // OnResolved may have run already, on another thread.
          if (phase_ != Phase::kDeciding) return;
          phase_ = Phase::kWaiting;
          ticket_ = begun.ticket;
          abandon = cancelled_;
        }
        if (abandon) {
          shared_.ledger().Abandon(*key_, begun.ticket);
          return;
        }
        BROKER_LOG(kServer, kInfo, Fields(),
                   "webhook attempt waits for the first attempt of the same "
                   "delivery");
        return;
      }
    }
  }

  // The first attempt of a delivery this one waited for (or raced with)
  // ended: with its answer, or forgotten (null), which makes this attempt
  // the owner under `ticket`.
  void OnResolved(std::uint64_t ticket,
                  const std::shared_ptr<const DeliveryAnswer>& answer) {
    bool go = false;
    {
      absl::MutexLock lock(&mu_);
      if ((phase_ == Phase::kDeciding || phase_ == Phase::kWaiting) &&
          !cancelled_ && !finish_called_ && !pending_finish_) {
        go = true;
        ticket_ = ticket;
        // In the same step as the check: the deadline (OnDeadline) acts
        // only on a waiting attempt.
        if (answer) {
          phase_ = Phase::kAnswering;
        } else {
          phase_ = Phase::kCalling;
          owner_ = true;
        }
      }
    }
    if (!go) {
      // This attempt is over: if it was made the owner, let the next one
      // go through.
      if (answer == nullptr) shared_.ledger().Forget(*key_, ticket);
      return;
    }
    if (answer) {
      BROKER_LOG(kServer, kInfo, Fields(),
                 "webhook already delivered; answering the retry with the "
                 "platform's first answer");
      Replay(*answer);
      return;
    }
    BROKER_LOG(kServer, kInfo, Fields(),
               "the first attempt of this delivery did not reach the "
               "platform; this attempt goes through");
    ToPlatform();
  }

  // From kDeciding: this attempt calls the platform, as the owner of
  // `ticket` or (`owner` false) without deduplication.
  void CallPlatform(std::uint64_t ticket, bool owner) {
    {
      absl::MutexLock lock(&mu_);
      phase_ = Phase::kCalling;
      ticket_ = ticket;
      owner_ = owner;
    }
    ToPlatform();
  }

  // The platform call, in kCalling.
  void ToPlatform() {
    http::ClientRequest request;
    request.method = head_.method();
    request.url = target_.url;
    for (const v1::Header& h : head_.headers()) {
      if (IsDroppedRequestHeader(h.name())) continue;
      if (target_.authorization &&
          absl::EqualsIgnoreCase(h.name(), "authorization")) {
        continue;
      }
      request.headers.push_back({h.name(), h.value()});
    }
    if (target_.authorization) {
      request.headers.push_back({"authorization", *target_.authorization});
    }
    // What Snyk's server adds toward the platform (reference 2.6, 5.3).
    request.headers.push_back(
        {"x-snyk-broker", common::MaskToken(caller_.token)});
    request.headers.push_back({"X-Broker-Token", caller_.token});
    // The call to the platform is this server's span of the webhook's
    // trace; the worker's metadata names it when the head does not.
    if (!caller_.traceparent.empty() &&
        !http::FindHeader(request.headers, http::kTraceparentHeader)) {
      request.headers.push_back(
          {std::string(http::kTraceparentHeader), caller_.traceparent});
    }
    http::ContinueTrace(request.headers);
    const bool held = head_.body_length() != 0 && BodyComplete();
    if (head_.body_length() != 0) {
      if (held) {
        request.body_length = held_body_.size();
        request.body = std::make_unique<HeldBody>(std::move(held_body_));
        held_body_.clear();
      } else {
        request.body = std::make_unique<StreamedBody>(shared_from_this());
        if (head_.body_length() > 0) {
          request.body_length = static_cast<std::uint64_t>(head_.body_length());
        }
      }
    }
    request.deadline = deadline_;
    auto cancellation = std::make_shared<http::CallCancellation>();
    request.cancellation = cancellation;
    bool give_up = false;
    {
      absl::MutexLock lock(&mu_);
      cancellation_ = cancellation;
      // Gone before its body arrived: nothing can reach the platform. A
      // request already whole goes on, for the retry to find its answer.
      give_up = cancelled_ && !body_complete_;
    }
    CancelTimer();  // the client keeps the deadline from here on
    if (give_up) {
      ForgetDelivery();
      return;
    }
    call_started_ = absl::Now();
    shared_.client().Send(std::move(request),
                          [self = shared_from_this()](
                              absl::StatusOr<http::ClientResponse> response) {
                            self->OnPlatformResponse(std::move(response));
                          });
  }

  bool BodyComplete() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return body_complete_;
  }

  // StreamedBody::Read: one read of the call in flight.
  void ReadBody(http::BodyReader::ReadHandler handler) {
    {
      absl::MutexLock lock(&mu_);
      if (phase_ == Phase::kCalling && !cancelled_ && !finish_called_ &&
          !pending_finish_ && !body_complete_ && !body_handler_) {
        body_handler_ = std::move(handler);
        StartRead(&in_);
        return;
      }
    }
    std::move(handler)(absl::CancelledError("the delivery was abandoned"), {});
  }

  bool OverLength(std::size_t more) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return head_.body_length() >= 0 &&
           more > static_cast<std::uint64_t>(head_.body_length()) - body_bytes_;
  }

  void DropBodyHandler() {
    http::BodyReader::ReadHandler dropped;  // destroyed outside the lock
    absl::MutexLock lock(&mu_);
    dropped = std::move(body_handler_);
    body_handler_ = nullptr;
  }

  void OnStreamedBodyRead(bool ok) {
    http::BodyReader::ReadHandler handler;
    absl::Status status;
    http::BodyChunk chunk;
    bool complete = false;
    {
      absl::MutexLock lock(&mu_);
      handler = std::move(body_handler_);
      body_handler_ = nullptr;
      if (!ok) {
        body_failed_ = true;
        status = absl::CancelledError(
            "the worker ended the delivery before its request body ended");
      } else if (in_.has_body() && !OverLength(in_.body().size())) {
        body_bytes_ += in_.body().size();
        chunk.data = std::move(*in_.mutable_body());
        if (head_.body_length() >= 0 &&
            body_bytes_ == static_cast<std::uint64_t>(head_.body_length())) {
          // The last byte of a Content-Length body: with it the platform
          // has the whole request, whether or not the worker's end marker
          // follows (its worker may die first). Complete now, so that the
          // call goes on and its answer is kept for a retry.
          body_complete_ = true;
          complete = true;
          chunk.last = true;
        }
      } else if (in_.has_body()) {
        body_failed_ = true;
        status = absl::InvalidArgumentError(
            "the request body is longer than its body_length");
      } else if (in_.has_end() && !in_.end().aborted() &&
                 (head_.body_length() < 0 ||
                  body_bytes_ ==
                      static_cast<std::uint64_t>(head_.body_length()))) {
        body_complete_ = true;
        complete = true;
        chunk.last = true;
      } else {
        body_failed_ = true;
        status = absl::InvalidArgumentError(
            in_.has_end() ? "the request body was cut short, or shorter "
                            "than its body_length"
                          : "unexpected message in a request body");
      }
    }
    in_.Clear();
    if (complete) {
      BROKER_LOG(kServer, kDebug, Fields(),
                 "webhook request body received whole");
    }
    if (handler) std::move(handler)(std::move(status), std::move(chunk));
  }

  // --- The answer -------------------------------------------------------

  void OnPlatformResponse(absl::StatusOr<http::ClientResponse> response) {
    bool body_failed = false;
    bool body_complete = false;
    {
      absl::MutexLock lock(&mu_);
      body_failed = body_failed_;
      body_complete = body_complete_;
      cancellation_.reset();
    }
    if (!response.ok()) {
      if (body_failed) {
        // The worker's request body broke off: it never reached the
        // platform whole.
        ForgetDelivery();
        BROKER_LOG(kServer, kWarn, Fields(),
                   "webhook request body incomplete: {}",
                   std::string(response.status().message()));
        AnswerFailure(400, kBadRequestBodyCode,
                      FailureJson(kBadRequestBodyCode,
                                  "the request body did not arrive whole"));
        return;
      }
      const absl::string_view code =
          http::DownstreamErrorCode(response.status());
      const int status = code == "DOWNSTREAM_TIMEOUT" ? 504 : 502;
      std::string body = FailureJson(code, response.status().message());
      std::vector<common::LogField> log = Fields();
      log.emplace_back("error", response.status().message());
      BROKER_LOG(kServer, kWarn, log, "webhook could not reach the platform");
      CountWebhook(ServerMetrics::Webhook::kFailed);
      if (!body_complete ||
          response.status().code() == absl::StatusCode::kUnavailable) {
        // Refused or not resolved (nothing was sent), or failed before the
        // request was whole: a retry may try again.
        ForgetDelivery();
      } else {
        // The platform may have taken it: retries get the same failure.
        DeliveryAnswer failure;
        failure.status = status;
        failure.failure_code = std::string(code);
        failure.body = body;
        CompleteDelivery(std::move(failure));
      }
      AnswerFailure(status, code, std::move(body));
      return;
    }
    {
      std::vector<common::LogField> log = Fields();
      log.emplace_back("status", response->head.status);
      log.emplace_back("duration_ms",
                       absl::ToInt64Milliseconds(absl::Now() - call_started_));
      BROKER_LOG(kServer, kInfo, log, "webhook delivered to the platform");
    }
    CountWebhook(ServerMetrics::Webhook::kDelivered);
    v1::DeliverDown message;
    v1::ResponseHead* head = message.mutable_head();
    head->set_status(response->head.status);
    pump_.record.status = response->head.status;
    for (const http::Header& header : response->head.headers) {
      if (IsHopByHopHeader(header.name)) continue;
      v1::Header* out = head->add_headers();
      out->set_name(header.name);
      out->set_value(header.value);
      pump_.record.headers.push_back(header);
    }
    const std::optional<std::uint64_t> length = response->head.content_length;
    head->set_body_length(length ? static_cast<std::int64_t>(*length) : -1);
    pump_.body = std::move(response->body);
    // Nothing else answers once the platform call runs.
    const bool claimed = ClaimAnswer();
    BROKER_CHECK(claimed);
    {
      absl::MutexLock lock(&mu_);
      pump_.recording = owner_;
    }
    if (length && *length <= kInlineBodyBytes) {
      // A small answer of known length: head, body and end in one message.
      pump_.body->Read(
          [self = shared_from_this(), message = std::move(message)](
              const absl::Status& status, http::BodyChunk chunk) mutable {
            self->OnFirstChunk(std::move(message), status, std::move(chunk));
          });
      return;
    }
    WriteThenPump(std::move(message));
  }

  void OnFirstChunk(v1::DeliverDown head, const absl::Status& status,
                    http::BodyChunk chunk) {
    if (!status.ok()) {
      OnPlatformBodyFailed(status, std::move(head));
      return;
    }
    Record(chunk.data);
    head.mutable_head()->set_body(std::move(chunk.data));
    if (!chunk.last) {
      WriteThenPump(std::move(head));
      return;
    }
    RecordDone();
    head.mutable_head()->mutable_end();
    Write(std::move(head),
          [self = shared_from_this()](bool) { self->AnswerDone(); });
  }

  // Writes `message` (the head or a body chunk), then the next chunk; when
  // the call is gone, the rest of the answer is only recorded.
  void WriteThenPump(v1::DeliverDown message) {
    Write(std::move(message), [self = shared_from_this()](bool ok) {
      if (!ok) self->pump_.draining = true;
      self->Pump();
    });
  }

  // Platform body -> call: one platform read at a time, each after the
  // previous chunk's write completed (back-pressure both ways).
  void Pump() {
    if (pump_.draining && (!pump_.recording || pump_.recorded)) {
      // Nobody reads the answer and the ledger has what it keeps: drop the
      // platform's connection.
      pump_.body.reset();
      return;
    }
    pump_.body->Read([self = shared_from_this()](const absl::Status& status,
                                                 http::BodyChunk chunk) {
      self->OnPlatformChunk(status, std::move(chunk));
    });
  }

  void OnPlatformChunk(const absl::Status& status, http::BodyChunk chunk) {
    if (!status.ok()) {
      OnPlatformBodyFailed(status, std::nullopt);
      return;
    }
    Record(chunk.data);
    if (chunk.last) RecordDone();
    if (pump_.draining) {
      if (chunk.last) {
        pump_.body.reset();
        return;
      }
      Pump();
      return;
    }
    const bool last = chunk.last;
    if (!chunk.data.empty()) {
      v1::DeliverDown message;
      message.set_body(std::move(chunk.data));
      Write(std::move(message), [self = shared_from_this(), last](bool ok) {
        if (!ok) self->pump_.draining = true;
        if (last) {
          self->WriteEnd(false);
        } else {
          self->Pump();
        }
      });
      return;
    }
    if (last) {
      WriteEnd(false);
      return;
    }
    Pump();
  }

  // The platform's answer broke off: recorded as such (retries get
  // DUPLICATE_DELIVERY), and the call's answer ends as aborted.
  void OnPlatformBodyFailed(const absl::Status& status,
                            std::optional<v1::DeliverDown> unsent_head) {
    std::vector<common::LogField> log = Fields();
    log.emplace_back("error", status.message());
    BROKER_LOG(kServer, kWarn, log, "the platform's answer was cut short");
    pump_.record.whole = false;
    pump_.record.body.clear();
    RecordDone();
    pump_.body.reset();
    if (unsent_head) {
      Write(*std::move(unsent_head), [self = shared_from_this()](bool ok) {
        if (ok) {
          self->WriteEnd(true);
        } else {
          self->AnswerDone();
        }
      });
      return;
    }
    WriteEnd(true);
  }

  void WriteEnd(bool aborted) {
    if (pump_.draining) {
      AnswerDone();
      return;
    }
    v1::DeliverDown end;
    end.mutable_end()->set_aborted(aborted);
    Write(std::move(end),
          [self = shared_from_this()](bool) { self->AnswerDone(); });
  }

  void AnswerDone() { FinishOnce(grpc::Status::OK); }

  void CountWebhook(ServerMetrics::Webhook result) {
    if (ServerMetrics* metrics = shared_.options().metrics) {
      metrics->CountWebhook(result);
    }
  }

  // The one answer of the call (a Failure, a replay or the platform's):
  // false when another path has already started it.
  bool ClaimAnswer() {
    absl::MutexLock lock(&mu_);
    if (answering_) return false;
    answering_ = true;
    phase_ = Phase::kAnswering;
    return true;
  }

  // Keeps the answer's body for retries, up to what the ledger keeps.
  void Record(absl::string_view data) {
    if (!pump_.recording || pump_.recorded || !pump_.record.whole) return;
    if (data.size() >
        DeliveryLedger::kMaxKeptBodyBytes - pump_.record.body.size()) {
      // Too big to keep: the ledger keeps status and headers only, and a
      // retry gets Failure{502, DUPLICATE_DELIVERY} (the platform has the
      // event; it must not get it again).
      pump_.record.whole = false;
      pump_.record.body.clear();
      RecordDone();
      return;
    }
    pump_.record.body.append(data.data(), data.size());
  }

  void RecordDone() {
    if (!pump_.recording || pump_.recorded) return;
    pump_.recorded = true;
    CompleteDelivery(std::move(pump_.record));
  }

  void CompleteDelivery(DeliveryAnswer answer) {
    std::uint64_t ticket = 0;
    {
      absl::MutexLock lock(&mu_);
      if (!owner_) return;
      ticket = ticket_;
    }
    shared_.ledger().Complete(*key_, ticket, std::move(answer));
  }

  void ForgetDelivery() {
    std::uint64_t ticket = 0;
    {
      absl::MutexLock lock(&mu_);
      if (!owner_) return;
      ticket = ticket_;
    }
    shared_.ledger().Forget(*key_, ticket);
  }

  // A retry's answer, from the ledger.
  void Replay(const DeliveryAnswer& answer) {
    if (!answer.failure_code.empty() || !answer.whole) {
      ReplayFailure(answer);
      return;
    }
    if (!ClaimAnswer()) return;
    CancelTimer();
    v1::DeliverDown message;
    v1::ResponseHead* head = message.mutable_head();
    head->set_status(answer.status);
    for (const http::Header& header : answer.headers) {
      v1::Header* out = head->add_headers();
      out->set_name(header.name);
      out->set_value(header.value);
    }
    head->set_body_length(static_cast<std::int64_t>(answer.body.size()));
    head->set_body(answer.body);
    head->mutable_end();
    Write(std::move(message),
          [self = shared_from_this()](bool) { self->AnswerDone(); });
  }

  void ReplayFailure(const DeliveryAnswer& answer) {
    if (!answer.failure_code.empty()) {
      AnswerFailure(answer.status, answer.failure_code, answer.body);
      return;
    }
    if (!answer.whole) {
      AnswerFailure(
          502, kDuplicateDeliveryCode,
          FailureJson(kDuplicateDeliveryCode,
                      absl::StrCat("this event was already delivered to the "
                                   "platform, which answered ",
                                   answer.status,
                                   "; that answer was too large (or cut "
                                   "short) to keep for a retry")));
    }
  }

  void AnswerTooLarge() {
    AnswerFailure(413, kPayloadTooLargeCode,
                  FailureJson(kPayloadTooLargeCode,
                              absl::StrCat("the request body is over the ",
                                           kMaxInspectedBodyBytes,
                                           " bytes the server reads to check "
                                           "body rules")));
  }

  void AnswerFailure(int status, absl::string_view code, std::string body) {
    if (!ClaimAnswer()) return;
    CancelTimer();
    v1::DeliverDown message;
    v1::Failure* failure = message.mutable_failure();
    failure->set_status(status);
    failure->set_code(std::string(code));
    failure->set_body(std::move(body));
    Write(std::move(message),
          [self = shared_from_this()](bool) { self->AnswerDone(); });
  }

  // --- The deadline before the platform call --------------------------------

  // Bounds holding the body and waiting for a first attempt; the platform
  // client keeps the deadline of the call itself.
  void ArmTimer() {
    auto timer = std::make_shared<boost::asio::steady_timer>(shared_.io());
    timer->expires_after(absl::ToChronoNanoseconds(
        std::max(deadline_ - absl::Now(), absl::ZeroDuration())));
    {
      absl::MutexLock lock(&mu_);
      timer_ = timer;
    }
    timer->async_wait(
        [weak = weak_from_this(), timer](const boost::system::error_code& ec) {
          if (ec) return;  // cancelled
          if (auto self = weak.lock()) self->OnDeadline();
        });
  }

  void CancelTimer() {
    std::shared_ptr<boost::asio::steady_timer> timer;
    {
      absl::MutexLock lock(&mu_);
      timer = std::move(timer_);
      timer_.reset();
    }
    if (timer) timer->cancel();
  }

  void OnDeadline() {
    bool waiting = false;
    std::uint64_t ticket = 0;
    {
      absl::MutexLock lock(&mu_);
      if (phase_ != Phase::kHead && phase_ != Phase::kHoldingBody &&
          phase_ != Phase::kWaiting) {
        return;
      }
      waiting = phase_ == Phase::kWaiting;
      ticket = ticket_;
      phase_ = Phase::kAnswering;
    }
    if (waiting) shared_.ledger().Abandon(*key_, ticket);
    BROKER_LOG(kServer, kWarn, Fields(),
               "webhook deadline passed before the platform call");
    AnswerFailure(504, "DOWNSTREAM_TIMEOUT",
                  FailureJson("DOWNSTREAM_TIMEOUT",
                              waiting ? "the first attempt of this delivery "
                                        "did not end before the deadline"
                                      : "the request did not arrive before "
                                        "the deadline"));
  }

  // --- Writes and Finish ----------------------------------------------------

  // Starts a write; `then` runs once it completed (false: the call is gone,
  // also at once when it already was). One write at a time: the answer is
  // a single chain.
  void Write(v1::DeliverDown message, absl::AnyInvocable<void(bool) &&> then) {
    {
      absl::MutexLock lock(&mu_);
      if (!finish_called_ && !pending_finish_ && !cancelled_) {
        BROKER_CHECK(!writing_);
        writing_ = true;
        out_ = std::move(message);
        write_then_ = std::move(then);
        // Under mu_, so that it never follows a Finish(); gRPC never runs
        // a reaction inline from StartWrite.
        StartWrite(&out_);
        return;
      }
    }
    std::move(then)(false);
  }

  void FinishOnce(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finish_called_ || pending_finish_) return;
      if (writing_) {
        pending_finish_ = status;
        return;
      }
      finish_called_ = true;
    }
    Finish(status);
  }

  WebhookDeliveries& shared_;
  const Caller caller_;
  std::optional<DeliveryLedger::Key> key_;  // with a delivery id
  std::shared_ptr<DeliverReactor> self_;
  v1::DeliverUp in_;     // the read in flight (one at a time)
  v1::DeliverDown out_;  // the write in flight: set under mu_

  // Set while reading the head and the held body (one read at a time),
  // before anything else runs: read-only afterwards.
  v1::RequestHead head_;
  absl::Time deadline_;
  std::string held_body_;
  filters::ForwardTarget target_;
  absl::Time call_started_;

  // The answer pump's state: one step of the chain at a time.
  struct Pump {
    std::unique_ptr<http::BodyReader> body;  // the platform's
    bool draining = false;   // the call is gone: only recording goes on
    bool recording = false;  // the owner of a deduplicated delivery
    bool recorded = false;   // the ledger has the answer
    DeliveryAnswer record;
  } pump_;

  absl::Mutex mu_;
  Phase phase_ ABSL_GUARDED_BY(mu_) = Phase::kHead;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> pending_finish_ ABSL_GUARDED_BY(mu_);
  absl::AnyInvocable<void(bool) &&> write_then_ ABSL_GUARDED_BY(mu_);
  http::BodyReader::ReadHandler body_handler_ ABSL_GUARDED_BY(mu_);
  // The request body was handed out whole (or held, or there is none).
  bool body_complete_ ABSL_GUARDED_BY(mu_) = false;
  bool body_failed_ ABSL_GUARDED_BY(mu_) = false;
  std::uint64_t body_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // streamed so far
  // Some path has started the answer (only one may: one write chain).
  bool answering_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<http::CallCancellation> cancellation_ ABSL_GUARDED_BY(mu_);
  std::uint64_t ticket_ ABSL_GUARDED_BY(mu_) = 0;
  bool owner_ ABSL_GUARDED_BY(mu_) = false;  // this attempt owns the id
  std::shared_ptr<boost::asio::steady_timer> timer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<WebhookDeliveries>> WebhookDeliveries::Create(
    boost::asio::io_context& io, std::shared_ptr<const filters::RuleSet> rules,
    filters::Variables variables, WebhookDeliveryOptions options,
    common::Clock& clock) {
  http::ClientOptions client_options;
  client_options.ca_file = options.ca_file;
  client_options.insecure_skip_verify = options.insecure_skip_verify;
  BROKER_ASSIGN_OR_RETURN(std::unique_ptr<http::Client> client,
                          http::Client::Create(io, client_options));
  return std::make_unique<WebhookDeliveries>(
      io, std::move(rules), std::move(variables), std::move(options),
      std::move(client), clock);
}

WebhookDeliveries::WebhookDeliveries(
    boost::asio::io_context& io, std::shared_ptr<const filters::RuleSet> rules,
    filters::Variables variables, WebhookDeliveryOptions options,
    std::unique_ptr<common::http::Client> client, common::Clock& clock)
    : io_(io),
      rules_(std::move(rules)),
      resolver_(std::move(variables)),
      options_(std::move(options)),
      client_(std::move(client)),
      ledger_(clock, options_.ledger) {}

grpc::ServerBidiReactor<tunnel::v1::DeliverUp, tunnel::v1::DeliverDown>*
WebhookDeliveries::Start(const grpc::CallbackServerContext& context,
                         CallIdentity identity, std::string token) {
  DeliverReactor::Caller caller;
  caller.identity = std::move(identity);
  caller.token = std::move(token);
  caller.delivery_id = Metadata(context, kDeliveryIdMetadata);
  caller.attempt = Metadata(context, kDeliveryAttemptMetadata);
  caller.traceparent = Metadata(context, http::kTraceparentHeader);
  if (caller.delivery_id.size() > kMaxDeliveryIdBytes) {
    return new RejectDelivery(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat(kDeliveryIdMetadata, " is over ",
                                  kMaxDeliveryIdBytes, " bytes")));
  }
  return DeliverReactor::Start(*this, std::move(caller));
}

}  // namespace broker::server
