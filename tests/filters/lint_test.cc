#include "filters/lint.h"

#include "tests/testing/fixtures.h"

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <string>
#include <vector>

namespace broker::filters {
namespace {

using ::testing::HasSubstr;

std::vector<Diagnostic> Warnings(absl::string_view text) {
  std::vector<Diagnostic> out;
  for (Diagnostic& d : Lint(text, "accept.json")) {
    if (d.severity == Severity::kWarning) out.push_back(std::move(d));
  }
  return out;
}

// The one warning about `list[index]` whose message contains `needle`.
const Diagnostic* Find(const std::vector<Diagnostic>& diagnostics,
                       absl::string_view list, int index,
                       absl::string_view needle) {
  for (const Diagnostic& d : diagnostics) {
    if (d.list == list && d.index == index &&
        absl::StrContains(d.message, needle)) {
      return &d;
    }
  }
  return nullptr;
}

std::string Dump(const std::vector<Diagnostic>& diagnostics) {
  std::string out;
  for (const Diagnostic& d : diagnostics) out += d.ToString() + "\n";
  return out;
}

TEST(LintTest, WriteToAnyFileIsWarnedWithASaferForm) {
  const auto warnings = Warnings(R"json({"private": [
    {"method": "PUT", "path": "/rest/api/1.0/projects/:p/repos/:r/browse/*",
     "origin": "https://bitbucket.internal"},
    {"method": "PUT", "path": "/repos/:owner/:repo/contents/:path",
     "origin": "https://api.github.com"},
    {"method": "PUT", "path": "/repos/:owner/:repo/contents/:path(package\\.json)",
     "origin": "https://api.github.com"},
    {"method": "PATCH", "path": "/repos/:owner/:repo/hooks/:id",
     "origin": "https://api.github.com"}
  ]
})json");
  const Diagnostic* browse = Find(warnings, "private", 0, "overwrite any file");
  ASSERT_NE(browse, nullptr) << Dump(warnings);
  EXPECT_THAT(browse->message, HasSubstr("crosses \"/\""));
  EXPECT_THAT(browse->message, HasSubstr("package\\\\.json"));
  const Diagnostic* contents =
      Find(warnings, "private", 1, "overwrite any file");
  ASSERT_NE(contents, nullptr) << Dump(warnings);
  EXPECT_THAT(contents->message, HasSubstr("%2F"));
  // A constrained last segment, or a hook id, is not a file.
  EXPECT_EQ(Find(warnings, "private", 2, "any file"), nullptr)
      << Dump(warnings);
  EXPECT_EQ(Find(warnings, "private", 3, "any file"), nullptr)
      << Dump(warnings);
}

TEST(LintTest, ReadingAnyRootFileIsWarned) {
  // Snyk's injected "snippets" rule for GitHub matches .env and id_rsa.
  const auto warnings = Warnings(R"json({"private": [
    {"method": "GET", "path": "/repos/:name/:repo/contents/:path",
     "origin": "https://api.github.com"},
    {"method": "GET", "path": "/repos/:name/:repo/contents/:path*/package.json",
     "origin": "https://api.github.com"}
  ]})json");
  const Diagnostic* snippets = Find(warnings, "private", 0, "read any file");
  ASSERT_NE(snippets, nullptr) << Dump(warnings);
  EXPECT_THAT(snippets->message, HasSubstr(".env"));
  EXPECT_THAT(snippets->message, HasSubstr("id_rsa"));
  EXPECT_EQ(Find(warnings, "private", 1, "any file"), nullptr)
      << Dump(warnings);
}

TEST(LintTest, GitDiscoveryWithoutServiceCheckIsWarned) {
  const auto warnings = Warnings(R"json({"private": [
    {"method": "GET", "path": "*/info/refs*", "origin": "https://github.com"},
    {"method": "GET", "path": "*/info/refs*", "origin": "https://github.com",
     "valid": [{"queryParam": "service", "values": ["git-upload-pack"]}]}
  ]})json");
  const Diagnostic* push = Find(warnings, "private", 0, "git-receive-pack");
  ASSERT_NE(push, nullptr) << Dump(warnings);
  EXPECT_THAT(push->message, HasSubstr("\"queryParam\": \"service\""));
  EXPECT_EQ(Find(warnings, "private", 1, "git-receive-pack"), nullptr)
      << Dump(warnings);
}

TEST(LintTest, AnyMethodWithWildcardIsWarned) {
  const auto warnings = Warnings(R"json({"private": [
    {"method": "any", "path": "/snykgit/*", "origin": "${GIT_CLIENT_URL}"},
    {"method": "any", "path": "/api/health", "origin": "https://x.internal"}
  ]})json");
  EXPECT_NE(Find(warnings, "private", 0, "method \"any\""), nullptr)
      << Dump(warnings);
  EXPECT_EQ(Find(warnings, "private", 1, "method \"any\""), nullptr)
      << Dump(warnings);
}

TEST(LintTest, PrivateRuleWithoutOriginIsWarned) {
  const auto warnings = Warnings(R"json({
    "private": [{"method": "GET", "path": "/a"}],
    "public": [{"method": "POST", "path": "/webhook/github"}]
  })json");
  EXPECT_NE(Find(warnings, "private", 0, "no \"origin\""), nullptr)
      << Dump(warnings);
  // Public rules on the client need no origin.
  EXPECT_EQ(Find(warnings, "public", 0, "origin"), nullptr) << Dump(warnings);
}

TEST(LintTest, PlainHttpToANonLoopbackHostIsWarned) {
  const auto warnings = Warnings(R"json({"private": [
    {"method": "GET", "path": "/a", "origin": "http://scm.internal:8080"},
    {"method": "GET", "path": "/b", "origin": "http://localhost:8080"},
    {"method": "GET", "path": "/c", "origin": "http://user@127.0.0.1"},
    {"method": "GET", "path": "/d", "origin": "http://[::1]:80"},
    {"method": "GET", "path": "/e", "origin": "https://scm.internal"},
    {"method": "GET", "path": "/f", "origin": "http://${SCM_HOST}"}
  ]})json");
  EXPECT_NE(Find(warnings, "private", 0, "plain http://"), nullptr)
      << Dump(warnings);
  for (int i : {1, 2, 3, 4}) {
    EXPECT_EQ(Find(warnings, "private", i, "plain http://"), nullptr)
        << i << "\n"
        << Dump(warnings);
  }
  // A variable host may be anything: warned.
  EXPECT_NE(Find(warnings, "private", 5, "plain http://"), nullptr)
      << Dump(warnings);
}

TEST(LintTest, LoadErrorsComeFirstAndStopRiskWarnings) {
  const std::vector<Diagnostic> findings = Lint(
      R"json({"private": [{"method": "FETCH", "path": "/*"}]})json", "a.json");
  ASSERT_FALSE(findings.empty());
  EXPECT_EQ(findings.front().severity, Severity::kError);
  EXPECT_THAT(findings.front().ToString(), HasSubstr("private[0]"));
  EXPECT_TRUE(HasErrors(findings));
}

TEST(LintTest, PublishedTemplatesHaveNoErrors) {
  for (const char* name :
       {"github-com.json", "gitlab.json", "bitbucket-server.json",
        "azure-repos.json", "jira.json", "artifactory.json",
        "container-registry-agent.json", "nexus.json"}) {
    const std::vector<Diagnostic> findings = Lint(
        testing::ReadFixture(std::string("accept-templates/") + name), name);
    EXPECT_FALSE(HasErrors(findings)) << name << "\n" << Dump(findings);
  }
}

TEST(LintTest, GithubTemplateWarningsNameTheRiskyRules) {
  const std::vector<Diagnostic> findings =
      Lint(testing::ReadFixture("accept-templates/github-com.json"), "github");
  // PUT .../contents/:path*/*Dockerfile*: the trailing "*" crosses "/".
  EXPECT_NE(Find(findings, "private", 287, "overwrite any file"), nullptr)
      << Dump(findings);
  EXPECT_NE(Find(findings, "private", 311, "method \"any\""), nullptr)
      << Dump(findings);
}

}  // namespace
}  // namespace broker::filters
