#pragma once

// A streaming HTTP/1.1 client on Boost.Beast for calls to private origins:
// HTTP or HTTPS (OpenSSL, verification on, SNI), a deadline per call, the
// request body pulled from a BodyReader and the response body handed out as
// a BodyReader, so neither is held whole in memory.

#include "common/http/message.h"

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace broker::common::http {

struct ClientOptions {
  // Extra PEM CA bundle trusted besides the system store (CA_CERT).
  std::string ca_file;
  // Only for tests of the failure path; never set from configuration.
  bool insecure_skip_verify = false;
  absl::Duration connect_timeout = absl::Seconds(10);
  // Keep-alive: a connection whose exchange ended cleanly waits, idle, for
  // the next call to the same scheme, host and port. It is closed after
  // `idle_timeout` unused, and at most `max_idle_per_origin` wait per
  // origin (0 turns reuse off: a new connection per call).
  absl::Duration idle_timeout = absl::Seconds(15);
  int max_idle_per_origin = 128;
};

// Lets the caller give up on a call it started (the platform went away):
// the call closes its connection, and the response handler, or a body Read
// in flight, gets CANCELLED. Thread-safe; cancelling twice, or after the
// call ended, does nothing.
class CallCancellation {
 public:
  void Cancel() ABSL_LOCKS_EXCLUDED(mu_);
  // Used by the client: `on_cancel` runs once, at Cancel() or at once if
  // Cancel() came first.
  void OnCancel(absl::AnyInvocable<void() &&> on_cancel)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  absl::AnyInvocable<void() &&> on_cancel_ ABSL_GUARDED_BY(mu_);
};

struct ClientRequest {
  std::string method;
  // Absolute: http(s)://host[:port]/path?query. Userinfo (user:pass@) is
  // ignored, never sent: the caller turns it into Authorization. Error
  // messages name host:port only, never the URL.
  std::string url;
  Headers headers;  // sent as given; Host and framing are set by the client
  // The request body, or null for none. With a known length the client
  // sends Content-Length, otherwise chunked. The client destroys it on an
  // io thread when the call ends, possibly with a Read outstanding (after a
  // failure or the deadline): the reader must allow that, and its handler
  // may then never run.
  std::unique_ptr<BodyReader> body;
  std::optional<std::uint64_t> body_length;
  absl::Time deadline = absl::InfiniteFuture();
  // Optional: keep a copy to cancel the call.
  std::shared_ptr<CallCancellation> cancellation;
};

// The origin's answer: the head, and the body to pull. Errors while
// reading the body (origin died mid-body, deadline) come out of the reader.
// Read() may be called from any thread; its handler runs on an io thread.
// Dropping the reader before `last` closes the connection; a Read still
// pending then is dropped without running.
struct ClientResponse {
  ResponseHead head;
  std::unique_ptr<BodyReader> body;
};

// Error codes of a failed call, as Snyk Broker names them.
//   kUnavailable      -> "DOWNSTREAM_UNREACHABLE" (refused, DNS failure)
//   kDeadlineExceeded -> "DOWNSTREAM_TIMEOUT"
//   anything else     -> "DOWNSTREAM_ERROR"
//   OK                -> ""
absl::string_view DownstreamErrorCode(const absl::Status& status);

class Client {
 public:
  using ResponseHandler =
      absl::AnyInvocable<void(absl::StatusOr<ClientResponse>) &&>;
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Client>> Create(
      boost::asio::io_context& io, ClientOptions options);
  virtual ~Client() = default;
  // Starts one call; `done` runs once, on an io thread, with the response
  // head (and body reader) or the error. Thread-safe. The call reuses an
  // idle keep-alive connection to the same origin when there is one; a
  // request without body whose reused connection turns out closed by the
  // origin before any answer is sent again once on a new connection.
  // `request.deadline` bounds the whole call, body included. The Client may be
  // destroyed while calls are in flight; they finish on `io`. Destroying `io`
  // destroys the handlers of unfinished calls without running them.
  virtual void Send(ClientRequest request, ResponseHandler done) = 0;
};

}  // namespace broker::common::http
