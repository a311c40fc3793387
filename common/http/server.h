#pragma once

// An asynchronous HTTP/1.1 server on Boost.Beast (one session per
// connection, a strand each, timeouts on every read and write), with
// optional TLS, explicit limits, and streamed bodies in both directions.

#include "common/http/message.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace broker::common::http {

struct ServerLimits {
  std::uint32_t max_header_bytes = 16 * 1024;  // over -> 431
  // Over -> 413 (0: no limit). A declared Content-Length over it is
  // answered before the handler runs; a chunked body that grows over it
  // fails the BodyReader (ResourceExhausted) and is answered 413 if the
  // response has not started, else the connection is closed.
  std::uint64_t max_body_bytes = std::uint64_t{10} * 1024 * 1024;
  // A request head must arrive within this (slowloris guard; 408 when part
  // of it came). Also bounds the TLS handshake and a new connection's wait
  // for its first request.
  absl::Duration header_timeout = absl::Seconds(30);
  absl::Duration idle_timeout = absl::Seconds(60);  // between requests
  absl::Duration io_timeout = absl::Seconds(60);    // each body read/write
};

struct ServerOptions {
  std::string address = "0.0.0.0";
  int port = 0;  // 0: any free port; Start() returns it
  ServerLimits limits;
  // TLS (1.2 and later) when both are set (PEM files).
  std::string tls_cert_file;
  std::string tls_key_file;
};

// One request being answered. The server calls the handler on the
// session's strand; the methods may be called from any thread (they post to
// the strand, so calls made from one thread keep their order) and every
// callback runs on the strand, never inside the call that registered it.
//
// Protocol: read the body with body() until `last` or an error; answer with
// Respond() (head) and then write the body through the returned writer, or
// with RespondSimple() for a small complete answer. The handler may answer
// before reading the whole body: the server then discards a small rest
// (256 KiB) to keep the connection, or closes it.
//
// Lifetime: the reader and the writer belong to the exchange; keep the
// exchange while using them. Releasing the last reference without an
// answer makes the server answer 500 (or cut a started answer short).
// Release every exchange before the io_context is destroyed.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual const RequestHead& request() const = 0;
  // The client's IP address ("127.0.0.1", "::1").
  virtual std::string remote_address() const = 0;
  virtual BodyReader& body() = 0;
  // Sends the head; the writer streams the body. `done` runs when the head
  // is written (or failed). An invalid head (status outside 200..999, a
  // header name that is not a token, CR/LF in a value) fails `done` with
  // InvalidArgument and starts nothing. Content-Length, Transfer-Encoding
  // and Connection headers are the server's: "Connection: close" in
  // `head.headers` closes the connection after this answer; the others are
  // dropped. A Write() past Content-Length fails with OutOfRange and sends
  // nothing; Finish() short of it cuts the answer off (an error for the
  // client). Empty writes are no-ops; HEAD answers drop written data.
  virtual BodyWriter& Respond(ResponseHead head,
                              BodyWriter::DoneHandler done) = 0;
  // A complete answer whose body is all here: head and body leave in one
  // write, and `done` runs when the last byte is written (or failed). The
  // head is checked as by Respond(); a Content-Length in it must equal
  // body.size() (InvalidArgument otherwise, nothing sent). HEAD answers
  // drop the body.
  virtual void RespondWhole(ResponseHead head, std::string body,
                            BodyWriter::DoneHandler done) = 0;
  // A complete answer with a small body (errors, JSON status pages).
  // Ignored if an answer was already started (by the handler, or by the
  // server after a body error); an invalid one is replaced by a 500.
  virtual void RespondSimple(int status, Headers headers, std::string body) = 0;
  // Called at most once if the connection is lost before the answer ended:
  // the client disconnected (or half-closed), a read or write timed out or
  // failed, or Shutdown()'s deadline passed. Not called after Abort().
  // Registered after the loss, the callback runs at once.
  virtual void OnCancel(absl::AnyInvocable<void() &&> callback) = 0;
};

using Handler = std::function<void(std::shared_ptr<Exchange>)>;

// Thread-safe, except that Start() must return before Shutdown() is called.
class Server {
 public:
  // `io` must be run by the caller's threads (see common/executor.h).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Server>> Create(
      boost::asio::io_context& io, ServerOptions options, Handler handler);
  // Shuts down with a deadline of now if Shutdown() was not called.
  virtual ~Server() = default;
  // Binds and starts accepting; returns the bound port. Once only.
  [[nodiscard]] virtual absl::StatusOr<int> Start() = 0;
  // Stops accepting and closes idle connections; exchanges in progress may
  // finish until `deadline` (their connections close after the answer),
  // then their connections are closed. Blocks until the port and every
  // connection are closed (at most a few seconds past `deadline`), so it
  // needs `io` running on other threads: do not call it from an io thread.
  virtual void Shutdown(absl::Time deadline) = 0;
};

}  // namespace broker::common::http
