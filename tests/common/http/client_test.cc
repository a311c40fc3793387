#include "common/http/client.h"

#include "common/status.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_origin.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core/error.hpp"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"
#include "openssl/x509v3.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

#include <sys/stat.h>

namespace broker::common::http {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
using ::broker::testing::IsOk;
using ::broker::testing::Sha256;
using ::broker::testing::StatusIs;
using ::broker::testing::TestOrigin;
using ::broker::testing::TestOriginOptions;
using ::broker::testing::TestPattern;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

// Upper bound of every wait: generous, for a loaded 2-core machine.
constexpr absl::Duration kWait = absl::Seconds(120);
constexpr std::size_t kChunkBytes = std::size_t{64} * 1024;
// Largest chunk of a response body with Content-Length (read past the
// parser, straight from the socket).
constexpr std::size_t kResponseChunkBytes = std::size_t{256} * 1024;
constexpr std::uint64_t k100MiB = std::uint64_t{100} << 20;

// An io_context run by two threads, like the broker's executor.
class IoThreads {
 public:
  IoThreads() : work_(net::make_work_guard(io_)) {
    for (int i = 0; i < 2; ++i) {
      threads_.emplace_back([this] {
        io_.run();
        absl::MutexLock lock(&mu_);
        ++finished_;
      });
    }
  }
  IoThreads(const IoThreads&) = delete;
  IoThreads& operator=(const IoThreads&) = delete;
  ~IoThreads() {
    io_.stop();
    for (std::thread& thread : threads_) thread.join();
  }

  net::io_context& io() { return io_; }

  // Lets the io_context run out of work: true when it did before the
  // timeout, i.e. no call still holds a socket, timer or handler.
  [[nodiscard]] bool Drain(absl::Duration timeout) {
    work_.reset();
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(this, &IoThreads::AllFinished),
                                timeout);
  }

 private:
  bool AllFinished() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return finished_ == static_cast<int>(threads_.size());
  }

  net::io_context io_;
  net::executor_work_guard<net::io_context::executor_type> work_;
  mutable absl::Mutex mu_;
  int finished_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> threads_;
};

// Waits for Send(); the state is shared with the handler, which may run
// after a timed-out wait.
absl::StatusOr<ClientResponse> SendAndWait(Client& client,
                                           ClientRequest request) {
  struct State {
    absl::Notification done;
    absl::StatusOr<ClientResponse> result;
  };
  auto state = std::make_shared<State>();
  client.Send(std::move(request),
              [state](absl::StatusOr<ClientResponse> result) {
                state->result = std::move(result);
                state->done.Notify();
              });
  if (!state->done.WaitForNotificationWithTimeout(kWait)) {
    return absl::InternalError("test: Send did not answer in time");
  }
  return std::move(state->result);
}

absl::StatusOr<BodyChunk> ReadChunk(BodyReader& reader) {
  struct State {
    absl::Notification done;
    absl::Status status;
    BodyChunk chunk;
  };
  auto state = std::make_shared<State>();
  reader.Read([state](absl::Status status, BodyChunk chunk) {
    state->status = std::move(status);
    state->chunk = std::move(chunk);
    state->done.Notify();
  });
  if (!state->done.WaitForNotificationWithTimeout(kWait)) {
    return absl::InternalError("test: Read did not answer in time");
  }
  if (!state->status.ok()) return state->status;
  return std::move(state->chunk);
}

// The whole body; every chunk must be at most 256 KiB.
absl::StatusOr<std::string> ReadAll(BodyReader& reader) {
  std::string out;
  for (;;) {
    absl::StatusOr<BodyChunk> chunk = ReadChunk(reader);
    if (!chunk.ok()) return chunk.status();
    EXPECT_LE(chunk->data.size(), kResponseChunkBytes);
    out += chunk->data;
    if (chunk->last) return out;
  }
}

// What a GeneratorReader saw, shared with the test (the client owns and
// destroys the reader on an io thread).
struct GeneratorStats {
  std::atomic<int> reads{0};
  std::atomic<bool> destroyed{false};
  // Largest (bytes produced - bytes the origin had received) at a Read.
  std::atomic<std::uint64_t> max_lead{0};
  Sha256 sha;  // touched by the reads only, which never overlap
};

// A request body of `total` pattern bytes in 64 KiB chunks, produced only
// when pulled (answers inside Read(), on the caller's thread).
class GeneratorReader final : public BodyReader {
 public:
  GeneratorReader(std::uint64_t total, const TestOrigin* origin,
                  std::shared_ptr<GeneratorStats> stats)
      : total_(total), origin_(origin), stats_(std::move(stats)) {}
  GeneratorReader(const GeneratorReader&) = delete;
  GeneratorReader& operator=(const GeneratorReader&) = delete;
  ~GeneratorReader() override { stats_->destroyed = true; }

  void Read(ReadHandler handler) override {
    stats_->reads.fetch_add(1);
    if (origin_ != nullptr) {
      const std::uint64_t received = origin_->body_bytes_received();
      const std::uint64_t lead =
          produced_ > received ? produced_ - received : 0;
      if (lead > stats_->max_lead) stats_->max_lead = lead;
    }
    const std::size_t n = static_cast<std::size_t>(
        std::min<std::uint64_t>(kChunkBytes, total_ - produced_));
    BodyChunk chunk{TestPattern(produced_, n), false};
    produced_ += n;
    chunk.last = produced_ == total_;
    stats_->sha.Update(chunk.data);
    std::move(handler)(absl::OkStatus(), std::move(chunk));
  }

 private:
  const std::uint64_t total_;
  const TestOrigin* const origin_;
  const std::shared_ptr<GeneratorStats> stats_;
  std::uint64_t produced_ = 0;
};

// A body given as fixed chunks, the last one flagged `last` unless
// `error` is set, which then ends the body instead.
class ChunksReader final : public BodyReader {
 public:
  explicit ChunksReader(std::vector<std::string> chunks,
                        absl::Status error = absl::OkStatus())
      : chunks_(std::move(chunks)), error_(std::move(error)) {}
  void Read(ReadHandler handler) override {
    if (next_ == chunks_.size()) {
      std::move(handler)(error_, BodyChunk{"", error_.ok()});
      return;
    }
    std::string data = std::move(chunks_[next_++]);
    const bool last = next_ == chunks_.size() && error_.ok();
    std::move(handler)(absl::OkStatus(), BodyChunk{std::move(data), last});
  }

 private:
  std::vector<std::string> chunks_;
  absl::Status error_;
  std::size_t next_ = 0;
};

ClientRequest MakeRequest(std::string method, std::string url) {
  ClientRequest request;
  request.method = std::move(method);
  request.url = std::move(url);
  return request;
}

nlohmann::json ParseJson(const std::string& text) {
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

// A port nothing listens on: bound, then released.
int UnusedPort() {
  net::io_context io;
  net::ip::tcp::acceptor acceptor(io);
  acceptor.open(net::ip::tcp::v4());
  acceptor.bind({net::ip::make_address("127.0.0.1"), 0});
  const int port = acceptor.local_endpoint().port();
  acceptor.close();
  return port;
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin = TestOrigin::Start(TestOriginOptions{});
    ASSERT_THAT(origin, IsOk());
    origin_ = *std::move(origin);
    auto client = Client::Create(io_.io(), ClientOptions{});
    ASSERT_THAT(client, IsOk());
    client_ = *std::move(client);
  }

  void TearDown() override {
    client_.reset();
    // Every call must have closed its connection and released its handlers.
    EXPECT_TRUE(io_.Drain(kWait)) << "calls still hold the io_context";
  }

  // Sends and checks the status; the body is read by the caller.
  ClientResponse Call(ClientRequest request) {
    absl::StatusOr<ClientResponse> response =
        SendAndWait(*client_, std::move(request));
    EXPECT_THAT(response, IsOk());
    if (!response.ok()) return ClientResponse{};
    return *std::move(response);
  }

  // POSTs `body` to /echo and returns the origin's JSON report.
  nlohmann::json Echo(std::unique_ptr<BodyReader> body,
                      std::optional<std::uint64_t> length) {
    ClientRequest request = MakeRequest("POST", origin_->Url("/echo"));
    request.body = std::move(body);
    request.body_length = length;
    ClientResponse response = Call(std::move(request));
    if (response.body == nullptr) return nullptr;
    EXPECT_EQ(response.head.status, 200);
    absl::StatusOr<std::string> text = ReadAll(*response.body);
    EXPECT_THAT(text, IsOk());
    return text.ok() ? ParseJson(*text) : nullptr;
  }

  IoThreads io_;
  std::unique_ptr<TestOrigin> origin_;
  std::unique_ptr<Client> client_;
};

// A caller typically keeps the response body reader, and the reader keeps
// the call: the call must drop the response handler (and what it captured)
// once it ran, or caller and call keep each other alive forever.
TEST_F(ClientTest, ResponseHandlerCapturesAreReleasedOnceItRan) {
  auto sentinel = std::make_shared<int>(0);
  std::weak_ptr<int> watch = sentinel;
  struct State {
    absl::Notification done;
    std::unique_ptr<BodyReader> body;
  };
  auto state = std::make_shared<State>();
  client_->Send(MakeRequest("GET", origin_->Url("/bytes/10")),
                [state, sentinel = std::move(sentinel)](
                    absl::StatusOr<ClientResponse> response) {
                  if (response.ok()) state->body = std::move(response->body);
                  state->done.Notify();
                });
  ASSERT_TRUE(state->done.WaitForNotificationWithTimeout(kWait));
  ASSERT_NE(state->body, nullptr);
  absl::StatusOr<std::string> body = ReadAll(*state->body);
  ASSERT_THAT(body, IsOk());
  EXPECT_EQ(*body, TestPattern(0, 10));
  // The body reader (and with it the call) is still alive here.
  EXPECT_TRUE(watch.expired());
}

TEST_F(ClientTest, CancellingBeforeTheAnswerEndsTheCallAtOnce) {
  // An origin that says when it has the request, so the call is mid-flight.
  auto arrived = std::make_shared<absl::Notification>();
  TestOriginOptions options;
  options.on_request = [arrived](absl::string_view, absl::string_view) {
    if (!arrived->HasBeenNotified()) arrived->Notify();
  };
  auto origin = TestOrigin::Start(options);
  ASSERT_THAT(origin, IsOk());
  ClientRequest request = MakeRequest("GET", (*origin)->Url("/slow/30000"));
  auto cancellation = std::make_shared<CallCancellation>();
  request.cancellation = cancellation;
  struct State {
    absl::Notification done;
    absl::Status status;
  };
  auto state = std::make_shared<State>();
  client_->Send(std::move(request),
                [state](absl::StatusOr<ClientResponse> response) {
                  state->status = response.status();
                  state->done.Notify();
                });
  ASSERT_TRUE(arrived->WaitForNotificationWithTimeout(kWait));
  cancellation->Cancel();
  ASSERT_TRUE(state->done.WaitForNotificationWithTimeout(kWait));
  EXPECT_EQ(state->status.code(), absl::StatusCode::kCancelled)
      << state->status;
  cancellation->Cancel();  // again: nothing happens
  // The connection was closed: the origin notices (it watches the socket
  // while it waits).
  EXPECT_TRUE((*origin)->WaitForNoConnections(kWait));
}

TEST_F(ClientTest, CancellingMidBodyFailsThePendingRead) {
  ClientRequest request =
      MakeRequest("GET", origin_->Url("/slow-body/1000000?rate=1000"));
  auto cancellation = std::make_shared<CallCancellation>();
  request.cancellation = cancellation;
  ClientResponse response = Call(std::move(request));
  ASSERT_NE(response.body, nullptr);
  cancellation->Cancel();
  absl::StatusOr<std::string> body = ReadAll(*response.body);
  EXPECT_EQ(body.status().code(), absl::StatusCode::kCancelled)
      << body.status();
}

TEST_F(ClientTest, GetSendsHostAndHeadersAndSkipsFramingHeaders) {
  ClientRequest request = MakeRequest("GET", origin_->Url("/echo?a=b&c=%20"));
  request.headers = {{"X-Custom", "value 1"},
                     {"Host", "evil.example"},
                     {"Content-Length", "99"},
                     {"Transfer-Encoding", "chunked"}};
  ClientResponse response = Call(std::move(request));
  ASSERT_NE(response.body, nullptr);
  EXPECT_EQ(response.head.status, 200);
  EXPECT_EQ(FindHeader(response.head.headers, "content-type"),
            "application/json");
  // Framing is given by content_length, not by the headers.
  EXPECT_EQ(FindHeader(response.head.headers, "content-length"), std::nullopt);
  ASSERT_TRUE(response.head.content_length.has_value());

  absl::StatusOr<std::string> body = ReadAll(*response.body);
  ASSERT_THAT(body, IsOk());
  EXPECT_EQ(body->size(), *response.head.content_length);
  const nlohmann::json echo = ParseJson(*body);
  EXPECT_EQ(echo["method"], "GET");
  EXPECT_EQ(echo["path"], "/echo");
  EXPECT_EQ(echo["query"], "a=b&c=%20");
  EXPECT_EQ(echo["headers"]["x-custom"], "value 1");
  EXPECT_EQ(echo["headers"]["host"],
            absl::StrCat("127.0.0.1:", origin_->port()));
  EXPECT_FALSE(echo["headers"].contains("content-length"));
  EXPECT_FALSE(echo["headers"].contains("transfer-encoding"));
  EXPECT_EQ(echo["body_bytes"], 0);
}

TEST_F(ClientTest, UserinfoIsNeverSent) {
  ClientResponse response = Call(MakeRequest(
      "GET", absl::StrCat("http://user:secret@127.0.0.1:", origin_->port(),
                          "/headers")));
  ASSERT_NE(response.body, nullptr);
  absl::StatusOr<std::string> body = ReadAll(*response.body);
  ASSERT_THAT(body, IsOk());
  EXPECT_THAT(*body, Not(HasSubstr("secret")));
  EXPECT_EQ(ParseJson(*body)["host"],
            absl::StrCat("127.0.0.1:", origin_->port()));
}

TEST_F(ClientTest, PostsLargeBodyWithContentLengthPulledGradually) {
  auto stats = std::make_shared<GeneratorStats>();
  const nlohmann::json echo =
      Echo(std::make_unique<GeneratorReader>(k100MiB, origin_.get(), stats),
           k100MiB);
  EXPECT_EQ(echo["body_bytes"], k100MiB);
  EXPECT_EQ(echo["body_sha256"], stats->sha.HexDigest());
  EXPECT_EQ(echo["headers"]["content-length"], absl::StrCat(k100MiB));
  EXPECT_FALSE(echo["headers"].contains("transfer-encoding"));
  EXPECT_EQ(stats->reads, static_cast<int>(k100MiB / kChunkBytes));
  // Streamed, not buffered: the reader never ran far ahead of what the
  // origin had received (socket buffers on loopback are a few MiB).
  EXPECT_LT(stats->max_lead, std::uint64_t{32} << 20);
  EXPECT_TRUE(stats->destroyed);
}

TEST_F(ClientTest, PostsLargeChunkedBodyPulledGradually) {
  auto stats = std::make_shared<GeneratorStats>();
  const nlohmann::json echo =
      Echo(std::make_unique<GeneratorReader>(k100MiB, origin_.get(), stats),
           std::nullopt);
  EXPECT_EQ(echo["body_bytes"], k100MiB);
  EXPECT_EQ(echo["body_sha256"], stats->sha.HexDigest());
  EXPECT_EQ(echo["headers"]["transfer-encoding"], "chunked");
  EXPECT_FALSE(echo["headers"].contains("content-length"));
  EXPECT_LT(stats->max_lead, std::uint64_t{32} << 20);
}

TEST_F(ClientTest, EmptyBodies) {
  constexpr char kEmptySha256[] =
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  {
    // A zero-length body with a length: Content-Length: 0.
    auto stats = std::make_shared<GeneratorStats>();
    const nlohmann::json echo =
        Echo(std::make_unique<GeneratorReader>(0, nullptr, stats), 0);
    EXPECT_EQ(echo["body_bytes"], 0);
    EXPECT_EQ(echo["body_sha256"], kEmptySha256);
    EXPECT_EQ(echo["headers"]["content-length"], "0");
  }
  {
    // Without a length: an empty chunked body.
    const nlohmann::json echo =
        Echo(std::make_unique<ChunksReader>(std::vector<std::string>{}),
             std::nullopt);
    EXPECT_EQ(echo["body_bytes"], 0);
    EXPECT_EQ(echo["headers"]["transfer-encoding"], "chunked");
  }
  {
    // No body at all on a POST: Content-Length: 0.
    const nlohmann::json echo = Echo(nullptr, std::nullopt);
    EXPECT_EQ(echo["body_bytes"], 0);
    EXPECT_EQ(echo["headers"]["content-length"], "0");
  }
}

TEST_F(ClientTest, EmptyChunksFromTheReaderAreSkipped) {
  const nlohmann::json echo =
      Echo(std::make_unique<ChunksReader>(
               std::vector<std::string>{"", "ab", "", "", "cd", ""}),
           std::nullopt);
  EXPECT_EQ(echo["body_bytes"], 4);
  Sha256 sha;
  sha.Update("abcd");
  EXPECT_EQ(echo["body_sha256"], sha.HexDigest());
}

TEST_F(ClientTest, BinaryBodiesAreExact) {
  std::string binary;
  for (int round = 0; round < 300; ++round) {
    for (int byte = 0; byte < 256; ++byte) {
      binary.push_back(static_cast<char>(byte));
    }
  }
  binary += std::string(1000, '\0') + "\r\n0\r\n\r\n";
  for (const bool with_length : {true, false}) {
    SCOPED_TRACE(with_length ? "content-length" : "chunked");
    ClientRequest request = MakeRequest("PUT", origin_->Url("/echo-body"));
    request.headers = {{"Content-Type", "application/x-test-binary"}};
    request.body = std::make_unique<ChunksReader>(std::vector<std::string>{
        binary.substr(0, 70000), binary.substr(70000)});
    if (with_length) request.body_length = binary.size();
    ClientResponse response = Call(std::move(request));
    ASSERT_NE(response.body, nullptr);
    EXPECT_EQ(FindHeader(response.head.headers, "content-type"),
              "application/x-test-binary");
    absl::StatusOr<std::string> body = ReadAll(*response.body);
    ASSERT_THAT(body, IsOk());
    EXPECT_TRUE(*body == binary) << "echoed body differs";
  }
}

TEST_F(ClientTest, ReadsLengthChunkedAndCloseDelimitedResponses) {
  struct Case {
    std::string query;
    std::uint64_t size;
    bool has_length;
  };
  for (const Case& c : {Case{"", 1000, true}, Case{"?chunked=1", 300000, false},
                        Case{"?close=1", 200000, false},
                        Case{"?chunked=1", 0, false}, Case{"", 0, true}}) {
    SCOPED_TRACE(absl::StrCat(c.size, c.query));
    ClientResponse response = Call(MakeRequest(
        "GET", origin_->Url(absl::StrCat("/bytes/", c.size, c.query))));
    ASSERT_NE(response.body, nullptr);
    EXPECT_EQ(response.head.content_length.has_value(), c.has_length);
    EXPECT_EQ(FindHeader(response.head.headers, "transfer-encoding"),
              std::nullopt);
    absl::StatusOr<std::string> body = ReadAll(*response.body);
    ASSERT_THAT(body, IsOk());
    EXPECT_TRUE(*body == TestPattern(0, c.size)) << "body differs";
  }
}

TEST_F(ClientTest, LargeResponseIsPulledChunkByChunk) {
  ClientResponse response =
      Call(MakeRequest("GET", origin_->Url(absl::StrCat("/bytes/", k100MiB))));
  ASSERT_NE(response.body, nullptr);
  EXPECT_EQ(response.head.content_length, k100MiB);
  std::uint64_t offset = 0;
  int chunks = 0;
  bool last = false;
  while (!last) {
    absl::StatusOr<BodyChunk> chunk = ReadChunk(*response.body);
    ASSERT_THAT(chunk, IsOk());
    ASSERT_LE(chunk->data.size(), kResponseChunkBytes);
    ASSERT_TRUE(chunk->data == TestPattern(offset, chunk->data.size()))
        << "at offset " << offset;
    offset += chunk->data.size();
    last = chunk->last;
    ++chunks;
  }
  EXPECT_EQ(offset, k100MiB);
  EXPECT_GE(chunks, static_cast<int>(k100MiB / kResponseChunkBytes));
  // After `last`, the reader keeps answering `last`.
  absl::StatusOr<BodyChunk> after = ReadChunk(*response.body);
  ASSERT_THAT(after, IsOk());
  EXPECT_TRUE(after->last);
  EXPECT_TRUE(after->data.empty());
}

TEST_F(ClientTest, StatusCodesAreRelayed) {
  for (const int code : {201, 301, 400, 404, 500, 503}) {
    ClientResponse response =
        Call(MakeRequest("GET", origin_->Url(absl::StrCat("/status/", code))));
    ASSERT_NE(response.body, nullptr);
    EXPECT_EQ(response.head.status, code);
    absl::StatusOr<std::string> body = ReadAll(*response.body);
    ASSERT_THAT(body, IsOk());
    EXPECT_EQ(*body, absl::StrCat("status ", code));
  }
  for (const int code : {204, 304}) {
    ClientResponse response =
        Call(MakeRequest("GET", origin_->Url(absl::StrCat("/status/", code))));
    ASSERT_NE(response.body, nullptr);
    EXPECT_EQ(response.head.status, code);
    absl::StatusOr<std::string> body = ReadAll(*response.body);
    ASSERT_THAT(body, IsOk());
    EXPECT_EQ(*body, "");
  }
}

TEST_F(ClientTest, HeadResponseHasLengthButNoBody) {
  ClientResponse response =
      Call(MakeRequest("HEAD", origin_->Url("/status/200")));
  ASSERT_NE(response.body, nullptr);
  EXPECT_EQ(response.head.status, 200);
  EXPECT_EQ(response.head.content_length, 10U);  // "status 200"
  absl::StatusOr<std::string> body = ReadAll(*response.body);
  ASSERT_THAT(body, IsOk());
  EXPECT_EQ(*body, "");
}

TEST_F(ClientTest, RefusedPortIsUnreachable) {
  const int port = UnusedPort();
  absl::StatusOr<ClientResponse> response = SendAndWait(
      *client_,
      MakeRequest("GET",
                  absl::StrCat("http://user:secret@127.0.0.1:", port, "/x")));
  EXPECT_THAT(response, StatusIs(absl::StatusCode::kUnavailable,
                                 HasSubstr(absl::StrCat("127.0.0.1:", port))));
  EXPECT_THAT(response.status().message(), Not(HasSubstr("secret")));
  EXPECT_EQ(DownstreamErrorCode(response.status()), "DOWNSTREAM_UNREACHABLE");
}

TEST_F(ClientTest, UnknownHostIsUnreachable) {
  absl::StatusOr<ClientResponse> response =
      SendAndWait(*client_, MakeRequest("GET", "http://nonexistent.invalid/"));
  EXPECT_THAT(response, StatusIs(absl::StatusCode::kUnavailable,
                                 HasSubstr("nonexistent.invalid:80")));
  EXPECT_EQ(DownstreamErrorCode(response.status()), "DOWNSTREAM_UNREACHABLE");
}

TEST_F(ClientTest, SlowHeadPastTheDeadlineTimesOut) {
  ClientRequest request = MakeRequest("GET", origin_->Url("/slow/60000"));
  request.deadline = absl::Now() + absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  absl::StatusOr<ClientResponse> response =
      SendAndWait(*client_, std::move(request));
  EXPECT_THAT(response,
              StatusIs(absl::StatusCode::kDeadlineExceeded,
                       HasSubstr(absl::StrCat("127.0.0.1:", origin_->port()))));
  EXPECT_EQ(DownstreamErrorCode(response.status()), "DOWNSTREAM_TIMEOUT");
  // Ended by the deadline, not by the origin's answer a minute later.
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

TEST_F(ClientTest, DeadlineAlsoBoundsTheBody) {
  // 100 KB at 1 KB/s: the head comes at once, the body would take 100 s.
  // The deadline leaves the head time to arrive on a loaded machine.
  ClientRequest request =
      MakeRequest("GET", origin_->Url("/slow-body/100000?rate=1000"));
  request.deadline = absl::Now() + absl::Seconds(2);
  ClientResponse response = Call(std::move(request));
  ASSERT_NE(response.body, nullptr);
  EXPECT_EQ(response.head.content_length, 100000U);
  for (;;) {
    absl::StatusOr<BodyChunk> chunk = ReadChunk(*response.body);
    if (!chunk.ok()) {
      EXPECT_THAT(chunk, StatusIs(absl::StatusCode::kDeadlineExceeded,
                                  HasSubstr("deadline")));
      break;
    }
    ASSERT_FALSE(chunk->last) << "a timed-out body must not end cleanly";
  }
  // The error sticks.
  EXPECT_THAT(ReadChunk(*response.body),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("")));
}

TEST_F(ClientTest, PassedDeadlineFailsAtOnce) {
  ClientRequest request = MakeRequest("GET", origin_->Url("/echo"));
  request.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_THAT(SendAndWait(*client_, std::move(request)),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("")));
}

TEST_F(ClientTest, BodyCutShortIsAnErrorNeverLast) {
  for (const char* path : {"/die-mid-body/200000",
                           "/die-mid-body/200000?chunked=1", "/bad-chunk"}) {
    SCOPED_TRACE(path);
    ClientResponse response = Call(MakeRequest("GET", origin_->Url(path)));
    ASSERT_NE(response.body, nullptr);
    std::uint64_t received = 0;
    absl::Status status;
    for (;;) {
      absl::StatusOr<BodyChunk> chunk = ReadChunk(*response.body);
      if (!chunk.ok()) {
        status = chunk.status();
        break;
      }
      ASSERT_FALSE(chunk->last) << "a cut body must not end cleanly";
      received += chunk->data.size();
    }
    EXPECT_THAT(
        status,
        StatusIs(absl::StatusCode::kUnknown,
                 HasSubstr(absl::StrCat("127.0.0.1:", origin_->port()))));
    EXPECT_EQ(DownstreamErrorCode(status), "DOWNSTREAM_ERROR");
    EXPECT_LE(received, 100000U);
  }
}

TEST_F(ClientTest, DroppingTheBodyClosesTheConnection) {
  ClientResponse response =
      Call(MakeRequest("GET", origin_->Url(absl::StrCat("/bytes/", k100MiB))));
  ASSERT_NE(response.body, nullptr);
  ASSERT_THAT(ReadChunk(*response.body), IsOk());
  response.body.reset();
  // The origin sees the connection go (its pending write fails).
  EXPECT_TRUE(origin_->WaitForNoConnections(kWait));
  // TearDown checks that the call let go of the io_context.
}

TEST_F(ClientTest, DroppingTheBodyWithAReadPendingFreesTheHandler) {
  ClientResponse response =
      Call(MakeRequest("GET", origin_->Url("/slow-body/100000?rate=100")));
  ASSERT_NE(response.body, nullptr);
  auto token = std::make_shared<int>(0);
  response.body->Read([token](const absl::Status&, const BodyChunk&) {});
  response.body.reset();
  EXPECT_TRUE(origin_->WaitForNoConnections(kWait));
  ASSERT_TRUE(io_.Drain(kWait));
  // Ran or dropped, the handler is gone.
  EXPECT_EQ(token.use_count(), 1);
}

TEST_F(ClientTest, RequestBodyErrorsFailTheCall) {
  {
    ClientRequest request = MakeRequest("POST", origin_->Url("/echo"));
    request.body = std::make_unique<ChunksReader>(
        std::vector<std::string>{"abc"}, absl::CancelledError("peer left"));
    EXPECT_THAT(SendAndWait(*client_, std::move(request)),
                StatusIs(absl::StatusCode::kCancelled, HasSubstr("peer left")));
  }
  {
    ClientRequest request = MakeRequest("POST", origin_->Url("/echo"));
    request.body =
        std::make_unique<ChunksReader>(std::vector<std::string>{"abc"});
    request.body_length = 10;  // shorter than announced
    EXPECT_THAT(SendAndWait(*client_, std::move(request)),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("does not match its length")));
  }
  {
    ClientRequest request = MakeRequest("POST", origin_->Url("/echo"));
    request.body =
        std::make_unique<ChunksReader>(std::vector<std::string>{"abcdef"});
    request.body_length = 3;  // longer than announced
    EXPECT_THAT(SendAndWait(*client_, std::move(request)),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("does not match its length")));
  }
}

TEST_F(ClientTest, BadRequestsAreRejectedWithoutEchoingSecrets) {
  EXPECT_THAT(
      SendAndWait(*client_, MakeRequest("GET", "ftp://user:secret@host/x")),
      StatusIs(absl::StatusCode::kInvalidArgument, Not(HasSubstr("secret"))));
  EXPECT_THAT(SendAndWait(*client_, MakeRequest("GET", "http:///x")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("host")));
  EXPECT_THAT(SendAndWait(*client_, MakeRequest("GET", "http://h:99999/")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("port")));
  EXPECT_THAT(SendAndWait(*client_, MakeRequest("GET", "http://h/a b")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("path")));
  EXPECT_THAT(
      SendAndWait(*client_, MakeRequest("GE T", origin_->Url("/"))),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("method")));
  ClientRequest injected = MakeRequest("GET", origin_->Url("/echo"));
  injected.headers = {{"X-Token", "secret\r\nX-Evil: 1"}};
  EXPECT_THAT(SendAndWait(*client_, std::move(injected)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("X-Token"), Not(HasSubstr("secret")))));
  EXPECT_EQ(origin_->request_count(), 0U);
}

TEST_F(ClientTest, SendIsThreadSafe) {
  constexpr int kThreads = 4;
  constexpr int kCallsPerThread = 5;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::size_t size = std::size_t{1000} * (t + 1);
      for (int i = 0; i < kCallsPerThread; ++i) {
        absl::StatusOr<ClientResponse> response = SendAndWait(
            *client_,
            MakeRequest("GET", origin_->Url(absl::StrCat("/bytes/", size))));
        if (!response.ok()) continue;
        absl::StatusOr<std::string> body = ReadAll(*response->body);
        if (body.ok() && *body == TestPattern(0, size)) ++ok;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(ok, kThreads * kCallsPerThread);
  EXPECT_EQ(origin_->request_count(),
            static_cast<std::uint64_t>(kThreads * kCallsPerThread));
}

// --- Keep-alive connections ------------------------------------------------

// A GET read to the end, on `client`; the body as text.
absl::StatusOr<std::string> GetAll(Client& client, const std::string& url) {
  absl::StatusOr<ClientResponse> response =
      SendAndWait(client, MakeRequest("GET", url));
  if (!response.ok()) return response.status();
  return ReadAll(*response->body);
}

TEST_F(ClientTest, KeepAliveConnectionsAreReused) {
  for (int i = 0; i < 5; ++i) {
    EXPECT_THAT(GetAll(*client_, origin_->Url("/bytes/1000")), IsOk());
  }
  ClientRequest post = MakeRequest("POST", origin_->Url("/echo"));
  post.body = std::make_unique<ChunksReader>(std::vector<std::string>{"abc"});
  post.body_length = 3;
  ClientResponse response = Call(std::move(post));
  ASSERT_NE(response.body, nullptr);
  EXPECT_THAT(ReadAll(*response.body), IsOk());
  EXPECT_EQ(origin_->request_count(), 6U);
  EXPECT_EQ(origin_->accepted_connections(), 1);
}

// A Content-Length body read past the parser ends exactly at its length:
// the connection goes back to the pool and the next answer parses.
TEST_F(ClientTest, AConnectionIsReusedAfterALargeBody) {
  for (const std::uint64_t size :
       {std::uint64_t{3} << 20, std::uint64_t{1000}, std::uint64_t{700000}}) {
    SCOPED_TRACE(size);
    ClientResponse response =
        Call(MakeRequest("GET", origin_->Url(absl::StrCat("/bytes/", size))));
    ASSERT_NE(response.body, nullptr);
    absl::StatusOr<std::string> body = ReadAll(*response.body);
    ASSERT_THAT(body, IsOk());
    EXPECT_TRUE(*body == TestPattern(0, size)) << "body differs";
  }
  EXPECT_EQ(origin_->accepted_connections(), 1);
}

TEST_F(ClientTest, ConcurrentCallsEachGetAConnectionThenShareThem) {
  // Two calls in flight at once need two connections; afterwards both
  // are reused.
  ClientResponse first = Call(MakeRequest("GET", origin_->Url("/bytes/10")));
  ClientResponse second = Call(MakeRequest("GET", origin_->Url("/bytes/10")));
  ASSERT_NE(first.body, nullptr);
  ASSERT_NE(second.body, nullptr);
  EXPECT_THAT(ReadAll(*first.body), IsOk());
  EXPECT_THAT(ReadAll(*second.body), IsOk());
  for (int i = 0; i < 4; ++i) {
    EXPECT_THAT(GetAll(*client_, origin_->Url("/bytes/10")), IsOk());
  }
  EXPECT_EQ(origin_->accepted_connections(), 2);
}

TEST_F(ClientTest, AConnectionTheOriginClosesIsNotReused) {
  // ?close=1: no Content-Length, the body ends with the connection.
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(GetAll(*client_, origin_->Url("/bytes/10?close=1")), IsOk());
  }
  EXPECT_EQ(origin_->accepted_connections(), 3);
}

TEST_F(ClientTest, ABodyNotReadToTheEndNeverGoesBackToThePool) {
  ClientResponse response =
      Call(MakeRequest("GET", origin_->Url("/bytes/1000000")));
  ASSERT_NE(response.body, nullptr);
  ASSERT_THAT(ReadChunk(*response.body), IsOk());
  response.body.reset();
  EXPECT_THAT(GetAll(*client_, origin_->Url("/bytes/10")), IsOk());
  EXPECT_EQ(origin_->accepted_connections(), 2);
}

TEST_F(ClientTest, IdleConnectionsAreClosedAfterTheIdleTimeout) {
  ClientOptions options;
  options.idle_timeout = absl::Milliseconds(200);
  auto client = Client::Create(io_.io(), options);
  ASSERT_THAT(client, IsOk());
  EXPECT_THAT(GetAll(**client, origin_->Url("/bytes/10")), IsOk());
  // The sweep closes it while the client lives.
  EXPECT_TRUE(origin_->WaitForNoConnections(kWait));
  EXPECT_THAT(GetAll(**client, origin_->Url("/bytes/10")), IsOk());
  EXPECT_EQ(origin_->accepted_connections(), 2);
}

TEST_F(ClientTest, NoIdleConnectionsMeansANewConnectionPerCall) {
  ClientOptions options;
  options.max_idle_per_origin = 0;
  auto client = Client::Create(io_.io(), options);
  ASSERT_THAT(client, IsOk());
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(GetAll(**client, origin_->Url("/bytes/10")), IsOk());
  }
  EXPECT_EQ(origin_->accepted_connections(), 3);
}

// An origin written by hand for the race a pool must survive: on its first
// connection it answers one request with keep-alive, then reads the next
// request and closes without answering (as an origin whose keep-alive timer
// fired at that moment would). Later connections get one answer each, with
// "Connection: close".
class ClosesAfterOneAnswer {
 public:
  ClosesAfterOneAnswer()
      : acceptor_(io_, {net::ip::make_address("127.0.0.1"), 0}) {
    thread_ = std::thread([this] { Serve(); });
  }
  ~ClosesAfterOneAnswer() {
    // A blocking accept() does not return when the acceptor closes: wake
    // it with a connection of our own.
    stopping_ = true;
    beast::error_code ignored;
    net::ip::tcp::socket wake(io_);
    wake.connect(acceptor_.local_endpoint(), ignored);
    thread_.join();
  }
  std::string Url(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", acceptor_.local_endpoint().port(),
                        path);
  }
  int connections() const { return connections_.load(); }
  int requests() const { return requests_.load(); }

 private:
  // Reads one request head and its body (Content-Length only); false at
  // the end of the connection.
  bool ReadRequest(net::ip::tcp::socket& socket, std::string& buffer) {
    beast::error_code ec;
    std::array<char, 4096> data{};
    std::size_t end = 0;
    while ((end = buffer.find("\r\n\r\n")) == std::string::npos) {
      const std::size_t n = socket.read_some(net::buffer(data), ec);
      if (ec) return false;
      buffer.append(data.data(), n);
    }
    std::size_t length = 0;
    const std::size_t at = buffer.find("Content-Length: ");
    if (at != std::string::npos && at < end) {
      length = std::stoul(buffer.substr(at + 16));
    }
    while (buffer.size() < end + 4 + length) {
      const std::size_t n = socket.read_some(net::buffer(data), ec);
      if (ec) return false;
      buffer.append(data.data(), n);
    }
    buffer.erase(0, end + 4 + length);
    ++requests_;
    return true;
  }

  void Serve() {
    for (int i = 0;; ++i) {
      beast::error_code ec;
      net::ip::tcp::socket socket(io_);
      acceptor_.accept(socket, ec);
      if (ec || stopping_) return;
      ++connections_;
      std::string buffer;
      if (!ReadRequest(socket, buffer)) continue;
      const bool first = i == 0;
      const std::string answer =
          absl::StrCat("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
                       first ? "" : "Connection: close\r\n", "\r\nok");
      net::write(socket, net::buffer(answer), ec);
      if (ec || !first) continue;
      ReadRequest(socket, buffer);
      // Closes without answering the second request.
    }
  }

  net::io_context io_;
  net::ip::tcp::acceptor acceptor_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

TEST_F(ClientTest, ARequestWithoutBodyIsSentAgainWhenTheReusedConnectionDies) {
  ClosesAfterOneAnswer origin;
  EXPECT_THAT(GetAll(*client_, origin.Url("/a")), IsOk());
  // Goes out on the pooled connection, which the origin closes unanswered:
  // sent again on a new connection, where it is the first and answered.
  absl::StatusOr<std::string> second = GetAll(*client_, origin.Url("/b"));
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(*second, "ok");
  EXPECT_EQ(origin.connections(), 2);
  EXPECT_EQ(origin.requests(), 3);
}

TEST_F(ClientTest, ARequestWithABodyIsNeverSentTwice) {
  ClosesAfterOneAnswer origin;
  EXPECT_THAT(GetAll(*client_, origin.Url("/a")), IsOk());
  ClientRequest post = MakeRequest("POST", origin.Url("/b"));
  post.body = std::make_unique<ChunksReader>(std::vector<std::string>{"abc"});
  post.body_length = 3;
  // The body was read from its source: it cannot be sent again, so the
  // call fails instead.
  EXPECT_THAT(SendAndWait(*client_, std::move(post)), Not(IsOk()));
  EXPECT_EQ(origin.connections(), 1);
  EXPECT_EQ(origin.requests(), 2);
}

TEST(DownstreamErrorCodeTest, FollowsSnykNames) {
  EXPECT_EQ(DownstreamErrorCode(absl::UnavailableError("")),
            "DOWNSTREAM_UNREACHABLE");
  EXPECT_EQ(DownstreamErrorCode(absl::DeadlineExceededError("")),
            "DOWNSTREAM_TIMEOUT");
  EXPECT_EQ(DownstreamErrorCode(absl::UnknownError("")), "DOWNSTREAM_ERROR");
  EXPECT_EQ(DownstreamErrorCode(absl::InternalError("")), "DOWNSTREAM_ERROR");
  EXPECT_EQ(DownstreamErrorCode(absl::OkStatus()), "");
}

// --- TLS ------------------------------------------------------------------

template <typename T, void (*kFree)(T*)>
struct OpenSslFree {
  void operator()(T* p) const { kFree(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, OpenSslFree<EVP_PKEY, EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, OpenSslFree<X509, X509_free>>;
using X509ExtensionPtr =
    std::unique_ptr<X509_EXTENSION,
                    OpenSslFree<X509_EXTENSION, X509_EXTENSION_free>>;
using BioPtr = std::unique_ptr<BIO, OpenSslFree<BIO, BIO_free_all>>;

struct KeyAndCert {
  PkeyPtr key;
  X509Ptr cert;
};

// A P-256 key and a certificate for it, signed by `issuer` (self-signed
// CA when null). `san` is the subjectAltName of a server certificate.
KeyAndCert MakeCert(const char* common_name, const char* san,
                    const KeyAndCert* issuer) {
  static std::atomic<int> serial{1};
  KeyAndCert out;
  out.key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  BROKER_CHECK(out.key != nullptr);
  out.cert.reset(X509_new());
  X509* cert = out.cert.get();
  BROKER_CHECK(X509_set_version(cert, 2) == 1);
  BROKER_CHECK(ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++) == 1);
  BROKER_CHECK(X509_gmtime_adj(X509_getm_notBefore(cert), -3600) != nullptr);
  BROKER_CHECK(X509_gmtime_adj(X509_getm_notAfter(cert), 86400) != nullptr);
  BROKER_CHECK(X509_set_pubkey(cert, out.key.get()) == 1);
  X509_NAME* name = X509_get_subject_name(cert);
  BROKER_CHECK(X509_NAME_add_entry_by_txt(
                   name, "CN", MBSTRING_ASC,
                   reinterpret_cast<const unsigned char*>(common_name), -1, -1,
                   0) == 1);
  X509* issuer_cert = issuer != nullptr ? issuer->cert.get() : cert;
  BROKER_CHECK(X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert)) ==
               1);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer_cert, cert, nullptr, nullptr, 0);
  auto add = [&](int nid, const char* value) {
    X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
    BROKER_CHECK(ext != nullptr);
    BROKER_CHECK(X509_add_ext(cert, ext.get(), -1) == 1);
  };
  add(NID_subject_key_identifier, "hash");
  if (issuer == nullptr) {
    add(NID_basic_constraints, "critical,CA:TRUE");
    add(NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add(NID_authority_key_identifier, "keyid:always");
    add(NID_basic_constraints, "critical,CA:FALSE");
    add(NID_key_usage, "critical,digitalSignature");
    add(NID_ext_key_usage, "serverAuth");
    add(NID_subject_alt_name, san);
  }
  EVP_PKEY* signer = issuer != nullptr ? issuer->key.get() : out.key.get();
  BROKER_CHECK(X509_sign(cert, signer, EVP_sha256()) > 0);
  return out;
}

void WritePem(const std::string& path, X509* cert, EVP_PKEY* key) {
  BioPtr bio(BIO_new_file(path.c_str(), "w"));
  BROKER_CHECK(bio != nullptr);
  if (cert != nullptr) BROKER_CHECK(PEM_write_bio_X509(bio.get(), cert) == 1);
  if (key != nullptr) {
    BROKER_CHECK(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0,
                                          nullptr, nullptr) == 1);
  }
}

class ClientTlsTest : public ::testing::Test {
 protected:
  // One CA, a server certificate for localhost/127.0.0.1 and one for
  // another name, written once for the suite.
  static void SetUpTestSuite() {
    cert_dir = new std::string(
        absl::StrCat(::testing::TempDir(), "client_tls_test_", getpid()));
    ::mkdir(cert_dir->c_str(), 0700);
    const KeyAndCert ca = MakeCert("Broker Test CA", nullptr, nullptr);
    const KeyAndCert server =
        MakeCert("localhost", "DNS:localhost,IP:127.0.0.1", &ca);
    const KeyAndCert other =
        MakeCert("other.example", "DNS:other.example", &ca);
    WritePem(Path("ca.pem"), ca.cert.get(), nullptr);
    WritePem(Path("server.pem"), server.cert.get(), nullptr);
    WritePem(Path("server-key.pem"), nullptr, server.key.get());
    WritePem(Path("other.pem"), other.cert.get(), nullptr);
    WritePem(Path("other-key.pem"), nullptr, other.key.get());
  }
  static void TearDownTestSuite() {
    for (const char* file : {"ca.pem", "server.pem", "server-key.pem",
                             "other.pem", "other-key.pem"}) {
      std::remove(Path(file).c_str());
    }
    ::rmdir(cert_dir->c_str());
    delete cert_dir;
    cert_dir = nullptr;
  }
  static std::string Path(const char* file) {
    return absl::StrCat(*cert_dir, "/", file);
  }

  void TearDown() override {
    EXPECT_TRUE(io_.Drain(kWait)) << "calls still hold the io_context";
  }

  static std::unique_ptr<TestOrigin> StartOrigin(const char* cert,
                                                 const char* key) {
    TestOriginOptions options;
    options.tls_cert_file = Path(cert);
    options.tls_key_file = Path(key);
    auto origin = TestOrigin::Start(std::move(options));
    EXPECT_THAT(origin, IsOk());
    return origin.ok() ? *std::move(origin) : nullptr;
  }

  absl::StatusOr<std::string> Get(const ClientOptions& options,
                                  const std::string& url) {
    auto client = Client::Create(io_.io(), options);
    if (!client.ok()) return client.status();
    absl::StatusOr<ClientResponse> response =
        SendAndWait(**client, MakeRequest("GET", url));
    if (!response.ok()) return response.status();
    return ReadAll(*response->body);
  }

  static std::string* cert_dir;
  IoThreads io_;
};

std::string* ClientTlsTest::cert_dir = nullptr;

TEST_F(ClientTlsTest, VerifiesWithTheCaFile) {
  std::unique_ptr<TestOrigin> origin =
      StartOrigin("server.pem", "server-key.pem");
  ASSERT_NE(origin, nullptr);
  ClientOptions options;
  options.ca_file = Path("ca.pem");
  // By DNS name (SNI + name check) and by IP address (IP SAN).
  for (const char* host : {"localhost", "127.0.0.1"}) {
    absl::StatusOr<std::string> body = Get(
        options, absl::StrCat("https://", host, ":", origin->port(), "/echo"));
    ASSERT_THAT(body, IsOk()) << host;
    EXPECT_EQ(ParseJson(*body)["headers"]["host"],
              absl::StrCat(host, ":", origin->port()));
  }
  // A large body over TLS.
  absl::StatusOr<std::string> big =
      Get(options, origin->Url("/bytes/3000000?chunked=1"));
  ASSERT_THAT(big, IsOk());
  EXPECT_TRUE(*big == TestPattern(0, 3000000));
}

TEST_F(ClientTlsTest, TlsConnectionsAreReused) {
  std::unique_ptr<TestOrigin> origin =
      StartOrigin("server.pem", "server-key.pem");
  ASSERT_NE(origin, nullptr);
  ClientOptions options;
  options.ca_file = Path("ca.pem");
  auto client = Client::Create(io_.io(), options);
  ASSERT_THAT(client, IsOk());
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<ClientResponse> response =
        SendAndWait(**client, MakeRequest("GET", origin->Url("/bytes/70000")));
    ASSERT_THAT(response, IsOk());
    absl::StatusOr<std::string> body = ReadAll(*response->body);
    ASSERT_THAT(body, IsOk());
    EXPECT_EQ(*body, TestPattern(0, 70000));
  }
  EXPECT_EQ(origin->accepted_connections(), 1);
}

TEST_F(ClientTlsTest, UntrustedCertificateFails) {
  std::unique_ptr<TestOrigin> origin =
      StartOrigin("server.pem", "server-key.pem");
  ASSERT_NE(origin, nullptr);
  const absl::StatusOr<std::string> body =
      Get(ClientOptions{}, origin->Url("/echo"));
  EXPECT_THAT(
      body,
      StatusIs(absl::StatusCode::kUnknown,
               AllOf(HasSubstr("certificate verify failed"),
                     HasSubstr(absl::StrCat("127.0.0.1:", origin->port())))));
  EXPECT_EQ(DownstreamErrorCode(body.status()), "DOWNSTREAM_ERROR");
  EXPECT_EQ(origin->request_count(), 0U);
}

TEST_F(ClientTlsTest, WrongHostNameFails) {
  std::unique_ptr<TestOrigin> origin =
      StartOrigin("other.pem", "other-key.pem");
  ASSERT_NE(origin, nullptr);
  ClientOptions options;
  options.ca_file = Path("ca.pem");
  for (const char* host : {"localhost", "127.0.0.1"}) {
    EXPECT_THAT(
        Get(options, absl::StrCat("https://", host, ":", origin->port(), "/")),
        StatusIs(absl::StatusCode::kUnknown, HasSubstr("mismatch")))
        << host;
  }
  EXPECT_EQ(origin->request_count(), 0U);
}

TEST_F(ClientTlsTest, InsecureSkipVerifyAcceptsAnyCertificate) {
  std::unique_ptr<TestOrigin> origin =
      StartOrigin("other.pem", "other-key.pem");
  ASSERT_NE(origin, nullptr);
  ClientOptions options;
  options.insecure_skip_verify = true;
  EXPECT_THAT(Get(options, origin->Url("/status/201")), IsOk());
}

TEST_F(ClientTlsTest, BodyCutShortOverTlsIsAnError) {
  std::unique_ptr<TestOrigin> origin =
      StartOrigin("server.pem", "server-key.pem");
  ASSERT_NE(origin, nullptr);
  ClientOptions options;
  options.ca_file = Path("ca.pem");
  for (const char* path :
       {"/die-mid-body/200000", "/die-mid-body/200000?chunked=1",
        "/bytes/100000?close=1"}) {
    // A close-delimited body over TLS without close_notify is a cut too.
    EXPECT_THAT(Get(options, origin->Url(path)),
                StatusIs(absl::StatusCode::kUnknown, HasSubstr("127.0.0.1")))
        << path;
  }
}

TEST_F(ClientTlsTest, MissingCaFileFailsCreate) {
  ClientOptions options;
  options.ca_file = Path("does-not-exist.pem");
  EXPECT_THAT(Client::Create(io_.io(), options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("does-not-exist.pem")));
}

}  // namespace
}  // namespace broker::common::http
