#include "services/webhook/request_body.h"

#include "common/status.h"

#include "absl/strings/str_cat.h"

#include <algorithm>
#include <utility>

namespace broker::webhook {
namespace {

namespace http = common::http;

// The reader's position lives in a shared block: a handler still pending
// when the client drops the reader stays valid.
class FromStartReader final : public http::BodyReader {
 public:
  explicit FromStartReader(std::shared_ptr<RequestBody> body)
      : state_(std::make_shared<State>()) {
    state_->body = std::move(body);
  }

  void Read(ReadHandler handler) override {
    state_->body->ReadAt(
        state_->offset,
        [state = state_, handler = std::move(handler)](
            absl::Status status, http::BodyChunk chunk) mutable {
          if (status.ok()) state->offset += chunk.data.size();
          std::move(handler)(std::move(status), std::move(chunk));
        });
  }

 private:
  struct State {
    std::shared_ptr<RequestBody> body;
    std::uint64_t offset = 0;  // one Read at a time moves it
  };
  const std::shared_ptr<State> state_;
};

}  // namespace

RequestBody::RequestBody(std::shared_ptr<http::Exchange> exchange,
                         std::uint64_t retry_limit, std::int64_t length,
                         bool keep_copy)
    : exchange_(std::move(exchange)),
      retry_limit_(retry_limit),
      length_(length),
      keep_copy_(keep_copy) {}

std::shared_ptr<RequestBody> RequestBody::Streamed(
    std::shared_ptr<http::Exchange> exchange, std::uint64_t retry_limit) {
  const http::RequestHead& head = exchange->request();
  std::int64_t length = 0;
  if (head.content_length) {
    length = static_cast<std::int64_t>(*head.content_length);
  } else if (head.chunked) {
    length = -1;
  }
  const bool keep_copy =
      !(head.content_length && *head.content_length > retry_limit);
  auto body = std::make_shared<RequestBody>(std::move(exchange), retry_limit,
                                            length, keep_copy);
  if (length == 0) {
    absl::MutexLock lock(&body->mu_);
    body->complete_ = true;
  }
  return body;
}

std::shared_ptr<RequestBody> RequestBody::Held(std::string body) {
  const auto length = static_cast<std::int64_t>(body.size());
  auto held = std::make_shared<RequestBody>(nullptr, body.size(), length,
                                            /*keep_copy=*/true);
  absl::MutexLock lock(&held->mu_);
  held->consumed_ = body.size();
  held->copy_ = std::move(body);
  held->complete_ = true;
  return held;
}

void RequestBody::ReadAt(std::uint64_t offset, Handler handler) {
  Handler replaced;
  bool start_read = false;
  {
    absl::ReleasableMutexLock lock(&mu_);
    BROKER_CHECK(offset <= consumed_);
    absl::Status failed;
    http::BodyChunk chunk;
    bool now = true;
    if (offset < consumed_) {
      if (!replayable_) {
        failed = absl::FailedPreconditionError(
            "the request body was streamed past the retry buffer");
      } else {
        const std::size_t n = static_cast<std::size_t>(
            std::min<std::uint64_t>(kBodyChunkBytes, consumed_ - offset));
        chunk.data = copy_.substr(static_cast<std::size_t>(offset), n);
        chunk.last = complete_ && offset + n == consumed_;
      }
    } else if (complete_) {
      chunk.last = true;
    } else if (!error_.ok()) {
      failed = error_;
    } else {
      now = false;
    }
    if (now) {
      lock.Release();
      std::move(handler)(std::move(failed), std::move(chunk));
      return;
    }
    replaced = std::move(waiter_);
    waiter_ = std::move(handler);
    start_read = !read_pending_;
    read_pending_ = true;
  }
  if (replaced) {
    std::move(replaced)(absl::CancelledError("a newer attempt reads the body"),
                        {});
  }
  if (start_read) {
    exchange_->body().Read(
        [self = shared_from_this()](const absl::Status& status,
                                    http::BodyChunk read) {
          self->OnSourceRead(status, std::move(read));
        });
  }
}

void RequestBody::OnSourceRead(const absl::Status& status,
                               http::BodyChunk chunk) {
  Handler waiter;
  {
    absl::MutexLock lock(&mu_);
    read_pending_ = false;
    waiter = std::move(waiter_);
    waiter_ = nullptr;
    if (!status.ok()) {
      error_ = status;
    } else {
      consumed_ += chunk.data.size();
      complete_ = chunk.last;
      if (keep_copy_ && consumed_ <= retry_limit_) {
        copy_ += chunk.data;
      } else {
        // Past the retry buffer: what was sent cannot be sent again.
        keep_copy_ = false;
        copy_ = std::string();
        if (consumed_ > 0) replayable_ = false;
      }
    }
  }
  // Every read is started for a waiter, and a replaced waiter hands its
  // place to the newer one, so there is always one here.
  if (waiter) std::move(waiter)(status, std::move(chunk));
}

std::uint64_t RequestBody::consumed() const {
  absl::MutexLock lock(&mu_);
  return consumed_;
}

void RequestBody::Discard(absl::AnyInvocable<void() &&> done) {
  // One read at a time; the handler starts the next one.
  struct Step {
    static void Next(std::shared_ptr<RequestBody> body,
                     absl::AnyInvocable<void() &&> done) {
      const std::uint64_t offset = body->consumed();
      RequestBody& self = *body;
      self.ReadAt(offset, [body = std::move(body), done = std::move(done)](
                              const absl::Status& status,
                              const http::BodyChunk& chunk) mutable {
        if (!status.ok() || chunk.last) {
          std::move(done)();
          return;
        }
        Next(std::move(body), std::move(done));
      });
    }
  };
  Step::Next(shared_from_this(), std::move(done));
}

bool RequestBody::Replayable() const {
  absl::MutexLock lock(&mu_);
  return replayable_;
}

absl::Status RequestBody::error() const {
  absl::MutexLock lock(&mu_);
  return error_;
}

std::unique_ptr<http::BodyReader> ReadFromStart(
    std::shared_ptr<RequestBody> body) {
  return std::make_unique<FromStartReader>(std::move(body));
}

}  // namespace broker::webhook
