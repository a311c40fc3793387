#include "filters/blocked.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <vector>

namespace broker::filters {
namespace {

Decision Decide(absl::string_view method, absl::string_view url) {
  static const auto* const kRules = [] {
    auto rules = RuleSet::FromText(
        R"json({"private": [{"method": "GET", "path": "/repos/:o/:r/contents/:p",
                             "origin": "https://api.github.com"},
                            {"method": "GET", "path": "/items",
                             "valid": [{"queryParam": "q", "values": ["*"]}],
                             "origin": "https://api.github.com"}]})json",
        "blocked.json");
    return new std::shared_ptr<const RuleSet>(*std::move(rules));
  }();
  static const std::vector<HeaderField> kNoHeaders;
  return (*kRules)->Evaluate(RuleList::kPrivate,
                             RequestView{method, url, kNoHeaders, ""});
}

TEST(BlockedTest, NoMatchUsesSnykWordingForEachFlow) {
  const Decision decision = Decide("DELETE", "/repos/a/b/contents/x");
  ASSERT_FALSE(decision.allowed());
  EXPECT_EQ(BlockedReason(BlockedFlow::kHttp, decision),
            "Request does not match any accept rule, blocking HTTP request");
  EXPECT_EQ(BlockedReason(BlockedFlow::kTunnel, decision),
            "[Websocket Flow][Blocked Request] Does not match any accept rule");
  // Snyk gives the same reason for a path that is not normalised.
  EXPECT_EQ(BlockedReason(BlockedFlow::kTunnel, Decide("GET", "/a/../b")),
            "[Websocket Flow][Blocked Request] Does not match any accept rule");
}

TEST(BlockedTest, DeliberateBlocksNameTheirCause) {
  const Decision traversal = Decide("GET", "/repos/a/b/contents/%2e%2e%2fx");
  EXPECT_THAT(BlockedReason(BlockedFlow::kTunnel, traversal),
              ::testing::StartsWith(
                  "[Websocket Flow][Blocked Request] path traversal"));
  EXPECT_THAT(BlockedReason(BlockedFlow::kHttp, traversal),
              ::testing::HasSubstr("path traversal"));
  const Decision repeated = Decide("GET", "/items?q=1&q=2");
  EXPECT_THAT(BlockedReason(BlockedFlow::kHttp, repeated),
              ::testing::HasSubstr("query parameter \"q\""));
}

TEST(BlockedTest, BodyHasSnykFieldsInOrder) {
  const std::string body =
      BlockedBody(kHttpFlowNoMatchReason, "/repos/a/b/secrets");
  EXPECT_EQ(
      body,
      R"({"code":"FILTER_BLOCKED","message":"blocked","reason":)"
      R"("Request does not match any accept rule, blocking HTTP request",)"
      R"("url":"/repos/a/b/secrets"})");
  EXPECT_EQ(kBlockedStatus, 401);
  // Hostile bytes still give valid JSON.
  const std::string odd = BlockedBody("r", "/a\xff\"b");
  EXPECT_TRUE(nlohmann::json::accept(odd)) << odd;
}

}  // namespace
}  // namespace broker::filters
