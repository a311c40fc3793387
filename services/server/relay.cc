#include "services/server/relay.h"

#include "common/logging.h"
#include "common/status.h"
#include "services/server/buffered_body.h"
#include "services/server/peer_forward.h"
#include "services/server/server_metrics.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/steady_timer.hpp"

#include <algorithm>
#include <deque>
#include <optional>
#include <string>
#include <utility>

namespace broker::server {
namespace {

namespace http = common::http;
using tunnel::v1::ServeDown;
using tunnel::v1::ServeUp;

http::Headers ToHttpHeaders(
    const google::protobuf::RepeatedPtrField<tunnel::v1::Header>& headers) {
  http::Headers out;
  out.reserve(headers.size());
  for (const tunnel::v1::Header& h : headers) {
    if (IsHopByHopHeader(h.name())) continue;
    out.push_back({h.name(), h.value()});
  }
  return out;
}

constexpr int kMaxResends = 2;
// The most body bytes one Serve message carries when platform chunks join
// while the stream is busy (under the tunnel's 1 MiB message limit).
constexpr std::size_t kCoalescedBodyBytes = std::size_t{512} * 1024;
// How long a re-sent request waits for another worker's lane.
constexpr absl::Duration kResendLaneWait = absl::Seconds(2);

// Whether the request may go to another worker after its tunnel broke:
// methods safe to repeat without a body, or any request whose body is held
// whole, so that it can be sent again as it came (ARCHITECTURE.md 3).
bool MayResend(const http::RequestHead& request, const RelayRequest& relay) {
  if (relay.held_body != nullptr && relay.unbuffered != nullptr) return true;
  const bool safe = request.method == "GET" || request.method == "HEAD" ||
                    request.method == "OPTIONS";
  const bool bodiless =
      !request.chunked && request.content_length.value_or(0) == 0;
  return safe && bodiless;
}

// The answer to a request whose tunnel broke before its answer started.
void RespondTunnelError(http::Exchange& exchange,
                        absl::string_view request_id) {
  exchange.RespondSimple(502,
                         {{"content-type", "application/json"},
                          {"x-broker-failure", "tunnel-error"},
                          {"snyk-request-id", std::string(request_id)}},
                         R"({"ok":false,"code":"TUNNEL_ERROR"})");
}

class RelayCall final : public LaneListener,
                        public std::enable_shared_from_this<RelayCall> {
 public:
  RelayCall(boost::asio::io_context& io, TunnelRegistry& registry,
            TunnelRegistry::Taken taken,
            std::shared_ptr<http::Exchange> exchange, RelayRequest request)
      : io_(io),
        registry_(registry),
        lane_(std::move(taken.lane)),
        client_id_(std::move(taken.client_id)),
        exchange_(std::move(exchange)),
        request_(std::move(request)),
        timer_(io) {}

  void Start() {
    auto self = shared_from_this();
    sent_at_ = absl::Now();
    lane_->Attach(self);
    exchange_->OnCancel([self] {
      self->Abort(absl::CancelledError("the platform went away"));
    });
    const absl::Duration left = request_.deadline - absl::Now();
    timer_.expires_after(
        absl::ToChronoMilliseconds(std::max(left, absl::ZeroDuration())));
    timer_.async_wait([self](boost::system::error_code ec) {
      if (ec) return;  // cancelled: the relay ended first
      self->Abort(absl::DeadlineExceededError("the request's deadline passed"));
    });

    ServeDown head;
    tunnel::v1::RequestHead* h = head.mutable_head();
    h->set_request_id(request_.request_id);
    h->set_method(exchange_->request().method);
    h->set_url(request_.url);
    for (const http::Header& header : request_.headers) {
      tunnel::v1::Header* out = h->add_headers();
      out->set_name(header.name);
      out->set_value(header.value);
    }
    h->set_deadline_unix_micros(absl::ToUnixMicros(request_.deadline));
    const auto& length = exchange_->request().content_length;
    h->set_body_length(length ? static_cast<int64_t>(*length)
                              : (exchange_->request().chunked ? -1 : 0));
    // Without a body the head is the whole request: no end marker follows.
    const bool has_body = h->body_length() != 0;
    SendUp(std::move(head), /*is_end=*/!has_body, /*read_next=*/has_body);
  }

  // Up: platform body -> worker. While one message is written to the
  // tunnel, the platform's next chunks are already read and held (at most
  // kCoalescedBodyBytes and the end wait here), so the socket and the
  // stream work at once.
  void OnSent(bool ok) override {
    if (!ok) {
      const absl::Status broken =
          absl::UnavailableError("the tunnel broke while sending");
      if (SettleUp(false)) {
        lane_->Close(broken);  // the answer was complete already
        return;
      }
      Fail(broken);
      return;
    }
    std::optional<UpMessage> next;
    bool end_sent = false;
    {
      absl::MutexLock lock(&mu_);
      end_sent = up_in_flight_is_end_;
      if (!up_held_.empty()) {
        next = std::move(up_held_.front());
        up_held_.pop_front();
        up_in_flight_is_end_ = next->is_end;
      } else {
        up_sending_ = false;
      }
    }
    if (end_sent) {
      if (SettleUp(true)) lane_->Repark();
      return;
    }
    if (next) {
      lane_->Send(std::move(next->message));
      if (next->read_next) ReadUp();
    }
  }

  // Sends `message` now, or holds it while another is in flight.
  // `read_next`: read the platform's next chunk once it is on its way.
  void SendUp(ServeDown message, bool is_end, bool read_next) {
    bool read_now = false;
    if (!HoldUp(message, is_end, read_next, &read_now)) {
      lane_->Send(std::move(message));
      read_now = read_next;
    }
    if (read_now) ReadUp();
  }

  // With a message in flight: takes `message` (it is moved from) and holds
  // it, and returns true. While a message waits behind the one in flight,
  // the platform's next chunks join it (up to kCoalescedBodyBytes) and
  // reading goes on (`read_now`): a fast platform behind a busy stream so
  // sends a few large messages instead of many small ones, each a write
  // and a thread hand-off. Otherwise marks `message` as the one in flight
  // and returns false: the caller sends it.
  bool HoldUp(ServeDown& message, bool is_end, bool read_next, bool* read_now) {
    absl::MutexLock lock(&mu_);
    if (!up_sending_) {
      up_sending_ = true;
      up_in_flight_is_end_ = is_end;
      return false;
    }
    if (message.has_body() && !up_held_.empty() &&
        up_held_.back().message.has_body() &&
        up_held_.back().message.body().size() + message.body().size() <=
            kCoalescedBodyBytes) {
      up_held_.back().message.mutable_body()->append(message.body());
    } else {
      up_held_.push_back({std::move(message), is_end, false});
    }
    // The next read: now while the held message has room, else once it is
    // on its way (OnSent).
    UpMessage& held = up_held_.back();
    if (read_next && held.message.has_body() &&
        held.message.body().size() < kCoalescedBodyBytes) {
      *read_now = true;
    } else {
      held.read_next = read_next;
    }
    return true;
  }

  void ReadUp() {
    auto self = shared_from_this();
    exchange_->body().Read(
        [self](const absl::Status& status, http::BodyChunk chunk) {
          if (!status.ok()) {
            // The platform's body broke (disconnect, over the limit): the
            // worker must not act on half a request.
            self->Fail(absl::CancelledError(status.message()));
            return;
          }
          if (chunk.data.empty() && !chunk.last) {
            self->ReadUp();
            return;
          }
          if (!chunk.data.empty()) {
            ServeDown body;
            body.set_body(std::move(chunk.data));
            self->SendUp(std::move(body), /*is_end=*/false,
                         /*read_next=*/!chunk.last);
          }
          if (chunk.last) {
            ServeDown end;
            end.mutable_end();
            self->SendUp(std::move(end), /*is_end=*/true, /*read_next=*/false);
          }
        });
  }

  // Down: worker -> platform, one message in flight.
  void OnReceived(ServeUp message) override {
    auto self = shared_from_this();
    switch (message.kind_case()) {
      case ServeUp::kHead: {
        http::ResponseHead head;
        head.status = message.head().status();
        head.headers = ToHttpHeaders(message.head().headers());
        head.headers.push_back({"snyk-request-id", request_.request_id});
        if (message.head().body_length() >= 0) {
          head.content_length =
              static_cast<std::uint64_t>(message.head().body_length());
        }
        // A small answer carries its body, and its end, in the head.
        std::optional<tunnel::v1::BodyEnd> end;
        if (message.head().has_end()) end = message.head().end();
        std::string body = std::move(*message.mutable_head()->mutable_body());
        // Hold mu_ across Respond(): its callback may run on the strand
        // before Respond() returns, and must find writer_ set. Respond()
        // only posts.
        absl::MutexLock lock(&mu_);
        if (response_started_) return;  // Fail() answered already
        response_started_ = true;
        latency_ = absl::Now() - sent_at_;
        if (request_.metrics != nullptr) {
          request_.metrics->ObserveResponse(
              head.content_length,
              /*streaming=*/!end.has_value() || end->aborted());
        }
        if (end && !end->aborted()) {
          // The whole answer is here: one write for head and body.
          worker_keeps_lane_ = end->keep_lane();
          exchange_->RespondWhole(
              std::move(head), std::move(body),
              [self](const absl::Status& s) { self->End(s); });
          return;
        }
        writer_ = &exchange_->Respond(
            std::move(head),
            [self, body = std::move(body),
             end = std::move(end)](const absl::Status& s) mutable {
              if (!s.ok()) {
                self->Abort(absl::CancelledError(s.message()));
                return;
              }
              if (body.empty() && !end) {
                self->lane_->ReadNext();
                return;
              }
              self->Down(std::move(body), std::move(end));
            });
        return;
      }
      case ServeUp::kBody: {
        if (Writer() == nullptr) break;
        Down(std::move(*message.mutable_body()), std::nullopt);
        return;
      }
      case ServeUp::kEnd: {
        if (Writer() == nullptr) break;
        Down("", message.end());
        return;
      }
      case ServeUp::kFailure: {
        {
          absl::MutexLock lock(&mu_);
          if (response_started_) break;
          response_started_ = true;
          latency_ = absl::Now() - sent_at_;
        }
        const tunnel::v1::Failure& f = message.failure();
        exchange_->RespondSimple(f.status(),
                                 {{"content-type", "application/json"},
                                  {"snyk-request-id", request_.request_id}},
                                 f.body());
        End(absl::OkStatus());
        return;
      }
      default:
        break;
    }
    Fail(absl::InternalError("the worker broke the Serve protocol"));
  }

  void OnClosed(absl::Status status) override {
    if (!status.ok()) Fail(status);
  }

 private:
  http::BodyWriter* Writer() {
    absl::MutexLock lock(&mu_);
    return writer_;
  }

  // Down: a body chunk and/or the end, from the worker to the platform.
  // While one chunk is written to the platform's socket, the next message
  // is already read from the tunnel and held: socket and stream work at
  // once, and at most one message waits here (the stream's window holds
  // the rest).
  void Down(std::string body, std::optional<tunnel::v1::BodyEnd> end) {
    {
      absl::MutexLock lock(&mu_);
      if (down_busy_) {
        BROKER_CHECK(!held_.has_value());  // one read ahead at most
        held_.emplace(std::move(body), std::move(end));
        return;
      }
      down_busy_ = true;
    }
    StartDown(std::move(body), std::move(end));
  }

  // With down_busy_ set: writes `body`, then the end if any.
  void StartDown(std::string body, std::optional<tunnel::v1::BodyEnd> end) {
    http::BodyWriter* writer = Writer();
    auto self = shared_from_this();
    if (!body.empty()) {
      if (!end) lane_->ReadNext();  // the read ahead
      writer->Write(std::move(body), [self, end = std::move(end)](
                                         const absl::Status& s) mutable {
        if (!s.ok()) {
          self->Abort(absl::CancelledError(s.message()));
          return;
        }
        if (end) {
          self->StartDown("", std::move(end));
        } else {
          self->DownDone();
        }
      });
      return;
    }
    if (!end) {
      DownDone();
      return;
    }
    if (end->aborted()) {
      writer->Abort();
      End(absl::DataLossError("the origin's body was cut short"));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      worker_keeps_lane_ = end->keep_lane();
    }
    writer->Finish([self](const absl::Status& s) { self->End(s); });
  }

  // A chunk is on the platform's socket: write the held message, if one
  // arrived meanwhile.
  void DownDone() {
    std::optional<std::pair<std::string, std::optional<tunnel::v1::BodyEnd>>>
        next;
    {
      absl::MutexLock lock(&mu_);
      if (held_) {
        next = std::move(held_);
        held_.reset();
      } else {
        down_busy_ = false;
      }
    }
    if (next) StartDown(std::move(next->first), std::move(next->second));
  }

  // Closes the lane unless the exchange already ended: after End() the
  // lane may be parked again and serving another request.
  void Abort(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return;
      aborted_ = true;  // our decision: never a reason to re-send
    }
    lane_->Close(status);
  }

  // The upload side is complete (ok) or broken. True when the answer had
  // ended already and was waiting for this to settle the lane: the caller
  // then reparks (ok) or closes it.
  bool SettleUp(bool ok) {
    absl::MutexLock lock(&mu_);
    up_done_ = ok;
    const bool waiting = awaiting_up_;
    awaiting_up_ = false;
    return waiting;
  }

  // The exchange ended (well or not): give the worker's slot back, then
  // park the lane again when both sides completed and the worker keeps
  // it, else close it.
  void End(const absl::Status& status) {
    bool repark = false;
    bool wait_for_up = false;
    absl::Duration latency;
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return;
      ended_ = true;
      latency = latency_;
      if (status.ok() && worker_keeps_lane_) {
        repark = up_done_;
        wait_for_up = !up_done_;
        awaiting_up_ = wait_for_up;
      }
    }
    timer_.cancel();
    registry_.Release(request_.token_hash, client_id_, latency);
    if (repark) {
      lane_->Repark();
    } else if (!wait_for_up) {
      lane_->Close(status.ok() ? absl::OkStatus()
                               : absl::CancelledError(status.message()));
    }
  }

  // Something broke: answer 502/504 if nothing was sent yet, else abort.
  void Fail(const absl::Status& status) {
    bool started = false;
    bool resend = false;
    http::BodyWriter* writer = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return;
      started = response_started_;
      resend = !started && !aborted_ && request_.attempt < kMaxResends &&
               MayResend(exchange_->request(), request_) &&
               absl::Now() < request_.deadline;
      if (resend) {
        ended_ = true;
      } else {
        response_started_ = true;
      }
      writer = writer_;
    }
    if (resend) {
      Resend(status);
      return;
    }
    BROKER_LOG(kServer, kWarn,
               {{"request_id", request_.request_id},
                {"hashed_token", request_.token_hash},
                {"client_id", client_id_},
                {"error", status.ToString()},
                {"answer_started", started}},
               "relayed request failed");
    if (started) {
      // Head sent (or being sent): end as a truncated transfer.
      if (writer != nullptr) writer->Abort();
    } else {
      if (status.code() == absl::StatusCode::kDeadlineExceeded) {
        exchange_->RespondSimple(504,
                                 {{"content-type", "application/json"},
                                  {"x-broker-failure", "timeout"},
                                  {"snyk-request-id", request_.request_id}},
                                 R"({"ok":false,"code":"TIMEOUT"})");
      } else {
        RespondTunnelError(*exchange_, request_.request_id);
      }
    }
    End(status);
  }

  // Failover: gives this lane up and sends the request again on a lane of
  // another worker (the broken one is avoided).
  void Resend(const absl::Status& status) {
    timer_.cancel();
    registry_.Release(request_.token_hash, client_id_);
    lane_->Close(absl::UnavailableError("re-sent on another worker"));
    BROKER_LOG(kServer, kInfo,
               {{"request_id", request_.request_id},
                {"hashed_token", request_.token_hash},
                {"client_id", client_id_},
                {"error", status.ToString()},
                {"attempt", request_.attempt + 1}},
               "re-sending a request whose worker failed");
    if (request_.metrics != nullptr) {
      request_.metrics->CountFailover(ServerMetrics::Failover::kResend);
    }
    RelayRequest again = request_;
    ++again.attempt;
    const std::string token_hash = again.token_hash;
    const absl::Duration wait =
        std::min(kResendLaneWait, again.deadline - absl::Now());
    // The body was consumed by the first attempt: replay the held copy.
    std::shared_ptr<http::Exchange> exchange =
        again.held_body == nullptr
            ? exchange_
            : WithBufferedBody(io_, again.unbuffered, *again.held_body);
    registry_.TakeOrWait(
        io_, token_hash, wait,
        [&io = io_, &registry = registry_, exchange = std::move(exchange),
         again = std::move(again)](
            std::optional<TunnelRegistry::Taken> lane) mutable {
          if (!lane) {
            // A request another server forwarded here, whose workers have
            // all left this server meanwhile (a drain moving them): say
            // there is no tunnel here, which makes that server wait for
            // the workers at home instead of failing the request.
            if (IsForwarded(exchange->request()) &&
                !registry.HasWorkers(again.token_hash)) {
              RespondNoConnection(*exchange, again.request_id);
              return;
            }
            RespondTunnelError(*exchange, again.request_id);
            return;
          }
          StartRelay(io, registry, *std::move(lane), std::move(exchange),
                     std::move(again));
        },
        /*avoid=*/client_id_);
  }

  boost::asio::io_context& io_;
  TunnelRegistry& registry_;
  const std::shared_ptr<Lane> lane_;
  const std::string client_id_;
  const std::shared_ptr<http::Exchange> exchange_;
  const RelayRequest request_;
  boost::asio::steady_timer timer_;
  absl::Time sent_at_;  // set in Start(), before any callback
  // The upload: a message in flight to the worker (and whether it is the
  // request's last), and those held behind it.
  struct UpMessage {
    ServeDown message;
    bool is_end;
    bool read_next;
  };

  absl::Mutex mu_;
  http::BodyWriter* writer_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool response_started_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;  // platform gone or deadline
  // Until the answer's head, for the registry's choice of worker.
  absl::Duration latency_ ABSL_GUARDED_BY(mu_);
  // Lane reuse: the worker's end said keep_lane; our end (or head without
  // body) was sent; the answer ended before that send completed.
  bool worker_keeps_lane_ ABSL_GUARDED_BY(mu_) = false;
  // The answer's body: a platform write in progress, and the message read
  // ahead of it.
  bool down_busy_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<std::pair<std::string, std::optional<tunnel::v1::BodyEnd>>>
      held_ ABSL_GUARDED_BY(mu_);
  bool up_done_ ABSL_GUARDED_BY(mu_) = false;
  bool awaiting_up_ ABSL_GUARDED_BY(mu_) = false;
  bool up_sending_ ABSL_GUARDED_BY(mu_) = false;
  bool up_in_flight_is_end_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<UpMessage> up_held_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

bool IsHopByHopHeader(absl::string_view name) {
  for (absl::string_view hop :
       {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
        "te", "trailer", "upgrade", "content-length"}) {
    if (absl::EqualsIgnoreCase(name, hop)) return true;
  }
  return false;
}

void StartRelay(boost::asio::io_context& io, TunnelRegistry& registry,
                TunnelRegistry::Taken taken,
                std::shared_ptr<common::http::Exchange> exchange,
                RelayRequest request) {
  std::make_shared<RelayCall>(io, registry, std::move(taken),
                              std::move(exchange), std::move(request))
      ->Start();
}

}  // namespace broker::server
