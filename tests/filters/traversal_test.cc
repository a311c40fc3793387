// Issue "Safer than Snyk": the encoded traversal forms Snyk Broker 5.22.14
// forwards unchanged when a rule such as `/repos/:owner/:repo/contents/:path`
// or `*` allows the path are blocked here, while the legitimate encoded
// forms GitLab and git smart HTTP use keep working.

#include "filters/rule_set.h"
#include "tests/testing/fixtures.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <string>
#include <vector>

namespace broker::filters {
namespace {

using ::testing::HasSubstr;

constexpr absl::string_view kRules = R"json({"private": [
  {"method": "GET", "path": "/repos/:owner/:repo/contents/:path",
   "origin": "https://api.github.com"},
  {"method": "GET", "path": "*", "origin": "https://scm.internal"}
]})json";

Decision Evaluate(const RuleSet& rules, absl::string_view url) {
  static const std::vector<HeaderField> kNoHeaders;
  return rules.Evaluate(RuleList::kPrivate,
                        RequestView{"GET", url, kNoHeaders, ""});
}

class TraversalTest : public ::testing::TestWithParam<absl::string_view> {
 protected:
  void SetUp() override {
    auto rules = RuleSet::FromText(kRules, "traversal.json");
    ASSERT_TRUE(rules.ok()) << rules.status();
    rules_ = *std::move(rules);
  }
  std::shared_ptr<const RuleSet> rules_;
};

// The exact forms of the issue, each placed where the `:path` rule and the
// `*` rule would otherwise allow it.
TEST_P(TraversalTest, HostileFormIsBlockedAsTraversal) {
  const absl::string_view form = GetParam();
  for (const std::string& url :
       {absl::StrCat("/repos/acme/app/contents/", form, "etc%2Fpasswd"),
        absl::StrCat("/repos/acme/app/contents/", form),
        absl::StrCat("/a/", form, "b")}) {
    SCOPED_TRACE(url);
    const Decision decision = Evaluate(*rules_, url);
    EXPECT_FALSE(decision.allowed());
    EXPECT_EQ(decision.cause, BlockCause::kPathTraversal);
    EXPECT_THAT(decision.reason, HasSubstr("traversal"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    IssueForms, TraversalTest,
    ::testing::Values("%2e%2e/", "%2E%2E/", ".%2e/", "%2e./", "..%2f",
                      "%2e%2e%2f", "..%5c", "..;/", "..\\", "%252e%252e/",
                      "%25252e%25252E%25252f", "..%3bjsessionid=1/",
                      "%c0%ae%c0%ae/"));

TEST(TraversalTest, PlainDotSegmentsStayBlockedByNormalisation) {
  auto rules = RuleSet::FromText(kRules, "traversal.json");
  ASSERT_TRUE(rules.ok()) << rules.status();
  for (absl::string_view url :
       {"/repos/acme/app/contents/../x", "/a/./b", "/a//b", "/.."}) {
    const Decision decision = Evaluate(**rules, url);
    EXPECT_FALSE(decision.allowed()) << url;
    EXPECT_EQ(decision.cause, BlockCause::kNotNormalized) << url;
  }
}

TEST(TraversalTest, LegitimateEncodedFormsStayAllowed) {
  auto rules = RuleSet::FromText(kRules, "traversal.json");
  ASSERT_TRUE(rules.ok()) << rules.status();
  for (absl::string_view url :
       {"/repos/acme/app/contents/package.json",
        "/repos/acme/app/contents/src%2Fmain%2Fpom.xml",
        "/repos/acme/app/contents/.github%2Fdependabot.yml",
        "/api/v4/projects/group%2Fproject/repository/files/"
        "src%2Fpackage.json/raw?ref=main",
        "/a/b.c/d", "/a/...", "/a/%2e%2ehidden", "/a/v1.2.3;rev=4"}) {
    EXPECT_TRUE(Evaluate(**rules, url).allowed()) << url;
  }
}

TEST(TraversalTest, QueryStringIsNotCheckedForTraversal) {
  // GitLab commit status: Snyk blocks this because its normalisation check
  // sees the "//" of the target_url.
  auto gitlab = RuleSet::FromText(
      testing::ReadFixture("accept-templates/gitlab.json"), "gitlab.json");
  ASSERT_TRUE(gitlab.ok()) << gitlab.status();
  static const std::vector<HeaderField> kNoHeaders;
  const Decision decision = (*gitlab)->Evaluate(
      RuleList::kPrivate,
      RequestView{"POST",
                  "/api/v4/projects/group%2Fproject/statuses/4f2a9c?"
                  "state=success&target_url=https://app.snyk.io/org/a/../b",
                  kNoHeaders, ""});
  ASSERT_TRUE(decision.allowed()) << decision.reason;
  EXPECT_EQ(decision.rule->path.path(),
            "/api/v4/projects/:project/statuses/:sha");
}

TEST(TraversalTest, GitSmartHttpThroughInjectedRules) {
  auto git = RuleSet::FromText(
      testing::ReadFixture("accept-git/github-with-git.json"), "git.json");
  ASSERT_TRUE(git.ok()) << git.status();
  static const std::vector<HeaderField> kNoHeaders;
  EXPECT_EQ((*git)
                ->Evaluate(RuleList::kPrivate,
                           RequestView{"GET",
                                       "/acme/app.git/info/refs?service=git-"
                                       "upload-pack",
                                       kNoHeaders, ""})
                .rule->index,
            1);
  EXPECT_EQ((*git)
                ->Evaluate(RuleList::kPrivate,
                           RequestView{"POST", "/acme/app.git/git-upload-pack",
                                       kNoHeaders, ""})
                .rule->index,
            2);
  // No rule allows pushing.
  EXPECT_FALSE(
      (*git)
          ->Evaluate(RuleList::kPrivate,
                     RequestView{"POST", "/acme/app.git/git-receive-pack",
                                 kNoHeaders, ""})
          .allowed());
  const Decision hostile = (*git)->Evaluate(
      RuleList::kPrivate,
      RequestView{"GET", "/acme/app.git/%2e%2e%2f%2e%2e%2fadmin/info/refs",
                  kNoHeaders, ""});
  EXPECT_EQ(hostile.cause, BlockCause::kPathTraversal);
}

}  // namespace
}  // namespace broker::filters
