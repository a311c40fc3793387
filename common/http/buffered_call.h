#pragma once

// One small HTTP exchange with the whole answer collected, on the
// project's streaming client (common/http/client.h): for the dispatcher's
// JSON:API answers and the preflight health checks, never for bodies that
// may be large (the answer is cut off at `max_body_bytes`).

#include "common/http/client.h"
#include "common/http/message.h"

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <cstddef>
#include <string>

namespace broker::common::http {

struct BufferedResponse {
  int status = 0;
  Headers headers;
  std::string body;
};

struct BufferedRequest {
  std::string method = "GET";
  std::string url;
  Headers headers;
  std::string body;  // sent with Content-Length when not empty
  absl::Time deadline = absl::InfiniteFuture();
  size_t max_body_bytes = size_t{64} * 1024;
};

using BufferedDone =
    absl::AnyInvocable<void(absl::StatusOr<BufferedResponse>) &&>;

// Sends `request` and runs `done` once, on a client io thread: with the
// answer, or with the client's error (Unavailable, DeadlineExceeded, ...);
// a body over `max_body_bytes` is ResourceExhausted.
void SendBuffered(Client& client, BufferedRequest request, BufferedDone done);

}  // namespace broker::common::http
