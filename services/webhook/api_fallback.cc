#include "services/webhook/api_fallback.h"

#include "common/status.h"
#include "common/token.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

#include <utility>

namespace broker::webhook {
namespace {

namespace http = common::http;

// Streams the API's answer to the SCM: one read, then one write, at a time.
class FallbackAnswer : public std::enable_shared_from_this<FallbackAnswer> {
 public:
  FallbackAnswer(std::shared_ptr<http::Exchange> exchange,
                 std::string request_id, ApiFallback::Done done)
      : exchange_(std::move(exchange)),
        request_id_(std::move(request_id)),
        done_(std::move(done)) {}

  void OnResponse(absl::StatusOr<http::ClientResponse> response) {
    if (!response.ok()) {
      if (response.status().code() == absl::StatusCode::kCancelled) {
        End(Outcome::kCancelled);
        return;
      }
      const absl::string_view code =
          http::DownstreamErrorCode(response.status());
      RespondError(*exchange_, code == "DOWNSTREAM_TIMEOUT" ? 504 : 502,
                   "api-unreachable", code,
                   absl::StrCat("no tunnel, and the API fallback failed: ",
                                response.status().message()),
                   request_id_);
      End(Outcome::kFailed);
      return;
    }
    http::ResponseHead head;
    head.status = response->head.status;
    head.content_length = response->head.content_length;
    for (http::Header& h : response->head.headers) {
      if (PassedBack(h.name)) head.headers.push_back(std::move(h));
    }
    AddRequestId(head.headers, request_id_);
    reader_ = std::move(response->body);
    // Respond() only posts to the exchange's strand, and its callback
    // takes mu_ (through writer()) after the writer is stored.
    absl::MutexLock lock(&mu_);
    writer_ = &exchange_->Respond(
        std::move(head), [self = shared_from_this()](const absl::Status& s) {
          if (!s.ok()) {
            // An answer that is not valid HTTP, or the SCM left.
            RespondError(
                *self->exchange_, 502, "api-unreachable", "DOWNSTREAM_ERROR",
                "the API's answer could not be passed on", self->request_id_);
            self->End(s.code() == absl::StatusCode::kInvalidArgument
                          ? Outcome::kFailed
                          : Outcome::kCancelled);
            return;
          }
          self->Pump();
        });
  }

 private:
  void Pump() {
    reader_->Read([self = shared_from_this()](const absl::Status& status,
                                              http::BodyChunk chunk) {
      if (!status.ok()) {
        self->writer().Abort();
        self->End(Outcome::kAborted);
        return;
      }
      const bool last = chunk.last;
      self->writer().Write(std::move(chunk.data), [self, last](
                                                      const absl::Status& s) {
        if (!s.ok()) {
          self->End(Outcome::kCancelled);
          return;
        }
        if (!last) {
          self->Pump();
          return;
        }
        self->writer().Finish([self](const absl::Status& finished) {
          self->End(finished.ok() ? Outcome::kFallback : Outcome::kCancelled);
        });
      });
    });
  }

  void End(Outcome outcome) {
    if (done_) std::move(done_)(outcome);
    done_ = nullptr;
  }

  const std::shared_ptr<http::Exchange> exchange_;
  const std::string request_id_;
  ApiFallback::Done done_;
  http::BodyWriter& writer() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return *writer_;
  }

  // Touched by one step of the chain at a time.
  std::unique_ptr<http::BodyReader> reader_;
  absl::Mutex mu_;
  http::BodyWriter* writer_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace

ApiFallback::ApiFallback(std::string base_url, std::string masked_token,
                         std::unique_ptr<http::Client> client)
    : base_url_(std::move(base_url)),
      masked_token_(std::move(masked_token)),
      client_(std::move(client)) {}

absl::StatusOr<std::unique_ptr<ApiFallback>> ApiFallback::Create(
    boost::asio::io_context& io, const WebhookConfig& config) {
  http::ClientOptions options;
  options.ca_file = config.ca_file;
  options.insecure_skip_verify = config.insecure_skip_verify;
  BROKER_ASSIGN_OR_RETURN(std::unique_ptr<http::Client> client,
                          http::Client::Create(io, std::move(options)));
  std::string base = config.api_base_url;
  while (absl::EndsWith(base, "/")) base.pop_back();
  return std::unique_ptr<ApiFallback>(new ApiFallback(
      std::move(base), common::MaskToken(config.token), std::move(client)));
}

void ApiFallback::Forward(std::shared_ptr<http::Exchange> exchange,
                          std::shared_ptr<RequestBody> body, const Event& event,
                          std::shared_ptr<http::CallCancellation> cancellation,
                          Done done) {
  http::ClientRequest request;
  request.method = event.method;
  request.url = absl::StrCat(base_url_, event.url);
  for (const http::Header& h : event.headers) {
    // The broker's own headers are set here, never by the SCM.
    if (absl::EqualsIgnoreCase(h.name, "x-snyk-broker") ||
        absl::EqualsIgnoreCase(h.name, "x-broker-token")) {
      continue;
    }
    request.headers.push_back(h);
  }
  request.headers.push_back({"x-snyk-broker", masked_token_});
  if (body->length() != 0) {
    if (body->length() > 0) {
      request.body_length = static_cast<std::uint64_t>(body->length());
    }
    request.body = ReadFromStart(std::move(body));
  }
  request.deadline = event.deadline;
  request.cancellation = std::move(cancellation);
  auto answer = std::make_shared<FallbackAnswer>(
      std::move(exchange), event.request_id, std::move(done));
  client_->Send(std::move(request),
                [answer](absl::StatusOr<http::ClientResponse> response) {
                  answer->OnResponse(std::move(response));
                });
}

}  // namespace broker::webhook
