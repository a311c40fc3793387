#include "common/http/server.h"

#include "tests/testing/status_matchers.h"

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

#include <sys/stat.h>

namespace broker::common::http {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::StatusIs;
using ::testing::_;
using ::testing::HasSubstr;
using ::testing::Le;
using ::testing::Optional;
using ::testing::StartsWith;

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using Response = bhttp::response<bhttp::string_body>;

// Every wait in these tests is bounded; none of them sleeps.
constexpr absl::Duration kWait = absl::Seconds(30);
constexpr std::chrono::seconds kClientTimeout(30);
constexpr std::chrono::seconds kLargeClientTimeout(180);
constexpr std::size_t kMaxChunk = std::size_t{64} * 1024;
constexpr std::size_t kMiB = std::size_t{1024} * 1024;

// Bytes 0..255 over and over, shifted every lap, so that misplaced or
// dropped bytes show up.
std::string BinaryBody(std::size_t size) {
  std::string body(size, '\0');
  for (std::size_t i = 0; i < size; ++i) {
    body[i] = static_cast<char>((i + i / 256) & 0xff);
  }
  return body;
}

std::string Chunked(const std::vector<std::string>& chunks) {
  std::string out;
  for (const std::string& chunk : chunks) {
    absl::StrAppend(&out, absl::Hex(chunk.size()), "\r\n", chunk, "\r\n");
  }
  absl::StrAppend(&out, "0\r\n\r\n");
  return out;
}

// --- OpenSSL: a self-signed certificate for the TLS tests --------------------

struct OpenSslDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
};
template <class T>
using OpenSslPtr = std::unique_ptr<T, OpenSslDeleter>;

absl::Status AddExtension(X509* cert, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  OpenSslPtr<X509_EXTENSION> ext(
      X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return absl::InternalError(absl::StrCat("extension ", value));
  }
  return absl::OkStatus();
}

// Writes a fresh P-256 key and a self-signed certificate for localhost and
// 127.0.0.1, both PEM.
absl::Status WriteSelfSignedCertificate(const std::string& cert_file,
                                        const std::string& key_file) {
  OpenSslPtr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  OpenSslPtr<X509> cert(X509_new());
  if (!key || !cert) return absl::InternalError("EVP_EC_gen or X509_new");
  X509_NAME* name = X509_get_subject_name(cert.get());
  const bool ok =
      X509_set_version(cert.get(), 2) == 1 &&
      ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1) == 1 &&
      X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) != nullptr &&
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400) != nullptr &&
      X509_set_pubkey(cert.get(), key.get()) == 1 &&
      X509_NAME_add_entry_by_txt(
          name, "CN", MBSTRING_ASC,
          reinterpret_cast<const unsigned char*>("localhost"), -1, -1,
          0) == 1 &&
      X509_set_issuer_name(cert.get(), name) == 1;
  if (!ok) return absl::InternalError("building the certificate");
  if (absl::Status s =
          AddExtension(cert.get(), NID_basic_constraints, "critical,CA:TRUE");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = AddExtension(cert.get(), NID_subject_alt_name,
                                    "DNS:localhost,IP:127.0.0.1");
      !s.ok()) {
    return s;
  }
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) {
    return absl::InternalError("X509_sign");
  }
  OpenSslPtr<BIO> cert_out(BIO_new_file(cert_file.c_str(), "w"));
  OpenSslPtr<BIO> key_out(BIO_new_file(key_file.c_str(), "w"));
  if (!cert_out || !key_out ||
      PEM_write_bio_X509(cert_out.get(), cert.get()) != 1 ||
      PEM_write_bio_PrivateKey(key_out.get(), key.get(), nullptr, nullptr, 0,
                               nullptr, nullptr) != 1) {
    return absl::InternalError("writing the PEM files");
  }
  return absl::OkStatus();
}

// --- A test client
// -------------------------------------------------------------

// A synchronous HTTP/1.1 client for the tests. Each call runs Beast's
// asynchronous operations on a private io_context with a timeout on the
// stream, so no call can hang (a blocking socket read could).
class TestClient {
 public:
  // Connects to 127.0.0.1:port; with `tls`, also completes a handshake that
  // verifies the server as "localhost".
  static std::unique_ptr<TestClient> Connect(int port,
                                             ssl::context* tls = nullptr) {
    auto client = std::unique_ptr<TestClient>(new TestClient(tls));
    const tcp::endpoint endpoint(net::ip::make_address("127.0.0.1"),
                                 static_cast<std::uint16_t>(port));
    beast::error_code ec = client->Run(
        [&](auto done) { client->lowest().async_connect(endpoint, done); });
    if (ec) {
      ADD_FAILURE() << "connect: " << ec.message();
      return nullptr;
    }
    if (client->tls_) {
      SSL_set_tlsext_host_name(client->tls_->native_handle(), "localhost");
      client->tls_->set_verify_callback(
          ssl::host_name_verification("localhost"));
      ec = client->Run([&](auto done) {
        client->tls_->async_handshake(ssl::stream_base::client, done);
      });
      if (ec) {
        ADD_FAILURE() << "TLS handshake: " << ec.message();
        return nullptr;
      }
    }
    return client;
  }

  // Whether a TCP connection to the port is refused.
  static bool Refused(int port) {
    net::io_context io;
    tcp::socket socket(io);
    beast::error_code ec;
    socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"),
                                 static_cast<std::uint16_t>(port)),
                   ec);
    return ec == net::error::connection_refused;
  }

  beast::error_code Write(std::string_view bytes) {
    return Run([&](auto done) {
      WithStream([&](auto& stream) {
        net::async_write(stream, net::buffer(bytes.data(), bytes.size()), done);
      });
    });
  }

  // Reads one response; `head_request` when it answers a HEAD.
  beast::error_code Read(Response& response, bool head_request = false) {
    bhttp::response_parser<bhttp::string_body> parser;
    // Not boost::none: Beast 1.74 then rejects every Content-Length.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    parser.skip(head_request);
    const beast::error_code ec = Run([&](auto done) {
      WithStream([&](auto& stream) {
        bhttp::async_read(stream, buffer_, parser, done);
      });
    });
    response = parser.release();
    return ec;
  }

  // Writes `request` and reads the response at the same time, as a real
  // client must when the bodies are larger than the socket buffers.
  beast::error_code Exchange(std::string_view request, Response& response,
                             std::chrono::seconds timeout = kClientTimeout) {
    bhttp::response_parser<bhttp::string_body> parser;
    // Not boost::none: Beast 1.74 then rejects every Content-Length.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    beast::error_code write_ec;
    beast::error_code read_ec;
    lowest().expires_after(timeout);
    WithStream([&](auto& stream) {
      net::async_write(
          stream, net::buffer(request.data(), request.size()),
          [&](beast::error_code ec, std::size_t) { write_ec = ec; });
      bhttp::async_read(
          stream, buffer_, parser,
          [&](beast::error_code ec, std::size_t) { read_ec = ec; });
    });
    io_.restart();
    io_.run();
    response = parser.release();
    return read_ec ? read_ec : write_ec;
  }

  // Reads exactly `n` raw bytes.
  beast::error_code ReadExactly(std::size_t n, std::string& out) {
    out.clear();
    const std::size_t buffered = std::min(n, buffer_.size());
    out.append(beast::buffers_to_string(buffer_.data()).substr(0, buffered));
    buffer_.consume(buffered);
    if (out.size() == n) return {};
    std::string rest(n - out.size(), '\0');
    const beast::error_code ec = Run([&](auto done) {
      WithStream([&](auto& stream) {
        net::async_read(stream, net::buffer(rest), done);
      });
    });
    out += rest;
    return ec;
  }

  // Reads raw bytes until the connection ends; returns what ended it
  // (net::error::eof for a clean close).
  beast::error_code ReadToEnd(std::string& out) {
    out = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    for (;;) {
      std::array<char, 4096> chunk{};
      std::size_t n = 0;
      const beast::error_code ec = Run([&](auto done) {
        WithStream([&](auto& stream) {
          stream.async_read_some(
              net::buffer(chunk),
              [&n, done](beast::error_code e, std::size_t bytes) mutable {
                n = bytes;
                done(e, bytes);
              });
        });
      });
      out.append(chunk.data(), n);
      if (ec) return ec;
    }
  }

  void Close() {
    beast::error_code ignored;
    lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
    lowest().close();
  }

 private:
  explicit TestClient(ssl::context* tls) {
    if (tls != nullptr) {
      tls_.emplace(io_, *tls);
    } else {
      tcp_.emplace(io_);
    }
  }

  beast::tcp_stream& lowest() {
    return tls_ ? beast::get_lowest_layer(*tls_) : *tcp_;
  }

  template <class F>
  void WithStream(F&& f) {
    if (tls_) {
      f(*tls_);
    } else {
      f(*tcp_);
    }
  }

  // Starts one operation (given the completion handler) and runs it to
  // completion or timeout.
  template <class Start>
  beast::error_code Run(Start&& start) {
    beast::error_code result = net::error::timed_out;
    lowest().expires_after(kClientTimeout);
    start([&result](beast::error_code ec, auto&&...) { result = ec; });
    io_.restart();
    io_.run();
    return result;
  }

  net::io_context io_;
  std::optional<beast::tcp_stream> tcp_;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
  beast::flat_buffer buffer_;
};

// --- Helpers on the handler side
// -----------------------------------------------

// Chunk sizes and the final error seen by the handlers. Thread-safe.
class BodyStats {
 public:
  void RecordChunk(std::size_t n) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++reads_;
    bytes_ += n;
    max_chunk_ = std::max(max_chunk_, n);
  }
  void RecordError(absl::Status status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    error_ = std::move(status);
  }
  std::size_t reads() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return reads_;
  }
  std::size_t bytes() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return bytes_;
  }
  std::size_t max_chunk() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return max_chunk_;
  }
  // The error recorded, once there is one (or a deadline error).
  absl::Status WaitForError() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto has_error = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return !error_.ok();
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&has_error), kWait)) {
      return absl::DeadlineExceededError("no body error recorded");
    }
    return error_;
  }

 private:
  mutable absl::Mutex mu_;
  std::size_t reads_ ABSL_GUARDED_BY(mu_) = 0;
  std::size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::size_t max_chunk_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

// Streams the request body back as it arrives: the head first
// (Content-Length when the request had one, else chunked), then one Write
// per chunk read, then Finish. On a read error it aborts.
class Echo : public std::enable_shared_from_this<Echo> {
 public:
  static void Start(std::shared_ptr<Exchange> exchange, BodyStats& stats) {
    std::make_shared<Echo>(std::move(exchange), stats)->Begin();
  }
  Echo(std::shared_ptr<Exchange> exchange, BodyStats& stats)
      : exchange_(std::move(exchange)), stats_(stats) {}

 private:
  void Begin() {
    ResponseHead head;
    head.headers = {{"Content-Type", "application/octet-stream"}};
    head.content_length = exchange_->request().content_length;
    writer_ = &exchange_->Respond(
        std::move(head),
        [self = shared_from_this()](const absl::Status& status) {
          if (status.ok()) self->ReadNext();
        });
  }
  void ReadNext() {
    exchange_->body().Read(
        [self = shared_from_this()](absl::Status status, BodyChunk chunk) {
          self->OnChunk(std::move(status), std::move(chunk));
        });
  }
  void OnChunk(absl::Status status, BodyChunk chunk) {
    if (!status.ok()) {
      stats_.RecordError(std::move(status));
      writer_->Abort();
      return;
    }
    stats_.RecordChunk(chunk.data.size());
    const bool last = chunk.last;
    writer_->Write(
        std::move(chunk.data),
        [self = shared_from_this(), last](const absl::Status& write_status) {
          if (!write_status.ok()) return;
          if (last) {
            self->writer_->Finish([](const absl::Status&) {});
          } else {
            self->ReadNext();
          }
        });
  }

  const std::shared_ptr<Exchange> exchange_;
  BodyStats& stats_;
  BodyWriter* writer_ = nullptr;  // owned by exchange_
};

// Reads the whole body on the server's threads, then answers 200 with it.
class Collect : public std::enable_shared_from_this<Collect> {
 public:
  static void Start(std::shared_ptr<Exchange> exchange) {
    std::make_shared<Collect>(std::move(exchange))->ReadNext();
  }
  explicit Collect(std::shared_ptr<Exchange> exchange)
      : exchange_(std::move(exchange)) {}

 private:
  void ReadNext() {
    exchange_->body().Read(
        [self = shared_from_this()](const absl::Status& status,
                                    const BodyChunk& chunk) {
          if (!status.ok()) return;  // the server answers or closes
          self->body_ += chunk.data;
          if (chunk.last) {
            self->exchange_->RespondSimple(200, {}, std::move(self->body_));
          } else {
            self->ReadNext();
          }
        });
  }

  const std::shared_ptr<Exchange> exchange_;
  std::string body_;
};

// Exchanges handed from the server's threads to the test's thread.
class ExchangeQueue {
 public:
  void Push(std::shared_ptr<Exchange> exchange) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(exchange));
  }
  // The next exchange, or null after kWait.
  std::shared_ptr<Exchange> Pop() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto not_empty = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return !queue_.empty();
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&not_empty), kWait)) {
      return nullptr;
    }
    std::shared_ptr<Exchange> exchange = std::move(queue_.front());
    queue_.pop_front();
    return exchange;
  }
  void Clear() ABSL_LOCKS_EXCLUDED(mu_) {
    std::deque<std::shared_ptr<Exchange>> dropped;
    absl::MutexLock lock(&mu_);
    dropped.swap(queue_);
  }

 private:
  absl::Mutex mu_;
  std::deque<std::shared_ptr<Exchange>> queue_ ABSL_GUARDED_BY(mu_);
};

// One callback-style operation run from the test thread, waited for.
absl::Status Await(absl::FunctionRef<void(BodyWriter::DoneHandler)> start) {
  struct State {
    absl::Notification done;
    absl::Status status;
  };
  auto state = std::make_shared<State>();
  start([state](absl::Status status) {
    state->status = std::move(status);
    state->done.Notify();
  });
  if (!state->done.WaitForNotificationWithTimeout(kWait)) {
    return absl::DeadlineExceededError("the callback did not run");
  }
  return state->status;
}

struct ReadResult {
  absl::Status status;
  BodyChunk chunk;
};

ReadResult ReadOnce(BodyReader& reader) {
  struct State {
    absl::Notification done;
    ReadResult result;
  };
  auto state = std::make_shared<State>();
  reader.Read([state](absl::Status status, BodyChunk chunk) {
    state->result = {std::move(status), std::move(chunk)};
    state->done.Notify();
  });
  if (!state->done.WaitForNotificationWithTimeout(kWait)) {
    return {absl::DeadlineExceededError("the read did not complete"), {}};
  }
  return std::move(state->result);
}

absl::StatusOr<std::string> ReadAll(BodyReader& reader) {
  std::string body;
  for (;;) {
    ReadResult result = ReadOnce(reader);
    if (!result.status.ok()) return result.status;
    body += result.chunk.data;
    if (result.chunk.last) return body;
  }
}

// A shared flag for OnCancel callbacks, which may run after a test body.
std::shared_ptr<absl::Notification> CancelFlag(Exchange& exchange) {
  auto flag = std::make_shared<absl::Notification>();
  exchange.OnCancel([flag] { flag->Notify(); });
  return flag;
}

// --- The fixture
// ------------------------------------------------------------------

// A server on 127.0.0.1 with its io_context run by two threads.
class ServerTest : public ::testing::Test {
 public:
  ServerTest(const ServerTest&) = delete;
  ServerTest& operator=(const ServerTest&) = delete;

 protected:
  ServerTest() : work_(io_.get_executor()) {
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
  }
  ~ServerTest() override {
    StopServer();
    exchanges_.Clear();
    work_.reset();
    io_.stop();
    for (std::thread& thread : threads_) thread.join();
  }

  static ServerOptions Options() {
    ServerOptions options;
    options.address = "127.0.0.1";
    return options;
  }

  // Starts the server; returns its port (0 on failure, after a test
  // failure).
  int StartServer(Handler handler, ServerOptions options = Options()) {
    absl::StatusOr<std::unique_ptr<Server>> server =
        Server::Create(io_, std::move(options), std::move(handler));
    EXPECT_THAT(server, IsOk());
    if (!server.ok()) return 0;
    server_ = *std::move(server);
    absl::StatusOr<int> port = server_->Start();
    EXPECT_THAT(port, IsOk());
    port_ = port.ok() ? *port : 0;
    return port_;
  }

  void StopServer() {
    if (server_ == nullptr) return;
    server_->Shutdown(absl::Now());
    server_.reset();
  }

  // Handlers that hand every exchange to the test thread, or echo.
  Handler Queue() {
    return [this](std::shared_ptr<Exchange> exchange) {
      ++calls_;
      exchanges_.Push(std::move(exchange));
    };
  }
  Handler EchoHandler() {
    return [this](std::shared_ptr<Exchange> exchange) {
      Echo::Start(std::move(exchange), stats_);
    };
  }

  std::unique_ptr<TestClient> Connect(ssl::context* tls = nullptr) const {
    return TestClient::Connect(port_, tls);
  }

  net::io_context io_;
  net::executor_work_guard<net::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
  std::unique_ptr<Server> server_;
  int port_ = 0;
  ExchangeQueue exchanges_;
  BodyStats stats_;
  std::atomic<int> calls_{0};
};

std::string Header(const Response& response, bhttp::field field) {
  return std::string(response[field]);
}

// --- Basics
// ---------------------------------------------------------------------

TEST_F(ServerTest, SimpleGet) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write(
      "GET /hello?x=%2F HTTP/1.1\r\nHost: localhost\r\nX-Test: abc\r\n\r\n"));

  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  const RequestHead& head = exchange->request();
  EXPECT_EQ(head.method, "GET");
  EXPECT_EQ(head.target, "/hello?x=%2F");
  EXPECT_THAT(FindHeader(head.headers, "x-test"),
              Optional(absl::string_view("abc")));
  EXPECT_EQ(head.content_length, std::nullopt);
  EXPECT_FALSE(head.chunked);
  EXPECT_TRUE(head.keep_alive);
  EXPECT_EQ(exchange->remote_address(), "127.0.0.1");
  ReadResult body = ReadOnce(exchange->body());
  EXPECT_THAT(body.status, IsOk());
  EXPECT_TRUE(body.chunk.last);
  EXPECT_EQ(body.chunk.data, "");
  exchange->RespondSimple(200, {{"Content-Type", "text/plain"}}, "hello");

  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response.body(), "hello");
  EXPECT_EQ(Header(response, bhttp::field::content_length), "5");
  EXPECT_EQ(Header(response, bhttp::field::content_type), "text/plain");
  EXPECT_TRUE(response.keep_alive());
}

TEST_F(ServerTest, KeepAliveServesTwoRequestsOnOneConnection) {
  ASSERT_NE(StartServer([](const std::shared_ptr<Exchange>& exchange) {
              exchange->RespondSimple(200, {}, exchange->request().target);
            }),
            0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  for (const char* target : {"/first", "/second"}) {
    ASSERT_FALSE(client->Write(
        absl::StrCat("GET ", target, " HTTP/1.1\r\nHost: x\r\n\r\n")));
    Response response;
    ASSERT_FALSE(client->Read(response)) << target;
    EXPECT_EQ(response.body(), target);
    EXPECT_TRUE(response.keep_alive());
  }
}

TEST_F(ServerTest, PipelinedRequestsAreAnsweredInOrder) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  // Three requests in one write; the second has a body.
  ASSERT_FALSE(client->Write(
      "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
      "GET /c HTTP/1.1\r\nHost: x\r\n\r\n"));
  // Answered from this thread, one by one, as a slow backend would.
  for (const char* target : {"/a", "/b", "/c"}) {
    std::shared_ptr<Exchange> exchange = exchanges_.Pop();
    ASSERT_NE(exchange, nullptr) << target;
    EXPECT_EQ(exchange->request().target, target);
    absl::StatusOr<std::string> body = ReadAll(exchange->body());
    ASSERT_THAT(body, IsOk());
    exchange->RespondSimple(200, {}, absl::StrCat(target, ":", *body));
  }
  for (const char* expected : {"/a:", "/b:xyz", "/c:"}) {
    Response response;
    ASSERT_FALSE(client->Read(response));
    EXPECT_EQ(response.body(), expected);
  }
}

// --- Streamed bodies
// --------------------------------------------------------------

TEST_F(ServerTest, EchoesContentLengthBodyExactly) {
  ASSERT_NE(StartServer(EchoHandler()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  const std::string body = BinaryBody(3 * kMaxChunk + 12345);
  Response response;
  ASSERT_FALSE(client->Exchange(
      absl::StrCat("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ",
                   body.size(), "\r\n\r\n", body),
      response));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(Header(response, bhttp::field::content_length),
            absl::StrCat(body.size()));
  EXPECT_TRUE(response.body() == body);
  EXPECT_EQ(stats_.bytes(), body.size());
  EXPECT_THAT(stats_.max_chunk(), Le(kMaxChunk));
}

TEST_F(ServerTest, EchoesChunkedBodyExactly) {
  ASSERT_NE(StartServer(EchoHandler()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  const std::string big = BinaryBody(2 * kMaxChunk + 1);  // split by the server
  const std::string body = std::string(1, '\0') + "0123456789" + big + "z";
  // Chunk sizes 1, 10 (with an extension), 128 KiB + 1, 1, then a trailer.
  const std::string request = absl::StrCat(
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
      "1\r\n", std::string(1, '\0'), "\r\n", "a;name=value\r\n0123456789\r\n",
      absl::Hex(big.size()), "\r\n", big, "\r\n", "1\r\nz\r\n",
      "0\r\nX-Trailer: t\r\n\r\n");
  Response response;
  ASSERT_FALSE(client->Exchange(request, response));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_TRUE(response.chunked());
  EXPECT_TRUE(response.body() == body);
  EXPECT_EQ(stats_.bytes(), body.size());
  EXPECT_THAT(stats_.max_chunk(), Le(kMaxChunk));
}

TEST_F(ServerTest, ZeroByteBodies) {
  ASSERT_NE(StartServer(EchoHandler()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write(
      "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
      "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "0\r\n\r\n"
      "GET /c HTTP/1.1\r\nHost: x\r\n\r\n"));
  for (int i = 0; i < 3; ++i) {
    Response response;
    ASSERT_FALSE(client->Read(response)) << i;
    EXPECT_EQ(response.result_int(), 200);
    EXPECT_EQ(response.body(), "");
  }
  // One read per request, each the last one, with no data.
  EXPECT_EQ(stats_.reads(), 3U);
  EXPECT_EQ(stats_.bytes(), 0U);
}

class LargeBodyTest : public ServerTest,
                      public ::testing::WithParamInterface<bool> {};

// 20 MiB through the echo: the server holds at most one 64 KiB chunk of it
// at a time, and the client reads the answer while still sending.
TEST_P(LargeBodyTest, StreamsTwentyMebibytesInBoundedChunks) {
  const bool chunked = GetParam();
  ServerOptions options = Options();
  options.limits.max_body_bytes = 0;  // no limit
  ASSERT_NE(StartServer(EchoHandler(), options), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  const std::string body = BinaryBody(20 * kMiB);
  std::string request = "POST /echo HTTP/1.1\r\nHost: x\r\n";
  if (chunked) {
    // 1 MiB client chunks: the server must cut them down.
    std::vector<std::string> chunks;
    for (std::size_t at = 0; at < body.size(); at += kMiB) {
      chunks.push_back(body.substr(at, kMiB));
    }
    absl::StrAppend(&request, "Transfer-Encoding: chunked\r\n\r\n",
                    Chunked(chunks));
  } else {
    absl::StrAppend(&request, "Content-Length: ", body.size(), "\r\n\r\n",
                    body);
  }
  Response response;
  ASSERT_FALSE(client->Exchange(request, response, kLargeClientTimeout));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response.body().size(), body.size());
  EXPECT_TRUE(response.body() == body);
  EXPECT_EQ(stats_.bytes(), body.size());
  EXPECT_THAT(stats_.max_chunk(), Le(kMaxChunk));
  EXPECT_GE(stats_.reads(), body.size() / kMaxChunk);
  // Reads are not tiny either (Beast would read 512 bytes at a time from a
  // buffer sized for a request head).
  EXPECT_LE(stats_.reads(), body.size() / 4096);
}

INSTANTIATE_TEST_SUITE_P(Framing, LargeBodyTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? "Chunked"
                                                   : "ContentLength";
                         });

TEST_F(ServerTest, BodyChunksArriveBeforeTheBodyIsComplete) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write(
      "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" +
      std::string(1000, 'a')));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  // The client has sent half: the handler gets data, not a wait for all.
  std::size_t received = 0;
  while (received < 1000) {
    ReadResult result = ReadOnce(exchange->body());
    ASSERT_THAT(result.status, IsOk());
    ASSERT_FALSE(result.chunk.last);
    received += result.chunk.data.size();
  }
  EXPECT_EQ(received, 1000U);
  ASSERT_FALSE(client->Write(std::string(1000, 'b')));
  absl::StatusOr<std::string> rest = ReadAll(exchange->body());
  ASSERT_THAT(rest, IsOk());
  EXPECT_EQ(*rest, std::string(1000, 'b'));
  exchange->RespondSimple(200, {}, "ok");
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.body(), "ok");
}

TEST_F(ServerTest, Expect100ContinueIsSentWhenTheHandlerReads) {
  // Reads the whole body before answering, as the relay does.
  ASSERT_NE(StartServer([](const std::shared_ptr<Exchange>& exchange) {
              Collect::Start(exchange);
            }),
            0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(
      client->Write("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    "Expect: 100-continue\r\n\r\n"));
  const std::string expected = "HTTP/1.1 100 Continue\r\n\r\n";
  std::string interim;
  ASSERT_FALSE(client->ReadExactly(expected.size(), interim));
  EXPECT_EQ(interim, expected);
  ASSERT_FALSE(client->Write("hello"));
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response.body(), "hello");
  EXPECT_TRUE(response.keep_alive());
}

// --- Limits and malformed input
// -----------------------------------------------------

TEST_F(ServerTest, HeaderOverTheLimitIs431) {
  ServerOptions options = Options();
  options.limits.max_header_bytes = 1024;
  ASSERT_NE(StartServer(Queue(), options), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write(absl::StrCat(
      "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", std::string(2000, 'v'),
      "\r\n\r\n")));
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 431);
  EXPECT_FALSE(response.keep_alive());
  std::string rest;
  EXPECT_EQ(client->ReadToEnd(rest), net::error::eof);
  EXPECT_EQ(rest, "");
}

class MalformedRequestTest : public ServerTest,
                             public ::testing::WithParamInterface<const char*> {
};

TEST_P(MalformedRequestTest, Is400AndCloses) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write(GetParam()));
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 400);
  EXPECT_FALSE(response.keep_alive());
  std::string rest;
  EXPECT_EQ(client->ReadToEnd(rest), net::error::eof);
}

INSTANTIATE_TEST_SUITE_P(
    Requests, MalformedRequestTest,
    ::testing::Values(
        "GET /\r\n\r\n",                                 // no version
        "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",       // bad field
        "G@T / HTTP/1.1\r\nHost: x\r\n\r\n",             // bad method
        "GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",  // bad length
        "POST / HTTP/1.1\r\nContent-Length: 3\r\n"       // smuggling
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\n"  // two lengths
        "Content-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"));  // unknown TE

TEST_F(ServerTest, MalformedChunkedBodyIs400ForTheReader) {
  ASSERT_NE(StartServer(EchoHandler()), 0);
  // The echo has answered 200 already when the bad chunk arrives, so the
  // answer is cut short; the reader sees InvalidArgument.
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  Response response;
  EXPECT_TRUE(client->Exchange(
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\nzz\r\n",
      response));
  EXPECT_THAT(
      stats_.WaitForError(),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("malformed")));
}

TEST_F(ServerTest, DeclaredBodyOverTheLimitIs413BeforeTheHandler) {
  ServerOptions options = Options();
  options.limits.max_body_bytes = 1000;
  ASSERT_NE(StartServer(Queue(), options), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  // Only the head is sent: the answer cannot wait for the body.
  ASSERT_FALSE(client->Write(
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"));
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 413);
  EXPECT_FALSE(response.keep_alive());
  std::string rest;
  EXPECT_EQ(client->ReadToEnd(rest), net::error::eof);
  EXPECT_EQ(calls_.load(), 0);  // the handler never saw it
}

TEST_F(ServerTest, ChunkedBodyOverTheLimitIs413AndAnErrorForTheReader) {
  ServerOptions options = Options();
  options.limits.max_body_bytes = 1000;
  ASSERT_NE(StartServer(Queue(), options), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write(
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
      Chunked({std::string(600, 'a'), std::string(600, 'b'),
               std::string(600, 'c')})));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  EXPECT_THAT(
      ReadAll(exchange->body()),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("1000")));
  // The server answered already; a late answer from the handler is ignored.
  exchange->RespondSimple(500, {}, "late");
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 413);
  std::string rest;
  EXPECT_EQ(client->ReadToEnd(rest), net::error::eof);
  EXPECT_EQ(rest, "");
}

// --- Answers
// --------------------------------------------------------------------

TEST_F(ServerTest, HeadAnd204And304HaveNoBody) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(
      client->Write("HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
                    "DELETE /204 HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /304 HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /after HTTP/1.1\r\nHost: x\r\n\r\n"));
  struct Case {
    int status;
    std::optional<std::uint64_t> length;
    std::string body;  // written by the handler
  };
  for (const Case& c : {Case{200, 42, "dropped for HEAD"}, Case{204, {}, ""},
                        Case{304, 42, ""}}) {
    std::shared_ptr<Exchange> exchange = exchanges_.Pop();
    ASSERT_NE(exchange, nullptr);
    ResponseHead head;
    head.status = c.status;
    head.content_length = c.length;
    BodyWriter* writer = nullptr;
    ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                  writer = &exchange->Respond(head, std::move(done));
                }),
                IsOk());
    ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                  writer->Write(c.body, std::move(done));
                }),
                IsOk());
    ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                  writer->Finish(std::move(done));
                }),
                IsOk());
  }
  std::shared_ptr<Exchange> after = exchanges_.Pop();
  ASSERT_NE(after, nullptr);
  EXPECT_EQ(after->request().target, "/after");
  after->RespondSimple(200, {}, "after");

  Response response;
  ASSERT_FALSE(client->Read(response, /*head_request=*/true));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(Header(response, bhttp::field::content_length), "42");
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 204);
  EXPECT_EQ(Header(response, bhttp::field::content_length), "");
  EXPECT_EQ(Header(response, bhttp::field::transfer_encoding), "");
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 304);
  // Stray body bytes from the answers above would break this one.
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response.body(), "after");
}

TEST_F(ServerTest, RespondWholeSendsTheCompleteAnswerAndKeepsTheConnection) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(
      client->Write("GET /whole HTTP/1.1\r\nHost: x\r\n\r\n"
                    "HEAD /whole HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /mismatch HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string body(3000, '\0');
  for (std::size_t i = 0; i < body.size(); ++i) {
    body[i] = static_cast<char>(i * 7 + 3);
  }

  std::shared_ptr<Exchange> get = exchanges_.Pop();
  ASSERT_NE(get, nullptr);
  ResponseHead head;
  head.status = 201;
  head.headers = {{"X-Kind", "whole"}};
  head.content_length = body.size();
  EXPECT_THAT(Await([&](BodyWriter::DoneHandler done) {
                get->RespondWhole(head, body, std::move(done));
              }),
              IsOk());
  // A second answer to the same exchange is refused.
  EXPECT_THAT(Await([&](BodyWriter::DoneHandler done) {
                get->RespondWhole(head, body, std::move(done));
              }),
              StatusIs(absl::StatusCode::kFailedPrecondition, _));

  // HEAD: the GET's length is declared, the body is dropped.
  std::shared_ptr<Exchange> head_request = exchanges_.Pop();
  ASSERT_NE(head_request, nullptr);
  EXPECT_THAT(Await([&](BodyWriter::DoneHandler done) {
                head_request->RespondWhole(head, "", std::move(done));
              }),
              IsOk());

  // A length that is not the body's: refused, nothing sent.
  std::shared_ptr<Exchange> mismatch = exchanges_.Pop();
  ASSERT_NE(mismatch, nullptr);
  head.content_length = body.size() + 1;
  EXPECT_THAT(Await([&](BodyWriter::DoneHandler done) {
                mismatch->RespondWhole(head, body, std::move(done));
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("3001")));
  mismatch->RespondSimple(200, {}, "fine");

  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 201);
  EXPECT_EQ(std::string(response["X-Kind"]), "whole");
  EXPECT_TRUE(response.body() == body) << "body differs";
  ASSERT_FALSE(client->Read(response, /*head_request=*/true));
  EXPECT_EQ(Header(response, bhttp::field::content_length), "3000");
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.body(), "fine");
}

TEST_F(ServerTest, ContentLengthIsEnforcedOnTheWriter) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  ResponseHead head;
  head.content_length = 10;
  BodyWriter* writer = nullptr;
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer = &exchange->Respond(head, std::move(done));
              }),
              IsOk());
  EXPECT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer->Write(std::string(11, 'x'), std::move(done));
              }),
              StatusIs(absl::StatusCode::kOutOfRange, HasSubstr("10")));
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer->Write("12345", std::move(done));
              }),
              IsOk());
  // Finishing 5 bytes short is a truncated transfer, never a clean one.
  EXPECT_THAT(
      Await([&](BodyWriter::DoneHandler done) {
        writer->Finish(std::move(done));
      }),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("unwritten")));
  Response response;
  EXPECT_EQ(client->Read(response), bhttp::error::partial_message);
}

TEST_F(ServerTest, InvalidResponseHeadIsRejectedAndNothingStarts) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  ResponseHead head;
  head.headers = {{"X-Injected", "a\r\nSet-Cookie: evil"}};
  EXPECT_THAT(
      Await([&](BodyWriter::DoneHandler done) {
        exchange->Respond(head, std::move(done));
      }),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("X-Injected")));
  head.headers = {{"Bad Name", "v"}};
  EXPECT_THAT(Await([&](BodyWriter::DoneHandler done) {
                exchange->Respond(head, std::move(done));
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, _));
  head.headers = {};
  head.status = 99;
  EXPECT_THAT(Await([&](BodyWriter::DoneHandler done) {
                exchange->Respond(head, std::move(done));
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("99")));
  // Nothing was sent: a valid answer still goes out, whole.
  exchange->RespondSimple(200, {}, "fine");
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.body(), "fine");
}

TEST_F(ServerTest, HandlerConnectionCloseEndsTheConnectionAfterTheAnswer) {
  ASSERT_NE(StartServer([](const std::shared_ptr<Exchange>& exchange) {
              exchange->RespondSimple(
                  200, {{"Connection", "keep-alive, close"}}, "bye");
            }),
            0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.body(), "bye");
  EXPECT_FALSE(response.keep_alive());
  std::string rest;
  EXPECT_EQ(client->ReadToEnd(rest), net::error::eof);
}

TEST_F(ServerTest, DroppedExchangeIsAnswered500) {
  ASSERT_NE(StartServer([](const std::shared_ptr<Exchange>&) {}), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 500);
  EXPECT_FALSE(response.keep_alive());
}

TEST_F(ServerTest, Http10WithoutLengthEndsTheBodyByClosing) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.0\r\n\r\n"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  EXPECT_FALSE(exchange->request().keep_alive);
  BodyWriter* writer = nullptr;
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer = &exchange->Respond(ResponseHead{}, std::move(done));
              }),
              IsOk());
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer->Write("abc", std::move(done));
              }),
              IsOk());
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer->Finish(std::move(done));
              }),
              IsOk());
  std::string all;
  EXPECT_EQ(client->ReadToEnd(all), net::error::eof);
  EXPECT_THAT(all, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(all, HasSubstr("Connection: close\r\n"));
  EXPECT_THAT(all, ::testing::EndsWith("\r\n\r\nabc"));
  EXPECT_THAT(all, ::testing::Not(HasSubstr("chunked")));
}

// --- Unread bodies
// -------------------------------------------------------------------

TEST_F(ServerTest, UnreadSmallBodyIsDrainedAndTheConnectionKept) {
  ASSERT_NE(StartServer([](const std::shared_ptr<Exchange>& exchange) {
              exchange->RespondSimple(401, {}, "no");  // body never read
            }),
            0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  const std::string body(10000, 'u');
  for (int i = 0; i < 2; ++i) {
    Response response;
    ASSERT_FALSE(client->Exchange(
        absl::StrCat("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ",
                     body.size(), "\r\n\r\n", body),
        response))
        << i;
    EXPECT_EQ(response.result_int(), 401);
    EXPECT_TRUE(response.keep_alive());
  }
  // And a chunked one.
  Response response;
  ASSERT_FALSE(client->Exchange(
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
          Chunked({body, body}) + "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
      response));
  EXPECT_EQ(response.result_int(), 401);
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.result_int(), 401);
}

TEST_F(ServerTest, UnreadLargeBodyClosesTheConnectionAfterTheAnswer) {
  ASSERT_NE(StartServer([](const std::shared_ptr<Exchange>& exchange) {
              exchange->RespondSimple(401, {}, "no");
            }),
            0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  const std::string body(4 * kMiB, 'u');
  Response response;
  // The write may fail once the server gives up on the body; the answer
  // was complete before that.
  client->Exchange(
      absl::StrCat("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ",
                   body.size(), "\r\n\r\n", body),
      response);
  EXPECT_EQ(response.result_int(), 401);
  EXPECT_EQ(response.body(), "no");
  std::string rest;
  EXPECT_TRUE(client->ReadToEnd(rest));  // closed (eof or reset)
  EXPECT_EQ(rest, "");
}

// --- Cancellation and abort
// ---------------------------------------------------------

TEST_F(ServerTest, ClientDisconnectWhileTheHandlerWaitsCallsOnCancel) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  std::shared_ptr<absl::Notification> cancelled = CancelFlag(*exchange);
  client->Close();
  EXPECT_TRUE(cancelled->WaitForNotificationWithTimeout(kWait));
  // Registered after the fact, a callback runs at once.
  std::shared_ptr<absl::Notification> late = CancelFlag(*exchange);
  EXPECT_TRUE(late->WaitForNotificationWithTimeout(kWait));
  // Writing now fails with the reason.
  EXPECT_THAT(Await([&](BodyWriter::DoneHandler done) {
                exchange->Respond(ResponseHead{}, std::move(done));
              }),
              StatusIs(absl::StatusCode::kCancelled, HasSubstr("closed")));
}

TEST_F(ServerTest, ClientDisconnectAfterAPostBodyCallsOnCancel) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write(
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  std::shared_ptr<absl::Notification> cancelled = CancelFlag(*exchange);
  ASSERT_THAT(ReadAll(exchange->body()), IsOk());  // the watch starts here
  client->Close();
  EXPECT_TRUE(cancelled->WaitForNotificationWithTimeout(kWait));
}

TEST_F(ServerTest, OnCancelIsNotCalledAfterACompleteAnswer) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  std::shared_ptr<absl::Notification> cancelled = CancelFlag(*exchange);
  BodyWriter* writer = nullptr;
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer = &exchange->Respond(ResponseHead{}, std::move(done));
              }),
              IsOk());
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer->Write("done", std::move(done));
              }),
              IsOk());
  // Finish's callback runs once the server has written the whole answer.
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer->Finish(std::move(done));
              }),
              IsOk());
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.body(), "done");
  client->Close();
  // Shutdown() returns once every connection is closed.
  StopServer();
  EXPECT_FALSE(cancelled->HasBeenNotified());
}

class AbortTest : public ServerTest,
                  public ::testing::WithParamInterface<bool> {};

// Abort() must look like a broken transfer to the client, never like a
// complete short body.
TEST_P(AbortTest, MidBodyIsAnErrorForTheClient) {
  const bool known_length = GetParam();
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  ResponseHead head;
  if (known_length) head.content_length = 100;
  BodyWriter* writer = nullptr;
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer = &exchange->Respond(head, std::move(done));
              }),
              IsOk());
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer->Write("partial", std::move(done));
              }),
              IsOk());
  writer->Abort();
  Response response;
  EXPECT_EQ(client->Read(response), bhttp::error::partial_message);
}

INSTANTIATE_TEST_SUITE_P(Framing, AbortTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? "ContentLength"
                                                   : "Chunked";
                         });

// --- Timeouts
// --------------------------------------------------------------------------

TEST_F(ServerTest, SlowHeaderGets408) {
  ServerOptions options = Options();
  options.limits.header_timeout = absl::Seconds(1);
  ASSERT_NE(StartServer(Queue(), options), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: x\r\n"));  // unfinished
  std::string all;
  EXPECT_EQ(client->ReadToEnd(all), net::error::eof);
  EXPECT_THAT(all, StartsWith("HTTP/1.1 408 "));
}

TEST_F(ServerTest, IdleKeepAliveConnectionIsClosedQuietly) {
  ServerOptions options = Options();
  options.limits.idle_timeout = absl::Milliseconds(200);
  ASSERT_NE(StartServer(
                [](const std::shared_ptr<Exchange>& exchange) {
                  exchange->RespondSimple(200, {}, "ok");
                },
                options),
            0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  Response response;
  ASSERT_FALSE(client->Read(response));
  std::string rest;
  EXPECT_EQ(client->ReadToEnd(rest), net::error::eof);
  EXPECT_EQ(rest, "");
}

// --- Shutdown
// ---------------------------------------------------------------------------

TEST_F(ServerTest, ShutdownLetsAnActiveExchangeFinish) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto idle = Connect();
  auto busy = Connect();
  ASSERT_NE(idle, nullptr);
  ASSERT_NE(busy, nullptr);
  // One answered request leaves `idle` an idle keep-alive connection.
  ASSERT_FALSE(idle->Write("GET /idle HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  exchange->RespondSimple(200, {}, "idle");
  Response response;
  ASSERT_FALSE(idle->Read(response));
  ASSERT_FALSE(busy->Write("GET /busy HTTP/1.1\r\nHost: x\r\n\r\n"));
  exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);

  absl::Notification returned;
  std::thread shutdown([&] {
    server_->Shutdown(absl::Now() + absl::Seconds(60));
    returned.Notify();
  });
  // The idle connection is closed and new ones are refused while the
  // exchange is still running.
  std::string rest;
  EXPECT_EQ(idle->ReadToEnd(rest), net::error::eof);
  EXPECT_FALSE(returned.HasBeenNotified());
  exchange->RespondSimple(200, {}, "finished");
  exchange.reset();
  ASSERT_FALSE(busy->Read(response));
  EXPECT_EQ(response.body(), "finished");
  EXPECT_EQ(busy->ReadToEnd(rest), net::error::eof);
  EXPECT_TRUE(returned.WaitForNotificationWithTimeout(kWait));
  shutdown.join();
  EXPECT_TRUE(TestClient::Refused(port_));
}

TEST_F(ServerTest, ShutdownDeadlineClosesAStuckExchange) {
  ASSERT_NE(StartServer(Queue()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  std::shared_ptr<absl::Notification> cancelled = CancelFlag(*exchange);
  server_->Shutdown(absl::Now() + absl::Milliseconds(200));
  EXPECT_TRUE(cancelled->WaitForNotificationWithTimeout(kWait));
  std::string rest;
  EXPECT_TRUE(client->ReadToEnd(rest));
  EXPECT_EQ(rest, "");
  EXPECT_THAT(Await([&](BodyWriter::DoneHandler done) {
                exchange->Respond(ResponseHead{}, std::move(done));
              }),
              StatusIs(absl::StatusCode::kCancelled, HasSubstr("shut")));
}

// --- TLS
// ----------------------------------------------------------------------------------

class TlsServerTest : public ServerTest {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/http_server_test_", getpid());
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700) == 0 || errno == EEXIST, true);
    cert_ = dir_ + "/cert.pem";
    key_ = dir_ + "/key.pem";
    ASSERT_THAT(WriteSelfSignedCertificate(cert_, key_), IsOk());
    beast::error_code ec;
    client_tls_.load_verify_file(cert_, ec);
    ASSERT_FALSE(ec) << ec.message();
    client_tls_.set_verify_mode(ssl::verify_peer);
  }
  void TearDown() override {
    std::remove(cert_.c_str());
    std::remove(key_.c_str());
    ::rmdir(dir_.c_str());
  }
  ServerOptions TlsOptions() const {
    ServerOptions options = Options();
    options.tls_cert_file = cert_;
    options.tls_key_file = key_;
    return options;
  }

  std::string dir_;
  std::string cert_;
  std::string key_;
  ssl::context client_tls_{ssl::context::tls_client};
};

TEST_F(TlsServerTest, GetAndStreamedEcho) {
  ASSERT_NE(StartServer(
                [this](std::shared_ptr<Exchange> exchange) {
                  if (exchange->request().method == "GET") {
                    exchange->RespondSimple(200, {}, "secure");
                  } else {
                    Echo::Start(std::move(exchange), stats_);
                  }
                },
                TlsOptions()),
            0);
  auto client = Connect(&client_tls_);
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  Response response;
  ASSERT_FALSE(client->Read(response));
  EXPECT_EQ(response.body(), "secure");
  const std::string body = BinaryBody(5 * kMaxChunk + 3);
  ASSERT_FALSE(client->Exchange(
      absl::StrCat("POST / HTTP/1.1\r\nHost: localhost\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n",
                   Chunked({body.substr(0, 100000), body.substr(100000)})),
      response));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_TRUE(response.body() == body);
  EXPECT_THAT(stats_.max_chunk(), Le(kMaxChunk));
}

TEST_F(TlsServerTest, AbortIsAnErrorForTheClient) {
  ASSERT_NE(StartServer(Queue(), TlsOptions()), 0);
  auto client = Connect(&client_tls_);
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  std::shared_ptr<Exchange> exchange = exchanges_.Pop();
  ASSERT_NE(exchange, nullptr);
  BodyWriter* writer = nullptr;
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer = &exchange->Respond(ResponseHead{}, std::move(done));
              }),
              IsOk());
  ASSERT_THAT(Await([&](BodyWriter::DoneHandler done) {
                writer->Write("partial", std::move(done));
              }),
              IsOk());
  writer->Abort();
  Response response;
  const beast::error_code ec = client->Read(response);
  EXPECT_TRUE(ec == bhttp::error::partial_message ||
              ec == ssl::error::stream_truncated)
      << ec.message();
}

TEST_F(TlsServerTest, PlainHttpClientIsRejected) {
  ASSERT_NE(StartServer(Queue(), TlsOptions()), 0);
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  ASSERT_FALSE(client->Write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  Response response;
  EXPECT_TRUE(client->Read(response));
}

TEST_F(TlsServerTest, CreateRejectsBadTlsFiles) {
  ServerOptions options = TlsOptions();
  options.tls_key_file = "";
  EXPECT_THAT(Server::Create(io_, options, Queue()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("both")));
  options = TlsOptions();
  options.tls_cert_file = dir_ + "/missing.pem";
  EXPECT_THAT(
      Server::Create(io_, options, Queue()),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing.pem")));
  options = TlsOptions();
  options.tls_key_file = cert_;  // not a key
  EXPECT_THAT(Server::Create(io_, options, Queue()),
              StatusIs(absl::StatusCode::kInvalidArgument, _));
}

// --- Creation
// ---------------------------------------------------------------------------

TEST_F(ServerTest, CreateAndStartValidate) {
  ServerOptions options = Options();
  options.address = "not an address";
  EXPECT_THAT(Server::Create(io_, options, Queue()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not an address")));
  EXPECT_THAT(Server::Create(io_, Options(), nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, _));
  const int port = StartServer(Queue());
  ASSERT_NE(port, 0);
  EXPECT_THAT(server_->Start(),
              StatusIs(absl::StatusCode::kFailedPrecondition, _));
  StopServer();
  options = Options();
  // The port is taken (by a process of our own, to be sure nobody frees
  // it): binding fails with a status.
  net::io_context other;
  tcp::acceptor taken(other,
                      tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  options.port = taken.local_endpoint().port();
  absl::StatusOr<std::unique_ptr<Server>> second =
      Server::Create(io_, options, Queue());
  ASSERT_THAT(second, IsOk());
  EXPECT_THAT((*second)->Start(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("binding")));
  // Start() after Shutdown() is refused.
  (*second)->Shutdown(absl::Now());
  EXPECT_THAT((*second)->Start(),
              StatusIs(absl::StatusCode::kFailedPrecondition, _));
}

}  // namespace
}  // namespace broker::common::http
