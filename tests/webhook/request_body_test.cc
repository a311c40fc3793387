#include "services/webhook/request_body.h"

#include "common/http/server.h"
#include "tests/testing/status_matchers.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace broker::webhook {
namespace {

namespace http = common::http;
using ::broker::testing::IsOk;
using ::broker::testing::StatusIs;

// An exchange whose body the test hands out chunk by chunk: Read() keeps
// the handler until Feed() or Fail().
class ScriptedExchange final : public http::Exchange {
 public:
  explicit ScriptedExchange(http::RequestHead head) : head_(std::move(head)) {}

  const http::RequestHead& request() const override { return head_; }
  std::string remote_address() const override { return "127.0.0.1"; }
  http::BodyReader& body() override { return reader_; }
  http::BodyWriter& Respond(http::ResponseHead,
                            http::BodyWriter::DoneHandler) override {
    ADD_FAILURE() << "not used";
    std::abort();
  }
  void RespondWhole(http::ResponseHead, std::string,
                    http::BodyWriter::DoneHandler) override {}
  void RespondSimple(int, http::Headers, std::string) override {}
  void OnCancel(absl::AnyInvocable<void() &&>) override {}

  bool reading() const { return reader_.pending != nullptr; }
  int reads() const { return reader_.reads; }
  void Feed(std::string data, bool last) {
    ASSERT_TRUE(reading());
    auto handler = std::move(reader_.pending);
    reader_.pending = nullptr;
    std::move(handler)(absl::OkStatus(), {std::move(data), last});
  }
  void Fail(absl::Status status) {
    ASSERT_TRUE(reading());
    auto handler = std::move(reader_.pending);
    reader_.pending = nullptr;
    std::move(handler)(std::move(status), {});
  }

 private:
  struct Reader final : http::BodyReader {
    void Read(ReadHandler handler) override {
      EXPECT_EQ(pending, nullptr) << "two reads outstanding";
      pending = std::move(handler);
      ++reads;
    }
    ReadHandler pending;
    int reads = 0;
  };
  http::RequestHead head_;
  Reader reader_;
};

http::RequestHead Head(std::optional<std::uint64_t> length, bool chunked) {
  http::RequestHead head;
  head.method = "POST";
  head.target = "/webhook/test/1";
  head.content_length = length;
  head.chunked = chunked;
  return head;
}

// What one ReadAt() handed out.
struct Got {
  bool called = false;
  absl::Status status;
  http::BodyChunk chunk;
};

RequestBody::Handler Into(Got& got) {
  return [&got](absl::Status status, http::BodyChunk chunk) {
    got.called = true;
    got.status = std::move(status);
    got.chunk = std::move(chunk);
  };
}

TEST(RequestBodyTest, LengthsForTheRequestHead) {
  auto fixed = std::make_shared<ScriptedExchange>(Head(10, false));
  EXPECT_EQ(RequestBody::Streamed(fixed, 100)->length(), 10);
  auto chunked = std::make_shared<ScriptedExchange>(Head(std::nullopt, true));
  EXPECT_EQ(RequestBody::Streamed(chunked, 100)->length(), -1);
  auto none = std::make_shared<ScriptedExchange>(Head(std::nullopt, false));
  EXPECT_EQ(RequestBody::Streamed(none, 100)->length(), 0);
  EXPECT_EQ(RequestBody::Held("abc")->length(), 3);
}

TEST(RequestBodyTest, NoBodyEndsAtOnce) {
  auto exchange = std::make_shared<ScriptedExchange>(Head(std::nullopt, false));
  auto body = RequestBody::Streamed(exchange, 100);
  Got got;
  body->ReadAt(0, Into(got));
  ASSERT_TRUE(got.called);
  EXPECT_THAT(got.status, IsOk());
  EXPECT_TRUE(got.chunk.last);
  EXPECT_EQ(exchange->reads(), 0);
}

TEST(RequestBodyTest, SmallBodyIsReplayedFromTheCopy) {
  auto exchange = std::make_shared<ScriptedExchange>(Head(6, false));
  auto body = RequestBody::Streamed(exchange, 100);
  Got first;
  body->ReadAt(0, Into(first));
  EXPECT_FALSE(first.called);
  exchange->Feed("abc", false);
  ASSERT_TRUE(first.called);
  EXPECT_EQ(first.chunk.data, "abc");
  EXPECT_FALSE(first.chunk.last);

  // The attempt fails here; the next one starts over.
  Got again;
  body->ReadAt(0, Into(again));
  ASSERT_TRUE(again.called);  // from the copy, no read
  EXPECT_EQ(again.chunk.data, "abc");
  EXPECT_FALSE(again.chunk.last);
  EXPECT_EQ(exchange->reads(), 1);

  Got rest;
  body->ReadAt(3, Into(rest));
  exchange->Feed("def", true);
  ASSERT_TRUE(rest.called);
  EXPECT_EQ(rest.chunk.data, "def");
  EXPECT_TRUE(rest.chunk.last);
  EXPECT_TRUE(body->Replayable());

  Got third;
  body->ReadAt(0, Into(third));
  EXPECT_EQ(third.chunk.data, "abcdef");
  EXPECT_TRUE(third.chunk.last);
  Got end;
  body->ReadAt(6, Into(end));
  EXPECT_TRUE(end.chunk.last);
  EXPECT_TRUE(end.chunk.data.empty());
}

TEST(RequestBodyTest, BodyPastTheRetryBufferCannotBeReplayed) {
  auto exchange = std::make_shared<ScriptedExchange>(Head(std::nullopt, true));
  auto body = RequestBody::Streamed(exchange, 4);
  Got a;
  body->ReadAt(0, Into(a));
  exchange->Feed("abc", false);
  EXPECT_TRUE(body->Replayable());  // 3 bytes, all held
  Got b;
  body->ReadAt(3, Into(b));
  exchange->Feed("def", false);
  EXPECT_EQ(b.chunk.data, "def");  // the attempt in progress goes on
  EXPECT_FALSE(body->Replayable());
  Got again;
  body->ReadAt(0, Into(again));
  EXPECT_THAT(again.status,
              StatusIs(absl::StatusCode::kFailedPrecondition, ::testing::_));
}

TEST(RequestBodyTest, DeclaredLengthOverTheBufferKeepsNoCopy) {
  auto exchange = std::make_shared<ScriptedExchange>(Head(10, false));
  auto body = RequestBody::Streamed(exchange, 4);
  // Nothing read yet: an attempt that failed before its body may be retried.
  EXPECT_TRUE(body->Replayable());
  Got a;
  body->ReadAt(0, Into(a));
  exchange->Feed("ab", false);
  EXPECT_FALSE(body->Replayable());
}

TEST(RequestBodyTest, ReadErrorsReachEveryLaterReader) {
  auto exchange = std::make_shared<ScriptedExchange>(Head(10, false));
  auto body = RequestBody::Streamed(exchange, 100);
  Got a;
  body->ReadAt(0, Into(a));
  exchange->Fail(absl::ResourceExhaustedError("too large"));
  EXPECT_THAT(a.status,
              StatusIs(absl::StatusCode::kResourceExhausted, "too large"));
  EXPECT_THAT(body->error(),
              StatusIs(absl::StatusCode::kResourceExhausted, "too large"));
  Got b;
  body->ReadAt(0, Into(b));
  EXPECT_THAT(b.status,
              StatusIs(absl::StatusCode::kResourceExhausted, "too large"));
}

TEST(RequestBodyTest, NewerReaderReplacesAWaitingOne) {
  auto exchange = std::make_shared<ScriptedExchange>(Head(3, false));
  auto body = RequestBody::Streamed(exchange, 100);
  Got old_attempt;
  body->ReadAt(0, Into(old_attempt));
  Got new_attempt;
  body->ReadAt(0, Into(new_attempt));
  EXPECT_THAT(old_attempt.status,
              StatusIs(absl::StatusCode::kCancelled, ::testing::_));
  EXPECT_EQ(exchange->reads(), 1);  // still the one read
  exchange->Feed("abc", true);
  EXPECT_EQ(new_attempt.chunk.data, "abc");
  EXPECT_TRUE(new_attempt.chunk.last);
}

TEST(RequestBodyTest, HeldBodyComesInChunks) {
  const std::string data(kBodyChunkBytes * 2 + 5, 'x');
  auto body = RequestBody::Held(data);
  std::string out;
  std::uint64_t offset = 0;
  for (int i = 0; i < 10; ++i) {
    Got got;
    body->ReadAt(offset, Into(got));
    ASSERT_TRUE(got.called);
    EXPECT_LE(got.chunk.data.size(), kBodyChunkBytes);
    out += got.chunk.data;
    offset += got.chunk.data.size();
    if (got.chunk.last) break;
  }
  EXPECT_EQ(out, data);
  EXPECT_TRUE(body->Replayable());
}

TEST(RequestBodyTest, ReadFromStartServesTheFallback) {
  auto body = RequestBody::Held("hello");
  std::unique_ptr<http::BodyReader> reader = ReadFromStart(body);
  std::string out;
  bool last = false;
  reader->Read([&](const absl::Status& status, const http::BodyChunk& chunk) {
    ASSERT_THAT(status, IsOk());
    out = chunk.data;
    last = chunk.last;
  });
  EXPECT_EQ(out, "hello");
  EXPECT_TRUE(last);
}

}  // namespace
}  // namespace broker::webhook
