#include "services/server/peer_forward.h"

#include "common/logging.h"
#include "services/server/relay.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

#include <algorithm>
#include <atomic>
#include <utility>

namespace broker::server {
namespace {

namespace http = common::http;

// The platform's request body, pulled by the client. The client may drop
// this reader with a Read outstanding: the exchange's answer to that Read
// is then dropped too.
class ExchangeBody final : public http::BodyReader {
 public:
  explicit ExchangeBody(std::shared_ptr<http::Exchange> exchange)
      : exchange_(std::move(exchange)),
        alive_(std::make_shared<std::atomic<bool>>(true)) {}
  ~ExchangeBody() override { alive_->store(false); }

  void Read(ReadHandler handler) override {
    exchange_->body().Read(
        [alive = alive_, handler = std::move(handler)](
            absl::Status status, http::BodyChunk chunk) mutable {
          if (alive->load())
            std::move(handler)(std::move(status), std::move(chunk));
        });
  }

 private:
  const std::shared_ptr<http::Exchange> exchange_;
  const std::shared_ptr<std::atomic<bool>> alive_;
};

// The peer's answer, pumped to the platform one chunk at a time.
class AnswerPump final : public std::enable_shared_from_this<AnswerPump> {
 public:
  AnswerPump(std::shared_ptr<http::Exchange> exchange,
             std::unique_ptr<http::BodyReader> body)
      : exchange_(std::move(exchange)), body_(std::move(body)) {}

  void Start(http::ResponseHead head) {
    auto self = shared_from_this();
    writer_ = &exchange_->Respond(std::move(head),
                                  [self](const absl::Status& status) {
                                    if (status.ok()) {
                                      self->Next();
                                    } else {
                                      self->body_.reset();  // closes the call
                                    }
                                  });
  }

 private:
  void Next() {
    if (body_ == nullptr) {
      writer_->Finish([](const absl::Status&) {});
      return;
    }
    auto self = shared_from_this();
    body_->Read([self](const absl::Status& status, http::BodyChunk chunk) {
      if (!status.ok()) {
        self->writer_->Abort();  // the peer's answer broke: cut it short
        return;
      }
      const bool last = chunk.last;
      self->writer_->Write(
          std::move(chunk.data), [self, last](const absl::Status& written) {
            if (!written.ok()) return;  // platform gone
            if (last) {
              self->writer_->Finish([](const absl::Status&) {});
            } else {
              self->Next();
            }
          });
    });
  }

  const std::shared_ptr<http::Exchange> exchange_;
  std::unique_ptr<http::BodyReader> body_;
  http::BodyWriter* writer_ = nullptr;
};

}  // namespace

bool IsForwarded(const http::RequestHead& request) {
  return std::any_of(request.headers.begin(), request.headers.end(),
                     [](const http::Header& h) {
                       return absl::EqualsIgnoreCase(h.name, kForwardedHeader);
                     });
}

void RespondNoConnection(http::Exchange& exchange,
                         absl::string_view request_id) {
  exchange.RespondSimple(404,
                         {{"content-type", "application/json; charset=utf-8"},
                          {"snyk-request-id", std::string(request_id)},
                          {"x-broker-failure", "no-connection"}},
                         R"({"ok":false})");
}

void ForwardToPeer(http::Client& client,
                   std::shared_ptr<http::Exchange> exchange,
                   const std::string& peer_base_url,
                   const std::string& from_server_id,
                   const std::string& request_id, absl::Time deadline,
                   absl::AnyInvocable<void() &&> tunnel_moved) {
  const http::RequestHead& request = exchange->request();
  http::ClientRequest call;
  call.method = request.method;
  call.url = absl::StrCat(peer_base_url, request.target);
  for (const http::Header& h : request.headers) {
    if (!IsHopByHopHeader(h.name)) call.headers.push_back(h);
  }
  call.headers.push_back({std::string(kForwardedHeader), from_server_id});
  call.headers.push_back({"snyk-request-id", request_id});
  const bool has_body =
      request.chunked || request.content_length.value_or(0) > 0;
  if (has_body) {
    call.body = std::make_unique<ExchangeBody>(exchange);
    call.body_length = request.content_length;
  }
  call.deadline = deadline;
  auto cancellation = std::make_shared<http::CallCancellation>();
  call.cancellation = cancellation;
  exchange->OnCancel([cancellation] { cancellation->Cancel(); });
  if (has_body) tunnel_moved = nullptr;  // the body is being sent: no retry
  client.Send(
      std::move(call),
      [exchange, request_id, peer_base_url,
       tunnel_moved = std::move(tunnel_moved)](
          absl::StatusOr<http::ClientResponse> answer) mutable {
        const bool moved =
            !answer.ok() ||
            (answer->head.status == 404 &&
             std::any_of(answer->head.headers.begin(),
                         answer->head.headers.end(), [](const http::Header& h) {
                           return absl::EqualsIgnoreCase(h.name,
                                                         "x-broker-failure") &&
                                  h.value == "no-connection";
                         }));
        if (moved && tunnel_moved) {
          BROKER_LOG(kServer, kInfo,
                     {{"request_id", request_id}, {"peer", peer_base_url}},
                     "the server that held the tunnel no longer does; "
                     "waiting for the token's workers here");
          std::move(tunnel_moved)();
          return;
        }
        if (!answer.ok()) {
          BROKER_LOG(kServer, kWarn,
                     {{"request_id", request_id},
                      {"peer", peer_base_url},
                      {"error", answer.status().ToString()}},
                     "forwarding to the server holding the tunnel failed");
          exchange->RespondSimple(502,
                                  {{"content-type", "application/json"},
                                   {"x-broker-failure", "error-forwarding"},
                                   {"snyk-request-id", request_id}},
                                  R"({"ok":false,"code":"ERROR_FORWARDING"})");
          return;
        }
        http::ResponseHead head;
        head.status = answer->head.status;
        for (const http::Header& h : answer->head.headers) {
          if (!IsHopByHopHeader(h.name)) head.headers.push_back(h);
        }
        head.content_length = answer->head.content_length;
        std::make_shared<AnswerPump>(std::move(exchange),
                                     std::move(answer->body))
            ->Start(std::move(head));
      });
}

}  // namespace broker::server
