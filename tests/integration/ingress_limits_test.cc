// broker-server's platform ingress, through the real binary: malformed
// requests, oversized heads and bodies are refused before anything is
// relayed, and a token only ever reaches its own tunnel.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <array>
#include <cerrno>
#include <cstdint>
#include <poll.h>
#include <string>
#include <unistd.h>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace broker::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kTokenA[] = "aaaaaaaa-1b2e-4c3d-9e8f-0a1b2c3d4e5f";
constexpr char kTokenB[] = "bbbbbbbb-1b2e-4c3d-9e8f-0a1b2c3d4e5f";
constexpr int kMaxBody = 64 * 1024;  // BROKER_MAX_BODY_BYTES for the server

// Sends `bytes` to 127.0.0.1:`port` and returns what comes back until the
// peer closes (or `timeout`, then an error). No framing, no parsing: for
// requests the HTTP client would refuse to send.
absl::StatusOr<std::string> RawExchange(
    int port, const std::string& bytes,
    absl::Duration timeout = absl::Seconds(20)) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address),
              sizeof(address)) != 0) {
    return absl::UnavailableError(absl::StrCat("connect: errno ", errno));
  }
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n =
        send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the server may answer and close before the end
    sent += static_cast<size_t>(n);
  }
  const absl::Time deadline = absl::Now() + timeout;
  std::string received;
  std::array<char, 4096> chunk{};
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("the server did not close; got: ", received));
    }
    pollfd p{fd, POLLIN, 0};
    const int ready =
        poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    const ssize_t n = recv(fd, chunk.data(), chunk.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF, or a reset after the answer
    received.append(chunk.data(), static_cast<size_t>(n));
  }
  return received;
}

class IngressLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin_a = StartOrigin(&origin_a_port_);
    ASSERT_TRUE(origin_a.ok()) << origin_a.status();
    origin_a_ = *std::move(origin_a);
    auto origin_b = StartOrigin(&origin_b_port_);
    ASSERT_TRUE(origin_b.ok()) << origin_b.status();
    origin_b_ = *std::move(origin_b);

    const std::string server_accept =
        dir_.Write("server-accept.json", R"json({"public": [
      {"method": "any", "path": "/echo*"},
      {"method": "GET", "path": "/only-b"}
    ]})json");
    // Each worker sends /echo to its own origin; only B allows /only-b.
    const std::string accept_a =
        dir_.Write("accept-a.json", absl::StrCat(R"json({"private": [
      {"method": "any", "path": "/echo*", "origin": "http://127.0.0.1:)json",
                                                 origin_a_port_, R"json("}
    ]})json"));
    const std::string accept_b =
        dir_.Write("accept-b.json", absl::StrCat(R"json({"private": [
      {"method": "any", "path": "/echo*", "origin": "http://127.0.0.1:)json",
                                                 origin_b_port_, R"json("},
      {"method": "GET", "path": "/only-b", "origin": "http://127.0.0.1:)json",
                                                 origin_b_port_, R"json("}
    ]})json"));
    auto server = StartServer(
        server_accept, {{"BROKER_MAX_BODY_BYTES", std::to_string(kMaxBody)}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto tunnel_a =
        StartTunnel(kTokenA, server_.tunnel_port, accept_a, *server_.process);
    ASSERT_TRUE(tunnel_a.ok()) << tunnel_a.status();
    tunnel_a_ = *std::move(tunnel_a);
    auto tunnel_b =
        StartTunnel(kTokenB, server_.tunnel_port, accept_b, *server_.process);
    ASSERT_TRUE(tunnel_b.ok()) << tunnel_b.status();
    tunnel_b_ = *std::move(tunnel_b);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
  }

  std::string BrokerUrl(absl::string_view token, absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", server_.http_port, "/broker/",
                        token, path);
  }

  // Everything origin A printed up to a request sent now: any request that
  // was answered before it was printed before it.
  std::string OriginAOutputAfterSentinel() {
    auto r = fetcher_.Fetch("GET", BrokerUrl(kTokenA, "/echo?sentinel=1"));
    EXPECT_TRUE(r.ok() && r->status == 200);
    EXPECT_TRUE(
        origin_a_
            ->WaitForLine("request GET /echo?sentinel=1", absl::Seconds(20))
            .ok());
    return origin_a_->Output();
  }

  TempDir dir_;
  Fetcher fetcher_;
  int origin_a_port_ = 0;
  int origin_b_port_ = 0;
  std::unique_ptr<ChildProcess> origin_a_;
  std::unique_ptr<ChildProcess> origin_b_;
  ServerProcess server_;
  TunnelProcess tunnel_a_;
  TunnelProcess tunnel_b_;
};

TEST_F(IngressLimitsTest, MalformedRequestsAre400) {
  const std::string target = absl::StrCat("/broker/", kTokenA, "/echo");
  const std::vector<std::string> requests = {
      // A header line without a colon.
      absl::StrCat("GET ", target,
                   "?malformed=1 HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n"),
      // Not a request line.
      "NOT HTTP AT ALL\r\n\r\n",
      // A Content-Length that is not a number.
      absl::StrCat("POST ", target,
                   "?malformed=2 HTTP/1.1\r\nHost: a\r\nContent-Length: "
                   "12abc\r\n\r\n"),
      // Both framings at once (request smuggling).
      absl::StrCat("POST ", target,
                   "?malformed=3 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
  };
  for (const std::string& request : requests) {
    SCOPED_TRACE(request);
    auto answer = RawExchange(server_.http_port, request);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_THAT(*answer, StartsWith("HTTP/1.1 400 "));
  }
  EXPECT_THAT(OriginAOutputAfterSentinel(), Not(HasSubstr("malformed")));
}

TEST_F(IngressLimitsTest, OversizedHeadsAre431) {
  const std::string target =
      absl::StrCat("/broker/", kTokenA, "/echo?oversized=1");
  // One 20 KiB header, then many small ones adding up to 20 KiB.
  std::string many;
  for (int i = 0; i < 400; ++i) {
    absl::StrAppend(&many, "X-Filler-", i, ": ", std::string(40, 'f'), "\r\n");
  }
  for (const std::string& headers :
       {absl::StrCat("X-Big: ", std::string(size_t{20} * 1024, 'b'), "\r\n"),
        many}) {
    auto answer =
        RawExchange(server_.http_port,
                    absl::StrCat("GET ", target, " HTTP/1.1\r\nHost: a\r\n",
                                 headers, "\r\n"));
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_THAT(*answer, StartsWith("HTTP/1.1 431 "));
  }
  // A head just under the limit still goes through.
  auto fits = fetcher_.Fetch("GET", BrokerUrl(kTokenA, "/echo?fits=1"),
                             {{"x-big", std::string(size_t{8} * 1024, 'b')}});
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(fits->status, 200);
  EXPECT_THAT(OriginAOutputAfterSentinel(), Not(HasSubstr("oversized")));
}

// A head of 1 MiB (one header) is refused after the first 16 KiB: the
// server never buffers it, answers 431, and keeps serving.
TEST_F(IngressLimitsTest, AOneMebibyteHeaderIs431AndServingGoesOn) {
  auto answer =
      RawExchange(server_.http_port,
                  absl::StrCat("GET /broker/", kTokenA,
                               "/echo?huge=1 HTTP/1.1\r\nHost: a\r\nX-Huge: ",
                               std::string(size_t{1} << 20, 'h'), "\r\n\r\n"));
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_THAT(*answer, StartsWith("HTTP/1.1 431 "));
  auto after = fetcher_.Fetch("GET", BrokerUrl(kTokenA, "/echo?after=1"));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->status, 200);
  EXPECT_THAT(OriginAOutputAfterSentinel(), Not(HasSubstr("huge")));
}

TEST_F(IngressLimitsTest, BodiesOverTheConfiguredLimitAre413) {
  // A declared length over the limit is refused from the head alone.
  auto declared = RawExchange(
      server_.http_port,
      absl::StrCat("POST /broker/", kTokenA,
                   "/echo?too-long=1 HTTP/1.1\r\nHost: a\r\nContent-Length: ",
                   kMaxBody + 1, "\r\n\r\n"));
  ASSERT_TRUE(declared.ok()) << declared.status();
  EXPECT_THAT(*declared, StartsWith("HTTP/1.1 413 "));

  // Exactly the limit is relayed whole.
  auto at_limit = fetcher_.Fetch("POST", BrokerUrl(kTokenA, "/echo"), {},
                                 std::string(kMaxBody, 'x'));
  ASSERT_TRUE(at_limit.ok()) << at_limit.status();
  ASSERT_EQ(at_limit->status, 200) << at_limit->body;
  EXPECT_EQ(json::parse(at_limit->body)["body_bytes"], kMaxBody);

  // A chunked body that grows past the limit is cut off with a 413 (the
  // origin reads the whole body before answering, so no answer has
  // started when the limit is crossed).
  auto chunked = fetcher_.Fetch("POST", BrokerUrl(kTokenA, "/echo"), {},
                                std::string(size_t{2} * kMaxBody, 'y'),
                                /*chunked=*/true);
  ASSERT_TRUE(chunked.ok()) << chunked.status();
  EXPECT_EQ(chunked->status, 413) << chunked->body;
  EXPECT_THAT(OriginAOutputAfterSentinel(), Not(HasSubstr("too-long")));
}

TEST_F(IngressLimitsTest, EachTokenReachesOnlyItsOwnTunnel) {
  struct Route {
    std::string token;
    int origin_port;
    std::string marker;
  };
  const std::vector<Route> routes = {{kTokenA, origin_a_port_, "for-a-"},
                                     {kTokenB, origin_b_port_, "for-b-"}};
  for (int i = 0; i < 5; ++i) {
    for (const Route& route : routes) {
      const std::string marker = absl::StrCat(route.marker, i);
      auto r = fetcher_.Fetch("GET", BrokerUrl(route.token, "/echo?" + marker));
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->status, 200) << r->body;
      // The origin that answered is the one the token's worker calls.
      EXPECT_EQ(json::parse(r->body)["headers"]["host"],
                absl::StrCat("127.0.0.1:", route.origin_port))
          << marker;
    }
  }
  // A path only B's worker allows, with A's token: A's rules decide.
  auto only_b = fetcher_.Fetch("GET", BrokerUrl(kTokenA, "/only-b"));
  ASSERT_TRUE(only_b.ok()) << only_b.status();
  EXPECT_EQ(only_b->status, 401);
  auto as_b = fetcher_.Fetch("GET", BrokerUrl(kTokenB, "/only-b"));
  ASSERT_TRUE(as_b.ok()) << as_b.status();
  // B's origin has no such route: the 404 is its own, so B's worker
  // relayed it.
  EXPECT_EQ(as_b->status, 404);
  EXPECT_EQ(as_b->body, "no route");

  // Unknown tokens, including one a character away from A's, reach no one.
  for (const std::string& token :
       {std::string("11111111-2222-3333-4444-555555555555"),
        std::string(kTokenA).substr(0, 35) + "6", std::string(kTokenA) + "0",
        std::string(kTokenA).substr(0, 35)}) {
    SCOPED_TRACE(token);
    auto r = fetcher_.Fetch("GET", BrokerUrl(token, "/echo?unknown=1"));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 404);
    EXPECT_EQ(r->Header("x-broker-failure"), "no-connection");
  }

  const std::string a_output = OriginAOutputAfterSentinel();
  EXPECT_THAT(a_output, HasSubstr("for-a-4"));
  EXPECT_THAT(a_output, Not(HasSubstr("for-b-")));
  EXPECT_THAT(a_output, Not(HasSubstr("only-b")));
  EXPECT_THAT(a_output, Not(HasSubstr("unknown")));
  ASSERT_TRUE(
      origin_b_->WaitForLine("request GET /only-b", absl::Seconds(20)).ok());
  const std::string b_output = origin_b_->Output();
  EXPECT_THAT(b_output, HasSubstr("for-b-4"));
  EXPECT_THAT(b_output, Not(HasSubstr("for-a-")));
  EXPECT_THAT(b_output, Not(HasSubstr("unknown")));
}

}  // namespace
}  // namespace broker::testing
