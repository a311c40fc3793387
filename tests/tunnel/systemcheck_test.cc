#include "services/tunnel/systemcheck.h"

#include "common/executor.h"
#include "common/http/client.h"
#include "common/http/server.h"
#include "tests/testing/scoped_log_capture.h"
#include "tests/testing/test_origin.h"

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace broker::tunnel {
namespace {

namespace http = common::http;
using ::broker::testing::ScopedLogCapture;
using ::broker::testing::TestOrigin;
using ::broker::testing::TestOriginOptions;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr absl::Duration kWait = absl::Seconds(30);

http::ServerOptions LoopbackOptions() {
  http::ServerOptions options;
  options.address = "127.0.0.1";
  return options;
}

filters::Variables Vars(
    std::initializer_list<std::pair<const std::string, std::string>> values) {
  return filters::Variables(
      absl::flat_hash_map<std::string, std::string>(values));
}

// --- The pure parts: masking, expansion, choice of credentials -------------

TEST(MaskCredentialTest, MatchesSnyk) {
  EXPECT_EQ(MaskCredential("username:password"), "use***ord");
  EXPECT_EQ(MaskCredential("use:pwd"), "use***pwd");  // 7 bytes: masked
  EXPECT_EQ(MaskCredential("use:pw"), "***");         // 6 or fewer: hidden
  EXPECT_EQ(MaskCredential(""), "***");
}

TEST(ExpandEnvValueTest, ReplacesSetVariablesAndKeepsUnsetOnes) {
  filters::Variables vars = Vars({{"GITHUB_TOKEN", "ghp_abc"}, {"EMPTY", ""}});
  EXPECT_THAT(ExpandEnvValue("token $GITHUB_TOKEN", vars),
              ElementsAre("token ghp_abc"));
  EXPECT_THAT(ExpandEnvValue("$NOPE and $EMPTY", vars),
              ElementsAre("$NOPE and $EMPTY"));
  EXPECT_THAT(ExpandEnvValue("cost $5 \\$GITHUB_TOKEN", vars),
              ElementsAre("cost $5 \\$GITHUB_TOKEN"));
  EXPECT_THAT(ExpandEnvValue("", vars), ElementsAre(""));
}

TEST(ExpandEnvValueTest, AReferenceToAPoolGivesOneValuePerEntry) {
  filters::Variables vars = Vars({{"GITHUB_TOKEN_POOL", " t1 ,t2"},
                                  {"GITHUB_TOKEN", "ignored"},
                                  {"HOST", "ghe.acme"}});
  EXPECT_THAT(ExpandEnvValue("token $GITHUB_TOKEN@$HOST", vars),
              ElementsAre("token t1@ghe.acme", "token t2@ghe.acme"));
}

TEST(ResolveValidationCredentialsTest, FollowsSnyksPrecedence) {
  const filters::Variables none;
  ValidationCredentialSettings all;
  all.authorization_header = "token single";
  all.authorization_header_pool = "token a1, bearer a2";
  all.basic_auth = "u:p";
  all.basic_auth_pool = "u1:p1,u2:p2";

  std::vector<ValidationCredential> got =
      ResolveValidationCredentials(all, none);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].authorization, "token a1");
  EXPECT_EQ(got[0].raw, "a1");  // the text after the scheme
  EXPECT_EQ(got[1].authorization, "bearer a2");

  all.authorization_header_pool.clear();
  got = ResolveValidationCredentials(all, none);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].authorization,
            absl::StrCat("Basic ", absl::Base64Escape("u1:p1")));
  EXPECT_EQ(got[1].raw, "u2:p2");

  all.basic_auth_pool.clear();
  got = ResolveValidationCredentials(all, none);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].authorization, "token single");
  EXPECT_EQ(got[0].raw, "single");

  all.authorization_header.clear();
  got = ResolveValidationCredentials(all, none);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].authorization,
            absl::StrCat("Basic ", absl::Base64Escape("u:p")));
  EXPECT_EQ(got[0].raw, "u:p");

  EXPECT_TRUE(ResolveValidationCredentials({}, none).empty());
}

TEST(ResolveValidationCredentialsTest, AHeaderNamingAPoolBecomesThePool) {
  filters::Variables vars =
      Vars({{"GITHUB_TOKEN_POOL", "good_token,bad_token"}});
  ValidationCredentialSettings settings;
  settings.authorization_header = "token $GITHUB_TOKEN";
  std::vector<ValidationCredential> got =
      ResolveValidationCredentials(settings, vars);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].authorization, "token good_token");
  EXPECT_EQ(got[1].authorization, "token bad_token");
  EXPECT_EQ(MaskCredential(got[0].raw), "goo***ken");
}

TEST(SystemCheckValidateTest, RejectsBadMethodAndTimeout) {
  SystemCheckConfig config;
  EXPECT_TRUE(Validate(config).ok());
  config.method = "G E T";
  EXPECT_FALSE(Validate(config).ok());
  config.method = "POST";
  config.timeout = absl::ZeroDuration();
  EXPECT_FALSE(Validate(config).ok());
}

// --- Real calls --------------------------------------------------------------

// An origin that answers 200 only to the Authorization values it knows, and
// records what it was sent.
class AuthOrigin {
 public:
  explicit AuthOrigin(std::vector<std::string> accepted)
      : accepted_(std::move(accepted)), executor_(1) {
    auto server = http::Server::Create(
        executor_.io(), LoopbackOptions(),
        [this](std::shared_ptr<http::Exchange> exchange) {
          const http::RequestHead& head = exchange->request();
          std::string auth(
              http::FindHeader(head.headers, "authorization").value_or(""));
          std::string agent(
              http::FindHeader(head.headers, "user-agent").value_or(""));
          {
            absl::MutexLock lock(&mu_);
            seen_.push_back(absl::StrCat(head.method, " ", head.target, " ",
                                         auth, " | ", agent));
          }
          const bool known = std::find(accepted_.begin(), accepted_.end(),
                                       auth) != accepted_.end();
          exchange->RespondSimple(known ? 200 : 401, {}, known ? "ok" : "no");
        });
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto port = server_->Start();
    EXPECT_TRUE(port.ok()) << port.status();
    port_ = port.value_or(0);
  }
  ~AuthOrigin() { server_->Shutdown(absl::Now()); }

  std::string Url(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }
  std::vector<std::string> Seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  const std::vector<std::string> accepted_;
  common::Executor executor_;
  std::unique_ptr<http::Server> server_;
  int port_ = 0;
  mutable absl::Mutex mu_;
  std::vector<std::string> seen_ ABSL_GUARDED_BY(mu_);
};

class SystemCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin = TestOrigin::Start(TestOriginOptions{});
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    auto client = http::Client::Create(executor_.io(), {});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  // Runs one check and waits for its answer.
  SystemCheckAnswer Run(SystemCheckConfig config) {
    config.version = "9.9.9";
    SystemCheck check(std::move(config), *client_);
    absl::Notification done;
    SystemCheckAnswer answer;
    check.Run([&](SystemCheckAnswer a) {
      answer = std::move(a);
      done.Notify();
    });
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(kWait));
    return answer;
  }

  static SystemCheckConfig Config(std::string url) {
    SystemCheckConfig config;
    config.url = std::move(url);
    return config;
  }

  common::Executor executor_{2};
  std::unique_ptr<http::Client> client_;
  std::unique_ptr<TestOrigin> origin_;
};

TEST_F(SystemCheckTest, NoCredentialsAndA200AreOk) {
  SystemCheckAnswer answer = Run(Config(origin_->Url("/headers")));
  EXPECT_EQ(answer.status, 200);
  // Snyk's members, in Snyk's order.
  EXPECT_EQ(answer.body.dump(),
            absl::StrCat(R"([{"brokerClientValidationUrl":")",
                         origin_->Url("/headers"),
                         R"(","brokerClientValidationMethod":"GET",)",
                         R"("brokerClientValidationTimeoutMs":5000,)",
                         R"("brokerClientValidationUrlStatusCode":200,)",
                         R"("ok":true,"maskedCredentials":null}])"));
}

TEST_F(SystemCheckTest, A401IsInvalidCredentialsAndTheCredentialIsMasked) {
  ScopedLogCapture logs;
  SystemCheckConfig config = Config(origin_->Url("/status/401"));
  config.credentials = {{"token magical_header_123", "magical_header_123"}};
  SystemCheckAnswer answer = Run(std::move(config));
  EXPECT_EQ(answer.status, 500);
  ASSERT_EQ(answer.body.size(), 1u);
  EXPECT_EQ(answer.body[0]["brokerClientValidationUrlStatusCode"], 401);
  EXPECT_EQ(answer.body[0]["ok"], false);
  EXPECT_EQ(answer.body[0]["error"], "Failed due to invalid credentials");
  EXPECT_EQ(answer.body[0]["maskedCredentials"], "mag***123");
  EXPECT_THAT(answer.body.dump(), Not(HasSubstr("magical_header_123")));
  const std::string logged = absl::StrJoin(logs.Lines(), "\n");
  EXPECT_THAT(logged, HasSubstr("systemcheck failed"));
  EXPECT_THAT(logged, Not(HasSubstr("magical_header_123")));
}

TEST_F(SystemCheckTest, OtherStatusesAreNot2xx) {
  SystemCheckAnswer answer = Run(Config(origin_->Url("/status/503")));
  EXPECT_EQ(answer.status, 500);
  ASSERT_EQ(answer.body.size(), 1u);
  EXPECT_EQ(answer.body[0]["brokerClientValidationUrlStatusCode"], 503);
  EXPECT_EQ(answer.body[0]["error"], "Status code is not 2xx");
}

TEST_F(SystemCheckTest, TheTimeoutIsApplied) {
  SystemCheckConfig config = Config(origin_->Url("/slow/20000"));
  config.timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  SystemCheckAnswer answer = Run(std::move(config));
  // Snyk ignores the timeout; the origin would take 20 s.
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(answer.status, 500);
  ASSERT_EQ(answer.body.size(), 1u);
  EXPECT_EQ(answer.body[0]["brokerClientValidationTimeoutMs"], 300);
  EXPECT_FALSE(answer.body[0].contains("brokerClientValidationUrlStatusCode"));
  EXPECT_THAT(answer.body[0]["error"].get<std::string>(),
              StartsWith("ETIMEDOUT"));
}

TEST_F(SystemCheckTest, AnUnreachableUrlIsAnError) {
  SystemCheckAnswer answer = Run(Config("http://127.0.0.1:1/user"));
  EXPECT_EQ(answer.status, 500);
  ASSERT_EQ(answer.body.size(), 1u);
  EXPECT_EQ(answer.body[0]["ok"], false);
  EXPECT_FALSE(answer.body[0]["error"].get<std::string>().empty());
}

TEST_F(SystemCheckTest, NoUrlAnswers500WithoutACall) {
  SystemCheckConfig config;
  config.credentials = {{"token abcdefgh", "abcdefgh"}};
  SystemCheckAnswer answer = Run(std::move(config));
  EXPECT_EQ(answer.status, 500);
  ASSERT_EQ(answer.body.size(), 1u);
  EXPECT_FALSE(answer.body[0].contains("brokerClientValidationUrl"));
  EXPECT_EQ(answer.body[0]["ok"], false);
  EXPECT_THAT(answer.body[0]["error"].get<std::string>(),
              HasSubstr("BROKER_CLIENT_VALIDATION_URL"));
  EXPECT_EQ(answer.body[0]["maskedCredentials"], "abc***fgh");
}

TEST_F(SystemCheckTest, EveryCredentialIsCheckedAndAnyFailureIs500) {
  AuthOrigin auth({"token good-token-1", "token good-token-2"});
  SystemCheckConfig config = Config(auth.Url("/user"));
  config.credentials = {{"token bad-token-0", "bad-token-0"},
                        {"token good-token-1", "good-token-1"}};
  SystemCheckAnswer answer = Run(config);
  // Snyk answers by the last credential only (200 here); we do not.
  EXPECT_EQ(answer.status, 500);
  ASSERT_EQ(answer.body.size(), 2u);
  EXPECT_EQ(answer.body[0]["ok"], false);
  EXPECT_EQ(answer.body[0]["brokerClientValidationUrlStatusCode"], 401);
  EXPECT_EQ(answer.body[0]["maskedCredentials"], "bad***n-0");
  EXPECT_EQ(answer.body[1]["ok"], true);
  EXPECT_EQ(answer.body[1]["maskedCredentials"], "goo***n-1");
  EXPECT_THAT(auth.Seen(),
              ::testing::UnorderedElementsAre(
                  "GET /user token bad-token-0 | Snyk Broker client 9.9.9",
                  "GET /user token good-token-1 | Snyk Broker client 9.9.9"));

  config.credentials = {{"token good-token-1", "good-token-1"},
                        {"token good-token-2", "good-token-2"}};
  config.method = "HEAD";
  answer = Run(config);
  EXPECT_EQ(answer.status, 200);
  ASSERT_EQ(answer.body.size(), 2u);
  EXPECT_EQ(answer.body[0]["brokerClientValidationMethod"], "HEAD");
  EXPECT_EQ(answer.body[1]["ok"], true);
}

TEST_F(SystemCheckTest, UrlUserinfoIsSentAsBasicAuthAndNeverShown) {
  const std::string basic =
      absl::StrCat("Basic ", absl::Base64Escape("scm-user:s3cret-pass"));
  AuthOrigin auth({basic});
  std::string url = auth.Url("/api");
  url.insert(url.find("127.0.0.1"), "scm-user:s3cret-pass@");
  SystemCheckAnswer answer = Run(Config(url));
  EXPECT_EQ(answer.status, 200);
  ASSERT_EQ(answer.body.size(), 1u);
  EXPECT_EQ(answer.body[0]["brokerClientValidationUrl"], auth.Url("/api"));
  EXPECT_THAT(answer.body.dump(), Not(HasSubstr("s3cret")));
}

}  // namespace
}  // namespace broker::tunnel
