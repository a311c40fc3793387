#include "tests/integration/http_fetch.h"

#include "tests/testing/child_process.h"

#include "absl/synchronization/notification.h"

namespace broker::testing {
namespace {

namespace http = common::http;

// A request body served from a string in 64 KiB chunks.
class StringBody final : public http::BodyReader {
 public:
  explicit StringBody(std::string data) : data_(std::move(data)) {}
  void Read(ReadHandler handler) override {
    constexpr size_t kChunk = size_t{64} * 1024;
    http::BodyChunk chunk;
    chunk.data = data_.substr(offset_, kChunk);
    offset_ += chunk.data.size();
    chunk.last = offset_ >= data_.size();
    std::move(handler)(absl::OkStatus(), std::move(chunk));
  }

 private:
  std::string data_;
  size_t offset_ = 0;
};

// Pulls a response body to the end into `out`.
void Drain(const std::shared_ptr<http::BodyReader>& body, Fetched* out,
           absl::Notification* done) {
  body->Read([body, out, done](const absl::Status& status,
                               const http::BodyChunk& chunk) {
    if (!status.ok()) {
      out->body_status = status;
      done->Notify();
      return;
    }
    out->body += chunk.data;
    if (chunk.last) {
      done->Notify();
      return;
    }
    Drain(body, out, done);
  });
}

}  // namespace

std::string Fetched::Header(absl::string_view name) const {
  auto value = http::FindHeader(headers, name);
  return value ? std::string(*value) : "";
}

Fetcher::Fetcher(http::ClientOptions options) : executor_(2) {
  auto client = http::Client::Create(executor_.io(), std::move(options));
  if (client.ok()) client_ = *std::move(client);
}

Fetcher::~Fetcher() { executor_.Stop(); }

absl::StatusOr<Fetched> Fetcher::Fetch(const std::string& method,
                                       const std::string& url,
                                       http::Headers headers, std::string body,
                                       bool chunked, absl::Duration timeout) {
  if (client_ == nullptr) {
    return absl::FailedPreconditionError("the client options were rejected");
  }
  // The token in a platform URL (/broker/<token>/...) is a secret no
  // broker may log.
  const size_t authority = url.find("://");
  const size_t path = authority == std::string::npos
                          ? std::string::npos
                          : url.find('/', authority + 3);
  if (path != std::string::npos && url.compare(path, 8, "/broker/") == 0) {
    const size_t begin = path + 8;
    const size_t end = url.find_first_of("/?", begin);
    ForbidInChildOutput(url.substr(
        begin, end == std::string::npos ? std::string::npos : end - begin));
  }
  http::ClientRequest request;
  request.method = method;
  request.url = url;
  request.headers = std::move(headers);
  request.deadline = absl::Now() + timeout;
  if (!body.empty() || chunked) {
    if (!chunked) request.body_length = body.size();
    request.body = std::make_unique<StringBody>(std::move(body));
  }
  Fetched out;
  absl::Status error;
  absl::Notification done;
  client_->Send(
      std::move(request), [&](absl::StatusOr<http::ClientResponse> response) {
        if (!response.ok()) {
          error = response.status();
          done.Notify();
          return;
        }
        out.status = response->head.status;
        out.headers = response->head.headers;
        Drain(std::shared_ptr<http::BodyReader>(std::move(response->body)),
              &out, &done);
      });
  if (!done.WaitForNotificationWithTimeout(timeout + absl::Seconds(5))) {
    return absl::DeadlineExceededError("the fetch never completed");
  }
  if (!error.ok()) return error;
  return out;
}

}  // namespace broker::testing
