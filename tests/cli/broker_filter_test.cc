// End-to-end tests of the `broker-filter` binary: each test runs the built
// executable (BROKER_FILTER_BIN) in a child process and checks its stdout,
// stderr and exit status, as a user's CI pipeline would see them.

#include "filters/cli/broker_filter.h"

#include "tests/testing/fixtures.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <sys/wait.h>

namespace broker::filters {
namespace {

using ::broker::testing::FixturePath;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

constexpr char kGithubTemplate[] = "accept-templates/github-com.json";
constexpr char kToken[] = "ghp_clitest0123456789";

// What a run of the binary produced.
struct CliResult {
  int exit_code = -1;   // -1 when it did not exit normally
  int term_signal = 0;  // the signal that killed it, if any
  std::string out;
  std::string err;
  double seconds = 0;
};

std::string ReadAll(int fd) {
  std::string text;
  if (lseek(fd, 0, SEEK_SET) != 0) return text;
  char buffer[65536];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) {
    text.append(buffer, static_cast<size_t>(n));
  }
  return text;
}

// A fresh temporary directory, removed with its files when the test ends.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "broker_filter_test_XXXXXX";
    char* made = mkdtemp(pattern.data());
    if (made != nullptr) path_ = made;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

  std::string Write(const std::string& name, const std::string& contents) {
    std::string file = path_ + "/" + name;
    std::ofstream out(file, std::ios::binary);
    out << contents;
    return file;
  }

 private:
  std::string path_;
};

// Runs BROKER_FILTER_BIN with `args` (without the program name) in a child
// process whose stdout and stderr go to separate temporary files. The child
// inherits this process's environment (set variables with setenv first).
CliResult RunCli(const std::vector<std::string>& args) {
  CliResult result;
  std::string out_name = ::testing::TempDir() + "broker_filter_out_XXXXXX";
  std::string err_name = ::testing::TempDir() + "broker_filter_err_XXXXXX";
  const int out_fd = mkstemp(out_name.data());
  const int err_fd = mkstemp(err_name.data());
  if (out_fd < 0 || err_fd < 0) {
    ADD_FAILURE() << "mkstemp: " << std::strerror(errno);
    return result;
  }
  // Only the descriptors are needed: the files go away when they are closed.
  unlink(out_name.c_str());
  unlink(err_name.c_str());

  std::vector<char*> argv;
  std::string program = BROKER_FILTER_BIN;
  argv.push_back(program.data());
  std::vector<std::string> copies = args;
  for (std::string& arg : copies) argv.push_back(arg.data());
  argv.push_back(nullptr);

  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(out_fd, STDOUT_FILENO);
    dup2(err_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    const char message[] = "execv failed\n";
    (void)!write(STDERR_FILENO, message, sizeof(message) - 1);
    _exit(127);
  }
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    close(out_fd);
    close(err_fd);
    return result;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.term_signal = WTERMSIG(status);
  result.out = ReadAll(out_fd);
  result.err = ReadAll(err_fd);
  close(out_fd);
  close(err_fd);
  return result;
}

// Lines of `text`, without the final newline's empty piece.
std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

std::vector<std::string> Keys(const nlohmann::ordered_json& object) {
  std::vector<std::string> keys;
  for (auto it = object.begin(); it != object.end(); ++it) {
    keys.push_back(it.key());
  }
  return keys;
}

// Prints a result in failure messages.
std::string Describe(const CliResult& r) {
  return absl::StrCat("exit ", r.exit_code, " signal ", r.term_signal,
                      "\n--- stdout:\n", r.out, "--- stderr:\n", r.err);
}

class BrokerFilterCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(access(BROKER_FILTER_BIN, X_OK), 0)
        << BROKER_FILTER_BIN << " is not built";
    ASSERT_FALSE(temp_.path().empty());
    setenv("GITHUB_TOKEN", kToken, 1);
    setenv("GITHUB_API", "api.github.com", 1);
    unsetenv("GITHUB_TOKEN_POOL");
    unsetenv("GITHUB_API_POOL");
  }

  // `check` against the GitHub template.
  CliResult Check(const std::string& list, const std::string& method,
                  const std::string& url,
                  const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {
        "check",  "--accept", FixturePath(kGithubTemplate),
        "--list", list,       "--method",
        method,   "--url",    url};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunCli(args);
  }

  // Parses the single JSON line `check` prints.
  static nlohmann::ordered_json ParseLine(const CliResult& r) {
    EXPECT_THAT(r.out, EndsWith("\n"));
    EXPECT_EQ(Lines(r.out).size(), 1u) << r.out;
    nlohmann::ordered_json line = nlohmann::ordered_json::parse(
        r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(line.is_discarded()) << "not JSON: " << r.out;
    return line;
  }

  TempDir temp_;
};

TEST_F(BrokerFilterCliTest, CheckAllowedPrintsExactLine) {
  CliResult r =
      Check("private", "GET", "/repos/acme/app/git/trees/abc123?recursive=1");
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.err, IsEmpty());
  EXPECT_EQ(r.out,
            absl::StrCat(R"({"allowed":true,"rule_index":308,)",
                         R"("origin_url":"https://api.github.com/repos/acme/)",
                         R"(app/git/trees/abc123?recursive=1",)",
                         R"("auth_header":"token )", kToken, R"(",)",
                         R"("reason":"allowed by private[308]"})", "\n"));

  nlohmann::ordered_json line = ParseLine(r);
  EXPECT_THAT(Keys(line), ElementsAre("allowed", "rule_index", "origin_url",
                                      "auth_header", "reason"));
  EXPECT_EQ(line["allowed"], true);
  EXPECT_EQ(line["rule_index"], 308);
  EXPECT_EQ(line["origin_url"],
            "https://api.github.com/repos/acme/app/git/trees/"
            "abc123?recursive=1");
  EXPECT_EQ(line["auth_header"], absl::StrCat("token ", kToken));
  EXPECT_EQ(line["reason"], "allowed by private[308]");
}

TEST_F(BrokerFilterCliTest, CheckUsesEnvironmentVariables) {
  setenv("GITHUB_API", "ghe.example.com/api/v3", 1);
  setenv("GITHUB_TOKEN", "other-token", 1);
  CliResult r = Check("private", "GET", "/user");
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::ordered_json line = ParseLine(r);
  EXPECT_EQ(line["rule_index"], 1);
  EXPECT_EQ(line["origin_url"], "https://ghe.example.com/api/v3/user");
  EXPECT_EQ(line["auth_header"], "token other-token");
}

TEST_F(BrokerFilterCliTest, CheckBlockedExitsZero) {
  CliResult r = Check("private", "GET", "/repos/acme/app/secrets/x");
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.err, IsEmpty());
  nlohmann::ordered_json line = ParseLine(r);
  EXPECT_THAT(Keys(line), ElementsAre("allowed", "rule_index", "origin_url",
                                      "auth_header", "reason"));
  EXPECT_EQ(line["allowed"], false);
  EXPECT_TRUE(line["rule_index"].is_null());
  EXPECT_TRUE(line["origin_url"].is_null());
  EXPECT_TRUE(line["auth_header"].is_null());
  EXPECT_EQ(line["reason"],
            "no private rule allows GET /repos/acme/app/secrets/x");
}

TEST_F(BrokerFilterCliTest, CheckBlocksEncodedTraversal) {
  // private[19..] allow /repos/:name/:repo/contents/... paths; the decoded
  // segment is "../.env".
  for (const char* url :
       {"/repos/acme/app/contents/%2e%2e%2f.env",
        "/repos/acme/app/contents/%2E%2E/package.json",
        "/repos/acme/app/contents/%252e%252e%252fpackage.json",
        "/repos/acme/app/contents/..%5cpackage.json"}) {
    SCOPED_TRACE(url);
    CliResult r = Check("private", "GET", url);
    ASSERT_EQ(r.exit_code, 0) << Describe(r);
    nlohmann::ordered_json line = ParseLine(r);
    EXPECT_EQ(line["allowed"], false);
    EXPECT_TRUE(line["rule_index"].is_null());
    EXPECT_THAT(line["reason"].get<std::string>(), HasSubstr("traversal"));
  }
  // A plain ".." segment is caught by the normalisation check.
  CliResult r = Check("private", "GET", "/repos/acme/app/contents/../x");
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(ParseLine(r)["allowed"], false);
}

TEST_F(BrokerFilterCliTest, CheckHeaderOption) {
  // private[294] (GET /repos/:name/:repo/commits/:ref) needs exactly this
  // Accept header; the name is case-insensitive.
  const std::string url = "/repos/acme/app/commits/main";
  CliResult with = Check("private", "GET", url,
                         {"--header", "Accept: application/vnd.github.v4.sha"});
  ASSERT_EQ(with.exit_code, 0) << Describe(with);
  nlohmann::ordered_json line = ParseLine(with);
  EXPECT_EQ(line["allowed"], true);
  EXPECT_EQ(line["rule_index"], 294);

  CliResult lower = Check("private", "GET", url,
                          {"--header", "accept:application/vnd.github.v4.sha"});
  ASSERT_EQ(lower.exit_code, 0) << Describe(lower);
  EXPECT_EQ(ParseLine(lower)["rule_index"], 294);

  CliResult wrong =
      Check("private", "GET", url, {"--header", "Accept: application/json"});
  ASSERT_EQ(wrong.exit_code, 0) << Describe(wrong);
  EXPECT_EQ(ParseLine(wrong)["allowed"], false);

  CliResult without = Check("private", "GET", url);
  ASSERT_EQ(without.exit_code, 0) << Describe(without);
  EXPECT_EQ(ParseLine(without)["allowed"], false);

  // Sent twice: treated as missing.
  CliResult twice =
      Check("private", "GET", url,
            {"--header", "Accept: application/vnd.github.v4.sha", "--header",
             "Accept: application/vnd.github.v4.sha"});
  ASSERT_EQ(twice.exit_code, 0) << Describe(twice);
  EXPECT_EQ(ParseLine(twice)["allowed"], false);
}

TEST_F(BrokerFilterCliTest, CheckBodyFileAgainstPublicList) {
  const std::vector<std::string> github_push = {
      "--header", "X-GitHub-Event: push", "--header",
      "Content-Type: application/json"};
  auto with_body = [&](const std::string& body) {
    std::vector<std::string> extra = github_push;
    extra.push_back("--body-file");
    extra.push_back(FixturePath(body));
    return Check("public", "POST", "/webhook/github", extra);
  };

  CliResult push = with_body("bodies/github-push-package-json.json");
  ASSERT_EQ(push.exit_code, 0) << Describe(push);
  nlohmann::ordered_json line = ParseLine(push);
  EXPECT_EQ(line["allowed"], true);
  EXPECT_EQ(line["rule_index"], 0);
  EXPECT_EQ(line["reason"], "allowed by public[0]");
  EXPECT_TRUE(line["origin_url"].is_null());  // public rules have no origin

  CliResult readme = with_body("bodies/github-push-readme.json");
  ASSERT_EQ(readme.exit_code, 0) << Describe(readme);
  EXPECT_EQ(ParseLine(readme)["allowed"], false);

  CliResult opened = with_body("bodies/github-pull-request-opened.json");
  ASSERT_EQ(opened.exit_code, 0) << Describe(opened);
  EXPECT_EQ(ParseLine(opened)["allowed"], true);

  // Body checks compare values (a deviation from Snyk): "closed" != "open".
  CliResult closed = with_body("bodies/github-pull-request-closed.json");
  ASSERT_EQ(closed.exit_code, 0) << Describe(closed);
  EXPECT_EQ(ParseLine(closed)["allowed"], false);

  // Without a body, or with one that is not JSON, the body checks fail.
  CliResult none = Check("public", "POST", "/webhook/github", github_push);
  ASSERT_EQ(none.exit_code, 0) << Describe(none);
  EXPECT_EQ(ParseLine(none)["allowed"], false);
  const std::string not_json = temp_.Write("body.txt", "package.json {");
  CliResult garbage =
      Check("public", "POST", "/webhook/github", {"--body-file", not_json});
  ASSERT_EQ(garbage.exit_code, 0) << Describe(garbage);
  EXPECT_EQ(ParseLine(garbage)["allowed"], false);
}

// Unusable input: exit 2, nothing on stdout, the problem first on stderr.
// Unusable input: exit 2 and exactly one line on stderr, pointing at --help.
void ExpectUsageError(const CliResult& r, const std::string& problem) {
  EXPECT_EQ(r.exit_code, 2) << Describe(r);
  EXPECT_THAT(r.out, IsEmpty());
  std::vector<std::string> lines = Lines(r.err);
  ASSERT_EQ(lines.size(), 1u) << Describe(r);
  EXPECT_EQ(lines[0], problem + " (see broker-filter --help)");
}

TEST_F(BrokerFilterCliTest, MissingAccept) {
  ExpectUsageError(
      RunCli({"check", "--list", "private", "--method", "GET", "--url", "/"}),
      "broker-filter: --accept is required");
}

TEST_F(BrokerFilterCliTest, UnknownList) {
  ExpectUsageError(Check("secret", "GET", "/user"),
                   "broker-filter: --list must be private or public");
}

TEST_F(BrokerFilterCliTest, OtherBadOptions) {
  ExpectUsageError(RunCli({}), "broker-filter: no command");
  ExpectUsageError(RunCli({"frobnicate"}),
                   "broker-filter: unknown command frobnicate");
  ExpectUsageError(Check("private", "GET", "/user", {"--verbose", "1"}),
                   "broker-filter: unknown option --verbose");
  ExpectUsageError(Check("private", "GET", "/user", {"--header"}),
                   "broker-filter: --header needs a value");
  ExpectUsageError(Check("private", "GET", "/user", {"--header", "NoColon"}),
                   "broker-filter: --header takes 'Name: value', got "
                   "'NoColon'");
  ExpectUsageError(Check("private", "GET", ""),
                   "broker-filter: --url is required");
  ExpectUsageError(RunCli({"lint"}), "broker-filter: lint needs a FILE");
}

TEST_F(BrokerFilterCliTest, NonexistentFiles) {
  const std::string missing = temp_.path() + "/missing.json";
  CliResult r = RunCli({"check", "--accept", missing, "--list", "private",
                        "--method", "GET", "--url", "/user"});
  EXPECT_EQ(r.exit_code, 2) << Describe(r);
  EXPECT_THAT(r.out, IsEmpty());
  ASSERT_EQ(Lines(r.err).size(), 1u) << r.err;
  EXPECT_THAT(r.err, AllOf(StartsWith("broker-filter: "), HasSubstr(missing)));

  CliResult body = Check("private", "GET", "/user", {"--body-file", missing});
  EXPECT_EQ(body.exit_code, 2) << Describe(body);
  EXPECT_THAT(body.out, IsEmpty());
  EXPECT_EQ(body.err, absl::StrCat("broker-filter: cannot read --body-file ",
                                   missing, "\n"));

  CliResult lint = RunCli({"lint", missing});
  EXPECT_EQ(lint.exit_code, 2) << Describe(lint);
  EXPECT_THAT(lint.out, IsEmpty());
  EXPECT_EQ(lint.err,
            absl::StrCat("broker-filter: cannot open ", missing, "\n"));
}

TEST_F(BrokerFilterCliTest, InvalidJsonNamesLineAndColumn) {
  const std::string file = temp_.Write("bad.json",
                                       "{\"private\": [\n"
                                       "  {\"method\": \"GET\", \"path\": "
                                       "\"/x\"},\n"
                                       "  ]\n"
                                       "}\n");
  CliResult r = RunCli({"check", "--accept", file, "--list", "private",
                        "--method", "GET", "--url", "/x"});
  EXPECT_EQ(r.exit_code, 2) << Describe(r);
  EXPECT_THAT(r.out, IsEmpty());
  ASSERT_EQ(Lines(r.err).size(), 1u) << r.err;
  EXPECT_THAT(r.err, AllOf(StartsWith("broker-filter: "), HasSubstr(file),
                           HasSubstr("line 3"), HasSubstr("column 3")));

  // lint reports the same problem as an error finding.
  CliResult lint = RunCli({"lint", file});
  EXPECT_EQ(lint.exit_code, 1) << Describe(lint);
  EXPECT_THAT(lint.out,
              AllOf(HasSubstr("error: "), HasSubstr("line 3"),
                    HasSubstr("column 3"), HasSubstr(": 1 error, 0 warnings")));
}

TEST_F(BrokerFilterCliTest, InvalidYamlNamesLineAndColumn) {
  const std::string file = temp_.Write("bad.yaml",
                                       "private:\n"
                                       "  - method: GET\n"
                                       "    path: [/x\n");
  CliResult r = RunCli({"check", "--accept", file, "--list", "private",
                        "--method", "GET", "--url", "/x"});
  EXPECT_EQ(r.exit_code, 2) << Describe(r);
  EXPECT_THAT(r.out, IsEmpty());
  ASSERT_EQ(Lines(r.err).size(), 1u) << r.err;
  EXPECT_THAT(r.err, AllOf(HasSubstr("line "), HasSubstr("column ")));
}

// The kernel caps one argv string at MAX_ARG_STRLEN (32 pages, 128 KiB), so
// the binary can be given at most a 131,071-byte URL; a 1 MiB URL goes
// through RunBrokerFilter in process below.
TEST_F(BrokerFilterCliTest, LongestUrlTheKernelAllows) {
  std::string url = "/repos/acme/app/contents/";
  while (url.size() < 131071 - 20) url += "dir/";
  url += "package.json";
  url.resize(131071 - 1, 'a');
  CliResult r = Check("private", "GET", url);
  EXPECT_EQ(r.term_signal, 0) << Describe(r);
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_LT(r.seconds, 5.0);
  nlohmann::ordered_json line = ParseLine(r);
  EXPECT_TRUE(line["allowed"].is_boolean());
}

TEST_F(BrokerFilterCliTest, OneMebibyteUrlInProcess) {
  const std::string file = FixturePath(kGithubTemplate);
  for (const std::string& url :
       {"/repos/acme/app/contents/" + std::string(1 << 20, 'a'),
        [] {
          std::string u = "/repos/acme/app/contents/";
          while (u.size() < (1u << 20)) u += "%2e%2e%2fdir/";
          return u + "package.json";
        }(),
        "/" + std::string(1 << 20, '/')}) {
    std::ostringstream out;
    std::ostringstream err;
    const auto start = std::chrono::steady_clock::now();
    int code = RunBrokerFilter({"check", "--accept", file, "--list", "private",
                                "--method", "GET", "--url", url},
                               Variables(), out, err);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    EXPECT_EQ(code, 0) << err.str();
    EXPECT_LT(seconds, 5.0);
    nlohmann::ordered_json line = nlohmann::ordered_json::parse(
        out.str(), nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(line.is_discarded()) << out.str().substr(0, 200);
    EXPECT_TRUE(line["allowed"].is_boolean());
  }
}

TEST_F(BrokerFilterCliTest, LintGoodFile) {
  CliResult r = RunCli({"lint", FixturePath(kGithubTemplate)});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.err, IsEmpty());
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_FALSE(lines.empty());
  EXPECT_THAT(lines.back(),
              StartsWith(FixturePath(kGithubTemplate) + ": 0 errors, "));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("error: ")));

  const std::string clean = temp_.Write(
      "clean.json", R"({"private": [{"method": "GET", "path": "/user", )"
                    R"("origin": "https://${GITHUB_API}"}]})");
  CliResult strict = RunCli({"lint", "--strict", clean});
  EXPECT_EQ(strict.exit_code, 0) << Describe(strict);
  EXPECT_EQ(strict.out, clean + ": 0 errors, 0 warnings\n");
}

TEST_F(BrokerFilterCliTest, LintErrorsNameListAndIndex) {
  const std::string file = temp_.Write("errors.json",
                                       R"json({
  "private": [
    {"method": "FETCH", "path": "/x", "origin": "https://${GITHUB_API}"},
    {"method": "GET", "path": "/ok", "origin": "https://${GITHUB_API}"},
    {"method": "GET", "path": "/files/:name((?=x).*)", "origin": "https://${GITHUB_API}"}
  ],
  "public": [
    {"method": "POST", "path": "/webhook", "valid": [{"path": "a.b", "regex": "(?<=x)y"}]},
    7
  ]
}
)json");
  CliResult r = RunCli({"lint", file});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, IsEmpty());
  const std::string prefix = file + ": error: ";
  EXPECT_THAT(r.out,
              HasSubstr(prefix + "private[0]: unknown method \"FETCH\""));
  EXPECT_THAT(r.out, HasSubstr(prefix + "private[2]: "));
  EXPECT_THAT(r.out, HasSubstr(prefix + "public[0]: "));
  EXPECT_THAT(r.out, HasSubstr(prefix + "public[1]: "));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("private[1]")));
  EXPECT_THAT(Lines(r.out).back(), EndsWith(": 4 errors, 0 warnings"));

  // check refuses the file and names every problem on one line.
  CliResult check = RunCli({"check", "--accept", file, "--list", "private",
                            "--method", "GET", "--url", "/ok"});
  EXPECT_EQ(check.exit_code, 2) << Describe(check);
  EXPECT_THAT(check.out, IsEmpty());
  ASSERT_EQ(Lines(check.err).size(), 1u) << check.err;
  EXPECT_THAT(check.err, AllOf(HasSubstr("private[0]"), HasSubstr("private[2]"),
                               HasSubstr("public[0]"), HasSubstr("public[1]")));
}

TEST_F(BrokerFilterCliTest, LintStrictFailsOnWarnings) {
  const std::string file = temp_.Write(
      "warnings.json",
      R"({"private": [{"method": "GET", "path": "/user", "methods": "POST", )"
      R"("origin": "https://${GITHUB_API}"}]})");
  CliResult relaxed = RunCli({"lint", file});
  EXPECT_EQ(relaxed.exit_code, 0) << Describe(relaxed);
  EXPECT_THAT(relaxed.out,
              HasSubstr(file + ": warning: private[0]: unknown field "
                               "\"methods\""));
  EXPECT_THAT(Lines(relaxed.out).back(), EndsWith(": 0 errors, 1 warning"));

  CliResult strict = RunCli({"lint", "--strict", file});
  EXPECT_EQ(strict.exit_code, 1) << Describe(strict);
  EXPECT_EQ(strict.out, relaxed.out);

  // The shipped template only has warnings too.
  CliResult strict_template =
      RunCli({"lint", "--strict", FixturePath(kGithubTemplate)});
  EXPECT_EQ(strict_template.exit_code, 1) << Describe(strict_template);
}

// Found by fuzz/rule_loader_fuzz.cc (fuzz/regressions/
// rule_loader-json-number-overflow.json): a JSON number too large for a
// double makes nlohmann throw out_of_range, which ParseDocument does not
// catch, so the binary aborts (exit 134) instead of reporting a load error.
// Disabled until the engine is fixed; run it with
// --gtest_also_run_disabled_tests.
TEST_F(BrokerFilterCliTest, NumberOverflowIsALoadError) {
  const std::string file =
      temp_.Write("overflow.json", "{\"private\": [1e999]}\n");
  CliResult check = RunCli({"check", "--accept", file, "--list", "private",
                            "--method", "GET", "--url", "/"});
  EXPECT_EQ(check.term_signal, 0) << Describe(check);
  EXPECT_EQ(check.exit_code, 2) << Describe(check);
  EXPECT_EQ(Lines(check.err).size(), 1u) << check.err;

  CliResult lint = RunCli({"lint", file});
  EXPECT_EQ(lint.term_signal, 0) << Describe(lint);
  EXPECT_EQ(lint.exit_code, 1) << Describe(lint);
  EXPECT_THAT(lint.out, HasSubstr(": 1 error, 0 warnings"));
}

}  // namespace
}  // namespace broker::filters
