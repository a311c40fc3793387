#include "common/http/server.h"

// Design (see also server.h):
//
// Listener: one acceptor on its own strand; each accepted socket gets a new
// strand (net::make_strand) and a Session.
//
// Session: one per connection, owned by shared_ptr (the pending operations,
// the timers and the ExchangeImpl of the current request hold it). Every
// member is touched only on the session's strand; ExchangeImpl methods post
// to it. The session runs one request at a time:
//
//   ReadHeader -> handler(Exchange) -> [body reads] -> response writes
//     -> (drain the unread body) -> idle -> ReadHeader ...
//
// At most one read and one write are in flight on the socket. Writes go
// through a small queue (the head, one body chunk, the final chunk, an
// interim 100 Continue). Once the request body is fully read, the session
// keeps a small read pending ("watch") so it notices a client that goes
// away while the handler waits; bytes it receives are kept in buffer_ for
// the next (pipelined) request.

#include "common/status.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace broker::common::http {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;

// Largest chunk a BodyReader hands out (and the size of one body read).
constexpr std::size_t kMaxChunkBytes = std::size_t{64} * 1024;
// Size of the reads that wait for the next request or watch for a
// disconnect: request heads are small, and idle connections are many.
constexpr std::size_t kSmallReadBytes = std::size_t{4} * 1024;
// A response may end before the handler read the whole request body. Up to
// this much of the rest is read and discarded to keep the connection;
// beyond it the connection is closed (Go's net/http uses the same figure).
constexpr std::uint64_t kMaxDrainBytes = std::uint64_t{256} * 1024;
// Closing after a complete response: half-close, then read and discard
// what the client still sends for this long (or this much), so that the
// kernel does not answer unread data with a reset that destroys the
// response in flight.
constexpr absl::Duration kLingerTimeout = absl::Seconds(2);
constexpr std::uint64_t kMaxLingerBytes = std::uint64_t{256} * 1024;
// Shutdown() waits this long past its deadline for the sockets to close.
constexpr absl::Duration kShutdownGrace = absl::Seconds(5);
constexpr std::chrono::milliseconds kAcceptRetryDelay(50);
constexpr absl::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr absl::string_view kCrlf = "\r\n";

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return std::chrono::steady_clock::duration{};
  if (d == absl::InfiniteDuration()) {
    return std::chrono::steady_clock::duration::max();
  }
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      absl::ToChronoNanoseconds(d));
}

absl::Status IoError(absl::string_view what, const beast::error_code& ec) {
  if (ec == beast::error::timeout) {
    return absl::DeadlineExceededError(absl::StrCat(what, ": timed out"));
  }
  return absl::UnavailableError(absl::StrCat(what, ": ", ec.message()));
}

bool IsHttpError(const beast::error_code& ec) {
  return ec.category() ==
         bhttp::make_error_code(bhttp::error::bad_method).category();
}

// The connection broke (peer gone, timeout, closed by us), as opposed to
// the peer sending something malformed.
bool IsConnectionLost(const beast::error_code& ec) {
  return ec == bhttp::error::end_of_stream ||
         ec == bhttp::error::partial_message || ec == net::error::eof ||
         ec == net::error::connection_reset ||
         ec == net::error::connection_aborted ||
         ec == net::error::broken_pipe || ec == net::error::operation_aborted ||
         ec == beast::error::timeout || ec == ssl::error::stream_truncated;
}

// RFC 9110 token characters (header names).
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c))) continue;
    if (!absl::StrContains("!#$%&'*+-.^_`|~", c)) return false;
  }
  return true;
}

bool IsFieldValue(absl::string_view s) {
  return s.find_first_of(absl::string_view("\r\n\0", 3)) ==
         absl::string_view::npos;
}

// Whether a Connection header value lists the `close` option.
bool ListsClose(absl::string_view value) {
  for (absl::string_view option : absl::StrSplit(value, ',')) {
    if (absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(option), "close")) {
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------
// Response heads.

enum class BodyMode {
  kNone,        // HEAD, 204, 304: no body whatever the headers say
  kLength,      // Content-Length
  kChunked,     // Transfer-Encoding: chunked
  kUntilClose,  // HTTP/1.0 client, unknown length: the end is the close
};

// What the request allows for its response.
struct ResponseContext {
  bool head_request = false;
  bool http10 = false;
  bool keep_alive = true;  // the request and the server allow keep-alive
};

struct ResponsePlan {
  std::string head;  // status line, headers, blank line
  BodyMode mode = BodyMode::kNone;
  std::uint64_t length = 0;  // kLength: body bytes to send
  bool keep_alive = true;
};

absl::StatusOr<ResponsePlan> PlanResponse(
    int status, const Headers& headers,
    std::optional<std::uint64_t> content_length, const ResponseContext& ctx) {
  if (status < 200 || status > 999) {
    return absl::InvalidArgumentError(
        absl::StrCat("response status ", status, " is not in [200, 999]"));
  }
  ResponsePlan plan;
  plan.keep_alive = ctx.keep_alive;
  const bhttp::status known =
      bhttp::int_to_status(static_cast<unsigned>(status));
  std::string_view reason;
  if (known != bhttp::status::unknown) reason = bhttp::obsolete_reason(known);
  absl::StrAppend(&plan.head, "HTTP/1.1 ", status, " ",
                  absl::string_view(reason.data(), reason.size()), kCrlf);
  for (const Header& header : headers) {
    if (!IsToken(header.name) || !IsFieldValue(header.value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid response header \"", absl::CEscape(header.name), "\""));
    }
    // Framing and connection management belong to the server.
    if (absl::EqualsIgnoreCase(header.name, "Content-Length") ||
        absl::EqualsIgnoreCase(header.name, "Transfer-Encoding") ||
        absl::EqualsIgnoreCase(header.name, "Keep-Alive")) {
      continue;
    }
    if (absl::EqualsIgnoreCase(header.name, "Connection")) {
      if (ListsClose(header.value)) plan.keep_alive = false;
      continue;
    }
    absl::StrAppend(&plan.head, header.name, ": ", header.value, kCrlf);
  }
  if (ctx.head_request || status == 204 || status == 304) {
    plan.mode = BodyMode::kNone;
    if (content_length.has_value() && status != 204) {
      absl::StrAppend(&plan.head, "Content-Length: ", *content_length, kCrlf);
    }
  } else if (content_length.has_value()) {
    plan.mode = BodyMode::kLength;
    plan.length = *content_length;
    absl::StrAppend(&plan.head, "Content-Length: ", *content_length, kCrlf);
  } else if (ctx.http10) {
    plan.mode = BodyMode::kUntilClose;
    plan.keep_alive = false;
  } else {
    plan.mode = BodyMode::kChunked;
    absl::StrAppend(&plan.head, "Transfer-Encoding: chunked", kCrlf);
  }
  if (!plan.keep_alive) {
    absl::StrAppend(&plan.head, "Connection: close", kCrlf);
  } else if (ctx.http10) {
    absl::StrAppend(&plan.head, "Connection: keep-alive", kCrlf);
  }
  absl::StrAppend(&plan.head, kCrlf);
  return plan;
}

// ---------------------------------------------------------------------------
// A TCP stream, or a TLS stream over TCP: the same session code runs on
// both. It is an AsyncReadStream and an AsyncWriteStream for Beast.

class FlexStream {
 public:
  using TcpStream = beast::tcp_stream;
  using TlsStream = beast::ssl_stream<beast::tcp_stream>;
  using executor_type = TcpStream::executor_type;

  // `tls` null: plain TCP.
  FlexStream(tcp::socket socket, ssl::context* tls)
      : stream_(Make(std::move(socket), tls)) {}

  executor_type get_executor() { return lowest().get_executor(); }

  TcpStream& lowest() {
    return std::visit(
        [](auto& s) -> TcpStream& { return beast::get_lowest_layer(s); },
        stream_);
  }
  TlsStream* tls() { return std::get_if<TlsStream>(&stream_); }

  template <class MutableBuffers, class Handler>
  void async_read_some(const MutableBuffers& buffers, Handler&& handler) {
    std::visit(
        [&](auto& s) {
          s.async_read_some(buffers, std::forward<Handler>(handler));
        },
        stream_);
  }

  template <class ConstBuffers, class Handler>
  void async_write_some(const ConstBuffers& buffers, Handler&& handler) {
    std::visit(
        [&](auto& s) {
          s.async_write_some(buffers, std::forward<Handler>(handler));
        },
        stream_);
  }

 private:
  static std::variant<TcpStream, TlsStream> Make(tcp::socket socket,
                                                 ssl::context* tls) {
    if (tls == nullptr) {
      return std::variant<TcpStream, TlsStream>(std::in_place_type<TcpStream>,
                                                std::move(socket));
    }
    return std::variant<TcpStream, TlsStream>(std::in_place_type<TlsStream>,
                                              std::move(socket), *tls);
  }

  std::variant<TcpStream, TlsStream> stream_;
};

// ---------------------------------------------------------------------------
// State shared by the server object, the listener and every session.
// Thread-safe: the registry is guarded by `mu`; the rest is immutable.

class Session;

struct ServerState {
  ServerState(ServerOptions options_in, Handler handler_in,
              std::unique_ptr<ssl::context> tls_in)
      : options(std::move(options_in)),
        handler(std::move(handler_in)),
        tls(std::move(tls_in)) {}

  // Shutdown() is complete: the port is closed and so is every socket.
  bool Quiet() const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return !accepting && sessions.empty();
  }

  const ServerOptions options;
  const Handler handler;
  const std::unique_ptr<ssl::context> tls;  // null: plain HTTP

  absl::Mutex mu;
  // Sessions whose socket is open.
  std::unordered_map<const Session*, std::weak_ptr<Session>> sessions
      ABSL_GUARDED_BY(mu);
  bool accepting ABSL_GUARDED_BY(mu) = false;  // the port is open
  bool shutting_down ABSL_GUARDED_BY(mu) = false;
};

// ---------------------------------------------------------------------------
// One connection. Every method except the constructor, the destructor,
// Start() and Shutdown() runs on the session's strand (`executor_`).

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<ServerState> server, tcp::socket socket);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Any thread.
  void Start();
  void Shutdown(absl::Time deadline);
  const net::any_io_executor& executor() const { return executor_; }

  // The Exchange operations, posted to the strand by ExchangeImpl.
  void DoRead(std::uint64_t id, BodyReader::ReadHandler handler);
  void DoRespond(std::uint64_t id, const ResponseHead& head,
                 BodyWriter::DoneHandler done);
  void DoWrite(std::uint64_t id, std::string data,
               BodyWriter::DoneHandler done);
  void DoFinish(std::uint64_t id, BodyWriter::DoneHandler done);
  void DoAbort(std::uint64_t id);
  void DoRespondWhole(std::uint64_t id, const ResponseHead& head,
                      std::string body, BodyWriter::DoneHandler done);
  // Queues a planned answer with its whole body; `done` (if any) runs when
  // it is written, then the exchange completes.
  void QueueWholeResponse(std::uint64_t id, ResponsePlan plan, std::string body,
                          absl::AnyInvocable<void(beast::error_code) &&> done);
  void DoRespondSimple(std::uint64_t id, int status, const Headers& headers,
                       std::string body);
  void DoOnCancel(std::uint64_t id, absl::AnyInvocable<void() &&> callback);
  void DoRelease(std::uint64_t id);

 private:
  enum class State {
    kHandshake,      // TLS handshake
    kIdle,           // keep-alive: waiting for the first byte of a request
    kReadingHeader,  // a request head is being read
    kExchange,       // the handler owns the request; response not complete
    kDraining,       // response complete; discarding the unread body
    kClosing,        // last response written; half-closed, lingering
    kClosed,         // socket closed
  };
  enum class ReadKind {
    kNone,
    kHandshake,
    kHeader,
    kBody,
    kWatch,
    kDrain,
    kLinger
  };
  enum class Response { kNotStarted, kStreaming, kFinishing, kDone };
  enum class TimerPurpose { kIdle, kHeader, kLinger };

  static constexpr std::size_t kMaxOpsPerWrite = 8;
  struct WriteOp {
    std::string head;        // status line and headers, or a chunk-size line
    std::string data;        // body bytes
    absl::string_view tail;  // static bytes after `data`
    absl::AnyInvocable<void(beast::error_code) &&> done;
  };

  // The request being answered. Reset for each request.
  struct ExchangeState {
    std::uint64_t id = 0;
    bool open = false;  // handler owns it and the response is not complete
    ResponseContext context;
    bool expect_continue = false;
    bool continue_sent = false;
    // Request body.
    bool body_done = false;
    absl::Status body_error;
    BodyReader::ReadHandler read_handler;
    std::string chunk;
    std::size_t read_capacity = 0;
    bool continue_after_read = false;
    // Response.
    Response response = Response::kNotStarted;
    BodyMode mode = BodyMode::kNone;
    std::uint64_t remaining = 0;
    bool data_write_pending = false;
    bool keep_alive_after = false;
    // Cancellation.
    absl::AnyInvocable<void() &&> cancel_callback;
    bool cancel_fired = false;
  };

  const ServerLimits& limits() const { return server_->options.limits; }
  bool Register();
  void Unregister();

  void OnStart();
  void OnHandshake(const beast::error_code& ec);
  void ReadHeader();
  void OnHeader(const beast::error_code& ec);
  void DispatchRequest();

  void StartBodyRead();
  void OnBodyRead(beast::error_code ec);
  void OnBodyError(const beast::error_code& ec);
  void MaybeWatch();
  void StartWatch();
  void OnWatchRead(const beast::error_code& ec, std::size_t n);

  void OnResponseComplete();
  void ContinueAfterExchange();
  void WaitForNextRequest();
  void DrainRead();
  void OnDrainRead(beast::error_code ec);

  void Enqueue(WriteOp op);
  void WriteNext();
  void OnWrite(const beast::error_code& ec);
  void FailQueuedWrites();
  bool LastBytesInFlight() const;
  absl::AnyInvocable<void(beast::error_code) &&> UserDone(
      BodyWriter::DoneHandler done);
  absl::Status ExchangeStatus(std::uint64_t id) const;
  ResponseContext ContextForResponse() const;
  void SendErrorAndClose(int status, absl::string_view message);

  void CloseGracefully();
  void LingerRead();
  void OnLingerRead(const beast::error_code& ec, std::size_t n);
  void AfterReadWhileClosing();
  void Terminate(absl::Status reason, bool notify_cancel);
  void CloseSocket();

  void ArmTimer(TimerPurpose purpose, absl::Duration after);
  void CancelTimer();
  void OnTimer(const beast::error_code& ec, std::uint64_t generation,
               TimerPurpose purpose);
  void OnShutdown(absl::Time deadline);
  void OnShutdownTimer(const beast::error_code& ec, std::uint64_t generation);

  const std::shared_ptr<ServerState> server_;
  const std::string remote_address_;
  FlexStream stream_;
  const net::any_io_executor executor_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::buffer_body>> parser_;
  net::steady_timer timer_;
  net::steady_timer shutdown_timer_;
  std::uint64_t timer_generation_ = 0;
  std::uint64_t shutdown_generation_ = 0;

  State state_ = State::kHandshake;
  ReadKind read_ = ReadKind::kNone;
  bool write_in_flight_ = false;
  // The first ops_in_flight_ ops of writes_ are the write in flight, whose
  // buffers are write_buffers_.
  std::size_t ops_in_flight_ = 0;
  std::vector<net::const_buffer> write_buffers_;
  std::deque<WriteOp> writes_;
  bool registered_ = false;
  bool socket_closed_ = false;
  absl::Status close_reason_;
  bool shutting_down_ = false;
  bool header_timed_out_ = false;
  bool may_send_more_ = false;  // linger when closing
  bool peer_closed_ = false;    // the client closed during the last write
  std::uint64_t drained_bytes_ = 0;
  std::uint64_t lingered_bytes_ = 0;
  std::string drain_chunk_;
  std::uint64_t last_id_ = 0;
  ExchangeState ex_;
};

// ---------------------------------------------------------------------------
// The Exchange handed to the handler. Thread-safe: request() and
// remote_address() read immutable data; everything else posts to the
// session's strand. Releasing the last reference tells the session.

class ExchangeImpl final : public Exchange {
 public:
  ExchangeImpl(std::shared_ptr<Session> session, std::uint64_t id,
               RequestHead head, std::string remote)
      : session_(std::move(session)),
        id_(id),
        head_(std::move(head)),
        remote_(std::move(remote)) {}
  ~ExchangeImpl() override {
    net::post(session_->executor(),
              [session = session_, id = id_] { session->DoRelease(id); });
  }
  ExchangeImpl(const ExchangeImpl&) = delete;
  ExchangeImpl& operator=(const ExchangeImpl&) = delete;

  const RequestHead& request() const override { return head_; }
  std::string remote_address() const override { return remote_; }
  BodyReader& body() override { return reader_; }

  BodyWriter& Respond(ResponseHead head,
                      BodyWriter::DoneHandler done) override {
    Post([head = std::move(head), done = std::move(done)](
             Session& s, std::uint64_t id) mutable {
      s.DoRespond(id, head, std::move(done));
    });
    return writer_;
  }

  void RespondWhole(ResponseHead head, std::string body,
                    BodyWriter::DoneHandler done) override {
    Post([head = std::move(head), body = std::move(body),
          done = std::move(done)](Session& s, std::uint64_t id) mutable {
      s.DoRespondWhole(id, head, std::move(body), std::move(done));
    });
  }

  void RespondSimple(int status, Headers headers, std::string body) override {
    Post([status, headers = std::move(headers), body = std::move(body)](
             Session& s, std::uint64_t id) mutable {
      s.DoRespondSimple(id, status, headers, std::move(body));
    });
  }

  void OnCancel(absl::AnyInvocable<void() &&> callback) override {
    Post(
        [callback = std::move(callback)](Session& s, std::uint64_t id) mutable {
          s.DoOnCancel(id, std::move(callback));
        });
  }

 private:
  class Reader final : public BodyReader {
   public:
    explicit Reader(ExchangeImpl& exchange) : exchange_(exchange) {}
    void Read(ReadHandler handler) override {
      exchange_.Post(
          [handler = std::move(handler)](Session& s, std::uint64_t id) mutable {
            s.DoRead(id, std::move(handler));
          });
    }

   private:
    ExchangeImpl& exchange_;
  };

  class Writer final : public BodyWriter {
   public:
    explicit Writer(ExchangeImpl& exchange) : exchange_(exchange) {}
    void Write(std::string data, DoneHandler done) override {
      exchange_.Post([data = std::move(data), done = std::move(done)](
                         Session& s, std::uint64_t id) mutable {
        s.DoWrite(id, std::move(data), std::move(done));
      });
    }
    void Finish(DoneHandler done) override {
      exchange_.Post(
          [done = std::move(done)](Session& s, std::uint64_t id) mutable {
            s.DoFinish(id, std::move(done));
          });
    }
    void Abort() override {
      exchange_.Post([](Session& s, std::uint64_t id) { s.DoAbort(id); });
    }

   private:
    ExchangeImpl& exchange_;
  };

  template <class F>
  void Post(F&& f) {
    net::post(session_->executor(),
              [session = session_, id = id_, f = std::forward<F>(f)]() mutable {
                f(*session, id);
              });
  }

  const std::shared_ptr<Session> session_;
  const std::uint64_t id_;
  const RequestHead head_;
  const std::string remote_;
  Reader reader_{*this};
  Writer writer_{*this};
};

// ---------------------------------------------------------------------------
// Session implementation.

std::string RemoteAddress(const tcp::socket& socket) {
  beast::error_code ec;
  const tcp::endpoint endpoint = socket.remote_endpoint(ec);
  if (ec) return "";
  return endpoint.address().to_string();
}

Session::Session(std::shared_ptr<ServerState> server, tcp::socket socket)
    : server_(std::move(server)),
      remote_address_(RemoteAddress(socket)),
      stream_(std::move(socket), server_->tls.get()),
      executor_(stream_.get_executor()),
      // Bounded so that neither a pipelining client nor a long head grows
      // it: a head beyond max_header_bytes fails first.
      buffer_(
          static_cast<std::size_t>(server_->options.limits.max_header_bytes) +
          2 * kMaxChunkBytes),
      timer_(executor_),
      shutdown_timer_(executor_) {}

Session::~Session() { Unregister(); }

void Session::Start() {
  net::post(executor_, [self = shared_from_this()] { self->OnStart(); });
}

void Session::Shutdown(absl::Time deadline) {
  net::post(executor_, [self = shared_from_this(), deadline] {
    self->OnShutdown(deadline);
  });
}

bool Session::Register() {
  absl::MutexLock lock(&server_->mu);
  if (server_->shutting_down) return false;
  server_->sessions.emplace(this, weak_from_this());
  registered_ = true;
  return true;
}

void Session::Unregister() {
  if (!registered_) return;
  registered_ = false;
  absl::MutexLock lock(&server_->mu);
  server_->sessions.erase(this);
}

void Session::OnStart() {
  if (!Register()) {
    CloseSocket();
    return;
  }
  beast::error_code ignored;
  stream_.lowest().socket().set_option(tcp::no_delay(true), ignored);
  if (FlexStream::TlsStream* tls = stream_.tls(); tls != nullptr) {
    state_ = State::kHandshake;
    read_ = ReadKind::kHandshake;
    stream_.lowest().expires_after(ToChrono(limits().header_timeout));
    tls->async_handshake(
        ssl::stream_base::server,
        [self = shared_from_this()](const beast::error_code& ec) {
          self->OnHandshake(ec);
        });
    return;
  }
  ReadHeader();
}

void Session::OnHandshake(const beast::error_code& ec) {
  read_ = ReadKind::kNone;
  if (socket_closed_) return;
  if (ec) {
    CloseSocket();
    return;
  }
  ReadHeader();
}

// --- Request heads ----------------------------------------------------------

void Session::ReadHeader() {
  state_ = State::kReadingHeader;
  parser_.emplace();
  parser_->header_limit(limits().max_header_bytes);
  // Not boost::none for "no limit": Beast 1.74 compares a declared
  // Content-Length with the optional and rejects every body against none.
  parser_->body_limit(limits().max_body_bytes == 0
                          ? std::numeric_limits<std::uint64_t>::max()
                          : limits().max_body_bytes);
  header_timed_out_ = false;
  // Our timer answers 408; the stream's own timeout is only a backstop.
  ArmTimer(TimerPurpose::kHeader, limits().header_timeout);
  stream_.lowest().expires_after(
      ToChrono(limits().header_timeout + kLingerTimeout));
  read_ = ReadKind::kHeader;
  bhttp::async_read_header(
      stream_, buffer_, *parser_,
      [self = shared_from_this()](const beast::error_code& ec, std::size_t) {
        self->OnHeader(ec);
      });
}

void Session::OnHeader(const beast::error_code& ec) {
  read_ = ReadKind::kNone;
  CancelTimer();
  if (socket_closed_) return;
  if (ec) {
    if (header_timed_out_) {
      // A client that sent part of a head gets a 408; an idle one is
      // simply closed.
      if (buffer_.size() > 0) {
        SendErrorAndClose(408, "request header timeout");
      } else {
        CloseSocket();
      }
      return;
    }
    if (ec == bhttp::error::header_limit ||
        ec == bhttp::error::buffer_overflow) {
      SendErrorAndClose(431, "request header fields too large");
      return;
    }
    if (ec == bhttp::error::body_limit) {
      SendErrorAndClose(413, "request body too large");
      return;
    }
    if (IsHttpError(ec) && !IsConnectionLost(ec)) {
      SendErrorAndClose(400, "malformed request");
      return;
    }
    CloseSocket();
    return;
  }
  const auto& req = parser_->get();
  if (req.version() != 10 && req.version() != 11) {
    SendErrorAndClose(505, "HTTP version not supported");
    return;
  }
  // Beast ignores a Transfer-Encoding whose final coding is not chunked;
  // the body length is then unknown, and guessing it is how requests get
  // smuggled (RFC 9112, section 6.3: answer 400 and close).
  if (req.count(bhttp::field::transfer_encoding) > 0 && !parser_->chunked()) {
    SendErrorAndClose(400, "unsupported transfer coding");
    return;
  }
  DispatchRequest();
}

void Session::DispatchRequest() {
  const auto& req = parser_->get();
  RequestHead head;
  head.method = std::string(req.method_string());
  head.target = std::string(req.target());
  for (const auto& field : req) {
    head.headers.push_back(
        {std::string(field.name_string()), std::string(field.value())});
  }
  if (const auto length = parser_->content_length(); length.has_value()) {
    head.content_length = *length;
  }
  head.chunked = parser_->chunked();
  head.keep_alive = parser_->keep_alive();

  ex_ = ExchangeState{};
  ex_.id = ++last_id_;
  ex_.open = true;
  ex_.context.head_request = req.method() == bhttp::verb::head;
  ex_.context.http10 = req.version() == 10;
  ex_.context.keep_alive = head.keep_alive;
  if (!ex_.context.http10) {
    const std::optional<absl::string_view> expect =
        FindHeader(head.headers, "Expect");
    ex_.expect_continue =
        expect.has_value() && absl::EqualsIgnoreCase(*expect, "100-continue");
  }
  ex_.body_done = parser_->is_done();
  state_ = State::kExchange;
  MaybeWatch();
  server_->handler(std::make_shared<ExchangeImpl>(
      shared_from_this(), ex_.id, std::move(head), remote_address_));
}

// --- Request bodies ---------------------------------------------------------

absl::Status Session::ExchangeStatus(std::uint64_t id) const {
  if (id != ex_.id) {
    return absl::FailedPreconditionError("the exchange is over");
  }
  if (socket_closed_) return close_reason_;
  if (!ex_.open) {
    return absl::FailedPreconditionError("the response is complete");
  }
  return absl::OkStatus();
}

void Session::DoRead(std::uint64_t id, BodyReader::ReadHandler handler) {
  if (id != ex_.id) {
    std::move(handler)(absl::FailedPreconditionError("the exchange is over"),
                       {});
    return;
  }
  if (!ex_.body_error.ok()) {
    std::move(handler)(ex_.body_error, {});
    return;
  }
  if (ex_.body_done) {
    std::move(handler)(absl::OkStatus(), BodyChunk{"", true});
    return;
  }
  if (absl::Status status = ExchangeStatus(id); !status.ok()) {
    std::move(handler)(std::move(status), {});
    return;
  }
  if (read_ == ReadKind::kBody) {
    std::move(handler)(
        absl::FailedPreconditionError("a body read is already in flight"), {});
    return;
  }
  BROKER_CHECK(read_ == ReadKind::kNone);
  ex_.read_handler = std::move(handler);
  if (ex_.expect_continue && !ex_.continue_sent &&
      ex_.response == Response::kNotStarted) {
    ex_.continue_sent = true;
    Enqueue(WriteOp{std::string(kContinue), "", "", [](beast::error_code) {}});
  }
  StartBodyRead();
}

void Session::StartBodyRead() {
  std::size_t capacity = kMaxChunkBytes;
  if (const auto remaining = parser_->content_length_remaining();
      remaining.has_value() && *remaining < capacity) {
    capacity = static_cast<std::size_t>(*remaining);
  }
  ex_.chunk.resize(capacity);
  ex_.read_capacity = capacity;
  // Beast sizes each socket read by the buffer's free capacity (at least
  // 512 bytes); a buffer grown only to fit a small head would read the
  // body 512 bytes at a time.
  buffer_.reserve(kMaxChunkBytes);
  auto& body = parser_->get().body();
  body.data = ex_.chunk.data();
  body.size = capacity;
  read_ = ReadKind::kBody;
  stream_.lowest().expires_after(ToChrono(limits().io_timeout));
  bhttp::async_read_some(
      stream_, buffer_, *parser_,
      [self = shared_from_this()](const beast::error_code& ec, std::size_t) {
        self->OnBodyRead(ec);
      });
}

void Session::OnBodyRead(beast::error_code ec) {
  read_ = ReadKind::kNone;
  if (ec == bhttp::error::need_buffer) ec = {};
  // A closed socket has already failed the handler's read.
  if (socket_closed_) return;
  if (ec) {
    OnBodyError(ec);
    return;
  }
  const std::size_t used = ex_.read_capacity - parser_->get().body().size;
  if (used == 0 && !parser_->is_done()) {
    // Only framing (a chunk header) was parsed: read on.
    StartBodyRead();
    return;
  }
  BodyChunk chunk;
  chunk.data = std::move(ex_.chunk);
  chunk.data.resize(used);
  chunk.last = parser_->is_done();
  ex_.chunk = std::string();
  if (chunk.last) {
    ex_.body_done = true;
    MaybeWatch();
  }
  BodyReader::ReadHandler handler = std::move(ex_.read_handler);
  ex_.read_handler = nullptr;
  std::move(handler)(absl::OkStatus(), std::move(chunk));
  if (socket_closed_) return;
  if (state_ == State::kClosing) {
    AfterReadWhileClosing();
    return;
  }
  if (ex_.continue_after_read) {
    ex_.continue_after_read = false;
    ContinueAfterExchange();
  }
}

void Session::OnBodyError(const beast::error_code& ec) {
  // Taken first: closing the socket below would fail it with a vaguer
  // reason than the one computed here.
  BodyReader::ReadHandler handler = std::move(ex_.read_handler);
  ex_.read_handler = nullptr;
  const bool too_large = ec == bhttp::error::body_limit;
  const bool malformed = !too_large && IsHttpError(ec) && !IsConnectionLost(ec);
  if (too_large) {
    ex_.body_error = absl::ResourceExhaustedError(absl::StrCat(
        "the request body exceeds ", limits().max_body_bytes, " bytes"));
  } else if (malformed) {
    ex_.body_error = absl::InvalidArgumentError(
        absl::StrCat("malformed request body: ", ec.message()));
  } else {
    ex_.body_error = IoError("reading the request body", ec);
  }
  if (!too_large && !malformed) {
    // The client is gone (or too slow): nothing can be answered.
    Terminate(ex_.body_error, /*notify_cancel=*/true);
  } else if (ex_.open && ex_.response == Response::kNotStarted) {
    SendErrorAndClose(too_large ? 413 : 400, too_large
                                                 ? "request body too large"
                                                 : "malformed request body");
  } else if (ex_.open) {
    // The response has started: the client must see it cut short.
    Terminate(ex_.body_error, /*notify_cancel=*/false);
  } else if (state_ != State::kClosing) {
    // The response is complete: close without cutting it short.
    CloseGracefully();
  }
  std::move(handler)(ex_.body_error, {});
  if (!socket_closed_ && state_ == State::kClosing) AfterReadWhileClosing();
}

void Session::MaybeWatch() {
  if (ex_.open && ex_.body_done && read_ == ReadKind::kNone &&
      buffer_.size() == 0 && !socket_closed_) {
    StartWatch();
  }
}

// One small read kept pending while the handler works (to see a client
// that disconnects) or while idle (to see the next request). Only started
// with an empty buffer_, which nothing else touches while it is pending.
void Session::StartWatch() {
  BROKER_CHECK(read_ == ReadKind::kNone && buffer_.size() == 0);
  if (state_ == State::kIdle) buffer_.shrink_to_fit();
  read_ = ReadKind::kWatch;
  stream_.lowest().expires_never();
  stream_.async_read_some(
      buffer_.prepare(kSmallReadBytes),
      [self = shared_from_this()](const beast::error_code& ec, std::size_t n) {
        self->OnWatchRead(ec, n);
      });
}

void Session::OnWatchRead(const beast::error_code& ec, std::size_t n) {
  read_ = ReadKind::kNone;
  if (socket_closed_) return;
  if (!ec) buffer_.commit(n);
  switch (state_) {
    case State::kExchange:
      if (ec && LastBytesInFlight()) {
        // The last bytes of the answer are being written, and the client
        // may have read them all before closing: that write decides.
        peer_closed_ = true;
        return;
      }
      if (ec) {
        Terminate(absl::CancelledError(absl::StrCat(
                      "the client closed the connection: ", ec.message())),
                  /*notify_cancel=*/true);
      }
      // Otherwise these are bytes of a pipelined request: they stay in
      // buffer_ and the watch stops (it needs an empty buffer).
      return;
    case State::kIdle:
      CancelTimer();
      if (ec) {
        CloseSocket();
        return;
      }
      ReadHeader();
      return;
    case State::kClosing:
      if (ec) {
        CloseSocket();
        return;
      }
      lingered_bytes_ += n;
      buffer_.consume(buffer_.size());
      AfterReadWhileClosing();
      return;
    default:
      BROKER_CHECK(false);
  }
}

// --- Between requests -------------------------------------------------------

void Session::OnResponseComplete() {
  ex_.open = false;
  ex_.response = Response::kDone;
  ex_.cancel_callback = nullptr;
  if (peer_closed_) {
    CloseSocket();
    return;
  }
  if (!ex_.keep_alive_after || shutting_down_) {
    CloseGracefully();
    return;
  }
  if (read_ == ReadKind::kBody) {
    // The handler is still reading; go on when that read is done.
    ex_.continue_after_read = true;
    return;
  }
  ContinueAfterExchange();
}

void Session::ContinueAfterExchange() {
  if (socket_closed_) return;
  if (shutting_down_ || !ex_.body_error.ok()) {
    CloseGracefully();
    return;
  }
  if (!ex_.body_done) {
    state_ = State::kDraining;
    drained_bytes_ = 0;
    DrainRead();
    return;
  }
  WaitForNextRequest();
}

void Session::WaitForNextRequest() {
  if (shutting_down_) {
    CloseGracefully();
    return;
  }
  BROKER_CHECK(read_ == ReadKind::kNone || read_ == ReadKind::kWatch);
  if (read_ == ReadKind::kNone && buffer_.size() > 0) {
    ReadHeader();  // pipelined
    return;
  }
  state_ = State::kIdle;
  ArmTimer(TimerPurpose::kIdle, limits().idle_timeout);
  // A pending watch read doubles as the idle read.
  if (read_ == ReadKind::kNone) StartWatch();
}

void Session::DrainRead() {
  if (drained_bytes_ > kMaxDrainBytes) {
    CloseGracefully();
    return;
  }
  drain_chunk_.resize(kMaxChunkBytes);
  buffer_.reserve(kMaxChunkBytes);
  auto& body = parser_->get().body();
  body.data = drain_chunk_.data();
  body.size = drain_chunk_.size();
  read_ = ReadKind::kDrain;
  stream_.lowest().expires_after(ToChrono(limits().io_timeout));
  bhttp::async_read_some(
      stream_, buffer_, *parser_,
      [self = shared_from_this()](const beast::error_code& ec, std::size_t) {
        self->OnDrainRead(ec);
      });
}

void Session::OnDrainRead(beast::error_code ec) {
  read_ = ReadKind::kNone;
  if (socket_closed_) return;
  if (ec == bhttp::error::need_buffer) ec = {};
  if (state_ == State::kClosing) {
    AfterReadWhileClosing();
    return;
  }
  if (ec) {
    // A broken connection is closed; a bad body (too large, malformed)
    // closes without resetting the answer already sent.
    if (IsConnectionLost(ec)) {
      CloseSocket();
    } else {
      CloseGracefully();
    }
    return;
  }
  drained_bytes_ += drain_chunk_.size() - parser_->get().body().size;
  if (parser_->is_done()) {
    ex_.body_done = true;
    drain_chunk_ = std::string();
    WaitForNextRequest();
    return;
  }
  DrainRead();
}

// --- Responses --------------------------------------------------------------

ResponseContext Session::ContextForResponse() const {
  ResponseContext context = ex_.context;
  // Keep the connection only if the server keeps running and the body
  // framing stays known: a client waiting for 100 Continue that gets a
  // final answer may or may not send its body.
  context.keep_alive =
      context.keep_alive && !shutting_down_ &&
      !(ex_.expect_continue && !ex_.continue_sent && !ex_.body_done);
  return context;
}

absl::AnyInvocable<void(beast::error_code) &&> Session::UserDone(
    BodyWriter::DoneHandler done) {
  return [self = shared_from_this(),
          done = std::move(done)](beast::error_code ec) mutable {
    if (!ec) {
      std::move(done)(absl::OkStatus());
    } else if (!self->close_reason_.ok()) {
      std::move(done)(self->close_reason_);
    } else {
      std::move(done)(IoError("writing the response", ec));
    }
  };
}

void Session::DoRespond(std::uint64_t id, const ResponseHead& head,
                        BodyWriter::DoneHandler done) {
  if (absl::Status status = ExchangeStatus(id); !status.ok()) {
    std::move(done)(std::move(status));
    return;
  }
  if (ex_.response != Response::kNotStarted) {
    std::move(done)(
        absl::FailedPreconditionError("a response was already started"));
    return;
  }
  absl::StatusOr<ResponsePlan> plan = PlanResponse(
      head.status, head.headers, head.content_length, ContextForResponse());
  if (!plan.ok()) {
    std::move(done)(plan.status());
    return;
  }
  ex_.response = Response::kStreaming;
  ex_.mode = plan->mode;
  ex_.remaining = plan->length;
  ex_.keep_alive_after = plan->keep_alive;
  Enqueue(WriteOp{std::move(plan->head), "", "", UserDone(std::move(done))});
}

void Session::DoWrite(std::uint64_t id, std::string data,
                      BodyWriter::DoneHandler done) {
  if (absl::Status status = ExchangeStatus(id); !status.ok()) {
    std::move(done)(std::move(status));
    return;
  }
  if (ex_.response != Response::kStreaming) {
    std::move(done)(absl::FailedPreconditionError(
        "Write() needs Respond() first and no Finish()"));
    return;
  }
  if (ex_.data_write_pending) {
    std::move(done)(
        absl::FailedPreconditionError("a body write is already in flight"));
    return;
  }
  WriteOp op;
  switch (ex_.mode) {
    case BodyMode::kNone:
      if (!data.empty() && !ex_.context.head_request) {
        std::move(done)(absl::FailedPreconditionError(
            "this response (204/304) cannot have a body"));
        return;
      }
      // HEAD: the body of the equivalent GET is dropped.
      std::move(done)(absl::OkStatus());
      return;
    case BodyMode::kLength:
      if (data.size() > ex_.remaining) {
        std::move(done)(absl::OutOfRangeError(
            absl::StrCat("writing ", data.size(), " bytes with ", ex_.remaining,
                         " left of the Content-Length")));
        return;
      }
      ex_.remaining -= data.size();
      break;
    case BodyMode::kChunked:
      if (!data.empty()) {
        op.head = absl::StrCat(absl::Hex(data.size()), kCrlf);
        op.tail = kCrlf;
      }
      break;
    case BodyMode::kUntilClose:
      break;
  }
  if (data.empty()) {  // an empty chunk would end a chunked body
    std::move(done)(absl::OkStatus());
    return;
  }
  op.data = std::move(data);
  ex_.data_write_pending = true;
  op.done = [self = shared_from_this(), id,
             user = UserDone(std::move(done))](beast::error_code ec) mutable {
    if (id == self->ex_.id) self->ex_.data_write_pending = false;
    std::move(user)(ec);
  };
  Enqueue(std::move(op));
}

void Session::DoFinish(std::uint64_t id, BodyWriter::DoneHandler done) {
  if (absl::Status status = ExchangeStatus(id); !status.ok()) {
    std::move(done)(std::move(status));
    return;
  }
  if (ex_.response != Response::kStreaming) {
    std::move(done)(absl::FailedPreconditionError(
        "Finish() needs Respond() first and only once"));
    return;
  }
  if (ex_.mode == BodyMode::kLength && ex_.remaining > 0) {
    absl::Status status = absl::FailedPreconditionError(
        absl::StrCat("Finish() with ", ex_.remaining,
                     " bytes of the Content-Length unwritten"));
    Terminate(status, /*notify_cancel=*/false);
    std::move(done)(std::move(status));
    return;
  }
  ex_.response = Response::kFinishing;
  WriteOp op;
  if (ex_.mode == BodyMode::kChunked) op.head = "0\r\n\r\n";
  op.done = [self = shared_from_this(), id,
             user = UserDone(std::move(done))](beast::error_code ec) mutable {
    std::move(user)(ec);
    if (!ec && id == self->ex_.id && self->ex_.open) {
      self->OnResponseComplete();
    }
  };
  Enqueue(std::move(op));
}

void Session::DoAbort(std::uint64_t id) {
  if (id != ex_.id || !ex_.open || socket_closed_) return;
  Terminate(absl::AbortedError("the handler aborted the response"),
            /*notify_cancel=*/false);
}

void Session::DoRespondWhole(std::uint64_t id, const ResponseHead& head,
                             std::string body, BodyWriter::DoneHandler done) {
  if (absl::Status status = ExchangeStatus(id); !status.ok()) {
    std::move(done)(std::move(status));
    return;
  }
  if (ex_.response != Response::kNotStarted) {
    std::move(done)(
        absl::FailedPreconditionError("a response was already started"));
    return;
  }
  const ResponseContext context = ContextForResponse();
  // A HEAD answer declares the length of the GET's body, and has none.
  const std::uint64_t length = head.content_length.value_or(body.size());
  if (!context.head_request && length != body.size()) {
    std::move(done)(absl::InvalidArgumentError(absl::StrCat(
        "a Content-Length of ", length, " with ", body.size(), " body bytes")));
    return;
  }
  absl::StatusOr<ResponsePlan> plan =
      PlanResponse(head.status, head.headers, length, context);
  if (!plan.ok()) {
    std::move(done)(plan.status());
    return;
  }
  QueueWholeResponse(id, *std::move(plan), std::move(body),
                     UserDone(std::move(done)));
}

void Session::DoRespondSimple(std::uint64_t id, int status,
                              const Headers& headers, std::string body) {
  if (!ExchangeStatus(id).ok() || ex_.response != Response::kNotStarted) {
    return;
  }
  absl::StatusOr<ResponsePlan> plan =
      PlanResponse(status, headers, static_cast<std::uint64_t>(body.size()),
                   ContextForResponse());
  if (!plan.ok()) {
    SendErrorAndClose(500, "the handler produced an invalid response");
    return;
  }
  QueueWholeResponse(id, *std::move(plan), std::move(body), nullptr);
}

void Session::QueueWholeResponse(
    std::uint64_t id, ResponsePlan plan, std::string body,
    absl::AnyInvocable<void(beast::error_code) &&> done) {
  ex_.response = Response::kFinishing;
  ex_.keep_alive_after = plan.keep_alive;
  WriteOp op;
  op.head = std::move(plan.head);
  if (plan.mode == BodyMode::kLength) op.data = std::move(body);
  op.done = [self = shared_from_this(), id,
             done = std::move(done)](beast::error_code ec) mutable {
    if (done) std::move(done)(ec);
    if (!ec && id == self->ex_.id && self->ex_.open) {
      self->OnResponseComplete();
    }
  };
  Enqueue(std::move(op));
}

void Session::DoOnCancel(std::uint64_t id,
                         absl::AnyInvocable<void() &&> callback) {
  if (id != ex_.id) return;
  if (ex_.cancel_fired) {
    std::move(callback)();
    return;
  }
  if (ex_.open) ex_.cancel_callback = std::move(callback);
}

void Session::DoRelease(std::uint64_t id) {
  if (id != ex_.id || !ex_.open || socket_closed_) return;
  switch (ex_.response) {
    case Response::kNotStarted:
      SendErrorAndClose(500, "the handler dropped the request");
      return;
    case Response::kStreaming:
      Terminate(
          absl::InternalError("the handler released the exchange mid-response"),
          /*notify_cancel=*/false);
      return;
    case Response::kFinishing:
    case Response::kDone:
      return;
  }
}

// A complete error answer from the server itself, then close. Used when no
// response bytes of the current exchange were queued.
void Session::SendErrorAndClose(int status, absl::string_view message) {
  ResponseContext context;
  context.keep_alive = false;
  context.head_request = ex_.open && ex_.context.head_request;
  const std::string body = absl::StrCat(message, "\n");
  absl::StatusOr<ResponsePlan> plan =
      PlanResponse(status, {{"Content-Type", "text/plain; charset=utf-8"}},
                   static_cast<std::uint64_t>(body.size()), context);
  BROKER_CHECK(plan.ok());
  const bool exchange = ex_.open;
  if (exchange) {
    ex_.response = Response::kFinishing;
    ex_.keep_alive_after = false;
  } else {
    state_ = State::kClosing;
    may_send_more_ = true;  // the rest of a bad or slow request
  }
  WriteOp op;
  op.head = std::move(plan->head);
  if (plan->mode == BodyMode::kLength) op.data = body;
  op.done = [self = shared_from_this(), exchange,
             id = ex_.id](beast::error_code ec) {
    if (ec) return;
    if (exchange && id == self->ex_.id && self->ex_.open) {
      self->OnResponseComplete();
    } else {
      self->CloseGracefully();
    }
  };
  Enqueue(std::move(op));
}

// --- Writes -----------------------------------------------------------------

void Session::Enqueue(WriteOp op) {
  writes_.push_back(std::move(op));
  WriteNext();
}

void Session::WriteNext() {
  while (!write_in_flight_ && !writes_.empty()) {
    if (socket_closed_) {
      FailQueuedWrites();
      return;
    }
    WriteOp& op = writes_.front();
    if (op.head.empty() && op.data.empty() && op.tail.empty()) {
      WriteOp done = std::move(op);
      writes_.pop_front();
      std::move(done.done)(beast::error_code{});
      continue;
    }
    // Everything queued leaves in one write (a head and the small body
    // queued behind it share a segment and a syscall); the ops complete
    // together, in order.
    write_in_flight_ = true;
    ops_in_flight_ = 0;
    write_buffers_.clear();
    for (const WriteOp& queued : writes_) {
      if (ops_in_flight_ == kMaxOpsPerWrite) break;
      for (absl::string_view piece :
           {absl::string_view(queued.head), absl::string_view(queued.data),
            queued.tail}) {
        if (!piece.empty()) {
          write_buffers_.emplace_back(piece.data(), piece.size());
        }
      }
      ++ops_in_flight_;
    }
    stream_.lowest().expires_after(ToChrono(limits().io_timeout));
    net::async_write(
        stream_, write_buffers_,
        [self = shared_from_this()](const beast::error_code& ec, std::size_t) {
          self->OnWrite(ec);
        });
  }
}

void Session::OnWrite(const beast::error_code& ec) {
  write_in_flight_ = false;
  absl::InlinedVector<WriteOp, kMaxOpsPerWrite> written;
  for (std::size_t i = 0; i < ops_in_flight_; ++i) {
    written.push_back(std::move(writes_.front()));
    writes_.pop_front();
  }
  ops_in_flight_ = 0;
  if (ec && !socket_closed_) {
    Terminate(IoError("writing the response", ec), /*notify_cancel=*/true);
  }
  for (WriteOp& op : written) std::move(op.done)(ec);
  WriteNext();
}

// Runs the callbacks of every write not yet completed with an error. The
// write in flight keeps its buffers until its (aborted) completion, but
// its callback runs now: once the socket is closed the session holds no
// callback of the handler, so no cycle through the exchange survives even
// if the io_context is stopped before the completions run.
void Session::FailQueuedWrites() {
  std::vector<absl::AnyInvocable<void(beast::error_code) &&>> failed;
  const std::size_t first = write_in_flight_ ? ops_in_flight_ : 0;
  for (std::size_t i = 0; i < first; ++i) {
    failed.push_back(std::move(writes_[i].done));
    writes_[i].done = [](beast::error_code) {};
  }
  for (std::size_t i = first; i < writes_.size(); ++i) {
    failed.push_back(std::move(writes_[i].done));
  }
  writes_.erase(writes_.begin() + static_cast<std::ptrdiff_t>(first),
                writes_.end());
  for (auto& done : failed) std::move(done)(net::error::operation_aborted);
}

// Whether the write in flight carries the last bytes of the answer: the
// answer is finishing and nothing queued behind it has bytes.
bool Session::LastBytesInFlight() const {
  if (!write_in_flight_ || ex_.response != Response::kFinishing) return false;
  for (std::size_t i = ops_in_flight_; i < writes_.size(); ++i) {
    const WriteOp& op = writes_[i];
    if (!op.head.empty() || !op.data.empty() || !op.tail.empty()) return false;
  }
  return true;
}

// --- Closing ----------------------------------------------------------------

void Session::CloseGracefully() {
  if (socket_closed_) return;
  // Only after the last write: the half-close must follow the response.
  BROKER_CHECK(!write_in_flight_ && writes_.empty());
  state_ = State::kClosing;
  ArmTimer(TimerPurpose::kLinger, kLingerTimeout);
  if (FlexStream::TlsStream* tls = stream_.tls(); tls != nullptr) {
    // close_notify, then wait (bounded by the timer) for the client's.
    stream_.lowest().expires_after(ToChrono(kLingerTimeout));
    tls->async_shutdown([self = shared_from_this()](const beast::error_code&) {
      self->CloseSocket();
    });
    return;
  }
  // Lingering matters only if the client may still be sending: closing a
  // socket with unread input sends a reset, which can destroy the response
  // before the client reads it. Otherwise the FIN follows the response.
  beast::error_code ec;
  const std::size_t unread = stream_.lowest().socket().available(ec);
  if (!may_send_more_ && ex_.body_done && buffer_.size() == 0 && !ec &&
      unread == 0) {
    CloseSocket();
    return;
  }
  stream_.lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
  if (read_ == ReadKind::kNone) LingerRead();
  // Otherwise the pending read continues as the linger read.
}

void Session::AfterReadWhileClosing() {
  if (socket_closed_ || read_ != ReadKind::kNone) return;
  if (stream_.tls() != nullptr) return;  // the TLS shutdown is running
  LingerRead();
}

void Session::LingerRead() {
  if (lingered_bytes_ > kMaxLingerBytes) {
    CloseSocket();
    return;
  }
  buffer_.consume(buffer_.size());
  read_ = ReadKind::kLinger;
  stream_.lowest().expires_after(ToChrono(kLingerTimeout));
  stream_.async_read_some(
      buffer_.prepare(kSmallReadBytes),
      [self = shared_from_this()](const beast::error_code& ec, std::size_t n) {
        self->OnLingerRead(ec, n);
      });
}

void Session::OnLingerRead(const beast::error_code& ec, std::size_t n) {
  read_ = ReadKind::kNone;
  if (socket_closed_) return;
  if (ec) {
    CloseSocket();
    return;
  }
  lingered_bytes_ += n;
  LingerRead();
}

void Session::Terminate(absl::Status reason, bool notify_cancel) {
  if (socket_closed_) return;
  close_reason_ = std::move(reason);
  absl::AnyInvocable<void() &&> callback;
  if (notify_cancel && ex_.open) {
    ex_.cancel_fired = true;  // a later OnCancel() runs at once
    callback = std::move(ex_.cancel_callback);
  }
  CloseSocket();
  if (callback) std::move(callback)();
}

// Closes the socket at once. Operations in flight complete with an error
// (reported to the handler as close_reason_); queued writes fail now; the
// exchange, if any, is over.
void Session::CloseSocket() {
  if (socket_closed_) return;
  socket_closed_ = true;
  if (close_reason_.ok()) {
    close_reason_ = absl::UnavailableError("the connection is closed");
  }
  state_ = State::kClosed;
  CancelTimer();
  ++shutdown_generation_;
  shutdown_timer_.cancel();
  stream_.lowest().close();
  Unregister();
  ex_.open = false;
  ex_.cancel_callback = nullptr;  // may hold the exchange: break the cycle
  BodyReader::ReadHandler read_handler = std::move(ex_.read_handler);
  ex_.read_handler = nullptr;
  FailQueuedWrites();
  if (read_handler) std::move(read_handler)(close_reason_, {});
}

// --- Timers and shutdown ----------------------------------------------------

void Session::ArmTimer(TimerPurpose purpose, absl::Duration after) {
  const std::uint64_t generation = ++timer_generation_;
  timer_.expires_after(ToChrono(after));
  timer_.async_wait([self = shared_from_this(), generation,
                     purpose](const beast::error_code& ec) {
    self->OnTimer(ec, generation, purpose);
  });
}

void Session::CancelTimer() {
  ++timer_generation_;
  timer_.cancel();
}

void Session::OnTimer(const beast::error_code& ec, std::uint64_t generation,
                      TimerPurpose purpose) {
  if (ec || generation != timer_generation_ || socket_closed_) return;
  if (purpose == TimerPurpose::kHeader) {
    // Cancel the head read; OnHeader answers 408.
    header_timed_out_ = true;
    stream_.lowest().cancel();
    return;
  }
  CloseSocket();  // idle keep-alive, or lingering too long
}

void Session::OnShutdown(absl::Time deadline) {
  shutting_down_ = true;
  switch (state_) {
    case State::kHandshake:
    case State::kIdle:
    case State::kClosing:
      CloseSocket();
      return;
    case State::kReadingHeader:
      if (buffer_.size() == 0) {
        CloseSocket();
        return;
      }
      break;  // a request is arriving: serve it (Connection: close)
    case State::kExchange:
    case State::kDraining:
      break;
    case State::kClosed:
      return;
  }
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) {
    Terminate(absl::CancelledError("the server is shutting down"),
              /*notify_cancel=*/true);
    return;
  }
  const std::uint64_t generation = ++shutdown_generation_;
  shutdown_timer_.expires_after(ToChrono(left));
  shutdown_timer_.async_wait(
      [self = shared_from_this(), generation](const beast::error_code& ec) {
        self->OnShutdownTimer(ec, generation);
      });
}

void Session::OnShutdownTimer(const beast::error_code& ec,
                              std::uint64_t generation) {
  if (ec || generation != shutdown_generation_ || socket_closed_) return;
  Terminate(absl::CancelledError("the server shut down"),
            /*notify_cancel=*/true);
}

// ---------------------------------------------------------------------------
// Accepts connections on its own strand.

class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(net::io_context& io, std::shared_ptr<ServerState> server)
      : io_(io),
        server_(std::move(server)),
        acceptor_(net::make_strand(io)),
        retry_timer_(acceptor_.get_executor()) {}

  // Before Start(), on the caller's thread.
  [[nodiscard]] absl::StatusOr<int> Bind(const tcp::endpoint& endpoint) {
    beast::error_code ec;
    acceptor_.open(endpoint.protocol(), ec);
    if (ec) return IoError("opening the listening socket", ec);
    acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (ec) return IoError("setting SO_REUSEADDR", ec);
    acceptor_.bind(endpoint, ec);
    if (ec) {
      return IoError(absl::StrCat("binding ", endpoint.address().to_string(),
                                  ":", endpoint.port()),
                     ec);
    }
    acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) return IoError("listening", ec);
    const tcp::endpoint local = acceptor_.local_endpoint(ec);
    if (ec) return IoError("reading the bound port", ec);
    absl::MutexLock lock(&server_->mu);
    server_->accepting = true;
    return static_cast<int>(local.port());
  }

  void Start() {
    net::post(acceptor_.get_executor(),
              [self = shared_from_this()] { self->Accept(); });
  }

  void Stop() {
    net::post(acceptor_.get_executor(), [self = shared_from_this()] {
      self->stopped_ = true;
      beast::error_code ignored;
      self->acceptor_.close(ignored);
      self->retry_timer_.cancel();
      absl::MutexLock lock(&self->server_->mu);
      self->server_->accepting = false;
    });
  }

 private:
  void Accept() {
    if (stopped_) return;
    acceptor_.async_accept(
        net::make_strand(io_),
        [self = shared_from_this()](const beast::error_code& ec,
                                    tcp::socket socket) {
          self->OnAccept(ec, std::move(socket));
        });
  }

  void OnAccept(const beast::error_code& ec, tcp::socket socket) {
    if (stopped_) return;
    if (ec) {
      // Out of descriptors and the like: retry later instead of spinning.
      retry_timer_.expires_after(kAcceptRetryDelay);
      retry_timer_.async_wait(
          [self = shared_from_this()](const beast::error_code& wait_ec) {
            if (!wait_ec) self->Accept();
          });
      return;
    }
    std::make_shared<Session>(server_, std::move(socket))->Start();
    Accept();
  }

  net::io_context& io_;
  const std::shared_ptr<ServerState> server_;
  tcp::acceptor acceptor_;
  net::steady_timer retry_timer_;
  bool stopped_ = false;  // on the acceptor's strand
};

// ---------------------------------------------------------------------------

class DefaultServer final : public Server {
 public:
  DefaultServer(net::io_context& io, tcp::endpoint endpoint,
                std::shared_ptr<ServerState> state)
      : endpoint_(std::move(endpoint)),
        state_(std::move(state)),
        listener_(std::make_shared<Listener>(io, state_)) {}

  ~DefaultServer() override {
    bool running = false;
    {
      absl::MutexLock lock(&mu_);
      running = started_ && !stopped_;
    }
    if (running) Shutdown(absl::Now());
  }
  DefaultServer(const DefaultServer&) = delete;
  DefaultServer& operator=(const DefaultServer&) = delete;

  absl::StatusOr<int> Start() ABSL_LOCKS_EXCLUDED(mu_) override {
    {
      absl::MutexLock lock(&mu_);
      if (started_ || stopped_) {
        return absl::FailedPreconditionError(
            "Start() was already called, or Shutdown()");
      }
      started_ = true;
    }
    BROKER_ASSIGN_OR_RETURN(const int port, listener_->Bind(endpoint_));
    listener_->Start();
    return port;
  }

  void Shutdown(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_) override {
    {
      absl::MutexLock lock(&mu_);
      stopped_ = true;
    }
    listener_->Stop();
    std::vector<std::shared_ptr<Session>> sessions;
    {
      absl::MutexLock lock(&state_->mu);
      state_->shutting_down = true;
      for (const auto& [key, weak] : state_->sessions) {
        if (std::shared_ptr<Session> session = weak.lock()) {
          sessions.push_back(std::move(session));
        }
      }
    }
    for (const std::shared_ptr<Session>& session : sessions) {
      session->Shutdown(deadline);
    }
    sessions.clear();  // may run a destructor, which takes state_->mu
    absl::MutexLock lock(&state_->mu);
    state_->mu.AwaitWithDeadline(
        absl::Condition(state_.get(), &ServerState::Quiet),
        deadline + kShutdownGrace);
  }

 private:
  const tcp::endpoint endpoint_;
  const std::shared_ptr<ServerState> state_;
  const std::shared_ptr<Listener> listener_;
  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

[[nodiscard]] absl::StatusOr<std::unique_ptr<ssl::context>> MakeTlsContext(
    const std::string& cert_file, const std::string& key_file) {
  auto context = std::make_unique<ssl::context>(ssl::context::tls_server);
  beast::error_code ec;
  context->set_options(ssl::context::default_workarounds |
                           ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                           ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                           ssl::context::single_dh_use,
                       ec);
  if (ec) return IoError("configuring TLS", ec);
  SSL_CTX* native = context->native_handle();
  if (SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION) != 1) {
    return absl::InternalError("cannot require TLS 1.2");
  }
  SSL_CTX_set_options(native, SSL_OP_NO_RENEGOTIATION);
  context->use_certificate_chain_file(cert_file, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(
        "loading the TLS certificate ", cert_file, ": ", ec.message()));
  }
  context->use_private_key_file(key_file, ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("loading the TLS key ", key_file, ": ", ec.message()));
  }
  if (SSL_CTX_check_private_key(native) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the TLS key ", key_file, " does not match ", cert_file));
  }
  return context;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(
    boost::asio::io_context& io, ServerOptions options, Handler handler) {
  if (!handler) return absl::InvalidArgumentError("the handler is empty");
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port ", options.port, " is out of range"));
  }
  const ServerLimits& limits = options.limits;
  if (limits.max_header_bytes == 0) {
    return absl::InvalidArgumentError("max_header_bytes must be positive");
  }
  if (limits.header_timeout <= absl::ZeroDuration() ||
      limits.idle_timeout <= absl::ZeroDuration() ||
      limits.io_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeouts must be positive");
  }
  beast::error_code ec;
  const net::ip::address address = net::ip::make_address(options.address, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid listen address \"", options.address, "\""));
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both tls_cert_file and tls_key_file");
  }
  std::unique_ptr<ssl::context> tls;
  if (!options.tls_cert_file.empty()) {
    BROKER_ASSIGN_OR_RETURN(
        tls, MakeTlsContext(options.tls_cert_file, options.tls_key_file));
  }
  const tcp::endpoint endpoint(address,
                               static_cast<std::uint16_t>(options.port));
  auto state = std::make_shared<ServerState>(
      std::move(options), std::move(handler), std::move(tls));
  return std::make_unique<DefaultServer>(io, endpoint, std::move(state));
}

}  // namespace broker::common::http
