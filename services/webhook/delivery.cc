#include "services/webhook/delivery.h"

#include "common/http/trace_context.h"
#include "common/logging.h"
#include "common/status.h"

#include "broker/tunnel/v1/tunnel.pb.h"

#include "grpcpp/grpcpp.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/steady_timer.hpp"
#include "nlohmann/json.hpp"

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace broker::webhook {
namespace {

namespace http = common::http;
namespace v1 = broker::tunnel::v1;

// What an attempt tells its delivery when it ends.
struct AttemptResult {
  bool answer_started = false;   // an answer message arrived
  bool answer_complete = false;  // and went to the SCM whole
  bool bad_answer = false;       // not valid HTTP: the SCM got a 502
};

class Attempt;

// One event. Owns itself through the shared_ptrs its attempt, timer and
// fallback callbacks hold; the tracker only has a weak_ptr.
//
// Threading: attempts report on gRPC threads, the retry timer and the
// fallback on io threads, cancellation on the exchange's strand or the
// shutdown thread. State is under mu_; nothing is called out under it
// except timer_ operations (which never run handlers inline).
class Delivery final : public Cancellable,
                       public std::enable_shared_from_this<Delivery> {
 public:
  Delivery(DeliveryEnv& env, std::shared_ptr<http::Exchange> exchange,
           std::shared_ptr<RequestBody> body, Event event)
      : env_(env),
        exchange_(std::move(exchange)),
        body_(std::move(body)),
        event_(std::move(event)),
        timer_(env.io) {
    head_.set_request_id(event_.request_id);
    head_.set_method(event_.method);
    head_.set_url(event_.url);
    for (const http::Header& h : event_.headers) {
      v1::Header* out = head_.add_headers();
      out->set_name(h.name);
      out->set_value(h.value);
    }
    head_.set_deadline_unix_micros(absl::ToUnixMicros(event_.deadline));
    head_.set_body_length(body_->length());
  }

  ~Delivery() override {
    if (tracker_id_) env_.tracker.Remove(*tracker_id_);
  }

  void Start() {
    tracker_id_ = env_.tracker.Add(weak_from_this());
    env_.metrics.EventStarted();
    exchange_->OnCancel([weak = weak_from_this()] {
      if (auto self = weak.lock()) self->Cancel();
    });
    StartAttempt();
  }

  void Cancel() override ABSL_LOCKS_EXCLUDED(mu_);

  // For attempts.
  void OnAnswerStarted() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    answered_ = true;
  }
  void OnBodyFailed(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    // FailedPrecondition: the copy was dropped (the attempt just fails);
    // Cancelled: a newer attempt took over the read.
    if (status.code() == absl::StatusCode::kFailedPrecondition ||
        status.code() == absl::StatusCode::kCancelled) {
      return;
    }
    absl::MutexLock lock(&mu_);
    if (body_error_.ok()) body_error_ = status;
  }
  void OnAttemptDone(const grpc::Status& status, AttemptResult result)
      ABSL_LOCKS_EXCLUDED(mu_);

  http::Exchange& exchange() { return *exchange_; }
  RequestBody& body() { return *body_; }
  const Event& event() const { return event_; }
  const v1::RequestHead& head() const { return head_; }

 private:
  void StartAttempt() ABSL_LOCKS_EXCLUDED(mu_);
  void NoTunnel() ABSL_LOCKS_EXCLUDED(mu_);
  void Finish(Outcome outcome) ABSL_LOCKS_EXCLUDED(mu_);

  DeliveryEnv& env_;
  const std::shared_ptr<http::Exchange> exchange_;
  const std::shared_ptr<RequestBody> body_;
  const Event event_;
  v1::RequestHead head_;  // the same on every attempt
  std::optional<std::uint64_t> tracker_id_;

  absl::Mutex mu_;
  boost::asio::steady_timer timer_ ABSL_GUARDED_BY(mu_);
  int attempts_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<Attempt> current_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<http::CallCancellation> fallback_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool answered_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status body_error_ ABSL_GUARDED_BY(mu_);
};

// One Egress.Deliver call (STYLE 2): one read and one write in flight;
// operations started from outside reactions (the SCM's body arriving, the
// SCM's answer written) are covered by two holds, one per direction,
// released when that direction ends, so OnDone comes after both.
//
// Up (webhook -> worker): head, body chunks read from the RequestBody as
// writes complete, end, WritesDone. Down (worker -> webhook): each answer
// message is written to the SCM before the next read.
//
// Threading: reactions on gRPC threads, the body and answer callbacks on
// the exchange's strand. Each direction is one chain of steps, so its own
// fields are touched by one step at a time; what both directions share is
// under mu_.
class Attempt final
    : public grpc::ClientBidiReactor<v1::DeliverUp, v1::DeliverDown>,
      public std::enable_shared_from_this<Attempt> {
 public:
  Attempt(std::shared_ptr<Delivery> delivery, int number)
      : delivery_(std::move(delivery)), number_(number) {}

  void Begin(broker::webhook::v1::Egress::Stub& stub) {
    self_ = shared_from_this();
    const Event& event = delivery_->event();
    context_.AddMetadata(kDeliveryIdMetadata, event.delivery_id);
    context_.AddMetadata(kDeliveryAttemptMetadata, absl::StrCat(number_));
    if (auto traceparent =
            http::FindHeader(event.headers, http::kTraceparentHeader)) {
      context_.AddMetadata(std::string(http::kTraceparentHeader),
                           std::string(*traceparent));
    }
    context_.set_deadline(absl::ToChronoTime(event.deadline));
    // Fail at once when no worker is usable: the delivery decides.
    context_.set_wait_for_ready(false);
    has_body_ = delivery_->head().body_length() != 0;
    stub.async()->Deliver(&context_, this);
    AddMultipleHolds(2);  // up and down
    StartRead(&down_);
    *up_.mutable_head() = delivery_->head();
    StartWrite(&up_);
    StartCall();
  }

  void Cancel() { context_.TryCancel(); }

  // --- Up ------------------------------------------------------------------

  void OnWriteDone(bool ok) override {
    if (!ok) {  // the call broke; OnDone says why
      ReleaseUp();
      return;
    }
    if (end_written_ || !has_body_) {  // the request is all sent
      StartWritesDone();
      return;
    }
    NextUp();
  }

  void OnWritesDoneDone(bool /*ok*/) override { ReleaseUp(); }

  // --- Down ----------------------------------------------------------------

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The worker finished, or the call broke.
      bool abort = false;
      {
        absl::MutexLock lock(&mu_);
        abort = started_ && !complete_ && !bad_answer_ && writer_ != nullptr;
      }
      if (abort) writer().Abort();
      CallOver();
      ReleaseDown();
      return;
    }
    switch (down_.kind_case()) {
      case v1::DeliverDown::kHead:
        OnHead();
        return;
      case v1::DeliverDown::kBody:
        if (!Streaming()) {
          Stop(/*protocol_error=*/true);
          return;
        }
        writer().Write(std::move(*down_.mutable_body()),
                       [self = self_ptr()](const absl::Status& s) {
                         self->AfterAnswerWrite(s, /*complete=*/false);
                       });
        return;
      case v1::DeliverDown::kEnd:
        if (!Streaming()) {
          Stop(/*protocol_error=*/true);
          return;
        }
        {
          absl::MutexLock lock(&mu_);
          ended_ = true;
        }
        if (down_.end().aborted()) {
          // The platform's answer broke off: so must the SCM's.
          writer().Abort();
          StartRead(&down_);
          return;
        }
        writer().Finish([self = self_ptr()](const absl::Status& s) {
          self->AfterAnswerWrite(s, /*complete=*/true);
        });
        return;
      case v1::DeliverDown::kFailure:
        OnFailure();
        return;
      case v1::DeliverDown::KIND_NOT_SET:
        break;
    }
    Stop(/*protocol_error=*/true);
  }

  void OnDone(const grpc::Status& status) override {
    std::shared_ptr<Attempt> keep = std::move(self_);
    AttemptResult result;
    {
      absl::MutexLock lock(&mu_);
      result.answer_started = started_;
      result.answer_complete = complete_;
      result.bad_answer = bad_answer_;
    }
    delivery_->OnAttemptDone(status, result);
  }

 private:
  enum class UpState { kWriting, kWaitingBody, kReleased };

  std::shared_ptr<Attempt> self_ptr() { return shared_from_this(); }

  http::BodyWriter& writer() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return *writer_;
  }

  bool Streaming() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return started_ && writer_ != nullptr && !ended_;
  }

  // The next up message: what is left of the chunk in hand, the end, or
  // a read of the next chunk.
  void NextUp() {
    if (pending_offset_ < pending_.size()) {
      const std::size_t n =
          std::min(kBodyChunkBytes, pending_.size() - pending_offset_);
      up_.Clear();
      up_.set_body(pending_.substr(pending_offset_, n));
      pending_offset_ += n;
      StartWrite(&up_);
      return;
    }
    if (pending_last_) {
      up_.Clear();
      up_.mutable_end();
      end_written_ = true;
      StartWrite(&up_);
      return;
    }
    bool release = false;
    {
      absl::MutexLock lock(&mu_);
      if (call_over_) {
        // The call ended meanwhile: nothing more goes up.
        up_state_ = UpState::kReleased;
        release = true;
      } else {
        up_state_ = UpState::kWaitingBody;
      }
    }
    if (release) {
      RemoveHold();
      return;
    }
    delivery_->body().ReadAt(
        body_offset_,
        [self = self_ptr()](const absl::Status& status, http::BodyChunk chunk) {
          self->OnBody(status, std::move(chunk));
        });
  }

  void OnBody(const absl::Status& status, http::BodyChunk chunk) {
    {
      absl::MutexLock lock(&mu_);
      // The call ended while the chunk was read: the hold is gone, and
      // the bytes stay in the delivery's copy for the next attempt.
      if (up_state_ == UpState::kReleased) return;
      up_state_ = UpState::kWriting;
    }
    if (!status.ok()) {
      delivery_->OnBodyFailed(status);
      context_.TryCancel();
      ReleaseUp();
      return;
    }
    body_offset_ += chunk.data.size();
    pending_ = std::move(chunk.data);
    pending_offset_ = 0;
    pending_last_ = chunk.last;
    NextUp();
  }

  void ReleaseUp() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (up_state_ == UpState::kReleased) return;
      up_state_ = UpState::kReleased;
    }
    RemoveHold();
  }

  void ReleaseDown() { RemoveHold(); }

  // The call is over (the worker finished, or it broke): an up direction
  // waiting for the SCM's body lets go of its hold now.
  void CallOver() ABSL_LOCKS_EXCLUDED(mu_) {
    bool release = false;
    {
      absl::MutexLock lock(&mu_);
      call_over_ = true;
      if (up_state_ == UpState::kWaitingBody) {
        up_state_ = UpState::kReleased;
        release = true;
      }
    }
    if (release) RemoveHold();
  }

  // Ends the down direction early: the worker sent nonsense, or the SCM
  // cannot take the answer.
  void Stop(bool protocol_error) {
    if (protocol_error) {
      BROKER_LOG(kWebhook, kWarn,
                 {{"delivery_id", delivery_->event().delivery_id},
                  {"attempt", number_}},
                 "a tunnel worker sent a malformed answer");
    }
    context_.TryCancel();
    bool abort = false;
    {
      absl::MutexLock lock(&mu_);
      abort = started_ && !complete_ && !bad_answer_ && writer_ != nullptr;
    }
    if (abort) writer().Abort();
    CallOver();
    ReleaseDown();
  }

  // The worker's answer (the platform's): its head goes to the SCM.
  void OnHead() {
    v1::ResponseHead& in = *down_.mutable_head();
    if (AnswerStarted()) {  // a second head
      Stop(/*protocol_error=*/true);
      return;
    }
    delivery_->OnAnswerStarted();
    http::ResponseHead head;
    head.status = in.status();
    for (v1::Header& h : *in.mutable_headers()) {
      if (!PassedBack(h.name())) continue;
      head.headers.push_back(
          {std::move(*h.mutable_name()), std::move(*h.mutable_value())});
    }
    AddRequestId(head.headers, delivery_->event().request_id);
    auto self = self_ptr();
    if (in.has_end()) {
      // A small answer, whole in its head.
      {
        absl::MutexLock lock(&mu_);
        ended_ = true;
      }
      head.content_length = in.body().size();
      delivery_->exchange().RespondWhole(
          std::move(head), std::move(*in.mutable_body()),
          [self](const absl::Status& s) {
            self->AfterAnswerWrite(s, /*complete=*/true);
          });
      return;
    }
    if (in.body_length() >= 0) {
      head.content_length = static_cast<std::uint64_t>(in.body_length());
    }
    std::string first = std::move(*in.mutable_body());
    http::BodyWriter* writer = nullptr;
    {
      // Respond() only posts to the exchange's strand; its callback
      // takes mu_ (writer()) after the writer is stored here.
      absl::MutexLock lock(&mu_);
      if (first.empty()) {
        writer_ = &delivery_->exchange().Respond(
            std::move(head), [self](const absl::Status& s) {
              self->AfterAnswerWrite(s, /*complete=*/false);
            });
        return;
      }
      // The head's own result is kept for the write's callback, which
      // runs after it.
      writer_ = &delivery_->exchange().Respond(
          std::move(head), [self](const absl::Status& s) {
            absl::MutexLock head_lock(&self->mu_);
            self->head_status_ = s;
          });
      writer = writer_;
    }
    // Ordered after the head (same thread); fails if the head did.
    writer->Write(std::move(first), [self](const absl::Status& s) {
      self->AfterAnswerWrite(s, /*complete=*/false);
    });
  }

  bool AnswerStarted() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    const bool was = started_;
    started_ = true;
    return was;
  }

  // The server's structured error (blocked by its private rules, platform
  // unreachable, ...): the SCM gets its status and JSON body.
  void OnFailure() {
    if (AnswerStarted()) {
      Stop(/*protocol_error=*/true);
      return;
    }
    delivery_->OnAnswerStarted();
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
    }
    v1::Failure& failure = *down_.mutable_failure();
    http::ResponseHead head;
    head.status = failure.status();
    head.headers = {{"content-type", "application/json; charset=utf-8"}};
    AddRequestId(head.headers, delivery_->event().request_id);
    head.content_length = failure.body().size();
    delivery_->exchange().RespondWhole(
        std::move(head), std::move(*failure.mutable_body()),
        [self = self_ptr()](const absl::Status& s) {
          self->AfterAnswerWrite(s, /*complete=*/true);
        });
  }

  void AfterAnswerWrite(absl::Status status, bool complete) {
    {
      absl::MutexLock lock(&mu_);
      if (!head_status_.ok()) status = head_status_;
    }
    if (!status.ok()) {
      if (status.code() == absl::StatusCode::kInvalidArgument) {
        // The worker's head is not valid HTTP; nothing went out yet, so
        // the SCM gets a 502 instead (and nothing is cut off).
        {
          absl::MutexLock lock(&mu_);
          bad_answer_ = true;
        }
        RespondError(delivery_->exchange(), 502, "bad-answer", "BAD_ANSWER",
                     absl::StrCat("the tunnel's answer could not be passed "
                                  "on: ",
                                  status.message()),
                     delivery_->event().request_id);
      }
      Stop(/*protocol_error=*/false);
      return;
    }
    if (complete) {
      absl::MutexLock lock(&mu_);
      complete_ = true;
    }
    StartRead(&down_);
  }

  const std::shared_ptr<Delivery> delivery_;
  const int number_;
  std::shared_ptr<Attempt> self_;  // until OnDone
  grpc::ClientContext context_;
  bool has_body_ = false;

  // Up chain.
  v1::DeliverUp up_;
  std::uint64_t body_offset_ = 0;
  std::string pending_;  // a chunk in hand, written in kBodyChunkBytes
  std::size_t pending_offset_ = 0;
  bool pending_last_ = false;
  bool end_written_ = false;

  // Down chain.
  v1::DeliverDown down_;

  absl::Mutex mu_;
  UpState up_state_ ABSL_GUARDED_BY(mu_) = UpState::kWriting;
  bool call_over_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;   // an answer message came
  bool ended_ ABSL_GUARDED_BY(mu_) = false;     // its last message came
  bool complete_ ABSL_GUARDED_BY(mu_) = false;  // and went out whole
  http::BodyWriter* writer_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Status head_status_ ABSL_GUARDED_BY(mu_);  // of a head sent alone
  bool bad_answer_ ABSL_GUARDED_BY(mu_) = false;   // replaced by a 502
};

void Delivery::Cancel() {
  std::shared_ptr<Attempt> attempt;
  std::shared_ptr<http::CallCancellation> fallback;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_ || finished_) return;
    cancelled_ = true;
    attempt = current_;
    fallback = fallback_;
    timer_.cancel();  // its handler runs later, on an io thread
  }
  if (attempt) attempt->Cancel();
  if (fallback) fallback->Cancel();
}

void Delivery::StartAttempt() {
  std::shared_ptr<Attempt> attempt;
  {
    absl::MutexLock lock(&mu_);
    if (!cancelled_) {
      ++attempts_;
      attempt = std::make_shared<Attempt>(shared_from_this(), attempts_);
      current_ = attempt;
    }
  }
  if (!attempt) {
    // The SCM left (the answer is then dropped), or shutdown.
    RespondError(*exchange_, 503, "shutting-down", "SHUTTING_DOWN",
                 "broker-webhook is shutting down", event_.request_id,
                 env_.retry_after_seconds);
    Finish(Outcome::kCancelled);
    return;
  }
  // A Cancel() from now on reaches the call: ClientContext::TryCancel
  // before the call starts cancels it as it starts.
  attempt->Begin(env_.channel.stub());
}

void Delivery::OnAttemptDone(const grpc::Status& status, AttemptResult result) {
  bool cancelled = false;
  int attempts = 0;
  absl::Status body_error;
  {
    absl::MutexLock lock(&mu_);
    current_.reset();
    cancelled = cancelled_;
    attempts = attempts_;
    body_error = body_error_;
  }
  if (result.answer_started) {
    // Answered: never sent again, whatever happened to the call.
    Finish(result.answer_complete ? Outcome::kDelivered
           : result.bad_answer    ? Outcome::kFailed
           : cancelled            ? Outcome::kCancelled
                                  : Outcome::kAborted);
    return;
  }
  if (!body_error.ok()) {
    // The SCM's body failed; the HTTP server has answered a bad body
    // already, which makes these answers no-ops.
    if (body_error.code() == absl::StatusCode::kResourceExhausted) {
      RespondError(*exchange_, 413, "", "PAYLOAD_TOO_LARGE",
                   body_error.message(), event_.request_id);
      Finish(Outcome::kTooLarge);
    } else if (body_error.code() == absl::StatusCode::kInvalidArgument) {
      RespondError(*exchange_, 400, "", "BAD_REQUEST_BODY",
                   body_error.message(), event_.request_id);
      Finish(Outcome::kBadRequest);
    } else {
      Finish(Outcome::kCancelled);
    }
    return;
  }
  if (cancelled) {
    RespondError(*exchange_, 503, "shutting-down", "SHUTTING_DOWN",
                 "broker-webhook is shutting down", event_.request_id,
                 env_.retry_after_seconds);
    Finish(Outcome::kCancelled);
    return;
  }
  const grpc_connectivity_state state = env_.channel.State();
  FailedAttempt failed;
  // gRPC's codes and Abseil's have the same numbers.
  failed.code = static_cast<absl::StatusCode>(status.error_code());
  failed.attempts = attempts;
  failed.body_replayable = body_->Replayable();
  failed.channel_ready = state == GRPC_CHANNEL_READY;
  failed.channel_failing = state == GRPC_CHANNEL_TRANSIENT_FAILURE;
  failed.now = absl::Now();
  failed.received = event_.received;
  failed.deadline = event_.deadline;
  const RetryDecision decision = DecideRetry(failed, env_.retry);
  BROKER_LOG(kWebhook, kDebug,
             {{"delivery_id", event_.delivery_id},
              {"request_id", event_.request_id},
              {"trace_id", event_.trace_id},
              {"attempt", attempts},
              {"grpc_status", static_cast<int>(status.error_code())},
              {"error", status.error_message()},
              {"channel", ChannelStateName(state)}},
             "delivery attempt failed");
  switch (decision.action) {
    case RetryAction::kRetry: {
      env_.metrics.CountRetry();
      if (decision.delay <= absl::ZeroDuration()) {
        StartAttempt();
        return;
      }
      absl::MutexLock lock(&mu_);
      timer_.expires_after(absl::ToChronoNanoseconds(decision.delay));
      // Cancelled or not, the next step checks cancelled_.
      timer_.async_wait(
          [self = shared_from_this()](const boost::system::error_code&) {
            self->StartAttempt();
          });
      return;
    }
    case RetryAction::kNoTunnel:
      NoTunnel();
      return;
    case RetryAction::kNotReplayable: {
      // The SCM may still be sending: take the rest first, so that it
      // reads the answer instead of a reset connection.
      std::string message = absl::StrCat(
          "the tunnel worker failed the event after its body was sent, and "
          "a body this large is not kept to send again: ",
          status.error_message());
      body_->Discard(
          [self = shared_from_this(), message = std::move(message)]() mutable {
            RespondError(*self->exchange_, 502, "delivery-failed",
                         "DELIVERY_FAILED", message, self->event_.request_id);
            self->Finish(Outcome::kFailed);
          });
      return;
    }
    case RetryAction::kTimedOut:
      RespondError(*exchange_, 504, "timeout", "DELIVERY_TIMEOUT",
                   "the event was not answered before the deadline",
                   event_.request_id);
      Finish(Outcome::kTimedOut);
      return;
  }
}

void Delivery::NoTunnel() {
  if (env_.fallback != nullptr && event_.fallback_allowed &&
      body_->Replayable() && absl::Now() < event_.deadline) {
    auto cancellation = std::make_shared<http::CallCancellation>();
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) {
        cancellation.reset();
      } else {
        fallback_ = cancellation;
      }
    }
    if (cancellation == nullptr) {
      Finish(Outcome::kCancelled);
      return;
    }
    BROKER_LOG(kWebhook, kWarn,
               {{"delivery_id", event_.delivery_id},
                {"request_id", event_.request_id},
                {"trace_id", event_.trace_id},
                {"path", PathOf(event_.url)}},
               "tunnel unavailable, forwarding via API.");
    env_.fallback->Forward(
        exchange_, body_, event_, std::move(cancellation),
        [self = shared_from_this()](Outcome outcome) {
          self->env_.metrics.CountFallback(outcome == Outcome::kFallback);
          self->Finish(outcome);
        });
    return;
  }
  RespondError(*exchange_, 503, "no-connection", "NO_TUNNEL",
               "no broker tunnel worker can take the event now; try again "
               "later",
               event_.request_id, env_.retry_after_seconds);
  Finish(Outcome::kNoTunnel);
}

void Delivery::Finish(Outcome outcome) {
  int attempts = 0;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    attempts = attempts_;
  }
  const absl::Duration latency = absl::Now() - event_.received;
  env_.metrics.CountOutcome(outcome);
  env_.metrics.EventEnded(latency);
  const common::LogField fields[] = {
      {"delivery_id", event_.delivery_id},
      {"request_id", event_.request_id},
      {"trace_id", event_.trace_id},
      {"path", PathOf(event_.url)},
      {"attempts", attempts},
      {"outcome", OutcomeName(outcome)},
      {"latency_ms", absl::ToInt64Milliseconds(latency)}};
  if (outcome == Outcome::kDelivered || outcome == Outcome::kFallback) {
    BROKER_LOG(kWebhook, kInfo, fields, "webhook event delivered");
  } else {
    BROKER_LOG(kWebhook, kWarn, fields, "webhook event not delivered");
  }
}

}  // namespace

std::uint64_t DeliveryTracker::Add(const std::weak_ptr<Cancellable>& delivery) {
  absl::MutexLock lock(&mu_);
  const std::uint64_t id = ++next_id_;
  live_.emplace(id, delivery);
  return id;
}

void DeliveryTracker::Remove(std::uint64_t id) {
  absl::MutexLock lock(&mu_);
  live_.erase(id);
}

void DeliveryTracker::CancelAll() {
  std::vector<std::shared_ptr<Cancellable>> live;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, weak] : live_) {
      if (auto delivery = weak.lock()) live.push_back(std::move(delivery));
    }
  }
  for (const auto& delivery : live) delivery->Cancel();
}

bool DeliveryTracker::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(absl::Condition(this, &DeliveryTracker::Idle),
                               deadline);
}

int DeliveryTracker::live() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(live_.size());
}

void StartDelivery(DeliveryEnv& env, std::shared_ptr<http::Exchange> exchange,
                   std::shared_ptr<RequestBody> body, Event event) {
  std::make_shared<Delivery>(env, std::move(exchange), std::move(body),
                             std::move(event))
      ->Start();
}

}  // namespace broker::webhook
