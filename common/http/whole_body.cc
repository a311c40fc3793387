#include "common/http/whole_body.h"

#include "absl/strings/str_cat.h"

#include <utility>

namespace broker::common::http {
namespace {

absl::Status TooLarge(std::uint64_t max_bytes) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "the request body is over the ", max_bytes, " bytes read whole here"));
}

// One ReadWholeBody(): reads chunk after chunk (each handler runs on the
// exchange's strand, after the Read() call returned) until `last`.
class WholeBodyRead : public std::enable_shared_from_this<WholeBodyRead> {
 public:
  WholeBodyRead(std::shared_ptr<Exchange> exchange, std::uint64_t max_bytes,
                absl::AnyInvocable<void(absl::StatusOr<std::string>) &&> done)
      : exchange_(std::move(exchange)),
        max_bytes_(max_bytes),
        done_(std::move(done)) {}

  void Next() {
    exchange_->body().Read(
        [self = shared_from_this()](const absl::Status& status,
                                    const BodyChunk& chunk) {
          if (!status.ok()) {
            std::move(self->done_)(status);
            return;
          }
          if (chunk.data.size() > self->max_bytes_ - self->body_.size()) {
            std::move(self->done_)(TooLarge(self->max_bytes_));
            return;
          }
          self->body_ += chunk.data;
          if (chunk.last) {
            std::move(self->done_)(std::move(self->body_));
            return;
          }
          self->Next();
        });
  }

 private:
  const std::shared_ptr<Exchange> exchange_;
  const std::uint64_t max_bytes_;
  absl::AnyInvocable<void(absl::StatusOr<std::string>) &&> done_;
  std::string body_;  // touched by one handler at a time
};

}  // namespace

void ReadWholeBody(
    std::shared_ptr<Exchange> exchange, std::uint64_t max_bytes,
    absl::AnyInvocable<void(absl::StatusOr<std::string>) &&> done) {
  const auto& declared = exchange->request().content_length;
  if (declared && *declared > max_bytes) {
    std::move(done)(TooLarge(max_bytes));
    return;
  }
  std::make_shared<WholeBodyRead>(std::move(exchange), max_bytes,
                                  std::move(done))
      ->Next();
}

}  // namespace broker::common::http
