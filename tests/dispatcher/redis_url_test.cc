#include "services/dispatcher/redis_store.h"
#include "tests/testing/status_matchers.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace broker::dispatcher {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(RedisUrlTest, HostPortAndDatabase) {
  auto plain = ParseRedisUrl("redis://redis.internal");
  ASSERT_THAT(plain, IsOk());
  EXPECT_EQ(plain->host, "redis.internal");
  EXPECT_EQ(plain->port, 6379);
  EXPECT_EQ(plain->db, 0);
  EXPECT_TRUE(plain->password.empty());

  auto full = ParseRedisUrl("redis://127.0.0.1:7000/3");
  ASSERT_THAT(full, IsOk());
  EXPECT_EQ(full->host, "127.0.0.1");
  EXPECT_EQ(full->port, 7000);
  EXPECT_EQ(full->db, 3);

  auto slash = ParseRedisUrl("REDIS://h:1/");
  ASSERT_THAT(slash, IsOk());
  EXPECT_EQ(slash->db, 0);

  auto v6 = ParseRedisUrl("redis://[::1]:6380");
  ASSERT_THAT(v6, IsOk());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 6380);
}

TEST(RedisUrlTest, Credentials) {
  auto password = ParseRedisUrl("redis://:s3cr@t@h:1");
  ASSERT_THAT(password, IsOk());
  EXPECT_EQ(password->username, "");
  EXPECT_EQ(password->password, "s3cr@t");
  EXPECT_EQ(password->host, "h");
  auto user = ParseRedisUrl("redis://app:pw@h");
  ASSERT_THAT(user, IsOk());
  EXPECT_EQ(user->username, "app");
  EXPECT_EQ(user->password, "pw");
}

TEST(RedisUrlTest, BadUrlsAreRefusedWithoutEchoingSecrets) {
  for (const char* url :
       {"", "http://h:1", "redis://", "redis://h:0", "redis://h:99999",
        "redis://h:port", "redis://h/db", "redis://h/-1", "redis://[::1",
        "redis://onlyuser@h"}) {
    EXPECT_THAT(ParseRedisUrl(url),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("")))
        << url;
  }
  EXPECT_THAT(ParseRedisUrl("rediss://h:1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("TLS")));
  EXPECT_THAT(
      ParseRedisUrl("redis://:hunter2@h:bad"),
      StatusIs(absl::StatusCode::kInvalidArgument, Not(HasSubstr("hunter2"))));
}

}  // namespace
}  // namespace broker::dispatcher
