#include "services/server/buffered_body.h"

#include "common/executor.h"
#include "common/http/client.h"
#include "common/http/server.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>

namespace broker::server {
namespace {

namespace http = common::http;

constexpr absl::Duration kWait = absl::Seconds(30);

http::ServerOptions LoopbackOptions() {
  http::ServerOptions options;
  options.address = "127.0.0.1";
  return options;
}

std::string Pattern(size_t n) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>((i * 131) % 251);
  return out;
}

// What the handler saw of the replayed body.
struct Replay {
  std::string body;
  int chunks = 0;
  size_t max_chunk = 0;
};

// Reads a replayed body to the end, then answers it back with what was
// seen in headers.
void ReadReplay(std::shared_ptr<http::Exchange> exchange,
                std::shared_ptr<Replay> replay) {
  exchange->body().Read([exchange, replay](const absl::Status& status,
                                           http::BodyChunk chunk) {
    if (!status.ok()) {
      exchange->RespondSimple(500, {}, std::string(status.message()));
      return;
    }
    ++replay->chunks;
    replay->max_chunk = std::max(replay->max_chunk, chunk.data.size());
    replay->body += chunk.data;
    if (!chunk.last) {
      ReadReplay(exchange, replay);
      return;
    }
    const http::RequestHead& head = exchange->request();
    exchange->RespondSimple(
        200,
        {{"x-chunks", absl::StrCat(replay->chunks)},
         {"x-max-chunk", absl::StrCat(replay->max_chunk)},
         {"x-content-length",
          head.content_length ? absl::StrCat(*head.content_length) : "none"},
         {"x-chunked", head.chunked ? "yes" : "no"}},
        replay->body);
  });
}

// A request body from a string, in 16 KiB chunks.
class StringBody final : public http::BodyReader {
 public:
  explicit StringBody(std::string data) : data_(std::move(data)) {}
  void Read(ReadHandler handler) override {
    http::BodyChunk chunk;
    chunk.data = data_.substr(offset_, 16 * 1024);
    offset_ += chunk.data.size();
    chunk.last = offset_ >= data_.size();
    std::move(handler)(absl::OkStatus(), std::move(chunk));
  }

 private:
  std::string data_;
  size_t offset_ = 0;
};

struct Answer {
  int status = 0;
  http::Headers headers;
  std::string body;
  std::string Header(absl::string_view name) const {
    return std::string(http::FindHeader(headers, name).value_or(""));
  }
};

void Drain(std::shared_ptr<http::BodyReader> body, Answer* out,
           absl::Notification* done) {
  body->Read(
      [body, out, done](const absl::Status& status, http::BodyChunk chunk) {
        out->body += chunk.data;
        if (!status.ok() || chunk.last) {
          done->Notify();
          return;
        }
        Drain(body, out, done);
      });
}

// A real server whose handler buffers the body (limit kLimit), replays it
// through WithBufferedBody and echoes it.
class BufferedBodyTest : public ::testing::Test {
 protected:
  static constexpr std::uint64_t kLimit = 300 * 1024;

  void SetUp() override {
    auto server = http::Server::Create(
        executor_.io(), LoopbackOptions(),
        [this](std::shared_ptr<http::Exchange> exchange) {
          common::http::ReadWholeBody(
              exchange, kLimit,
              [this, exchange](absl::StatusOr<std::string> body) {
                if (!body.ok()) {
                  exchange->RespondSimple(
                      body.status().code() ==
                              absl::StatusCode::kResourceExhausted
                          ? 413
                          : 400,
                      {}, std::string(body.status().message()));
                  return;
                }
                ReadReplay(WithBufferedBody(executor_.io(), exchange,
                                            *std::move(body)),
                           std::make_shared<Replay>());
              });
        });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto port = server_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    port_ = *port;
    auto client = http::Client::Create(executor_.io(), {});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  void TearDown() override { server_->Shutdown(absl::Now() + kWait); }

  Answer Post(std::string body, bool chunked) {
    http::ClientRequest request;
    request.method = "POST";
    request.url = absl::StrCat("http://127.0.0.1:", port_, "/graphql");
    request.deadline = absl::Now() + kWait;
    if (!chunked) request.body_length = body.size();
    request.body = std::make_unique<StringBody>(std::move(body));
    Answer out;
    absl::Notification done;
    client_->Send(
        std::move(request), [&](absl::StatusOr<http::ClientResponse> response) {
          if (!response.ok()) {
            ADD_FAILURE() << response.status();
            done.Notify();
            return;
          }
          out.status = response->head.status;
          out.headers = response->head.headers;
          Drain(std::shared_ptr<http::BodyReader>(std::move(response->body)),
                &out, &done);
        });
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(kWait + absl::Seconds(5)));
    return out;
  }

  common::Executor executor_{2};
  std::unique_ptr<http::Server> server_;
  std::unique_ptr<http::Client> client_;
  int port_ = 0;
};

TEST_F(BufferedBodyTest, ALengthDelimitedBodyIsReplayedInBoundedChunks) {
  const std::string body = Pattern(200 * 1024);
  Answer answer = Post(body, /*chunked=*/false);
  ASSERT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(answer.body, body);
  EXPECT_EQ(answer.Header("x-content-length"), "204800");
  EXPECT_EQ(answer.Header("x-chunked"), "no");
  int max_chunk = 0;
  ASSERT_TRUE(absl::SimpleAtoi(answer.Header("x-max-chunk"), &max_chunk));
  EXPECT_LE(max_chunk, static_cast<int>(kReplayChunkBytes));
  EXPECT_EQ(answer.Header("x-chunks"), "4");  // 3 x 64 KiB + 8 KiB
}

TEST_F(BufferedBodyTest, AChunkedBodyIsReplayedWithItsLength) {
  const std::string body = Pattern(100 * 1024 + 7);
  Answer answer = Post(body, /*chunked=*/true);
  ASSERT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(answer.body, body);
  EXPECT_EQ(answer.Header("x-content-length"), absl::StrCat(body.size()));
  EXPECT_EQ(answer.Header("x-chunked"), "no");
}

TEST_F(BufferedBodyTest, AnEmptyBodyIsOneLastChunk) {
  Answer answer = Post("", /*chunked=*/false);
  ASSERT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(answer.body, "");
  EXPECT_EQ(answer.Header("x-content-length"), "0");
  EXPECT_EQ(answer.Header("x-chunks"), "1");
}

TEST_F(BufferedBodyTest, ADeclaredLengthOverTheLimitIs413) {
  Answer answer = Post(Pattern(kLimit + 1), /*chunked=*/false);
  EXPECT_EQ(answer.status, 413);
  EXPECT_THAT(answer.body, ::testing::HasSubstr("over the 307200 bytes"));
}

TEST_F(BufferedBodyTest, AChunkedBodyGrowingOverTheLimitIs413) {
  Answer answer = Post(Pattern(kLimit + 1), /*chunked=*/true);
  EXPECT_EQ(answer.status, 413);
}

TEST_F(BufferedBodyTest, ABodyExactlyAtTheLimitPasses) {
  const std::string body = Pattern(kLimit);
  Answer answer = Post(body, /*chunked=*/true);
  ASSERT_EQ(answer.status, 200);
  EXPECT_EQ(answer.body, body);
}

}  // namespace
}  // namespace broker::server
