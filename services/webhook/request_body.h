#pragma once

// The request body of one webhook event: read once from the SCM's exchange
// and handed to each delivery attempt from its start, so that an attempt
// that failed can be sent again to another worker. The bytes read so far
// are kept while they fit the retry buffer; past it the copy is dropped
// and the body can no longer be replayed (docs/webhook.md, "Retries").

#include "common/http/server.h"

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace broker::webhook {

// Largest body chunk handed out (and so the largest gRPC body message).
inline constexpr std::size_t kBodyChunkBytes = std::size_t{64} * 1024;

// Thread-safe. Handlers run either inside ReadAt() (bytes already held) or
// on the exchange's strand (bytes read now), never under a lock.
class RequestBody : public std::enable_shared_from_this<RequestBody> {
 public:
  using Handler =
      absl::AnyInvocable<void(absl::Status, common::http::BodyChunk) &&>;

  // Reads `exchange`'s body as attempts ask for it, keeping a copy while
  // the bytes read fit `retry_limit` (none at all when the declared
  // Content-Length is over it).
  static std::shared_ptr<RequestBody> Streamed(
      std::shared_ptr<common::http::Exchange> exchange,
      std::uint64_t retry_limit);
  // A body read whole before (for body rules): always replayable.
  static std::shared_ptr<RequestBody> Held(std::string body);

  // The RequestHead.body_length of this body: its length when known, -1
  // for a chunked body still streaming, 0 when there is none.
  std::int64_t length() const { return length_; }

  // The bytes from `offset` on (at most kBodyChunkBytes; `last` at the
  // end). `offset` must not pass what was read so far. Offsets inside the
  // part read already are served from the copy, or fail with
  // FailedPrecondition when it was dropped. One reader at a time: a newer
  // call replaces a waiting one, which gets Cancelled. A failed read from
  // the exchange (the SCM left, a body over the limit) fails this and
  // every later read at the end of the part read so far.
  void ReadAt(std::uint64_t offset, Handler handler) ABSL_LOCKS_EXCLUDED(mu_);

  // Reads what is left of the body from the exchange and drops it, then
  // runs `done` (inside the call when nothing is left; else on the
  // exchange's strand), so that an answer given before the whole body
  // was read reaches the SCM rather than a reset connection. Stops at
  // the first read error. For after the last attempt only.
  void Discard(absl::AnyInvocable<void() &&> done) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether an attempt may start again from byte 0.
  bool Replayable() const ABSL_LOCKS_EXCLUDED(mu_);
  // The first error reading from the exchange, or OK.
  absl::Status error() const ABSL_LOCKS_EXCLUDED(mu_);

  RequestBody(std::shared_ptr<common::http::Exchange> exchange,
              std::uint64_t retry_limit, std::int64_t length, bool keep_copy);

 private:
  void OnSourceRead(const absl::Status& status, common::http::BodyChunk chunk)
      ABSL_LOCKS_EXCLUDED(mu_);
  std::uint64_t consumed() const ABSL_LOCKS_EXCLUDED(mu_);

  // Null for a held body.
  const std::shared_ptr<common::http::Exchange> exchange_;
  const std::uint64_t retry_limit_;
  const std::int64_t length_;

  mutable absl::Mutex mu_;
  std::string copy_ ABSL_GUARDED_BY(mu_);  // bytes [0, consumed_) if kept
  bool keep_copy_ ABSL_GUARDED_BY(mu_);
  bool replayable_ ABSL_GUARDED_BY(mu_) = true;
  std::uint64_t consumed_ ABSL_GUARDED_BY(mu_) = 0;
  bool complete_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  bool read_pending_ ABSL_GUARDED_BY(mu_) = false;
  Handler waiter_ ABSL_GUARDED_BY(mu_);
};

// A BodyReader over `body` from byte 0, for the API fallback's client
// call. The client may drop it with a Read outstanding.
std::unique_ptr<common::http::BodyReader> ReadFromStart(
    std::shared_ptr<RequestBody> body);

}  // namespace broker::webhook
