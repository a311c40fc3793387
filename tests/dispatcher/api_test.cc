#include "services/dispatcher/api.h"

#include "common/clock.h"
#include "common/token.h"
#include "services/dispatcher/in_memory_store.h"
#include "tests/testing/scoped_log_capture.h"
#include "tests/testing/status_matchers.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <algorithm>
#include <string>

namespace broker::dispatcher {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::StatusIs;
using nlohmann::json;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

const std::string kHash = common::HashToken("abc");
constexpr char kAllocationBody[] =
    R"({"data":{"attributes":{"deployment_location":"snyk-broker-client",)"
    R"("broker_token_first_char":"a"}}})";

std::string Header(const ApiResponse& response, absl::string_view name) {
  auto value = common::http::FindHeader(response.headers, name);
  return value ? std::string(*value) : "";
}

TEST(ApiParsingTest, TokenHashIs64LowercaseHex) {
  EXPECT_TRUE(IsTokenHash(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  EXPECT_FALSE(IsTokenHash(
      "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
  EXPECT_FALSE(IsTokenHash("abc"));
  EXPECT_FALSE(IsTokenHash(std::string(63, 'a')));
  EXPECT_FALSE(IsTokenHash(std::string(65, 'a')));
  EXPECT_FALSE(IsTokenHash(std::string(63, 'a') + "g"));
}

TEST(ApiParsingTest, IdsAreUrlUnreservedCharacters) {
  EXPECT_TRUE(IsValidId("0"));
  EXPECT_TRUE(IsValidId("broker-server-3.x_y~z"));
  EXPECT_TRUE(IsValidId("4c0ffee0-1b2e-4c3d-9e8f-0a1b2c3d4e5f"));
  EXPECT_FALSE(IsValidId(""));
  EXPECT_FALSE(IsValidId("a/b"));
  EXPECT_FALSE(IsValidId("a b"));
  EXPECT_FALSE(IsValidId("a%20"));
  EXPECT_FALSE(IsValidId(std::string(254, 'a')));
}

TEST(ApiParsingTest, QueryIsPercentDecoded) {
  auto query = ParseQuery(
      "broker_client_id=c%2D1&version=2022-12-01%7Eexperimental&flag&a=1&a=2");
  ASSERT_THAT(query, IsOk());
  EXPECT_THAT(*query,
              ElementsAre(Pair("a", "1"), Pair("broker_client_id", "c-1"),
                          Pair("flag", ""),
                          Pair("version", "2022-12-01~experimental")));
  EXPECT_THAT(ParseQuery("a=%4"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("%")));
  EXPECT_THAT(ParseQuery("a=%zz"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("%")));
  EXPECT_THAT(ParseQuery(""), IsOk());
}

TEST(ApiParsingTest, AllocationBodyIsLenient) {
  auto full = ParseAllocationBody(kAllocationBody);
  ASSERT_THAT(full, IsOk());
  EXPECT_EQ(full->deployment_location, "snyk-broker-client");
  EXPECT_EQ(full->broker_token_first_char, "a");
  EXPECT_THAT(ParseAllocationBody(""), IsOk());
  EXPECT_THAT(ParseAllocationBody("{}"), IsOk());
  EXPECT_THAT(ParseAllocationBody(R"({"data":{}})"), IsOk());
  EXPECT_THAT(ParseAllocationBody(R"({"data":{"attributes":{"x":1}}})"),
              IsOk());
  EXPECT_THAT(ParseAllocationBody(
                  R"({"data":{"attributes":{"deployment_location":7}}})"),
              IsOk());
  EXPECT_THAT(ParseAllocationBody("{"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("JSON")));
  EXPECT_THAT(
      ParseAllocationBody("[1]"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("object")));
}

TEST(ApiParsingTest, RegistrationBodyTakesTheThreeUrls) {
  auto registration = ParseRegistrationBody(
      "0",
      R"({"data":{"attributes":{"health_check_link":"http://s/healthcheck",)"
      R"("tunnel_url":"grpc://s:7342","internal_url":"http://s:7341"}}})");
  ASSERT_THAT(registration, IsOk());
  EXPECT_EQ(registration->id, "0");
  EXPECT_EQ(registration->health_check_link, "http://s/healthcheck");
  EXPECT_EQ(registration->tunnel_url, "grpc://s:7342");
  EXPECT_EQ(registration->internal_url, "http://s:7341");
  EXPECT_THAT(ParseRegistrationBody("0", ""), IsOk());
  EXPECT_THAT(
      ParseRegistrationBody("0", R"({"data":{"attributes":{"tunnel_url":1}}})"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tunnel_url")));
  EXPECT_THAT(
      ParseRegistrationBody(
          "0", absl::StrCat(R"({"data":{"attributes":{"tunnel_url":")",
                            std::string(3000, 'x'), R"("}}})")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("longer")));
  EXPECT_THAT(ParseRegistrationBody("0", "not json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("JSON")));
}

class ApiTest : public ::testing::Test {
 protected:
  ApiTest() : store_(StoreOptions{}, clock_), api_(store_, {}, clock_) {}

  ApiResponse Call(const std::string& method, const std::string& target,
                   const std::string& body = "") {
    return api_.Handle(ApiRequest{method, target, body});
  }

  void Register(const std::string& id, const std::string& body = "") {
    ASSERT_EQ(Call("POST", "/internal/brokerservers/" + id, body).status / 100,
              2);
  }

  static std::string ErrorCode(const ApiResponse& response) {
    json body = json::parse(response.body, nullptr, false);
    if (body.is_discarded() || !body.contains("errors")) return "";
    return body["errors"][0]["code"].get<std::string>();
  }

  common::ManualClock clock_{absl::FromUnixSeconds(1700000000)};
  InMemoryStore store_;
  Api api_;
};

TEST_F(ApiTest, AllocationAnswersTheSnykShapeWithAStringServerId) {
  Register("0");
  ApiResponse response =
      Call("POST",
           "/hidden/broker/" + kHash +
               "/connections/c1?version=2022-12-01~experimental",
           kAllocationBody);
  EXPECT_EQ(response.status, 201);
  EXPECT_EQ(Header(response, "content-type"), "application/vnd.api+json");
  EXPECT_EQ(
      response.body,
      R"({"jsonapi":{"version":"1.0"},"data":{"type":"broker_connection",)"
      R"("id":"c1","attributes":{"server_id":"0"}}})");
}

TEST_F(ApiTest, AllocationCarriesTheServersTunnelUrl) {
  Register("7", R"({"data":{"attributes":{"tunnel_url":"grpc://s7:7342"}}})");
  for (const char* prefix : {"/hidden/broker/", "/hidden/brokers/"}) {
    ApiResponse response =
        Call("POST", absl::StrCat(prefix, kHash, "/connections/c1"));
    EXPECT_EQ(response.status, 201);
    json body = json::parse(response.body);
    EXPECT_EQ(body["data"]["attributes"]["server_id"], "7");
    EXPECT_EQ(body["data"]["attributes"]["tunnel_url"], "grpc://s7:7342");
  }
}

TEST_F(ApiTest, FifthClientGets409WithAJsonApiErrorsArray) {
  Register("0");
  for (int c = 0; c < 4; ++c) {
    ASSERT_EQ(Call("POST",
                   absl::StrCat("/hidden/broker/", kHash, "/connections/c", c))
                  .status,
              201);
  }
  ApiResponse refused =
      Call("POST", absl::StrCat("/hidden/broker/", kHash, "/connections/c4"));
  EXPECT_EQ(refused.status, 409);
  EXPECT_EQ(Header(refused, "content-type"), "application/vnd.api+json");
  json body = json::parse(refused.body);
  ASSERT_TRUE(body["errors"].is_array());
  EXPECT_EQ(body["errors"][0]["status"], "409");
  EXPECT_EQ(body["errors"][0]["code"], "TOO_MANY_CLIENTS");
  EXPECT_TRUE(body["errors"][0]["title"].is_string());
  EXPECT_TRUE(body["errors"][0]["detail"].is_string());
  EXPECT_FALSE(body.contains("data"));

  EXPECT_EQ(
      Call("DELETE", absl::StrCat("/internal/brokerservers/0/connections/",
                                  kHash, "?broker_client_id=c2"))
          .status,
      204);
  EXPECT_EQ(
      Call("POST", absl::StrCat("/hidden/broker/", kHash, "/connections/c4"))
          .status,
      201);
}

TEST_F(ApiTest, MetricsCountAllocationsByResult) {
  Register("0");
  for (int c = 0; c < 5; ++c) {
    Call("POST", absl::StrCat("/hidden/broker/", kHash, "/connections/c", c));
  }
  Call("POST", absl::StrCat("/hidden/broker/", kHash, "/connections/c0"));
  Call("POST", absl::StrCat("/internal/brokerservers/0/connections/", kHash,
                            "?broker_client_id=c0&request_type=client-pinged"));
  ApiResponse metrics = Call("GET", "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_THAT(Header(metrics, "content-type"), HasSubstr("text/plain"));
  EXPECT_THAT(
      metrics.body,
      HasSubstr(
          "broker_dispatcher_allocations_total{result=\"allocated\"} 4\n"));
  EXPECT_THAT(
      metrics.body,
      HasSubstr("broker_dispatcher_allocations_total{result=\"refused\"} 1\n"));
  EXPECT_THAT(
      metrics.body,
      HasSubstr(
          "broker_dispatcher_allocations_total{result=\"existing\"} 1\n"));
  EXPECT_THAT(
      metrics.body,
      HasSubstr(
          "broker_dispatcher_client_events_total{type=\"client-pinged\"} 1\n"));
  EXPECT_THAT(
      metrics.body,
      HasSubstr(
          "broker_dispatcher_server_events_total{type=\"registered\"} 1\n"));
  EXPECT_THAT(metrics.body,
              HasSubstr("broker_dispatcher_requests_total{code=\"409\"} 1\n"));
  EXPECT_THAT(metrics.body, HasSubstr("\nbroker_dispatcher_live_servers 1\n"));
  EXPECT_THAT(metrics.body, HasSubstr("\nbroker_dispatcher_leases 4\n"));
  EXPECT_THAT(metrics.body, HasSubstr("\nbroker_dispatcher_store_up 1\n"));
}

TEST_F(ApiTest, BadInputIs400WithACode) {
  Register("0");
  auto bad_hash = Call("POST", "/hidden/broker/ABC/connections/c1");
  EXPECT_EQ(bad_hash.status, 400);
  EXPECT_EQ(ErrorCode(bad_hash), "INVALID_TOKEN_HASH");
  auto upper =
      Call("POST", absl::StrCat("/hidden/broker/", absl::AsciiStrToUpper(kHash),
                                "/connections/c1"));
  EXPECT_EQ(ErrorCode(upper), "INVALID_TOKEN_HASH");
  auto bad_client = Call(
      "POST", absl::StrCat("/hidden/broker/", kHash, "/connections/a%20b"));
  EXPECT_EQ(ErrorCode(bad_client), "INVALID_CLIENT_ID");
  auto bad_body = Call(
      "POST", absl::StrCat("/hidden/broker/", kHash, "/connections/c1"), "{");
  EXPECT_EQ(bad_body.status, 400);
  EXPECT_EQ(ErrorCode(bad_body), "INVALID_BODY");
  auto bad_registration = Call("POST", "/internal/brokerservers/1",
                               R"({"data":{"attributes":)"
                               R"({"internal_url":[]}}})");
  EXPECT_EQ(ErrorCode(bad_registration), "INVALID_BODY");
  auto bad_server = Call("POST", "/internal/brokerservers/a%2Fb");
  EXPECT_EQ(ErrorCode(bad_server), "INVALID_SERVER_ID");
  auto no_client =
      Call("POST", absl::StrCat("/internal/brokerservers/0/"
                                "connections/",
                                kHash, "?request_type=client-connected"));
  EXPECT_EQ(ErrorCode(no_client), "INVALID_CLIENT_ID");
  auto bad_type = Call("POST", absl::StrCat("/internal/brokerservers/0/"
                                            "connections/",
                                            kHash,
                                            "?broker_client_id=c1&request_type="
                                            "client-exploded"));
  EXPECT_EQ(ErrorCode(bad_type), "INVALID_REQUEST_TYPE");
  auto bad_query = Call("GET", "/healthcheck?x=%");
  EXPECT_EQ(ErrorCode(bad_query), "INVALID_QUERY");
  auto bad_lookup = Call("GET", "/internal/tokens/xyz/brokerservers");
  EXPECT_EQ(ErrorCode(bad_lookup), "INVALID_TOKEN_HASH");
}

TEST_F(ApiTest, UnknownRoutesAre404AndWrongMethods405) {
  auto unknown = Call("GET", "/hidden/broker");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(ErrorCode(unknown), "NOT_FOUND");
  EXPECT_EQ(Call("GET", "/hidden/broker/" + kHash + "/connections/c1/x").status,
            404);
  EXPECT_EQ(Call("POST", "/internal/tokens/" + kHash).status, 404);
  auto wrong = Call("GET", "/hidden/broker/" + kHash + "/connections/c1");
  EXPECT_EQ(wrong.status, 405);
  EXPECT_EQ(ErrorCode(wrong), "METHOD_NOT_ALLOWED");
  EXPECT_EQ(Header(wrong, "allow"), "POST");
  EXPECT_EQ(Call("PUT", "/internal/brokerservers/0").status, 405);
  EXPECT_EQ(Call("POST", "/healthcheck").status, 405);
  EXPECT_EQ(
      Call("DELETE", "/internal/tokens/" + kHash + "/brokerservers").status,
      405);
}

TEST_F(ApiTest, RegistrationIs201ThenRefreshes200AndDeleteIs204) {
  auto created = Call("POST", "/internal/brokerservers/0?version=x",
                      R"({"data":{"attributes":{"health_check_link":)"
                      R"("http://broker-server-0/healthcheck"}}})");
  EXPECT_EQ(created.status, 201);
  EXPECT_EQ(json::parse(created.body)["data"]["id"], "0");
  EXPECT_EQ(Call("POST", "/internal/brokerservers/0").status, 200);
  auto removed = Call("DELETE", "/internal/brokerservers/0?version=x");
  EXPECT_EQ(removed.status, 204);
  EXPECT_TRUE(removed.body.empty());
  EXPECT_EQ(Call("DELETE", "/internal/brokerservers/0").status, 204);
  auto none = Call("POST", "/hidden/broker/" + kHash + "/connections/c1");
  EXPECT_EQ(none.status, 503);
  EXPECT_EQ(ErrorCode(none), "NO_BROKER_SERVERS");
}

TEST_F(ApiTest, ClientEventsRefreshAndLearnLeases) {
  const std::string events =
      absl::StrCat("/internal/brokerservers/5/connections/", kHash);
  EXPECT_EQ(Call("POST",
                 events + "?broker_client_id=c1&request_type=client-connected&"
                          "version=2022-12-02~experimental",
                 R"({"data":{"attributes":{"broker_client_version":"1"}}})")
                .status,
            204);
  EXPECT_EQ(
      Call("POST", events + "?broker_client_id=c1&latency=12&request_type="
                            "client-pinged")
          .status,
      204);
  // The dispatcher learnt both the server and the lease.
  auto allocation = Call("POST", "/hidden/broker/" + kHash + "/connections/c1");
  EXPECT_EQ(json::parse(allocation.body)["data"]["attributes"]["server_id"],
            "5");
  EXPECT_EQ(
      Call("POST", events + "?broker_client_id=c1&request_type=x", "not json")
          .status,
      400);
}

TEST_F(ApiTest, LookupListsServersHoldingTheToken) {
  Register("0", R"({"data":{"attributes":{"internal_url":"http://s0:7341",)"
                R"("tunnel_url":"grpc://s0:7342"}}})");
  const std::string lookup =
      absl::StrCat("/internal/tokens/", kHash, "/brokerservers");
  auto empty = Call("GET", lookup);
  EXPECT_EQ(empty.status, 200);
  EXPECT_EQ(empty.body, R"({"jsonapi":{"version":"1.0"},"data":[]})");
  ASSERT_EQ(Call("POST", "/hidden/broker/" + kHash + "/connections/c1").status,
            201);
  auto found = Call("GET", lookup + "?version=1");
  EXPECT_EQ(found.status, 200);
  EXPECT_EQ(found.body,
            R"({"jsonapi":{"version":"1.0"},"data":[{"type":"brokerserver",)"
            R"("id":"0","attributes":{"internal_url":"http://s0:7341",)"
            R"("tunnel_url":"grpc://s0:7342","clients":1}}]})");
}

TEST_F(ApiTest, HealthcheckMatchesTheOtherServices) {
  auto health = Call("GET", "/healthcheck");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, R"({"ok":true,"version":"0.1.0"})");
  EXPECT_EQ(Call("GET", "/").status, 200);
  EXPECT_EQ(Call("HEAD", "/healthcheck").status, 200);
}

// A store that is down: every call is Unavailable.
class DownStore final : public Store {
 public:
  absl::StatusOr<AllocationResult> Allocate(const std::string&,
                                            const std::string&) override {
    return Down();
  }
  absl::StatusOr<bool> RegisterServer(const ServerRegistration&) override {
    return Down();
  }
  absl::StatusOr<std::int64_t> RemoveServer(const std::string&) override {
    return Down();
  }
  absl::Status RefreshClient(const std::string&, const std::string&,
                             const std::string&) override {
    return Down();
  }
  absl::StatusOr<bool> ReleaseClient(const std::string&, const std::string&,
                                     const std::string&) override {
    return Down();
  }
  absl::StatusOr<std::vector<TokenServer>> ServersForToken(
      const std::string&) override {
    return Down();
  }
  absl::StatusOr<StoreCounts> Counts() override { return Down(); }
  absl::Status Ping() override { return Down(); }

  bool down = true;

 private:
  absl::Status Down() const {
    return down ? absl::UnavailableError("redis 127.0.0.1:1: refused")
                : absl::OkStatus();
  }
};

TEST(ApiStoreDownTest, UnreachableStoreIs503AndLoggedOncePerOutage) {
  DownStore store;
  common::ManualClock clock;
  Api api(store, {}, clock);
  testing::ScopedLogCapture logs(common::LogLevel::kInfo);
  auto count = [&](absl::string_view needle) {
    auto messages = logs.Messages();
    return std::count_if(
        messages.begin(), messages.end(), [&](const std::string& m) {
          return m.find(std::string(needle)) != std::string::npos;
        });
  };
  for (int i = 0; i < 20; ++i) {
    ApiResponse response = api.Handle(
        {"POST", absl::StrCat("/hidden/broker/", kHash, "/connections/c1"),
         ""});
    EXPECT_EQ(response.status, 503);
    json body = json::parse(response.body);
    EXPECT_EQ(body["errors"][0]["code"], "STORE_UNAVAILABLE");
    EXPECT_EQ(body["errors"][0]["status"], "503");
  }
  EXPECT_EQ(api.Handle({"GET", "/healthcheck", ""}).status, 503);
  EXPECT_EQ(count("dispatcher store unreachable"), 1);
  EXPECT_EQ(count("still unreachable"), 0);
  clock.Advance(absl::Seconds(31));
  (void)api.Handle({"GET", "/healthcheck", ""});
  (void)api.Handle({"GET", "/healthcheck", ""});
  EXPECT_EQ(count("still unreachable"), 1);
  store.down = false;
  EXPECT_EQ(api.Handle({"GET", "/healthcheck", ""}).status, 200);
  EXPECT_EQ(count("reachable again"), 1);
  EXPECT_THAT(logs.Lines(), Contains(HasSubstr("redis 127.0.0.1:1: refused")));
  store.down = true;
  ApiResponse metrics = api.Handle({"GET", "/metrics", ""});
  EXPECT_EQ(metrics.status, 200);
  EXPECT_THAT(metrics.body, HasSubstr("\nbroker_dispatcher_store_up 0\n"));
}

}  // namespace
}  // namespace broker::dispatcher
