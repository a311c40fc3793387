#include "common/http/client.h"

#include "common/status.h"

#include "absl/base/call_once.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/address.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/ssl/context.hpp"
#include "boost/asio/ssl/error.hpp"
#include "boost/asio/ssl/stream.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/beast/core/error.hpp"
#include "boost/beast/core/flat_buffer.hpp"
#include "boost/beast/core/tcp_stream.hpp"
#include "boost/beast/http/buffer_body.hpp"
#include "boost/beast/http/message.hpp"
#include "boost/beast/http/parser.hpp"
#include "boost/beast/http/read.hpp"
#include "boost/beast/http/serializer.hpp"
#include "boost/beast/http/write.hpp"
#include "openssl/ssl.h"
#include "openssl/x509_vfy.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <sys/socket.h>

namespace broker::common::http {
namespace {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

// Largest chunk the parser hands out (Beast reads at most 64 KiB at a time).
constexpr std::size_t kChunkBytes = std::size_t{64} * 1024;
// Largest chunk of a Content-Length body read past the parser, straight
// from the socket into the chunk handed out: a 1 GiB answer then costs a
// quarter of the reads, tunnel messages and thread hand-offs, and two
// fewer copies of each byte.
constexpr std::size_t kDirectChunkBytes = std::size_t{256} * 1024;
// Largest response head accepted from an origin.
constexpr std::uint32_t kHeaderLimit = 64 * 1024;
// Timer durations beyond this are treated as "never" (std::chrono overflow).
constexpr absl::Duration kNever = absl::Hours(24 * 365);

std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }

// RFC 9110 tchar: the characters of a method or a header name.
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c))) continue;
    if (absl::StrContains("!#$%&'*+-.^_`|~", c)) continue;
    return false;
  }
  return true;
}

// No control characters (CR, LF, NUL...) that could split a message.
bool IsFieldValue(absl::string_view s) {
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7f) return false;
  }
  return true;
}

// A request target or host: visible ASCII only.
bool IsVisible(absl::string_view s) {
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return false;
  }
  return true;
}

// The parts of an absolute http(s) URL that a call needs. Userinfo is
// dropped: credentials are turned into headers by the caller
// (prepareRequest), never sent in the URL, and never named in messages.
struct Target {
  bool tls = false;
  std::string host;         // for DNS, SNI and verification; no brackets
  std::string port;         // decimal
  std::string host_header;  // Host: value
  std::string path;         // "/path?query", no fragment
  std::string where;        // "host:port" for messages
};

// Error messages never repeat the URL: it may carry credentials.
absl::StatusOr<Target> ParseUrl(absl::string_view url) {
  Target out;
  absl::string_view rest = url;
  if (absl::StartsWithIgnoreCase(rest, "https://")) {
    out.tls = true;
    rest.remove_prefix(8);
  } else if (absl::StartsWithIgnoreCase(rest, "http://")) {
    rest.remove_prefix(7);
  } else {
    return absl::InvalidArgumentError(
        "invalid URL: the scheme must be http or https");
  }
  const std::size_t authority_end = rest.find_first_of("/?#");
  absl::string_view authority = rest.substr(0, authority_end);
  absl::string_view path = authority_end == absl::string_view::npos
                               ? absl::string_view()
                               : rest.substr(authority_end);
  if (const std::size_t at = authority.rfind('@');
      at != absl::string_view::npos) {
    authority.remove_prefix(at + 1);
  }
  absl::string_view host;
  absl::string_view port;
  bool ipv6 = false;
  if (absl::StartsWith(authority, "[")) {
    const std::size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError("invalid URL: unterminated IPv6 host");
    }
    host = authority.substr(1, close - 1);
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        return absl::InvalidArgumentError("invalid URL: bad authority");
      }
      port = after.substr(1);
    }
    ipv6 = true;
  } else {
    const std::size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != absl::string_view::npos) port = authority.substr(colon + 1);
  }
  if (host.empty() || !IsVisible(host) || absl::StrContains(host, '[')) {
    return absl::InvalidArgumentError("invalid URL: bad host");
  }
  const absl::string_view default_port = out.tls ? "443" : "80";
  if (port.empty()) port = default_port;
  int port_number = 0;
  if (!absl::SimpleAtoi(port, &port_number) || port_number <= 0 ||
      port_number > 65535 || !absl::ascii_isdigit(port[0])) {
    return absl::InvalidArgumentError("invalid URL: bad port");
  }
  if (const std::size_t hash = path.find('#');
      hash != absl::string_view::npos) {
    path = path.substr(0, hash);
  }
  if (!IsVisible(path)) {
    return absl::InvalidArgumentError("invalid URL: bad characters in path");
  }
  out.host = std::string(host);
  out.port = absl::StrCat(port_number);
  const std::string bracketed =
      ipv6 ? absl::StrCat("[", host, "]") : std::string(host);
  out.host_header =
      port == default_port ? bracketed : absl::StrCat(bracketed, ":", out.port);
  out.where = absl::StrCat(bracketed, ":", out.port);
  if (path.empty() || path[0] != '/') {
    out.path = absl::StrCat("/", path);
  } else {
    out.path = std::string(path);
  }
  return out;
}

absl::Status ValidateRequest(const ClientRequest& request) {
  if (!IsToken(request.method)) {
    return absl::InvalidArgumentError("invalid request method");
  }
  for (const Header& header : request.headers) {
    if (!IsToken(header.name) || !IsFieldValue(header.value)) {
      // Names the header but never echoes its value (it may be a secret).
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid request header",
          IsToken(header.name) ? absl::StrCat(" ", header.name) : ""));
    }
  }
  if (request.body == nullptr && request.body_length.value_or(0) != 0) {
    return absl::InvalidArgumentError(
        "request body_length is set but there is no body");
  }
  return absl::OkStatus();
}

// Headers the client sets itself (ClientRequest::headers).
bool IsFramingHeader(absl::string_view name) {
  return absl::EqualsIgnoreCase(name, "host") ||
         absl::EqualsIgnoreCase(name, "content-length") ||
         absl::EqualsIgnoreCase(name, "transfer-encoding");
}

// Methods whose empty body is still announced with "Content-Length: 0".
bool ExpectsBody(absl::string_view method) {
  return method == "POST" || method == "PUT" || method == "PATCH";
}

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      absl::ToChronoNanoseconds(std::clamp(d, absl::ZeroDuration(), kNever)));
}

bool IsResolverError(const beast::error_code& ec) {
  return ec.category() == net::error::get_netdb_category() ||
         ec.category() == net::error::get_addrinfo_category();
}

// The error of a failed step, by the Snyk mapping: a refused connection or
// a DNS failure is "unreachable", a timeout is a timeout, the rest is an
// error. `what` names the step and `where` the origin as host:port.
absl::Status MapError(const beast::error_code& ec, absl::string_view what,
                      absl::string_view where) {
  if (ec == beast::error::timeout) {
    return absl::DeadlineExceededError(
        absl::StrCat(what, " ", where, ": timed out"));
  }
  if (ec == net::error::connection_refused || IsResolverError(ec)) {
    return absl::UnavailableError(
        absl::StrCat(what, " ", where, ": ", ec.message()));
  }
  return absl::UnknownError(absl::StrCat(what, " ", where, ": ", ec.message()));
}

using Strand = net::strand<net::io_context::executor_type>;

// One connection to an origin. Every use happens on `strand`: the call that
// owns it, then, after a clean exchange, the next call that takes it from
// the pool (which adopts the strand).
struct Connection {
  explicit Connection(const Strand& s) : strand(s), tcp(s) {}
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Whether the origin closed it (or sent something unasked) while it was
  // idle: a non-blocking peek, no wait.
  bool LooksClosed() {
    if (!tcp.socket().is_open()) return true;
    char byte = 0;
    const ssize_t n =
        ::recv(tcp.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
  }

  Strand strand;
  beast::tcp_stream tcp;
  std::optional<ssl::stream<beast::tcp_stream&>> tls;  // after tcp
  absl::Time idle_since;
  // Read buffers, kept with the connection so that a reused connection
  // allocates nothing per call. `buffer` is empty between calls.
  beast::flat_buffer buffer;
  std::vector<char> body_buffer;  // sized on the first body read
};

// Idle keep-alive connections, by origin ("https|host|port"). Thread-safe:
// Take() runs in Send() on any thread, Put() on the strand of the call that
// finished, the sweep on an io thread. An idle connection has no operation
// pending, so closing it anywhere is safe; closing happens outside mu_.
class ConnectionPool : public std::enable_shared_from_this<ConnectionPool> {
 public:
  ConnectionPool(net::io_context& io, absl::Duration idle_timeout,
                 int max_idle_per_origin)
      : idle_timeout_(idle_timeout),
        max_idle_per_origin_(max_idle_per_origin),
        sweep_timer_(io) {}

  bool enabled() const { return max_idle_per_origin_ > 0; }

  // The most recently used idle connection to `key` that still looks
  // open, or null.
  std::unique_ptr<Connection> Take(const std::string& key)
      ABSL_LOCKS_EXCLUDED(mu_) {
    const absl::Time now = absl::Now();
    while (true) {
      std::unique_ptr<Connection> connection;
      {
        absl::MutexLock lock(&mu_);
        auto it = idle_.find(key);
        if (it == idle_.end()) return nullptr;
        connection = std::move(it->second.back());
        it->second.pop_back();
        if (it->second.empty()) idle_.erase(it);
      }
      if (now - connection->idle_since < idle_timeout_ &&
          !connection->LooksClosed()) {
        return connection;
      }
    }
  }

  void Put(const std::string& key, std::unique_ptr<Connection> connection)
      ABSL_LOCKS_EXCLUDED(mu_) {
    connection->idle_since = absl::Now();
    bool arm = false;
    {
      absl::MutexLock lock(&mu_);
      auto& idle = idle_[key];
      if (static_cast<int>(idle.size()) < max_idle_per_origin_) {
        idle.push_back(std::move(connection));
        arm = !sweep_armed_;
        sweep_armed_ = true;
      }
    }
    if (arm) ArmSweep();
  }

 private:
  // Closes connections idle past the timeout, every half timeout while any
  // is idle, so a quiet worker holds no stale sockets for long.
  void ArmSweep() {
    sweep_timer_.expires_after(ToChrono(idle_timeout_ / 2));
    sweep_timer_.async_wait(
        [weak = weak_from_this()](const beast::error_code& ec) {
          if (ec) return;
          if (auto self = weak.lock()) self->Sweep();
        });
  }

  void Sweep() ABSL_LOCKS_EXCLUDED(mu_) {
    std::vector<std::unique_ptr<Connection>> expired;
    bool rearm = false;
    {
      absl::MutexLock lock(&mu_);
      const absl::Time cutoff = absl::Now() - idle_timeout_;
      for (auto it = idle_.begin(); it != idle_.end();) {
        auto& idle = it->second;
        // Oldest first: Put() appends.
        auto fresh = std::find_if(idle.begin(), idle.end(), [&](auto& c) {
          return c->idle_since >= cutoff;
        });
        std::move(idle.begin(), fresh, std::back_inserter(expired));
        idle.erase(idle.begin(), fresh);
        if (idle.empty()) {
          idle_.erase(it++);
        } else {
          ++it;
        }
      }
      rearm = !idle_.empty();
      sweep_armed_ = rearm;
    }
    expired.clear();  // closes them, outside the lock
    if (rearm) ArmSweep();
  }

  const absl::Duration idle_timeout_;
  const int max_idle_per_origin_;
  net::steady_timer sweep_timer_;  // armed only by Put() or Sweep()

  absl::Mutex mu_;
  std::map<std::string, std::vector<std::unique_ptr<Connection>>> idle_
      ABSL_GUARDED_BY(mu_);
  bool sweep_armed_ ABSL_GUARDED_BY(mu_) = false;
};

class Call;

// The response body: pulls from the call's connection on its strand.
// Dropping it closes the connection; a Read still pending then never runs.
class ResponseBodyReader final : public BodyReader {
 public:
  explicit ResponseBodyReader(std::shared_ptr<Call> call)
      : call_(std::move(call)) {}
  ResponseBodyReader(const ResponseBodyReader&) = delete;
  ResponseBodyReader& operator=(const ResponseBodyReader&) = delete;
  // NOLINTNEXTLINE(bugprone-exception-escape): only net::post's bad_alloc.
  ~ResponseBodyReader() override;
  void Read(ReadHandler handler) override;

 private:
  std::shared_ptr<Call> call_;
};

// One request/response exchange, on a new connection or on an idle one
// from the pool. After a clean exchange (keep-alive, the whole answer read)
// the connection goes back to the pool; otherwise it is closed.
//
// Threading: every member is touched only on `strand_`, the connection's.
// Send() posts Start(); the body reader posts ReadBody() and Abandon().
// Pending I/O holds a shared_ptr to the call, and so does the response body
// reader, so the call lives until its connection is closed or pooled and
// nobody can read any more. The deadline timer holds only a weak_ptr and
// never keeps a call alive.
class Call : public std::enable_shared_from_this<Call> {
 public:
  // `reused`: `connection` came from `pool`, already connected.
  Call(net::io_context& io, std::shared_ptr<ssl::context> tls_context,
       std::shared_ptr<const ClientOptions> options, Target target,
       ClientRequest request, Client::ResponseHandler done,
       std::unique_ptr<Connection> connection, bool reused,
       std::weak_ptr<ConnectionPool> pool)
      : strand_(connection ? connection->strand : net::make_strand(io)),
        tls_context_(std::move(tls_context)),
        options_(std::move(options)),
        target_(std::move(target)),
        pool_key_(PoolKey(target_)),
        request_(std::move(request)),
        done_(std::move(done)),
        pool_(std::move(pool)),
        resolver_(strand_),
        deadline_timer_(strand_),
        connection_(connection ? std::move(connection)
                               : std::make_unique<Connection>(strand_)),
        reused_(reused) {}

  static std::string PoolKey(const Target& target) {
    return absl::StrCat(target.tls ? "https|" : "http|", target.host, "|",
                        target.port);
  }

  const net::strand<net::io_context::executor_type>& strand() const {
    return strand_;
  }

  void Start() {
    if (request_.deadline <= absl::Now()) {
      Fail(absl::DeadlineExceededError(
          absl::StrCat("call to ", target_.where, ": deadline exceeded")));
      return;
    }
    if (request_.deadline < absl::InfiniteFuture() &&
        request_.deadline - absl::Now() < kNever) {
      deadline_timer_.expires_after(ToChrono(request_.deadline - absl::Now()));
      deadline_timer_.async_wait(
          [weak = weak_from_this()](const beast::error_code& ec) {
            if (ec) return;  // cancelled: the call is over
            if (auto self = weak.lock()) self->OnDeadline();
          });
    }
    if (request_.cancellation) {
      request_.cancellation->OnCancel(
          [weak = weak_from_this(), strand = strand_] {
            net::post(strand, [weak] {
              if (auto self = weak.lock()) {
                self->Interrupt(absl::CancelledError(absl::StrCat(
                    "call to ", self->target_.where, ": cancelled")));
              }
            });
          });
    }
    if (reused_) {
      WriteRequestHead();
      return;
    }
    Resolve();
  }

  void ReadBody(BodyReader::ReadHandler handler) {
    if (abandoned_) return;
    BROKER_CHECK(phase_ == Phase::kBody);
    BROKER_CHECK(pending_read_ == nullptr);  // one Read at a time
    if (!body_status_.ok()) {
      std::move(handler)(body_status_, BodyChunk{});
      return;
    }
    if (body_done_) {
      std::move(handler)(absl::OkStatus(), BodyChunk{"", true});
      return;
    }
    pending_read_ = std::move(handler);
    ReadSomeBody();
  }

  // The response body reader was dropped: close and forget everything.
  void Abandon() {
    abandoned_ = true;
    pending_read_ = nullptr;
    Close();
  }

 private:
  enum class Phase {
    kStart,
    kResolving,
    kConnecting,
    kHandshaking,
    kWritingRequest,
    kReadingHead,
    kBody,    // `done_` has run; the body reader drives the rest
    kFailed,  // `done_` has run with an error
  };

  void Resolve() {
    phase_ = Phase::kResolving;
    resolver_.async_resolve(target_.host, target_.port,
                            tcp::resolver::numeric_service,
                            [self = shared_from_this()](
                                const beast::error_code& ec,
                                const tcp::resolver::results_type& results) {
                              self->OnResolve(ec, results);
                            });
  }

  template <typename F>
  void WithStream(F&& f) {
    if (connection_->tls.has_value()) {
      f(*connection_->tls);
    } else {
      f(connection_->tcp);
    }
  }

  void Close() {
    resolver_.cancel();
    deadline_timer_.cancel();
    CloseConnection();
  }

  // The connection stays allocated until the call ends: an operation still
  // pending on it completes with operation_aborted.
  void CloseConnection() {
    if (connection_ == nullptr) return;  // back in the pool
    beast::error_code ignored;
    connection_->tcp.socket().shutdown(tcp::socket::shutdown_both, ignored);
    connection_->tcp.close();
  }

  // The answer has been read whole: keep the connection for the next call
  // when the exchange allows it, else close it.
  void Completed() {
    resolver_.cancel();
    deadline_timer_.cancel();
    auto pool = pool_.lock();
    const bool reusable =
        pool != nullptr && pool->enabled() && parser_->keep_alive() &&
        connection_->buffer.size() == 0 && parser_->get().result_int() != 101 &&
        connection_->tcp.socket().is_open();
    if (!reusable) {
      CloseConnection();
      return;
    }
    pool->Put(pool_key_, std::move(connection_));
  }

  // A reused connection the origin had closed while it sat idle (it fails
  // at once, before any byte of an answer): a request whose body was not
  // touched yet is sent again, once, on a new connection.
  bool RetryOnNewConnection(const beast::error_code& ec) {
    if (!reused_ || body_pulled_ || (parser_ && parser_->got_some())) {
      return false;
    }
    if (ec != net::error::eof && ec != bhttp::error::end_of_stream &&
        ec != net::error::connection_reset && ec != net::error::broken_pipe &&
        ec != ssl::error::stream_truncated) {
      return false;
    }
    reused_ = false;
    CloseConnection();
    connection_ = std::make_unique<Connection>(strand_);
    serializer_.reset();
    parser_.reset();
    request_head_ = {};
    Resolve();
    return true;
  }

  // Ends the call before a response head was delivered.
  void Fail(absl::Status status) {
    BROKER_CHECK(phase_ != Phase::kBody && phase_ != Phase::kFailed);
    phase_ = Phase::kFailed;
    Close();
    // The request body may hold a Read handler that refers to this call;
    // dropping it breaks that cycle.
    request_.body.reset();
    Deliver(std::move(status));
  }

  // Runs `done_` once and drops it: its captures (often the caller, which
  // holds this call's body reader) must not outlive the hand-over, or the
  // two keep each other alive forever.
  void Deliver(absl::StatusOr<ClientResponse> result) {
    Client::ResponseHandler done = std::move(done_);
    done_ = nullptr;
    std::move(done)(std::move(result));
  }

  void OnDeadline() {
    Interrupt(absl::DeadlineExceededError(
        absl::StrCat("call to ", target_.where, ": deadline exceeded")));
  }

  // Ends the call early (deadline, cancellation) in whatever phase it is.
  void Interrupt(const absl::Status& status) {
    switch (phase_) {
      case Phase::kFailed:
        return;
      case Phase::kBody:
        if (body_done_ || !body_status_.ok() || abandoned_) return;
        // A pending read completes with operation_aborted and reports this.
        body_status_ = status;
        Close();
        return;
      default:
        Fail(status);
        return;
    }
  }

  void OnResolve(const beast::error_code& ec,
                 const tcp::resolver::results_type& results) {
    if (phase_ != Phase::kResolving) return;
    if (ec) {
      Fail(MapError(ec, "resolve", target_.where));
      return;
    }
    phase_ = Phase::kConnecting;
    connection_->tcp.expires_after(ToChrono(options_->connect_timeout));
    connection_->tcp.async_connect(
        results,
        [self = shared_from_this()](const beast::error_code& connect_ec,
                                    const tcp::endpoint& /*endpoint*/) {
          self->OnConnect(connect_ec);
        });
  }

  void OnConnect(const beast::error_code& ec) {
    if (phase_ != Phase::kConnecting) return;
    if (ec) {
      Fail(MapError(ec, "connect to", target_.where));
      return;
    }
    // The call deadline covers the rest (deadline_timer_).
    connection_->tcp.expires_never();
    beast::error_code ignored;
    connection_->tcp.socket().set_option(tcp::no_delay(true), ignored);
    if (!target_.tls) {
      WriteRequestHead();
      return;
    }
    connection_->tls.emplace(connection_->tcp, *tls_context_);
    if (const absl::Status status = ConfigureTls(); !status.ok()) {
      Fail(status);
      return;
    }
    phase_ = Phase::kHandshaking;
    connection_->tls->async_handshake(
        ssl::stream_base::client,
        [self = shared_from_this()](const beast::error_code& handshake_ec) {
          self->OnHandshake(handshake_ec);
        });
  }

  // SNI and the name the certificate must carry.
  [[nodiscard]] absl::Status ConfigureTls() {
    SSL* ssl = connection_->tls->native_handle();
    beast::error_code ec;
    net::ip::make_address(target_.host, ec);
    const bool is_ip = !ec;
    // RFC 6066: SNI carries DNS names only.
    if (!is_ip && SSL_set_tlsext_host_name(ssl, target_.host.c_str()) != 1) {
      return absl::InternalError(
          absl::StrCat("TLS to ", target_.where, ": cannot set SNI"));
    }
    if (options_->insecure_skip_verify) return absl::OkStatus();
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param,
                                    X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    const int ok =
        is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, target_.host.c_str())
              : X509_VERIFY_PARAM_set1_host(param, target_.host.c_str(),
                                            target_.host.size());
    if (ok != 1) {
      return absl::InternalError(absl::StrCat(
          "TLS to ", target_.where, ": cannot set the expected host name"));
    }
    return absl::OkStatus();
  }

  void OnHandshake(const beast::error_code& ec) {
    if (phase_ != Phase::kHandshaking) return;
    if (ec) {
      std::string message = ec.message();
      const auto verify =
          SSL_get_verify_result(connection_->tls->native_handle());
      if (verify != X509_V_OK) {
        absl::StrAppend(&message, " (", X509_verify_cert_error_string(verify),
                        ")");
      }
      Fail(absl::UnknownError(
          absl::StrCat("TLS handshake with ", target_.where, ": ", message)));
      return;
    }
    WriteRequestHead();
  }

  void WriteRequestHead() {
    phase_ = Phase::kWritingRequest;
    request_head_.version(11);
    request_head_.method_string(ToStd(request_.method));
    request_head_.target(target_.path);
    request_head_.set(bhttp::field::host, target_.host_header);
    for (const Header& header : request_.headers) {
      if (IsFramingHeader(header.name)) continue;
      request_head_.insert(ToStd(header.name), ToStd(header.value));
    }
    const bool has_body = request_.body != nullptr;
    if (has_body && !request_.body_length.has_value()) {
      request_head_.chunked(true);
    } else if (has_body || ExpectsBody(request_.method)) {
      request_head_.content_length(request_.body_length.value_or(0));
    }
    request_head_.body().data = nullptr;
    request_head_.body().size = 0;
    request_head_.body().more = has_body;
    serializer_.emplace(request_head_);
    auto on_written = [self = shared_from_this(), has_body](
                          const beast::error_code& ec, std::size_t) {
      if (self->phase_ != Phase::kWritingRequest) return;
      if (ec) {
        if (self->RetryOnNewConnection(ec)) return;
        self->Fail(MapError(ec, "write request to", self->target_.where));
      } else if (has_body) {
        self->PullRequestBody();
      } else {
        self->ReadResponseHead();
      }
    };
    WithStream([&](auto& stream) {
      if (has_body) {
        bhttp::async_write_header(stream, *serializer_, std::move(on_written));
      } else {
        bhttp::async_write(stream, *serializer_, std::move(on_written));
      }
    });
  }

  // One chunk in flight: the next Read starts after the previous chunk was
  // written to the socket, which is the back-pressure on the source.
  void PullRequestBody() {
    body_pulled_ = true;
    request_.body->Read([self = shared_from_this()](absl::Status status,
                                                    BodyChunk chunk) mutable {
      // The reader may answer on any thread, even inside Read().
      const auto* strand = &self->strand_;
      net::post(*strand, [self = std::move(self), status = std::move(status),
                          chunk = std::move(chunk)]() mutable {
        self->OnRequestChunk(std::move(status), std::move(chunk));
      });
    });
  }

  void OnRequestChunk(absl::Status status, BodyChunk chunk) {
    if (phase_ != Phase::kWritingRequest) return;
    if (!status.ok()) {
      Fail(std::move(status));
      return;
    }
    body_sent_ += chunk.data.size();
    if (request_.body_length.has_value() &&
        (body_sent_ > *request_.body_length ||
         (chunk.last && body_sent_ != *request_.body_length))) {
      Fail(absl::InvalidArgumentError(
          absl::StrCat("request body to ", target_.where,
                       " does not match its length ", *request_.body_length)));
      return;
    }
    if (chunk.data.empty() && !chunk.last) {
      PullRequestBody();
      return;
    }
    const bool last = chunk.last;
    request_chunk_ = std::move(chunk.data);
    auto& body = request_head_.body();
    body.data = request_chunk_.empty() ? nullptr : request_chunk_.data();
    body.size = request_chunk_.size();
    body.more = !last;
    WithStream([&](auto& stream) {
      bhttp::async_write(
          stream, *serializer_,
          [self = shared_from_this(), last](beast::error_code ec, std::size_t) {
            if (self->phase_ != Phase::kWritingRequest) return;
            if (ec == bhttp::error::need_buffer) ec = {};
            if (ec) {
              self->Fail(
                  MapError(ec, "write request body to", self->target_.where));
            } else if (last) {
              self->request_.body.reset();
              self->request_chunk_ = std::string();
              self->ReadResponseHead();
            } else {
              self->PullRequestBody();
            }
          });
    });
  }

  void ReadResponseHead() {
    phase_ = Phase::kReadingHead;
    // Beast reads max(512, free capacity) bytes at a time: without room,
    // a body arrives in 512-byte reads.
    connection_->buffer.reserve(kChunkBytes);
    parser_.emplace();
    direct_remaining_.reset();
    parser_->header_limit(kHeaderLimit);
    // No limit. Not boost::none: Beast 1.74 compares `len > optional` in
    // basic_parser.ipp, which is true for none.
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    if (request_.method == "HEAD") parser_->skip(true);
    WithStream([&](auto& stream) {
      bhttp::async_read_header(
          stream, connection_->buffer, *parser_,
          [self = shared_from_this()](const beast::error_code& ec,
                                      std::size_t) { self->OnHead(ec); });
    });
  }

  void OnHead(const beast::error_code& ec) {
    if (phase_ != Phase::kReadingHead) return;
    if (ec) {
      if (RetryOnNewConnection(ec)) return;
      Fail(MapError(ec, "read response from", target_.where));
      return;
    }
    const auto& message = parser_->get();
    const unsigned status = message.result_int();
    if (status >= 100 && status < 200 && status != 101) {
      ReadResponseHead();  // interim response (100 Continue, 103 ...)
      return;
    }
    ClientResponse response;
    response.head.status = static_cast<int>(status);
    for (const auto& field : message) {
      if (field.name() == bhttp::field::content_length ||
          field.name() == bhttp::field::transfer_encoding) {
        continue;
      }
      response.head.headers.push_back(
          Header{std::string(field.name_string()), std::string(field.value())});
    }
    if (!parser_->chunked() && parser_->content_length().has_value()) {
      response.head.content_length = *parser_->content_length();
    }
    body_done_ = parser_->is_done();
    if (body_done_) Completed();
    phase_ = Phase::kBody;
    response.body = std::make_unique<ResponseBodyReader>(shared_from_this());
    Deliver(std::move(response));
  }

  void ReadSomeBody() {
    // Once the parser's buffer is drained, what is left of a Content-Length
    // body is plain bytes up to a known end: read them without the parser.
    if (!direct_remaining_.has_value() && !parser_->chunked() &&
        connection_->buffer.size() == 0) {
      if (auto left = parser_->content_length_remaining()) {
        direct_remaining_ = *left;
      }
    }
    if (direct_remaining_.has_value() && *direct_remaining_ > 0) {
      ReadBodyDirect();
      return;
    }
    auto& body = parser_->get().body();
    std::vector<char>& read_buffer = connection_->body_buffer;
    if (read_buffer.empty()) read_buffer.resize(kChunkBytes);
    body.data = read_buffer.data();
    body.size = read_buffer.size();
    WithStream([&](auto& stream) {
      bhttp::async_read_some(
          stream, connection_->buffer, *parser_,
          [self = shared_from_this()](const beast::error_code& ec,
                                      std::size_t) { self->OnBodyRead(ec); });
    });
  }

  void OnBodyRead(beast::error_code ec) {
    if (abandoned_) return;
    if (ec == bhttp::error::need_buffer) ec = {};
    const std::vector<char>& read_buffer = connection_->body_buffer;
    const std::size_t bytes = read_buffer.size() - parser_->get().body().size;
    if (ec || !body_status_.ok()) {
      if (body_status_.ok()) {
        body_status_ =
            ec == bhttp::error::partial_message
                ? absl::UnknownError(absl::StrCat(
                      "response body from ", target_.where,
                      ": the connection closed before the body ended"))
                : MapError(ec, "read response body from", target_.where);
      }
      Close();
      auto handler = std::move(pending_read_);
      pending_read_ = nullptr;
      std::move(handler)(body_status_, BodyChunk{});
      return;
    }
    const bool done = parser_->is_done();
    if (bytes == 0 && !done) {
      ReadSomeBody();  // only framing was parsed (a chunk header)
      return;
    }
    body_done_ = done;
    // Copied out before the connection (and its buffer) may go back to the
    // pool.
    BodyChunk chunk{std::string(read_buffer.data(), bytes), done};
    if (done) Completed();
    auto handler = std::move(pending_read_);
    pending_read_ = nullptr;
    std::move(handler)(absl::OkStatus(), std::move(chunk));
  }

  void ReadBodyDirect() {
    direct_chunk_.resize(static_cast<std::size_t>(
        std::min<std::uint64_t>(*direct_remaining_, kDirectChunkBytes)));
    WithStream([&](auto& stream) {
      stream.async_read_some(
          net::buffer(direct_chunk_),
          [self = shared_from_this()](const beast::error_code& ec,
                                      std::size_t bytes) {
            self->OnDirectBodyRead(ec, bytes);
          });
    });
  }

  void OnDirectBodyRead(const beast::error_code& ec, std::size_t bytes) {
    if (abandoned_) return;
    if (ec || !body_status_.ok()) {
      if (body_status_.ok()) {
        body_status_ =
            ec == net::error::eof || ec == ssl::error::stream_truncated
                ? absl::UnknownError(absl::StrCat(
                      "response body from ", target_.where,
                      ": the connection closed before the body ended"))
                : MapError(ec, "read response body from", target_.where);
      }
      Close();
      auto handler = std::move(pending_read_);
      pending_read_ = nullptr;
      std::move(handler)(body_status_, BodyChunk{});
      return;
    }
    *direct_remaining_ -= bytes;
    body_done_ = *direct_remaining_ == 0;
    direct_chunk_.resize(bytes);
    BodyChunk chunk{std::exchange(direct_chunk_, {}), body_done_};
    if (body_done_) Completed();
    auto handler = std::move(pending_read_);
    pending_read_ = nullptr;
    std::move(handler)(absl::OkStatus(), std::move(chunk));
  }

  const net::strand<net::io_context::executor_type> strand_;
  const std::shared_ptr<ssl::context> tls_context_;
  const std::shared_ptr<const ClientOptions> options_;
  const Target target_;
  const std::string pool_key_;
  ClientRequest request_;
  Client::ResponseHandler done_;
  const std::weak_ptr<ConnectionPool> pool_;

  tcp::resolver resolver_;
  net::steady_timer deadline_timer_;
  // Null once handed back to the pool.
  std::unique_ptr<Connection> connection_;
  bool reused_;
  bool body_pulled_ = false;  // the request body was read from: no retry
  Phase phase_ = Phase::kStart;

  bhttp::request<bhttp::buffer_body> request_head_;
  std::optional<bhttp::request_serializer<bhttp::buffer_body>> serializer_;
  std::string request_chunk_;  // the chunk being written
  std::uint64_t body_sent_ = 0;

  std::optional<bhttp::response_parser<bhttp::buffer_body>> parser_;
  // Set once a Content-Length body is read past the parser: its bytes left.
  std::optional<std::uint64_t> direct_remaining_;
  std::string direct_chunk_;  // the direct read in progress
  BodyReader::ReadHandler pending_read_;
  bool body_done_ = false;
  absl::Status body_status_;
  bool abandoned_ = false;
};

// Closing happens on the strand, like every other use of the call. Only
// net::post's std::bad_alloc can escape, and terminating then is right.
// NOLINTNEXTLINE(bugprone-exception-escape): see above.
ResponseBodyReader::~ResponseBodyReader() {
  const auto& strand = call_->strand();
  net::post(strand, [call = std::move(call_)] { call->Abandon(); });
}

void ResponseBodyReader::Read(ReadHandler handler) {
  net::post(call_->strand(),
            [call = call_, handler = std::move(handler)]() mutable {
              call->ReadBody(std::move(handler));
            });
}

// The client's TLS context, made on the first https call and then shared
// by every call. Loading the system trust store costs about 20 ms of CPU
// (OpenSSL parses each certificate of the bundle): a worker whose origins
// are all plain HTTP never pays it, nor do the fault tests' 1,000 workers
// in one process at start. Thread-safe.
class TlsContextOnDemand {
 public:
  explicit TlsContextOnDemand(const ClientOptions& options)
      : ca_file_(options.ca_file),
        insecure_skip_verify_(options.insecure_skip_verify) {}

  absl::StatusOr<std::shared_ptr<ssl::context>> Get() {
    absl::call_once(once_, [this] { context_ = Make(); });
    return context_;
  }

 private:
  absl::StatusOr<std::shared_ptr<ssl::context>> Make() const {
    auto context = std::make_shared<ssl::context>(ssl::context::tls_client);
    context->set_options(ssl::context::default_workarounds |
                         ssl::context::no_compression);
    SSL_CTX_set_min_proto_version(context->native_handle(), TLS1_2_VERSION);
    beast::error_code ec;
    context->set_default_verify_paths(ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot load the system CA store: ", ec.message()));
    }
    if (!ca_file_.empty()) {
      context->load_verify_file(ca_file_, ec);
      if (ec) {
        return absl::InvalidArgumentError(
            absl::StrCat("cannot load CA file ", ca_file_, ": ", ec.message()));
      }
    }
    context->set_verify_mode(
        insecure_skip_verify_ ? ssl::verify_none : ssl::verify_peer, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot set TLS verification: ", ec.message()));
    }
    return context;
  }

  const std::string ca_file_;
  const bool insecure_skip_verify_;
  absl::once_flag once_;
  absl::StatusOr<std::shared_ptr<ssl::context>> context_;
};

// Send() may be called from any thread: the client itself is immutable
// apart from its connection pool (thread-safe), and each call runs on the
// strand of its connection.
class DefaultClient final : public Client {
 public:
  DefaultClient(net::io_context& io, ClientOptions options,
                std::shared_ptr<TlsContextOnDemand> tls)
      : io_(io),
        options_(std::make_shared<const ClientOptions>(std::move(options))),
        tls_(std::move(tls)),
        pool_(std::make_shared<ConnectionPool>(
            io, options_->idle_timeout, options_->max_idle_per_origin)) {}

  void Send(ClientRequest request, ResponseHandler done) override {
    absl::StatusOr<Target> target = ParseUrl(request.url);
    absl::Status status = target.status();
    if (status.ok()) status = ValidateRequest(request);
    std::shared_ptr<ssl::context> tls_context;
    if (status.ok() && target->tls) {
      absl::StatusOr<std::shared_ptr<ssl::context>> made = tls_->Get();
      if (made.ok()) {
        tls_context = *std::move(made);
      } else {
        status = made.status();
      }
    }
    if (!status.ok()) {
      net::post(io_,
                [done = std::move(done), status = std::move(status)]() mutable {
                  std::move(done)(std::move(status));
                });
      return;
    }
    std::unique_ptr<Connection> idle =
        pool_->enabled() ? pool_->Take(Call::PoolKey(*target)) : nullptr;
    const bool reused = idle != nullptr;
    auto call = std::make_shared<Call>(
        io_, std::move(tls_context), options_, *std::move(target),
        std::move(request), std::move(done), std::move(idle), reused, pool_);
    const auto& strand = call->strand();
    net::post(strand, [call] { call->Start(); });
  }

 private:
  net::io_context& io_;
  const std::shared_ptr<const ClientOptions> options_;
  const std::shared_ptr<TlsContextOnDemand> tls_;
  const std::shared_ptr<ConnectionPool> pool_;
};

}  // namespace

absl::string_view DownstreamErrorCode(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return "";
    case absl::StatusCode::kUnavailable:
      return "DOWNSTREAM_UNREACHABLE";
    case absl::StatusCode::kDeadlineExceeded:
      return "DOWNSTREAM_TIMEOUT";
    default:
      return "DOWNSTREAM_ERROR";
  }
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(net::io_context& io,
                                                       ClientOptions options) {
  auto tls = std::make_shared<TlsContextOnDemand>(options);
  // A CA file is the operator's: a bad one stops start-up, clearly.
  if (!options.ca_file.empty()) BROKER_RETURN_IF_ERROR(tls->Get().status());
  return std::make_unique<DefaultClient>(io, std::move(options),
                                         std::move(tls));
}

void CallCancellation::Cancel() {
  absl::AnyInvocable<void() &&> on_cancel;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return;
    cancelled_ = true;
    on_cancel = std::move(on_cancel_);
    on_cancel_ = nullptr;
  }
  if (on_cancel) std::move(on_cancel)();
}

void CallCancellation::OnCancel(absl::AnyInvocable<void() &&> on_cancel) {
  {
    absl::MutexLock lock(&mu_);
    if (!cancelled_) {
      on_cancel_ = std::move(on_cancel);
      return;
    }
  }
  std::move(on_cancel)();
}

}  // namespace broker::common::http
