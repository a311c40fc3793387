#include "services/ha-agent/dispatcher_client.h"

#include "common/executor.h"
#include "common/http/client.h"
#include "common/token.h"
#include "tests/testing/status_matchers.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <map>
#include <string>
#include <thread>
#include <vector>

namespace broker::ha {
namespace {

using ::broker::testing::StatusIs;
using ::testing::HasSubstr;

constexpr char kAbcHash[] =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

AllocationCall AbcCall() {
  AllocationCall call;
  call.base_url = "https://api.snyk.io";
  call.token = "abc";
  call.client_id = "11111111-2222-4333-8444-555555555555";
  call.version = "0.1.0";
  call.request_id = "rid-1";
  return call;
}

std::map<std::string, std::string> HeaderMap(
    const common::http::Headers& headers) {
  std::map<std::string, std::string> out;
  for (const auto& h : headers) out[h.name] = h.value;
  return out;
}

TEST(BuildAllocationRequest, IsTheSnykClientsCall) {
  const AllocationHttpRequest request = BuildAllocationRequest(AbcCall());
  EXPECT_EQ(request.url,
            absl::StrCat("https://api.snyk.io/hidden/broker/", kAbcHash,
                         "/connections/11111111-2222-4333-8444-555555555555"
                         "?version=2022-12-01%7Eexperimental"));
  EXPECT_EQ(HeaderMap(request.headers),
            (std::map<std::string, std::string>{
                {"Content-type", "application/vnd.api+json"},
                {"snyk-request-id", "rid-1"},
                {"user-agent", "Snyk Broker Client 0.1.0"},
                {"x-broker-origin-ua", "not-provided"}}));
  EXPECT_EQ(request.body,
            R"({"data":{"attributes":{"deployment_location":)"
            R"("snyk-broker-client","broker_token_first_char":"a"}}})");
}

TEST(BuildAllocationRequest, HonoursPrefixLocationAndEscapes) {
  AllocationCall call = AbcCall();
  call.prefix = "/hidden/brokers/";
  call.deployment_location = "eu \"west\"";
  call.client_id = "a/b";
  const AllocationHttpRequest request = BuildAllocationRequest(call);
  EXPECT_THAT(request.url, HasSubstr("/hidden/brokers/"));
  EXPECT_THAT(request.url, HasSubstr("/connections/a%2Fb?"));
  const auto body = nlohmann::json::parse(request.body);
  EXPECT_EQ(body["data"]["attributes"]["deployment_location"], "eu \"west\"");
}

TEST(BuildAllocationRequest, HashIsOfTheTokenAsConfigured) {
  AllocationCall call = AbcCall();
  call.token = " ABC ";
  EXPECT_THAT(BuildAllocationRequest(call).url,
              HasSubstr(common::HashToken(" ABC ")));
  EXPECT_THAT(BuildAllocationRequest(call).body,
              HasSubstr(R"("broker_token_first_char":" ")"));
}

TEST(ParseAllocationResponse, StringServerId) {
  auto a = ParseAllocationResponse(
      201, R"({"data":{"attributes":{"server_id":"0"}}})");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->server_id, "0");
  EXPECT_EQ(a->tunnel_url, "");
}

TEST(ParseAllocationResponse, NumberServerIdAndTunnelUrl) {
  auto a = ParseAllocationResponse(
      200,
      R"({"data":{"attributes":{"server_id":12,"tunnel_url":"http://h:1"}}})");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->server_id, "12");
  EXPECT_EQ(a->tunnel_url, "http://h:1");
  auto zero = ParseAllocationResponse(
      201, R"({"data":{"attributes":{"server_id":0}}})");
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(zero->server_id, "0");  // Snyk would drop a numeric 0
}

TEST(ParseAllocationResponse, TheStatusCodeIsNotChecked) {
  // As Snyk: data.attributes decides, not the status.
  EXPECT_TRUE(ParseAllocationResponse(
                  500, R"({"data":{"attributes":{"server_id":"1"}}})")
                  .ok());
}

TEST(ParseAllocationResponse, ConflictWithErrorsIsARefusal) {
  auto a = ParseAllocationResponse(
      409,
      R"({"errors":[{"status":"409","code":"TOO_MANY_CLIENTS",)"
      R"("title":"Too many broker clients for this token","detail":"4 of 4"}]})");
  EXPECT_THAT(a, StatusIs(absl::StatusCode::kResourceExhausted,
                          HasSubstr("TOO_MANY_CLIENTS")));
  EXPECT_THAT(
      a, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("4 of 4")));
  EXPECT_THAT(ParseAllocationResponse(429, "slow down"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("429")));
  EXPECT_THAT(ParseAllocationResponse(
                  403, R"({"errors":[{"code":"TOO_MANY_CLIENTS"}]})"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("403")));
}

TEST(ParseAllocationResponse, MissingAttributesIsNoAllocation) {
  for (const char* body : {R"({"data":{}})", R"({"data":{"attributes":"x"}})",
                           "{}", "[]", R"({"data":{"attributes":{}}})",
                           R"({"data":{"attributes":{"server_id":null}}})"}) {
    EXPECT_THAT(ParseAllocationResponse(201, body),
                StatusIs(absl::StatusCode::kUnavailable, HasSubstr("201")))
        << body;
  }
  EXPECT_THAT(ParseAllocationResponse(409, R"({"data":{}})"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("409")));
}

TEST(ParseAllocationResponse, GarbageIsUnavailableWithASafeSnippet) {
  auto a = ParseAllocationResponse(404, "<html>\n\xff not found</html>");
  EXPECT_THAT(a, StatusIs(absl::StatusCode::kUnavailable,
                          HasSubstr("404: <html> ? not found</html>")));
  EXPECT_THAT(
      ParseAllocationResponse(
          503,
          R"({"errors":[{"code":"NO_BROKER_SERVERS","title":"No broker server available"}]})"),
      StatusIs(absl::StatusCode::kUnavailable,
               HasSubstr("NO_BROKER_SERVERS: No broker server available")));
}

// A hand-written HTTP responder on loopback, one scripted answer per
// request, recording what it received (unit test of the client's HTTP
// handling only; integration tests use the real dispatcher).
class Responder {
 public:
  struct Answer {
    int status = 201;
    std::string body;
  };

  explicit Responder(std::vector<Answer> answers)
      : acceptor_(io_, {boost::asio::ip::make_address("127.0.0.1"), 0}),
        answers_(std::move(answers)),
        thread_([this] { Serve(); }) {}
  ~Responder() { thread_.join(); }

  int port() const { return acceptor_.local_endpoint().port(); }

  std::vector<boost::beast::http::request<boost::beast::http::string_body>>
  Requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  void Serve() {
    namespace http = boost::beast::http;
    for (const Answer& answer : answers_) {
      boost::system::error_code ec;
      boost::asio::ip::tcp::socket socket(io_);
      acceptor_.accept(socket, ec);
      if (ec) return;
      boost::beast::flat_buffer buffer;
      http::request<http::string_body> request;
      http::read(socket, buffer, request, ec);
      if (ec) return;
      {
        absl::MutexLock lock(&mu_);
        requests_.push_back(request);
      }
      http::response<http::string_body> response(
          static_cast<http::status>(answer.status), 11);
      response.set(http::field::content_type, "application/vnd.api+json");
      response.keep_alive(false);
      response.body() = answer.body;
      response.prepare_payload();
      http::write(socket, response, ec);
      socket.shutdown(boost::asio::ip::tcp::socket::shutdown_both, ec);
    }
  }

  boost::asio::io_context io_;
  boost::asio::ip::tcp::acceptor acceptor_;
  const std::vector<Answer> answers_;
  absl::Mutex mu_;
  std::vector<boost::beast::http::request<boost::beast::http::string_body>>
      requests_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

absl::StatusOr<Allocation> AllocateOnce(DispatcherClient& client,
                                        const std::string& client_id) {
  absl::Notification done;
  absl::StatusOr<Allocation> result;
  client.Allocate(client_id, [&](absl::StatusOr<Allocation> r) {
    result = std::move(r);
    done.Notify();
  });
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  return result;
}

TEST(DefaultDispatcherClient, SendsTheRequestAndReadsTheAnswers) {
  Responder responder({
      {201, R"({"data":{"attributes":{"server_id":"3"}}})"},
      {409, R"({"errors":[{"code":"TOO_MANY_CLIENTS"}]})"},
      {404, "<html>nope</html>"},
  });
  common::Executor executor(1);
  auto http = common::http::Client::Create(executor.io(), {});
  ASSERT_TRUE(http.ok()) << http.status();
  DispatcherClientOptions options;
  options.base_url = absl::StrCat("http://127.0.0.1:", responder.port());
  options.token = "abc";
  options.deployment_location = "here";
  options.version = "9.9.9";
  auto client = MakeDefaultDispatcherClient(**http, options);

  auto first = AllocateOnce(*client, "c-1");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->server_id, "3");
  EXPECT_THAT(AllocateOnce(*client, "c-1"),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("TOO_MANY_CLIENTS")));
  EXPECT_THAT(AllocateOnce(*client, "c-1"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("404")));

  const auto requests = responder.Requests();
  ASSERT_EQ(requests.size(), 3U);
  const auto& r = requests[0];
  EXPECT_EQ(r.method_string(), "POST");
  EXPECT_EQ(std::string(r.target()),
            absl::StrCat("/hidden/broker/", kAbcHash,
                         "/connections/c-1?version=2022-12-01%7Eexperimental"));
  EXPECT_EQ(r["Content-type"], "application/vnd.api+json");
  EXPECT_EQ(r["user-agent"], "Snyk Broker Client 9.9.9");
  EXPECT_EQ(r["x-broker-origin-ua"], "not-provided");
  EXPECT_EQ(r["snyk-request-id"].size(), 36U);
  EXPECT_NE(requests[0]["snyk-request-id"], requests[1]["snyk-request-id"]);
  EXPECT_EQ(r.body(), R"({"data":{"attributes":{"deployment_location":"here",)"
                      R"("broker_token_first_char":"a"}}})");
  executor.Stop();
}

TEST(DefaultDispatcherClient, AnUnreachableDispatcherIsUnavailable) {
  // A port nobody listens on: bind one, then close it.
  int port = 0;
  {
    boost::asio::io_context io;
    boost::asio::ip::tcp::acceptor acceptor(
        io, {boost::asio::ip::make_address("127.0.0.1"), 0});
    port = acceptor.local_endpoint().port();
  }
  common::Executor executor(1);
  auto http = common::http::Client::Create(executor.io(), {});
  ASSERT_TRUE(http.ok()) << http.status();
  DispatcherClientOptions options;
  options.base_url = absl::StrCat("http://127.0.0.1:", port);
  options.token = "abc";
  auto client = MakeDefaultDispatcherClient(**http, options);
  EXPECT_THAT(AllocateOnce(*client, "c-1"),
              StatusIs(absl::StatusCode::kUnavailable,
                       HasSubstr("dispatcher call failed")));
  executor.Stop();
}

}  // namespace
}  // namespace broker::ha
