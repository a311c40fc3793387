// Tests of `${NAME}` templates, credential pools and the forward target a
// private rule resolves to (docs/accept-rules.md, "After a match").
//
// Base64 values and the userinfo decoding were checked with node 20
// (`Buffer.from(s).toString('base64')`, legacy `url.parse(origin).auth`).

#include "filters/origin.h"

#include "filters/rule.h"
#include "filters/rule_set.h"
#include "tests/testing/status_matchers.h"

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace broker::filters {
namespace {

using ::broker::testing::IsOk;
using ::testing::Not;
using ::testing::Optional;

OriginResolver MakeResolver(
    absl::flat_hash_map<std::string, std::string> values) {
  return OriginResolver(Variables(std::move(values)));
}

// One private rule allowing everything, with the given origin and optional
// `auth` object (JSON text).
std::shared_ptr<const RuleSet> OneRule(absl::string_view origin,
                                       absl::string_view auth = "") {
  std::string text = R"({"private":[{"method":"GET","path":"/*","origin":")";
  text.append(origin.data(), origin.size());
  text += "\"";
  if (!auth.empty()) {
    text += R"(,"auth":)";
    text.append(auth.data(), auth.size());
  }
  text += "}]}";
  absl::StatusOr<std::shared_ptr<const RuleSet>> rules =
      RuleSet::FromText(text, "t");
  EXPECT_THAT(rules, IsOk()) << text;
  if (!rules.ok()) return nullptr;
  EXPECT_EQ((*rules)->rules(RuleList::kPrivate).size(), 1u);
  return *std::move(rules);
}

TEST(TemplateTest, VariableNames) {
  struct Case {
    absl::string_view text;
    std::vector<std::string> names;
  };
  const Case kCases[] = {
      {"", {}},
      {"https://api.github.com", {}},
      {"https://${TOKEN}@${HOST}", {"TOKEN", "HOST"}},
      {"${A}", {"A"}},
      {"${A}${B}", {"A", "B"}},
      {"${GITHUB_API}/api/v3", {"GITHUB_API"}},
      {"x${B_2}y", {"B_2"}},
      {"$A ${B}", {"B"}},
      {"${A", {}},
  };
  for (const Case& c : kCases) {
    EXPECT_EQ(Template(c.text).VariableNames(), c.names) << c.text;
    EXPECT_EQ(Template(c.text).text(), c.text);
  }
}

TEST(VariablesTest, FromEnviron) {
  const char* const env[] = {"A=1", "B=x=y", "C=", nullptr};
  const Variables variables = Variables::FromEnviron(env);
  ASSERT_NE(variables.Find("A"), nullptr);
  EXPECT_EQ(*variables.Find("A"), "1");
  ASSERT_NE(variables.Find("B"), nullptr);
  EXPECT_EQ(*variables.Find("B"), "x=y");
  ASSERT_NE(variables.Find("C"), nullptr);
  EXPECT_EQ(*variables.Find("C"), "");
  EXPECT_EQ(variables.Find("D"), nullptr);
}

TEST(OriginResolverTest, ExpandsSetAndUnsetVariables) {
  const OriginResolver resolver = MakeResolver(
      {{"HOST", "api.github.com"}, {"TOKEN", "ghp_x"}, {"EMPTY", ""}});
  struct Case {
    absl::string_view text;
    absl::string_view expanded;
  };
  constexpr Case kCases[] = {
      {"", ""},
      {"plain", "plain"},
      {"https://${HOST}", "https://api.github.com"},
      {"https://${TOKEN}@${HOST}", "https://ghp_x@api.github.com"},
      {"${UNSET}", ""},
      {"pre-${UNSET}-post", "pre--post"},
      {"https://${UNSET}@${HOST}", "https://@api.github.com"},
      {"${EMPTY}x", "x"},
      {"${HOST}${HOST}", "api.github.comapi.github.com"},
      {"$HOST", "$HOST"},
  };
  for (const Case& c : kCases) {
    EXPECT_EQ(resolver.Expand(Template(c.text)), c.expanded) << c.text;
  }
}

TEST(OriginResolverTest, PoolRotates) {
  const OriginResolver resolver =
      MakeResolver({{"X_POOL", "a,b,c"}, {"Y", "y"}});
  const Template x("${X}");
  EXPECT_EQ(resolver.Expand(x), "a");
  EXPECT_EQ(resolver.Expand(x), "b");
  EXPECT_EQ(resolver.Expand(x), "c");
  EXPECT_EQ(resolver.Expand(x), "a");
  EXPECT_EQ(resolver.Expand(Template("${Y}")), "y");
}

TEST(OriginResolverTest, PoolWinsOverPlainVariable) {
  const OriginResolver resolver = MakeResolver({{"X", "z"}, {"X_POOL", "a,b"}});
  const Template x("${X}");
  EXPECT_EQ(resolver.Expand(x), "a");
  EXPECT_EQ(resolver.Expand(x), "b");
  EXPECT_EQ(resolver.Expand(x), "a");
}

TEST(OriginResolverTest, EachUseTakesTheNextPoolValue) {
  const OriginResolver resolver = MakeResolver({{"X_POOL", "a,b,c"}});
  const Template twice("${X}-${X}");
  EXPECT_EQ(resolver.Expand(twice), "a-b");
  EXPECT_EQ(resolver.Expand(twice), "c-a");
}

TEST(OriginResolverTest, SingleValuePoolIsOneValue) {
  // Deliberate deviation: Snyk indexes a comma-less pool by character.
  const OriginResolver resolver = MakeResolver({{"X_POOL", "abc"}});
  const Template x("${X}");
  EXPECT_EQ(resolver.Expand(x), "abc");
  EXPECT_EQ(resolver.Expand(x), "abc");
  EXPECT_EQ(resolver.Expand(x), "abc");

  const OriginResolver one = MakeResolver({{"X_POOL", "a"}});
  EXPECT_EQ(one.Expand(x), "a");
  EXPECT_EQ(one.Expand(x), "a");
}

struct ResolveCase {
  absl::string_view name;
  absl::string_view origin;
  absl::string_view auth;  // JSON, "" for none
  absl::string_view request_url;
  absl::string_view url;
  std::optional<std::string> authorization;
};

TEST(OriginResolverTest, Resolve) {
  const OriginResolver resolver = MakeResolver({
      {"HOST", "api.example.com"},
      {"TOKEN", "ghp_abc"},
      {"USER", "user"},
      {"PASS", "pass"},
      {"ENC_USER", "us%40er"},
      {"ENC_PASS", "p%3Ass"},
      {"AT_PASS", "p@ss"},
      {"U", "alice"},
      {"P", "s3cret"},
      {"T", "tok-123"},
      {"RAW", "SSWS 00abc"},
  });
  const ResolveCase kCases[] = {
      {"token userinfo becomes `token <t>` and leaves the url",
       "https://${TOKEN}@${HOST}", "", "/repos/a/b",
       "https://api.example.com/repos/a/b", "token ghp_abc"},
      {"user:pass userinfo becomes Basic", "https://${USER}:${PASS}@${HOST}",
       "", "/x", "https://api.example.com/x", "Basic dXNlcjpwYXNz"},
      {"userinfo is percent-decoded before encoding",
       "https://${ENC_USER}:${ENC_PASS}@${HOST}", "", "/x",
       "https://api.example.com/x", "Basic dXNAZXI6cDpzcw=="},
      {"the last @ before the path ends the userinfo (node url.parse)",
       "https://${USER}:${AT_PASS}@${HOST}", "", "/x",
       "https://api.example.com/x", "Basic dXNlcjpwQHNz"},
      {"no userinfo, no auth: no header", "https://${HOST}", "", "/x",
       "https://api.example.com/x", std::nullopt},
      {"origin path prefix is kept", "https://${HOST}/api/v3", "", "/repos/a/b",
       "https://api.example.com/api/v3/repos/a/b", std::nullopt},
      {"request url appended verbatim", "https://${HOST}", "",
       "/repos/a/b/contents/x%2Fy?ref=main&q=a+b%20c&e=",
       "https://api.example.com/repos/a/b/contents/x%2Fy?ref=main&q=a+b%20c&e=",
       std::nullopt},
      {"origin without scheme gets https://", "${HOST}", "", "/x",
       "https://api.example.com/x", std::nullopt},
      {"origin without scheme with a token", "${TOKEN}@${HOST}", "", "/x",
       "https://api.example.com/x", "token ghp_abc"},
      {"http origin is kept", "http://${HOST}:8080", "", "/x",
       "http://api.example.com:8080/x", std::nullopt},
      {"auth basic", "https://${HOST}",
       R"({"scheme":"basic","username":"${U}","password":"${P}"})", "/x",
       "https://api.example.com/x", "Basic YWxpY2U6czNjcmV0"},
      {"auth basic with only a token", "https://${HOST}",
       R"({"scheme":"basic","token":"${T}"})", "/x",
       "https://api.example.com/x", "Basic dG9rLTEyMw=="},
      {"auth bearer", "https://${HOST}",
       R"({"scheme":"bearer","token":"${T}"})", "/x",
       "https://api.example.com/x", "Bearer tok-123"},
      {"auth token", "https://${HOST}", R"({"scheme":"token","token":"${T}"})",
       "/x", "https://api.example.com/x", "Token tok-123"},
      {"auth raw", "https://${HOST}", R"({"scheme":"raw","token":"${RAW}"})",
       "/x", "https://api.example.com/x", "SSWS 00abc"},
  };
  for (const ResolveCase& c : kCases) {
    SCOPED_TRACE(c.name);
    std::shared_ptr<const RuleSet> rules = OneRule(c.origin, c.auth);
    ASSERT_NE(rules, nullptr);
    const absl::StatusOr<ForwardTarget> target =
        resolver.Resolve(rules->rules(RuleList::kPrivate)[0], c.request_url);
    ASSERT_THAT(target, IsOk());
    EXPECT_EQ(target->url, c.url);
    EXPECT_EQ(target->authorization, c.authorization);
  }
}

TEST(OriginResolverTest, ResolveWithPoolRotatesTokens) {
  const OriginResolver resolver =
      MakeResolver({{"TOKEN_POOL", "t0,t1"}, {"HOST", "h.example"}});
  std::shared_ptr<const RuleSet> rules = OneRule("https://${TOKEN}@${HOST}");
  ASSERT_NE(rules, nullptr);
  const Rule& rule = rules->rules(RuleList::kPrivate)[0];
  const absl::StatusOr<ForwardTarget> first = resolver.Resolve(rule, "/a");
  const absl::StatusOr<ForwardTarget> second = resolver.Resolve(rule, "/a");
  const absl::StatusOr<ForwardTarget> third = resolver.Resolve(rule, "/a");
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(second, IsOk());
  ASSERT_THAT(third, IsOk());
  EXPECT_THAT(first->authorization, Optional(std::string("token t0")));
  EXPECT_THAT(second->authorization, Optional(std::string("token t1")));
  EXPECT_THAT(third->authorization, Optional(std::string("token t0")));
  EXPECT_EQ(third->url, "https://h.example/a");
}

TEST(OriginResolverTest, ResolveFailsForARuleWithoutOrigin) {
  const OriginResolver resolver = MakeResolver({{"HOST", "h.example"}});
  absl::StatusOr<std::shared_ptr<const RuleSet>> rules =
      RuleSet::FromText(R"({"public":[{"method":"GET","path":"/*"}]})", "t");
  ASSERT_THAT(rules, IsOk());
  ASSERT_EQ((*rules)->rules(RuleList::kPublic).size(), 1u);
  EXPECT_THAT(resolver.Resolve((*rules)->rules(RuleList::kPublic)[0], "/x"),
              Not(IsOk()));
}

TEST(OriginResolverTest, PoolIsSharedFairlyAcrossThreads) {
  constexpr int kThreads = 4;
  constexpr int kCallsPerThread = 1000;
  const OriginResolver resolver =
      MakeResolver({{"TOKEN_POOL", "t0,t1,t2,t3"}, {"HOST", "h.example"}});
  std::shared_ptr<const RuleSet> rules = OneRule("https://${TOKEN}@${HOST}");
  ASSERT_NE(rules, nullptr);
  const Rule& rule = rules->rules(RuleList::kPrivate)[0];

  std::vector<std::vector<std::string>> seen(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&resolver, &rule, &seen, t] {
      seen[t].reserve(kCallsPerThread);
      for (int i = 0; i < kCallsPerThread; ++i) {
        absl::StatusOr<ForwardTarget> target = resolver.Resolve(rule, "/x");
        seen[t].push_back(target.ok() ? target->authorization.value_or("<none>")
                                      : "<error>");
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  absl::flat_hash_map<std::string, int> counts;
  for (const auto& per_thread : seen) {
    for (const std::string& header : per_thread) ++counts[header];
  }
  EXPECT_EQ(counts.size(), 4u);
  EXPECT_EQ(counts["token t0"], kCallsPerThread);
  EXPECT_EQ(counts["token t1"], kCallsPerThread);
  EXPECT_EQ(counts["token t2"], kCallsPerThread);
  EXPECT_EQ(counts["token t3"], kCallsPerThread);
}

}  // namespace
}  // namespace broker::filters
