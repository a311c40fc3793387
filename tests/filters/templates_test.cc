// Compatibility proof: Snyk's own accept.json templates (tests/fixtures/
// accept-templates, from snyk-broker 5.22.14), evaluated on the requests the
// Snyk integrations really make and on hostile ones. Expected rule indexes
// were read from the files: the first rule in file order that allows a
// request wins. Semantics follow docs/accept-rules.md, including its
// deliberate deviations from Snyk Broker.

#include "filters/origin.h"
#include "filters/request.h"
#include "filters/rule.h"
#include "filters/rule_set.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace broker::filters {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::ReadFixture;
using ::testing::Optional;

constexpr absl::string_view kGitHub = "github-com.json";
constexpr absl::string_view kGitLab = "gitlab.json";
constexpr absl::string_view kBitbucket = "bitbucket-server.json";
constexpr absl::string_view kAzureRepos = "azure-repos.json";
constexpr absl::string_view kJira = "jira.json";
constexpr absl::string_view kJiraBearer = "jira-bearer-auth.json";
constexpr absl::string_view kArtifactory = "artifactory.json";
constexpr absl::string_view kContainerRegistryAgent =
    "container-registry-agent.json";

constexpr RuleList kPrivate = RuleList::kPrivate;
constexpr RuleList kPublic = RuleList::kPublic;

const char* CauseName(BlockCause cause) {
  switch (cause) {
    case BlockCause::kNone:
      return "kNone";
    case BlockCause::kNoMatchingRule:
      return "kNoMatchingRule";
    case BlockCause::kNotNormalized:
      return "kNotNormalized";
    case BlockCause::kPathTraversal:
      return "kPathTraversal";
    case BlockCause::kRepeatedQueryParameter:
      return "kRepeatedQueryParameter";
  }
  return "unknown";
}

// Each template is parsed once for the whole binary. Returns null (and fails
// the calling test) when the file does not load.
std::shared_ptr<const RuleSet> LoadTemplate(absl::string_view file) {
  static auto* const cache =
      new std::map<std::string, std::shared_ptr<const RuleSet>, std::less<>>();
  auto it = cache->find(file);
  if (it != cache->end()) return it->second;
  const std::string text = ReadFixture(absl::StrCat("accept-templates/", file));
  if (text.empty()) {
    ADD_FAILURE() << "fixture accept-templates/" << file << " is missing";
    return nullptr;
  }
  absl::StatusOr<std::shared_ptr<const RuleSet>> rules =
      RuleSet::FromText(text, file);
  if (!rules.ok()) {
    ADD_FAILURE() << file << " does not load: " << rules.status();
    return nullptr;
  }
  cache->emplace(std::string(file), *rules);
  return *rules;
}

// One row of the table: a request and what the template must decide.
struct TemplateCase {
  std::string file;
  RuleList list = kPrivate;
  std::string method;
  std::string url;
  std::vector<HeaderField> headers;
  std::string body;
  std::string body_fixture;  // under tests/fixtures/, replaces `body`
  std::string note;
  bool allowed = false;
  int rule_index = -1;
  std::optional<BlockCause> cause;  // nullopt: any blocking cause

  TemplateCase Header(absl::string_view name, absl::string_view value) && {
    headers.push_back(HeaderField{std::string(name), std::string(value)});
    return std::move(*this);
  }
  TemplateCase Body(absl::string_view text) && {
    body = std::string(text);
    return std::move(*this);
  }
  TemplateCase BodyFixture(absl::string_view relative) && {
    body_fixture = std::string(relative);
    return std::move(*this);
  }
  TemplateCase Note(absl::string_view text) && {
    note = std::string(text);
    return std::move(*this);
  }
  TemplateCase Allowed(int index) && {
    allowed = true;
    rule_index = index;
    cause = BlockCause::kNone;
    return std::move(*this);
  }
  // Blocked, with any cause.
  TemplateCase Blocked() && {
    allowed = false;
    rule_index = -1;
    cause.reset();
    return std::move(*this);
  }
  TemplateCase Blocked(BlockCause why) && {
    allowed = false;
    rule_index = -1;
    cause = why;
    return std::move(*this);
  }
};

TemplateCase Case(absl::string_view file, RuleList list,
                  absl::string_view method, absl::string_view url) {
  TemplateCase c;
  c.file = std::string(file);
  c.list = list;
  c.method = std::string(method);
  c.url = std::string(url);
  return c;
}

std::ostream& operator<<(std::ostream& os, const TemplateCase& c) {
  os << c.file << " " << RuleListName(c.list) << ": " << c.method << " "
     << c.url;
  for (const HeaderField& h : c.headers) {
    os << " [" << h.name << ": " << h.value << "]";
  }
  if (!c.body_fixture.empty()) os << " body=@" << c.body_fixture;
  if (!c.body.empty()) os << " body=" << c.body;
  if (!c.note.empty()) os << " (" << c.note << ")";
  return os;
}

std::vector<TemplateCase> TemplateCases() {
  return {
      // github-com.json, private.
      Case(kGitHub, kPrivate, "GET", "/search/repositories?q=org:acme")
          .Allowed(0),
      Case(kGitHub, kPrivate, "GET", "/user").Allowed(1),
      Case(kGitHub, kPrivate, "get", "/user")
          .Note("method is case-insensitive")
          .Allowed(1),
      Case(kGitHub, kPrivate, "GET", "/user/orgs?per_page=100").Allowed(2),
      Case(kGitHub, kPrivate, "GET", "/user/repos?per_page=100&page=2")
          .Allowed(3),
      Case(kGitHub, kPrivate, "GET", "/orgs/acme/repos").Allowed(5),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app").Allowed(6),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/")
          .Note("optional trailing slash")
          .Allowed(6),
      Case(kGitHub, kPrivate, "GET", "/REPOS/acme/app")
          .Note("paths are case-insensitive")
          .Allowed(6),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app#readme")
          .Note("fragment dropped")
          .Allowed(6),
      Case(kGitHub, kPrivate, "GET", "/rate_limit").Allowed(7),
      Case(kGitHub, kPrivate, "GET", "/").Allowed(8),
      Case(kGitHub, kPrivate, "POST", "/repos/acme/app/hooks").Allowed(9),
      Case(kGitHub, kPrivate, "DELETE", "/repos/acme/app/hooks/42").Allowed(10),
      Case(kGitHub, kPrivate, "POST", "/repos/acme/app/statuses/4f2a9c")
          .Allowed(11),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/branches?per_page=100")
          .Allowed(12),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/branches/main")
          .Allowed(13),
      Case(kGitHub, kPrivate, "DELETE",
           "/repos/acme/app/git/refs/heads%2Fsnyk-fix-1")
          .Allowed(14),
      Case(kGitHub, kPrivate, "DELETE",
           "/repos/acme/app/git/refs/heads/snyk-fix-1")
          .Note(":ref is one segment")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/acme/app.git")
          .Note("/:user/:repo on ${GITHUB}")
          .Allowed(18),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/package.json")
          .Allowed(19),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/package.json?ref=main")
          .Allowed(19),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/packages/web/package.json?ref=4f2a9c")
          .Allowed(19),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/Package.JSON")
          .Allowed(19),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/packages%2Fweb%2Fpackage.json")
          .Allowed(20),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/packages%2fweb%2fpackage.json")
          .Note("%2f matched case-insensitively")
          .Allowed(20),
      Case(kGitHub, kPrivate, "GET", "/acme/app/main/package.json")
          .Note("raw.githubusercontent.com")
          .Allowed(21),
      Case(kGitHub, kPrivate, "GET",
           "/acme/app/main/packages%2Fweb%2Fpackage.json")
          .Allowed(22),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/package-lock.json")
          .Allowed(23),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/Gemfile.lock")
          .Allowed(31),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/pom.xml")
          .Allowed(39),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/requirements.txt")
          .Allowed(43),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/requirements/dev.txt")
          .Note("the * of *req*.txt crosses '/', so rule 43 wins over 47")
          .Allowed(43),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/yarn.lock")
          .Allowed(59),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/src/App.csproj")
          .Allowed(95),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/go.mod")
          .Allowed(143),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/docker/Dockerfile.prod")
          .Allowed(151),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/.snyk")
          .Allowed(155),
      Case(kGitHub, kPrivate, "PUT", "/repos/acme/app/contents/package.json")
          .Allowed(159),
      Case(kGitHub, kPrivate, "PUT", "/repos/acme/app/contents/.snyk")
          .Allowed(291),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/commits/main")
          .Header("accept", "application/vnd.github.v4.sha")
          .Allowed(294),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/commits/main")
          .Header("Accept", "application/vnd.github.v4.sha")
          .Note("header names are case-insensitive")
          .Allowed(294),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/commits/main")
          .Note("required accept header missing")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/commits/main")
          .Header("accept", "application/json")
          .Note("wrong accept value")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/commits/main")
          .Header("accept", "application/vnd.github.v4.sha")
          .Header("Accept", "application/vnd.github.v4.sha")
          .Note("checked header sent twice")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/commits/main")
          .Header("accept", "application/vnd.github.v4.sha, application/json")
          .Note("values compare exactly")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "POST", "/repos/acme/app/git/commits")
          .Allowed(295),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/git/refs").Allowed(296),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/git/refs/heads/main")
          .Allowed(297),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/compare/main...snyk-fix")
          .Allowed(299),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/pulls?state=open")
          .Allowed(300),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/pulls/12").Allowed(301),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/pulls/12/files")
          .Allowed(302),
      Case(kGitHub, kPrivate, "POST", "/repos/acme/app/git/refs").Allowed(303),
      Case(kGitHub, kPrivate, "POST", "/repos/acme/app/pulls").Allowed(304),
      Case(kGitHub, kPrivate, "PATCH",
           "/repos/acme/app/git/refs/heads/snyk-fix")
          .Allowed(307),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/git/trees/main?recursive=1")
          .Allowed(308),
      Case(kGitHub, kPrivate, "POST", "/repos/acme/app/git/trees").Allowed(309),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/commits?sha=main&per_page=1")
          .Allowed(310),
      Case(kGitHub, kPrivate, "GET",
           "/snykgit/acme/app.git/info/refs?service=git-upload-pack")
          .Allowed(311),
      Case(kGitHub, kPrivate, "POST", "/snykgit/acme/app.git/git-upload-pack")
          .Note("any method")
          .Allowed(311),
      Case(kGitHub, kPrivate, "POST", "/graphql").Allowed(312),
      Case(kGitHub, kPrivate, "PATCH", "/repos/acme/app/hooks/42/config")
          .Allowed(318),
      Case(kGitHub, kPrivate, "PATCH", "/repos/acme/app/hooks/42").Allowed(319),
      Case(kGitHub, kPrivate, "GET",
           "/acme/app.git/info/refs?service=git-upload-pack")
          .Note("smart HTTP only through /snykgit/*")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "POST", "/acme/app.git/git-upload-pack")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/git/blobs/9fceb02")
          .Note("no blob rule in github-com")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/README.md")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/src/main/java/App.java")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/hooks")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/admin/users")
          .Note("/:user/:repo takes any two segments")
          .Allowed(18),
      Case(kGitHub, kPrivate, "GET", "/enterprises/acme/settings/billing")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "DELETE", "/repos/acme/app/contents/package.json")
          .Note("wrong method")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "DELETE", "/repos/acme/app")
          .Note("wrong method")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "POST", "/user")
          .Note("wrong method")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/user%2Frepos")
          .Note("%2F is not /")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/git%2Ftrees/main")
          .Note("%2F is not /")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/package.json.bak")
          .Note("anchored")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/../../../orgs/acme/package.json")
          .Blocked(BlockCause::kNotNormalized),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/./package.json")
          .Blocked(BlockCause::kNotNormalized),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents//Dockerfile")
          .Blocked(BlockCause::kNotNormalized),
      Case(kGitHub, kPrivate, "GET", "/repos/acme/app/contents/a/..").Blocked(),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/%2e%2e/%2e%2e/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/%2E%2E/%2E%2E/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/.%2e/.%2e/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/%2e./package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/..%2f..%2fpackage.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/%2e%2e%2f%2e%2e%2fpackage.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/..%5c/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/..%5C/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/%2e%2E/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/..;/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/..\\..\\secret-req.txt")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/%252e%252e/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/repos/acme/app/contents/%25252e%25252e/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET",
           "/snykgit/acme/app.git/../../../etc/passwd")
          .Blocked(BlockCause::kNotNormalized),
      Case(kGitHub, kPrivate, "GET", "/snykgit/acme/%2e%2e/%2e%2e/etc/passwd")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitHub, kPrivate, "GET", "/snykgit//etc/passwd")
          .Blocked(BlockCause::kNotNormalized),
      // github-com.json, public.
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .BodyFixture("bodies/github-push-package-json.json")
          .Allowed(0),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .BodyFixture("bodies/github-push-readme.json")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .BodyFixture("bodies/github-pull-request-opened.json")
          .Allowed(0),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .BodyFixture("bodies/github-pull-request-closed.json")
          .Note("deliberate deviation: Snyk only tests that state is truthy")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(
              R"json({"commits":[{"added":[],"modified":["src/index.js","package.json"]}]})json")
          .Allowed(0),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(
              R"json({"commits":[{"added":["README.md"]},{"added":["go.sum"]}]})json")
          .Note("second commit")
          .Allowed(0),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(R"json({"commits":[{"added":["requirements.txt"]}]})json")
          .Note("*req*.txt is a glob")
          .Allowed(0),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(R"json({"commits":[{"modified":["App.csproj"]}]})json")
          .Note("*.csproj is a glob")
          .Allowed(0),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(R"json({"commits":[{"added":["src/App.csproj"]}]})json")
          .Note("glob * stays within a segment")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(R"json({"commits":[{"added":["src/package.json"]}]})json")
          .Note("value equality, not suffix")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(R"json({"commits":[{"added":"package.json"}]})json")
          .Note("* on a string visits nothing")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(R"json({"pull_request":{"state":true}})json")
          .Note("equality, not truthiness")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(R"json({"zen":"Keep it logically awesome."})json")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(R"json(package.json)json")
          .Note("not JSON")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Note("no body")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github")
          .Body(R"json({"commits":[{"added":["package.json"]})json")
          .Note("truncated JSON")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "GET", "/webhook/github")
          .Body(R"json({"commits":[{"added":["package.json"]}]})json")
          .Note("wrong method")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitHub, kPublic, "POST", "/webhook/github/6f1c2e")
          .BodyFixture("bodies/github-push-readme.json")
          .Note("the :webhookId rule has no checks")
          .Allowed(1),
      Case(kGitHub, kPublic, "POST", "/webhook/gitlab/6f1c2e")
          .Blocked(BlockCause::kNoMatchingRule),
      // gitlab.json, private.
      Case(kGitLab, kPrivate, "GET", "/api/v4/user")
          .Note("listed twice (0 and 224): the first wins")
          .Allowed(0),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects?membership=true&per_page=100")
          .Allowed(1),
      Case(kGitLab, kPrivate, "GET", "/api/v4/projects/group%2Fproject")
          .Allowed(5),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/group%2Fsub%2Fproject/repository/"
           "tree?ref=main&recursive=true")
          .Allowed(6),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/group%2Fproject/repository/files/"
           "package.json?ref=main")
          .Allowed(7),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files/package.json?ref=main&ref=dev")
          .Note("an unchecked parameter may repeat")
          .Allowed(7),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/group%2Fproject/repository/files/"
           "web%2Fpackage.json?ref=main")
          .Allowed(8),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files/Gemfile.lock?ref=main")
          .Allowed(11),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files/requirements.txt?ref=main")
          .Allowed(17),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files/go.sum?ref=main")
          .Allowed(73),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files/README.md?ref=main")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files/package.json/raw?ref=main")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/"
           "files?file_path=package.json&ref=main")
          .Allowed(79),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?file_path=web/app/"
           "package.json&ref=main")
          .Allowed(79),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/"
           "files?file_path=web%2Fpackage.json&ref=main")
          .Note("the value is decoded before the glob")
          .Allowed(79),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?ref=main&file_path=docker/"
           "Dockerfile")
          .Note("Dockerfile is not in the v3 list")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?file_path=README.md&ref=main")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?ref=main")
          .Note("absent parameter is ''")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?file_path=../../secrets/"
           "package.json")
          .Note("** never matches ..")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?file_path=a/"
           "package.json&file_path=x")
          .Blocked(BlockCause::kRepeatedQueryParameter),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?file_path=a/"
           "package.json&file%5Fpath=../../config/secrets.yml")
          .Note("names are decoded (qs): the origin sees file_path twice")
          .Blocked(BlockCause::kRepeatedQueryParameter),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?f%69le_path=package.json")
          .Note("decoded name")
          .Allowed(79),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?file_path=a/"
           "package.json&file_path[]=x")
          .Blocked(),
      Case(kGitLab, kPrivate, "GET",
           "/api/v3/projects/42/repository/files?file_path[]=a/package.json")
          .Note("bracketed: not a plain string")
          .Blocked(),
      Case(
          kGitLab, kPrivate, "GET",
          "/api/v3/projects/42/repository/files?file_path%5B%5D=a/package.json")
          .Blocked(),
      Case(kGitLab, kPrivate, "POST",
           "/api/v3/projects/42/repository/files?file_path=package.json")
          .Allowed(146),
      Case(kGitLab, kPrivate, "PUT",
           "/api/v3/projects/42/repository/files?file_path=lib/pom.xml")
          .Allowed(213),
      Case(kGitLab, kPrivate, "POST",
           "/api/v4/projects/42/repository/files/package.json")
          .Allowed(80),
      Case(kGitLab, kPrivate, "PUT",
           "/api/v4/projects/42/repository/files/web%2Fpackage.json")
          .Allowed(148),
      Case(kGitLab, kPrivate, "DELETE",
           "/api/v4/projects/42/repository/files/package.json")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitLab, kPrivate, "POST", "/api/v4/projects/42/hooks").Allowed(214),
      Case(kGitLab, kPrivate, "DELETE", "/api/v4/projects/42/hooks/7")
          .Allowed(215),
      Case(kGitLab, kPrivate, "POST",
           "/api/v4/projects/group%2Fproject/statuses/"
           "4f2a9c?state=success&target_url=https://app.snyk.io/org/acme")
          .Note("'//' in the query is not checked (deviation)")
          .Allowed(218),
      Case(kGitLab, kPrivate, "POST", "/api/v4/projects/42/merge_requests")
          .Allowed(220),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/commits/4f2a9c")
          .Allowed(228),
      Case(kGitLab, kPrivate, "GET",
           "/snykgit/group/project.git/info/refs?service=git-upload-pack")
          .Allowed(231),
      Case(kGitLab, kPrivate, "GET", "/api/v4/projects/42/merge_requests/7")
          .Allowed(233),
      Case(kGitLab, kPrivate, "POST", "/api/graphql").Allowed(245),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/group%2F..%2Fother/repository/files/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files/"
           "..%2F..%2F..%2Fetc%2Fpackage.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files/%252e%252e/package.json")
          .Blocked(BlockCause::kPathTraversal),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files//package.json")
          .Blocked(BlockCause::kNotNormalized),
      Case(kGitLab, kPrivate, "GET",
           "/api/v4/projects/42/repository/files/../../../../users")
          .Blocked(),
      // gitlab.json, public.
      Case(kGitLab, kPublic, "POST", "/webhook/gitlab/6f1c2e")
          .Body(R"json({"object_kind":"push"})json")
          .Allowed(0),
      Case(kGitLab, kPublic, "POST", "/webhook/gitlab")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kGitLab, kPublic, "GET", "/webhook/gitlab/6f1c2e")
          .Blocked(BlockCause::kNoMatchingRule),
      // bitbucket-server.json, private.
      Case(kBitbucket, kPrivate, "GET", "/projects").Allowed(0),
      Case(kBitbucket, kPrivate, "GET", "/projects/PRJ/repos?limit=100")
          .Allowed(1),
      Case(kBitbucket, kPrivate, "GET", "/projects/PRJ/repos/app").Allowed(3),
      Case(kBitbucket, kPrivate, "GET",
           "/rest/api/1.0/projects/PRJ/repos/app/files")
          .Note(":searchPath? absent")
          .Allowed(4),
      Case(kBitbucket, kPrivate, "GET",
           "/rest/api/1.0/projects/PRJ/repos/app/files/src?limit=1000")
          .Allowed(4),
      Case(kBitbucket, kPrivate, "GET",
           "/rest/api/1.0/projects/PRJ/repos/app/files/src/main")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kBitbucket, kPrivate, "GET",
           "/projects/PRJ/repos/app/browse/package.json")
          .Allowed(5),
      Case(kBitbucket, kPrivate, "GET",
           "/projects/PRJ/repos/app/browse/web/"
           "package.json?at=refs%2Fheads%2Fmain&raw")
          .Allowed(5),
      Case(kBitbucket, kPrivate, "GET",
           "/projects/PRJ/repos/app/browse%2Fpackage.json")
          .Note("browse* then %2F")
          .Allowed(6),
      Case(kBitbucket, kPrivate, "GET",
           "/projects/PRJ/repos/app/browse/lib%2Fpom.xml")
          .Allowed(16),
      Case(kBitbucket, kPrivate, "GET",
           "/projects/PRJ/repos/app/browse/Pipfile")
          .Allowed(25),
      Case(kBitbucket, kPrivate, "GET",
           "/projects/PRJ/repos/app/browse/README.md")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kBitbucket, kPrivate, "GET",
           "/rest/api/1.0/projects/PRJ/repos/app/browse/package.json")
          .Note("GET browse is only allowed relative to BITBUCKET_API")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kBitbucket, kPrivate, "PUT",
           "/rest/api/1.0/projects/PRJ/repos/app/browse/package.json")
          .Allowed(86),
      Case(kBitbucket, kPrivate, "POST",
           "/rest/api/1.0/projects/PRJ/repos/app/webhooks")
          .Allowed(80),
      Case(kBitbucket, kPrivate, "DELETE",
           "/rest/api/1.0/projects/PRJ/repos/app/webhooks/3")
          .Allowed(81),
      Case(kBitbucket, kPrivate, "POST",
           "/rest/build-status/1.0/commits/4f2a9c")
          .Allowed(84),
      Case(kBitbucket, kPrivate, "GET",
           "/rest/api/1.0/projects/PRJ/repos/app/branches/default")
          .Allowed(90),
      Case(kBitbucket, kPrivate, "GET",
           "/rest/api/1.0/projects/PRJ/repos/app/branches?filterText=main")
          .Allowed(91),
      Case(kBitbucket, kPrivate, "GET", "/projects/PRJ").Allowed(100),
      Case(kBitbucket, kPrivate, "POST", "/snykgit/PRJ/app.git/git-upload-pack")
          .Allowed(103),
      Case(kBitbucket, kPrivate, "DELETE", "/projects/PRJ/repos/app")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kBitbucket, kPrivate, "PUT",
           "/rest/api/1.0/projects/PRJ/repos/app/browse/..%2F..%2F..%2Fadmin")
          .Blocked(BlockCause::kPathTraversal),
      Case(kBitbucket, kPrivate, "GET",
           "/projects/PRJ/repos/app/browse/../../../admin/package.json")
          .Blocked(BlockCause::kNotNormalized),
      // bitbucket-server.json, public.
      Case(kBitbucket, kPublic, "POST", "/webhook/bitbucket-server/6f1c2e")
          .Body(R"json({"eventKey":"repo:refs_changed"})json")
          .Allowed(0),
      Case(kBitbucket, kPublic, "POST", "/webhook/bitbucket-server")
          .Blocked(BlockCause::kNoMatchingRule),
      // azure-repos.json, private.
      Case(kAzureRepos, kPrivate, "GET", "/_apis/projects").Allowed(0),
      Case(kAzureRepos, kPrivate, "GET", "/acme/_apis/git/repositories/app")
          .Allowed(1),
      Case(kAzureRepos, kPrivate, "GET", "/_apis/git/repositories")
          .Note("rule path written without leading /")
          .Allowed(4),
      Case(kAzureRepos, kPrivate, "POST", "/_apis/hooks/subscriptions")
          .Allowed(5),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/items?path=/"
           "package.json&recursionLevel=none&download=true&includeContent=true&"
           "api-version=7.1")
          .Allowed(7),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/"
           "items?path=%2Fweb%2Fpackage.json&recursionLevel=none&download=true&"
           "includeContent=true")
          .Allowed(7),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/items?path=/docker/"
           "Dockerfile.prod&recursionLevel=none&download=true&includeContent="
           "true")
          .Allowed(7),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/items?path=/"
           "package.json&versionDescriptor.versionType=branch&"
           "versionDescriptor.version=main&includeContentMetadata=true")
          .Allowed(8),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/"
           "items?recursionLevel=full&download=false&includeContent=false")
          .Allowed(9),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/items?path=/"
           "README.md&recursionLevel=none&download=true&includeContent=true")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/items?path=/"
           "package.json&recursionLevel=full&download=true&includeContent=true")
          .Note("all query checks must pass")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/items?path=/../secrets/"
           "package.json&recursionLevel=none&download=true&includeContent=true")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/items?path=/package.json&path=/"
           "etc/passwd&recursionLevel=none&download=true&includeContent=true")
          .Blocked(BlockCause::kRepeatedQueryParameter),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/items?path[]=/"
           "package.json&recursionLevel=none&download=true&includeContent=true")
          .Blocked(),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/"
           "commits?searchCriteria.itemVersion.version=main")
          .Allowed(10),
      Case(kAzureRepos, kPrivate, "POST",
           "/acme/_apis/git/repositories/app/pushes?api-version=7.1")
          .Allowed(17),
      Case(kAzureRepos, kPrivate, "GET",
           "/snykgit/acme/app/info/refs?service=git-upload-pack")
          .Allowed(18),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/pullrequests/12")
          .Note("api-version '' allowed")
          .Allowed(22),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/pullRequests/12?api-version=7.1")
          .Allowed(22),
      Case(kAzureRepos, kPrivate, "GET",
           "/acme/_apis/git/repositories/app/pullrequests/12?api-version=6.0")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kAzureRepos, kPrivate, "DELETE", "/acme/_apis/git/repositories/app")
          .Blocked(BlockCause::kNoMatchingRule),
      // azure-repos.json, public.
      Case(kAzureRepos, kPublic, "POST", "/webhook/azure-repos/6f1c2e")
          .Body(R"json({"eventType":"git.push"})json")
          .Allowed(0),
      Case(kAzureRepos, kPublic, "PUT", "/webhook/azure-repos/6f1c2e")
          .Blocked(BlockCause::kNoMatchingRule),
      // jira.json, private.
      Case(kJira, kPrivate, "GET", "/rest/api/2/serverInfo").Allowed(0),
      Case(kJira, kPrivate, "GET", "/rest/api/2/serverinfo").Allowed(0),
      Case(kJira, kPrivate, "GET", "/rest/api/2/myself").Allowed(1),
      Case(kJira, kPrivate, "GET", "/rest/api/2/project?expand=issueTypes")
          .Allowed(2),
      Case(kJira, kPrivate, "GET", "/rest/api/2/project")
          .Note("expand is required")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kJira, kPrivate, "GET", "/rest/api/2/project?expand=issueTypes,lead")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kJira, kPrivate, "GET",
           "/rest/api/2/project?expand=issueTypes&expand=lead")
          .Blocked(BlockCause::kRepeatedQueryParameter),
      Case(kJira, kPrivate, "GET", "/rest/api/2/project/PRJ").Allowed(3),
      Case(kJira, kPrivate, "GET",
           "/rest/api/2/issue/createmeta?projectKeys=PRJ")
          .Note("before /issue/:issue")
          .Allowed(4),
      Case(kJira, kPrivate, "GET", "/rest/api/2/issue/PRJ-12").Allowed(7),
      Case(kJira, kPrivate, "POST", "/rest/api/2/issue").Allowed(8),
      Case(kJira, kPrivate, "POST", "/rest/api/2/issue/PRJ-12/remotelink")
          .Allowed(9),
      Case(kJira, kPrivate, "GET", "/rest/api/2/project/PRJ/components")
          .Allowed(12),
      Case(kJira, kPrivate, "DELETE", "/rest/api/2/issue/PRJ-12")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kJira, kPrivate, "GET", "/rest/api/2%2Fproject?expand=issueTypes")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kJira, kPrivate, "GET", "/rest/api/2/search?jql=project=PRJ")
          .Blocked(BlockCause::kNoMatchingRule),
      // jira.json, public.
      Case(kJira, kPublic, "POST", "/webhook/jira")
          .Note("no public rules")
          .Blocked(BlockCause::kNoMatchingRule),
      // artifactory.json, private.
      Case(kArtifactory, kPrivate, "GET", "/api/npm/npm-remote/lodash")
          .Allowed(0),
      Case(kArtifactory, kPrivate, "HEAD",
           "/api/npm/npm-remote/lodash/-/lodash-4.17.21.tgz")
          .Allowed(0),
      Case(kArtifactory, kPrivate, "DELETE", "/api/npm/npm-local/left-pad")
          .Allowed(0),
      Case(kArtifactory, kPrivate, "GET", "/").Allowed(0),
      Case(kArtifactory, kPrivate, "GET", "/api/npm/../../../etc/passwd")
          .Blocked(BlockCause::kNotNormalized),
      Case(kArtifactory, kPrivate, "GET", "/api/npm/%2e%2e/%2e%2e/etc/passwd")
          .Blocked(BlockCause::kPathTraversal),
      Case(kArtifactory, kPrivate, "GET", "/api/npm/..%2f..%2fetc%2fpasswd")
          .Blocked(BlockCause::kPathTraversal),
      Case(kArtifactory, kPrivate, "GET", "/api/npm/..;/..;/admin")
          .Blocked(BlockCause::kPathTraversal),
      Case(kArtifactory, kPrivate, "GET", "/api//npm")
          .Blocked(BlockCause::kNotNormalized),
      Case(kArtifactory, kPrivate, "GET", "/api/npm/x%252F..%252F..%252Fadmin")
          .Blocked(BlockCause::kPathTraversal),
      Case(kArtifactory, kPrivate, "GET", "/api/npm/@scope%2Fpkg")
          .Note("an encoded / is not traversal")
          .Allowed(0),
      // container-registry-agent.json, private.
      Case(kContainerRegistryAgent, kPrivate, "GET", "/healthcheck").Allowed(0),
      Case(kContainerRegistryAgent, kPrivate, "GET", "/validate-credentials")
          .Allowed(1),
      Case(kContainerRegistryAgent, kPrivate, "GET", "/list").Allowed(3),
      Case(kContainerRegistryAgent, kPrivate, "GET", "/list/")
          .Note("trailing slash")
          .Allowed(3),
      Case(kContainerRegistryAgent, kPrivate, "GET", "/list/library/nginx")
          .Allowed(4),
      Case(kContainerRegistryAgent, kPrivate, "GET",
           "/list-paginated/library?page=2")
          .Allowed(5),
      Case(kContainerRegistryAgent, kPrivate, "POST", "/scan").Allowed(8),
      Case(kContainerRegistryAgent, kPrivate, "GET", "/scan")
          .Blocked(BlockCause::kNoMatchingRule),
      Case(kContainerRegistryAgent, kPrivate, "GET",
           "/image-metadata/library/nginx:1.25")
          .Allowed(9),
      Case(kContainerRegistryAgent, kPrivate, "GET", "/list/../../etc/passwd")
          .Blocked(BlockCause::kNotNormalized),
      Case(kContainerRegistryAgent, kPrivate, "GET",
           "/image-metadata/%2e%2e/%2e%2e/etc/shadow")
          .Blocked(BlockCause::kPathTraversal),
      // container-registry-agent.json, public.
      Case(kContainerRegistryAgent, kPublic, "POST", "/api/v2/import/done")
          .Allowed(0),
      Case(kContainerRegistryAgent, kPublic, "POST", "/v2/import/done")
          .Allowed(4),
      Case(kContainerRegistryAgent, kPublic, "POST", "/rest/scan/result")
          .Allowed(7),
      Case(kContainerRegistryAgent, kPublic, "GET", "/api/v2/import/done")
          .Blocked(BlockCause::kNoMatchingRule),
  };
}

class TemplateTest : public ::testing::TestWithParam<TemplateCase> {};

TEST_P(TemplateTest, DecidesLikeTheContract) {
  const TemplateCase& c = GetParam();
  SCOPED_TRACE(::testing::PrintToString(c));
  std::shared_ptr<const RuleSet> rules = LoadTemplate(c.file);
  ASSERT_NE(rules, nullptr);

  std::string body = c.body;
  if (!c.body_fixture.empty()) {
    body = ReadFixture(c.body_fixture);
    ASSERT_FALSE(body.empty()) << "missing fixture " << c.body_fixture;
  }
  const RequestView request{c.method, c.url, c.headers, body};
  const Decision decision = rules->Evaluate(c.list, request);

  EXPECT_EQ(decision.allowed(), c.allowed) << "reason: " << decision.reason;
  if (c.allowed) {
    ASSERT_NE(decision.rule, nullptr);
    EXPECT_EQ(decision.rule->index, c.rule_index)
        << "matched " << decision.rule->Label() << " "
        << decision.rule->source.dump();
    EXPECT_EQ(decision.rule->list, c.list);
    EXPECT_STREQ(CauseName(decision.cause), "kNone");
  } else {
    if (decision.rule != nullptr) {
      ADD_FAILURE() << "allowed by " << decision.rule->Label() << " "
                    << decision.rule->source.dump();
    }
    EXPECT_STRNE(CauseName(decision.cause), "kNone");
    if (c.cause.has_value()) {
      EXPECT_STREQ(CauseName(decision.cause), CauseName(*c.cause))
          << "reason: " << decision.reason;
    }
    EXPECT_FALSE(decision.reason.empty());
  }
}

std::string CaseName(const ::testing::TestParamInfo<TemplateCase>& info) {
  std::string name =
      absl::StrCat(info.index, "_", info.param.file, "_",
                   RuleListName(info.param.list), "_", info.param.method);
  for (char& ch : name) {
    const bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                       (ch >= '0' && ch <= '9');
    if (!alnum) ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(SnykTemplates, TemplateTest,
                         ::testing::ValuesIn(TemplateCases()), CaseName);

// The rule counts of the shipped templates, so that an index in the table
// above cannot silently point into a different file.
TEST(TemplateFilesTest, LoadWithTheirRuleCountsAndNoWarnings) {
  struct Expected {
    absl::string_view file;
    size_t private_rules;
    size_t public_rules;
  };
  const Expected kExpected[] = {
      {kGitHub, 320, 2},    {kGitLab, 246, 1},
      {kBitbucket, 117, 1}, {kAzureRepos, 30, 1},
      {kJira, 13, 0},       {kJiraBearer, 13, 0},
      {kArtifactory, 1, 0}, {kContainerRegistryAgent, 10, 8},
  };
  for (const Expected& e : kExpected) {
    SCOPED_TRACE(e.file);
    std::shared_ptr<const RuleSet> rules = LoadTemplate(e.file);
    ASSERT_NE(rules, nullptr);
    EXPECT_EQ(rules->rules(kPrivate).size(), e.private_rules);
    EXPECT_EQ(rules->rules(kPublic).size(), e.public_rules);
    // Only "//" comments besides known fields: nothing to warn about.
    for (const Diagnostic& d : rules->warnings()) {
      ADD_FAILURE() << "unexpected warning: " << d.ToString();
    }
    for (RuleList list : {kPrivate, kPublic}) {
      absl::Span<const Rule> span = rules->rules(list);
      for (size_t i = 0; i < span.size(); ++i) {
        EXPECT_EQ(span[i].index, static_cast<int>(i));
        EXPECT_EQ(span[i].list, list);
      }
    }
  }
}

TEST(TemplateFilesTest, RulesKeepTheirSourceAndChecks) {
  std::shared_ptr<const RuleSet> github = LoadTemplate(kGitHub);
  ASSERT_NE(github, nullptr);
  const Rule& commits = github->rules(kPrivate)[294];
  EXPECT_EQ(commits.source.value("path", ""),
            "/repos/:name/:repo/commits/:ref");
  EXPECT_EQ(commits.method, "GET");
  ASSERT_EQ(commits.header_checks.size(), 1u);
  EXPECT_EQ(commits.header_checks[0].name, "accept");
  EXPECT_FALSE(commits.HasValidity());
  EXPECT_EQ(commits.Label(), "private[294]");

  const Rule& snykgit = github->rules(kPrivate)[311];
  EXPECT_TRUE(snykgit.AnyMethod());

  const Rule& webhook = github->rules(kPublic)[0];
  EXPECT_TRUE(webhook.HasValidity());
  EXPECT_EQ(webhook.body_checks.size(), 71u);
  EXPECT_EQ(webhook.Label(), "public[0]");

  std::shared_ptr<const RuleSet> azure = LoadTemplate(kAzureRepos);
  ASSERT_NE(azure, nullptr);
  EXPECT_EQ(azure->rules(kPrivate)[7].query_checks.size(), 4u);
  // Written "_apis/git/repositories" in the file: a leading "/" is added.
  EXPECT_EQ(azure->rules(kPrivate)[4].path.path(), "/_apis/git/repositories");
}

// --- Where a match is forwarded ---------------------------------------------

Variables TestVariables() {
  return Variables(absl::flat_hash_map<std::string, std::string>{
      {"GITHUB_TOKEN", "ghp_x"},
      {"GITHUB", "github.com"},
      {"GITHUB_API", "api.github.com"},
      {"GITHUB_RAW", "raw.githubusercontent.com"},
      {"GITHUB_GRAPHQL", "api.github.com"},
      {"GIT_CLIENT_URL", "http://snyk-git-client:5000"},
      {"GITLAB", "gitlab.acme.internal"},
      {"BITBUCKET", "bitbucket.acme.internal"},
      {"BITBUCKET_API", "bitbucket.acme.internal/rest/api/1.0"},
      {"BITBUCKET_USERNAME", "broker-user"},
      {"BITBUCKET_PASSWORD", "s3cr3t"},
      {"AZURE_REPOS_HOST", "dev.azure.com"},
      {"AZURE_REPOS_ORG", "acme-org"},
      {"BROKER_CLIENT_VALIDATION_BASIC_AUTH", ":azpat"},
      {"JIRA_HOSTNAME", "acme.atlassian.net"},
      {"JIRA_USERNAME", "bot@acme.com"},
      {"JIRA_PASSWORD", "api-token"},
      {"JIRA_PAT", "jira-pat"},
      {"ARTIFACTORY_URL",
       "https://reader:pa55@artifactory.acme.internal/artifactory"},
      {"CR_AGENT_URL", "http://cr-agent:8081"},
  });
}

struct OriginCase {
  absl::string_view file;
  RuleList list;
  absl::string_view method;
  absl::string_view url;
  int rule_index;
  absl::string_view target;
  std::optional<absl::string_view> authorization;
};

TEST(TemplateOriginTest, ResolvesOriginsAndAuthorization) {
  const OriginCase kCases[] = {
      {kGitHub, kPrivate, "GET",
       "/repos/acme/app/contents/package.json?ref=main", 19,
       "https://api.github.com/repos/acme/app/contents/package.json?ref=main",
       "token ghp_x"},
      {kGitHub, kPrivate, "GET", "/acme/app/main/package.json", 21,
       "https://raw.githubusercontent.com/acme/app/main/package.json",
       "token ghp_x"},
      {kGitHub, kPrivate, "GET", "/acme/app.git", 18,
       "https://github.com/acme/app.git", "token ghp_x"},
      {kGitHub, kPrivate, "POST", "/graphql", 312,
       "https://api.github.com/graphql", "token ghp_x"},
      {kGitHub, kPrivate, "GET",
       "/snykgit/acme/app.git/info/refs?service=git-upload-pack", 311,
       "http://snyk-git-client:5000/snykgit/acme/app.git/info/"
       "refs?service=git-upload-pack",
       std::nullopt},
      {kGitLab, kPrivate, "GET",
       "/api/v4/projects/group%2Fproject/repository/files/"
       "package.json?ref=main",
       7,
       "https://gitlab.acme.internal/api/v4/projects/group%2Fproject/"
       "repository/files/package.json?ref=main",
       std::nullopt},
      {kBitbucket, kPrivate, "GET",
       "/projects/PRJ/repos/app/browse/package.json", 5,
       "https://bitbucket.acme.internal/rest/api/1.0/projects/PRJ/repos/app/"
       "browse/package.json",
       "Basic YnJva2VyLXVzZXI6czNjcjN0"},  // broker-user:s3cr3t
      {kBitbucket, kPrivate, "PUT",
       "/rest/api/1.0/projects/PRJ/repos/app/browse/package.json", 86,
       "https://bitbucket.acme.internal/rest/api/1.0/projects/PRJ/repos/app/"
       "browse/package.json",
       "Basic YnJva2VyLXVzZXI6czNjcjN0"},
      {kAzureRepos, kPrivate, "GET", "/_apis/projects", 0,
       "https://dev.azure.com/acme-org/_apis/projects",
       "Basic OmF6cGF0"},  // basic with a token only: base64(":azpat")
      {kJira, kPrivate, "GET", "/rest/api/2/project?expand=issueTypes", 2,
       "https://acme.atlassian.net/rest/api/2/project?expand=issueTypes",
       "Basic Ym90QGFjbWUuY29tOmFwaS10b2tlbg=="},  // bot@acme.com:api-token
      {kJiraBearer, kPrivate, "GET", "/rest/api/2/myself", 1,
       "https://acme.atlassian.net/rest/api/2/myself", "Bearer jira-pat"},
      {kJiraBearer, kPrivate, "GET",
       "/rest/api/2/issue/createmeta/PRJ/issuetypes/10001", 5,
       "https://acme.atlassian.net/rest/api/2/issue/createmeta/PRJ/"
       "issuetypes/10001",
       "Bearer jira-pat"},  // a username next to a bearer token is unused
      {kArtifactory, kPrivate, "GET", "/api/npm/npm-remote/lodash", 0,
       "https://artifactory.acme.internal/artifactory/api/npm/npm-remote/"
       "lodash",
       "Basic cmVhZGVyOnBhNTU="},  // reader:pa55, taken out of the URL
      {kContainerRegistryAgent, kPrivate, "GET", "/healthcheck", 0,
       "http://cr-agent:8081/healthcheck", std::nullopt},
  };
  const OriginResolver resolver(TestVariables());
  for (const OriginCase& c : kCases) {
    SCOPED_TRACE(absl::StrCat(c.file, ": ", c.method, " ", c.url));
    std::shared_ptr<const RuleSet> rules = LoadTemplate(c.file);
    ASSERT_NE(rules, nullptr);
    const Decision decision =
        rules->Evaluate(c.list, RequestView{c.method, c.url, {}, ""});
    ASSERT_TRUE(decision.allowed()) << decision.reason;
    EXPECT_EQ(decision.rule->index, c.rule_index);
    const absl::StatusOr<ForwardTarget> target =
        resolver.Resolve(*decision.rule, c.url);
    ASSERT_THAT(target, IsOk());
    EXPECT_EQ(target->url, c.target);
    if (c.authorization.has_value()) {
      EXPECT_THAT(target->authorization,
                  Optional(std::string(*c.authorization)));
    } else {
      EXPECT_EQ(target->authorization, std::nullopt);
    }
  }
}

TEST(TemplateOriginTest, ExpandsTheRawOriginTemplate) {
  std::shared_ptr<const RuleSet> github = LoadTemplate(kGitHub);
  ASSERT_NE(github, nullptr);
  const Rule& rule = github->rules(kPrivate)[19];
  ASSERT_TRUE(rule.origin.has_value());
  EXPECT_EQ(rule.origin->text(), "https://${GITHUB_TOKEN}@${GITHUB_API}");
  EXPECT_THAT(rule.origin->VariableNames(),
              ::testing::ElementsAre("GITHUB_TOKEN", "GITHUB_API"));
  const OriginResolver resolver(TestVariables());
  EXPECT_EQ(resolver.Expand(*rule.origin), "https://ghp_x@api.github.com");
}

TEST(TemplateOriginTest, TokenPoolRotates) {
  std::shared_ptr<const RuleSet> github = LoadTemplate(kGitHub);
  ASSERT_NE(github, nullptr);
  const Rule& rule = github->rules(kPrivate)[19];
  const OriginResolver resolver(
      Variables(absl::flat_hash_map<std::string, std::string>{
          {"GITHUB_TOKEN_POOL", "ghp_a,ghp_b"},
          {"GITHUB_API", "api.github.com"},
      }));
  const absl::string_view url = "/repos/acme/app/contents/package.json";
  const absl::StatusOr<ForwardTarget> first = resolver.Resolve(rule, url);
  const absl::StatusOr<ForwardTarget> second = resolver.Resolve(rule, url);
  const absl::StatusOr<ForwardTarget> third = resolver.Resolve(rule, url);
  for (const absl::StatusOr<ForwardTarget>* t : {&first, &second, &third}) {
    ASSERT_THAT(*t, IsOk());
    EXPECT_EQ((*t)->url,
              "https://api.github.com/repos/acme/app/contents/package.json");
    EXPECT_THAT((*t)->authorization,
                Optional(::testing::AnyOf(std::string("token ghp_a"),
                                          std::string("token ghp_b"))));
  }
  EXPECT_NE(first->authorization, second->authorization);
  EXPECT_EQ(first->authorization, third->authorization);
}

TEST(TemplateOriginTest, PoolWithOneValueIsOneValue) {
  std::shared_ptr<const RuleSet> github = LoadTemplate(kGitHub);
  ASSERT_NE(github, nullptr);
  const Rule& rule = github->rules(kPrivate)[1];
  const OriginResolver resolver(
      Variables(absl::flat_hash_map<std::string, std::string>{
          {"GITHUB_TOKEN_POOL", "ghp_only"},
          {"GITHUB_API", "api.github.com"},
      }));
  for (int i = 0; i < 3; ++i) {
    const absl::StatusOr<ForwardTarget> t = resolver.Resolve(rule, "/user");
    ASSERT_THAT(t, IsOk());
    EXPECT_EQ(t->url, "https://api.github.com/user");
    EXPECT_THAT(t->authorization, Optional(std::string("token ghp_only")));
  }
}

TEST(TemplateOriginTest, AuthSchemesAndOriginsWithoutScheme) {
  const absl::StatusOr<std::shared_ptr<const RuleSet>> rules =
      RuleSet::FromText(R"json({
        "private": [
          {"path": "/token", "origin": "${HOST}",
           "auth": {"scheme": "token", "token": "${TOKEN}"}},
          {"path": "/raw", "origin": "${HOST}",
           "auth": {"scheme": "raw", "token": "Custom ${TOKEN}"}},
          {"path": "/basic", "origin": "https://${HOST}",
           "auth": {"scheme": "basic", "token": "${TOKEN}"}},
          {"path": "/bearer", "origin": "http://${HOST}:8080",
           "auth": {"scheme": "bearer", "token": "${TOKEN}"}},
          {"path": "/port", "origin": "${HOST}:8443/base"}
        ],
        "public": [{"method": "POST", "path": "/webhook"}]
      })json",
                        "inline.json");
  ASSERT_THAT(rules, IsOk());
  const OriginResolver resolver(
      Variables(absl::flat_hash_map<std::string, std::string>{
          {"HOST", "internal.acme"}, {"TOKEN", "t0k"}}));
  struct Expected {
    int index;
    absl::string_view url;
    absl::string_view target;
    std::optional<absl::string_view> authorization;
  };
  const Expected kExpected[] = {
      {0, "/token?x=1", "https://internal.acme/token?x=1", "Token t0k"},
      {1, "/raw", "https://internal.acme/raw", "Custom t0k"},
      {2, "/basic", "https://internal.acme/basic", "Basic dDBr"},
      {3, "/bearer", "http://internal.acme:8080/bearer", "Bearer t0k"},
      {4, "/port", "https://internal.acme:8443/base/port", std::nullopt},
  };
  for (const Expected& e : kExpected) {
    SCOPED_TRACE(e.url);
    const Rule& rule = (*rules)->rules(kPrivate)[e.index];
    const absl::StatusOr<ForwardTarget> target = resolver.Resolve(rule, e.url);
    ASSERT_THAT(target, IsOk());
    EXPECT_EQ(target->url, e.target);
    if (e.authorization.has_value()) {
      EXPECT_THAT(target->authorization,
                  Optional(std::string(*e.authorization)));
    } else {
      EXPECT_EQ(target->authorization, std::nullopt);
    }
  }
  // A public rule has no origin to forward to.
  EXPECT_FALSE(resolver.Resolve((*rules)->rules(kPublic)[0], "/webhook").ok());
}

}  // namespace
}  // namespace broker::filters
