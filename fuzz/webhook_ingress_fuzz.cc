// libFuzzer target: the webhook ingress (services/webhook, broker-webhook),
// what an SCM (or anyone who reaches BROKER_CLIENT_URL) posts to it, and
// the answers of the tunnel workers it hands events to. A real
// WebhookServer runs in this process for the whole run, with its public
// rules, scaled-down limits (64 KiB bodies, 16 KiB kept for a retry) and a
// fake worker egress on loopback (gRPC, broker.webhook.v1.Egress) that
// answers as the input says: 200, a Failure, an error before any answer
// (the event is retried), or a head and then a broken call.
//
// Each input is a script, read with FuzzedDataProvider: a request (method,
// a path the rules allow or not, headers such as the SCM's delivery id and
// event name, Content-Length or chunked or neither, a body) or, one time in
// eight, raw bytes; then how the egress answers. The request goes over a
// new loopback connection whose write side is then closed. Besides crashes
// and sanitizer reports, a broken invariant aborts:
//   - the ingress closes the connection within 10 s (the event deadline is
//     2 s; nothing hangs, whatever the request or the workers do);
//   - what comes back is empty or starts with an HTTP/1.1 status line.
//
// Seeds: fuzz/corpus/webhook_ingress/. Run with scripts/fuzz.sh.

#include "services/webhook/webhook_server.h"

#include "broker/webhook/v1/egress.grpc.pb.h"

#include "grpcpp/grpcpp.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <unistd.h>

#include "fuzz/loopback.h"
#include <fuzzer/FuzzedDataProvider.h>

namespace broker::webhook {
namespace {

namespace tv1 = ::broker::tunnel::v1;
namespace wv1 = ::broker::webhook::v1;

constexpr absl::Duration kAnswerLimit = absl::Seconds(10);

using ::broker::fuzz::Fail;

// How the fake egress answers the current input's event.
enum class Answer : int { kOk, kFailure, kErrorBeforeAnswer, kBrokenMidBody };

// A tunnel worker's egress endpoint, as the fuzzer plays it: reads the
// event whole, then answers as told.
class FakeEgress final : public wv1::Egress::Service {
 public:
  void Set(Answer answer) { answer_.store(static_cast<int>(answer)); }

  grpc::Status Deliver(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<tv1::DeliverDown, tv1::DeliverUp>* stream)
      override {
    tv1::DeliverUp up;
    while (stream->Read(&up)) {
      if (up.has_end()) break;
      if (up.has_head() && up.head().body_length() == 0) break;
    }
    tv1::DeliverDown down;
    switch (static_cast<Answer>(answer_.load())) {
      case Answer::kOk:
        down.mutable_head()->set_status(200);
        down.mutable_head()->set_body(R"({"ok":true})");
        down.mutable_head()->mutable_end();
        stream->Write(down);
        return grpc::Status::OK;
      case Answer::kFailure:
        down.mutable_failure()->set_status(403);
        down.mutable_failure()->set_code("FILTER_BLOCKED");
        stream->Write(down);
        return grpc::Status::OK;
      case Answer::kErrorBeforeAnswer:
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker busy");
      case Answer::kBrokenMidBody:
        down.mutable_head()->set_status(200);
        down.mutable_head()->set_body_length(100);
        stream->Write(down);
        context->TryCancel();
        return grpc::Status::CANCELLED;
    }
    return grpc::Status::OK;
  }

 private:
  std::atomic<int> answer_{0};
};

// The ingress and the fake egress, for the whole run.
struct Rig {
  Rig() {
    grpc::ServerBuilder builder;
    // As broker-tunnel's egress endpoint allows the webhook's pings.
    builder.AddChannelArgument(
        GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &egress_port);
    builder.RegisterService(&egress);
    egress_server = builder.BuildAndStart();
    if (egress_server == nullptr || egress_port == 0) Fail("the egress", "");

    char dir_template[] = "/tmp/webhook-ingress-fuzz.XXXXXX";
    if (mkdtemp(dir_template) == nullptr) Fail("mkdtemp", "");
    WebhookConfig config;
    config.address = "127.0.0.1";
    config.port = 0;
    config.accept_path = absl::StrCat(dir_template, "/accept.json");
    std::ofstream(config.accept_path)
        << R"({"public":[{"method":"POST","path":"/webhook/github/:id"},)"
        << R"({"method":"POST","path":"/webhook/gitlab/:id"}]})";
    config.egress_target = absl::StrCat("ipv4:127.0.0.1:", egress_port);
    config.timeout = absl::Seconds(2);
    config.max_body_bytes = 64 * 1024;
    config.retry_buffer_bytes = 16 * 1024;
    config.no_tunnel_wait = absl::Milliseconds(200);
    config.log_level = "error";
    auto created = WebhookServer::Create(std::move(config));
    if (!created.ok())
      Fail("WebhookServer::Create", created.status().message());
    server = *std::move(created);
    auto port = server->Start();
    if (!port.ok()) Fail("WebhookServer::Start", port.status().message());
    http_port = *port;
  }

  FakeEgress egress;
  int egress_port = 0;
  std::unique_ptr<grpc::Server> egress_server;
  std::unique_ptr<WebhookServer> server;
  int http_port = 0;
};

Rig* the_rig = nullptr;

// At exit, before LeakSanitizer's check: stop both servers.
void ShutDownRig() {
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  the_rig->server->Shutdown(deadline);
  the_rig->egress_server->Shutdown(absl::ToChronoTime(deadline));
}

Rig& TheRig() {
  if (the_rig == nullptr) {
    the_rig = new Rig();
    std::atexit(ShutDownRig);
  }
  return *the_rig;
}

// An event as an SCM would post it, or something near it.
std::string RequestBytes(FuzzedDataProvider& in) {
  static constexpr const char* kMethods[] = {"POST", "PUT", "GET", "HEAD",
                                             "POST"};
  static constexpr const char* kPaths[] = {"/webhook/github/1f2e3d",
                                           "/webhook/gitlab/abc?x=1",
                                           "/webhook/github/",
                                           "/webhook/bitbucket/1",
                                           "/webhook/github/%2e%2e/x",
                                           "/healthcheck",
                                           "/metrics",
                                           "/",
                                           "/webhook/github/a/b",
                                           "*"};
  std::string request =
      absl::StrCat(in.PickValueInArray(kMethods), " ",
                   in.ConsumeBool() ? in.PickValueInArray(kPaths)
                                    : in.ConsumeRandomLengthString(60),
                   " HTTP/1.1\r\nhost: fuzz\r\n");
  const int headers = in.ConsumeIntegralInRange(0, 4);
  for (int i = 0; i < headers; ++i) {
    switch (in.ConsumeIntegralInRange(0, 4)) {
      case 0:
        absl::StrAppend(&request,
                        "x-github-delivery: ", in.ConsumeRandomLengthString(40),
                        "\r\n");
        break;
      case 1:
        absl::StrAppend(&request,
                        "x-github-event: ", in.ConsumeRandomLengthString(20),
                        "\r\n");
        break;
      case 2:
        absl::StrAppend(&request, "content-type: application/json\r\n");
        break;
      case 3:
        absl::StrAppend(&request, "expect: 100-continue\r\n");
        break;
      default:
        absl::StrAppend(&request, in.ConsumeRandomLengthString(20), ": ",
                        in.ConsumeRandomLengthString(40), "\r\n");
        break;
    }
  }
  const std::size_t size = in.ConsumeIntegralInRange<std::size_t>(0, 70000);
  const std::string body = in.ConsumeBool()
                               ? std::string(size, '{')
                               : in.ConsumeRandomLengthString(2000);
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0:  // Content-Length
      absl::StrAppend(&request, "content-length: ", body.size(), "\r\n\r\n",
                      body);
      break;
    case 1:  // chunked, maybe cut short
      absl::StrAppend(&request, "transfer-encoding: chunked\r\n\r\n",
                      absl::Hex(body.size()), "\r\n", body, "\r\n",
                      in.ConsumeBool() ? "0\r\n\r\n" : "");
      break;
    case 2:  // a length the body does not have
      absl::StrAppend(&request, "content-length: ", body.size() + 10,
                      "\r\n\r\n", body);
      break;
    default:  // no body
      absl::StrAppend(&request, "\r\n");
      break;
  }
  return request;
}

// Sends `request` on a new connection, half-closes, reads until the
// ingress closes, and checks the answer.
void Exchange(int port, const std::string& request) {
  const std::string received = ::broker::fuzz::Exchange(
      port, request, kAnswerLimit, /*close_write_side=*/true);
  if (!received.empty() && !absl::StartsWith(received, "HTTP/1.1 ")) {
    Fail("the answer does not start with a status line", received);
  }
}

}  // namespace
}  // namespace broker::webhook

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  using broker::webhook::Answer;
  FuzzedDataProvider in(data, size);
  broker::webhook::Rig& rig = broker::webhook::TheRig();
  rig.egress.Set(in.PickValueInArray({Answer::kOk, Answer::kFailure,
                                      Answer::kErrorBeforeAnswer,
                                      Answer::kBrokenMidBody}));
  const std::string request = in.ConsumeIntegralInRange(0, 7) == 0
                                  ? in.ConsumeRemainingBytesAsString()
                                  : broker::webhook::RequestBytes(in);
  broker::webhook::Exchange(rig.http_port, request);
  return 0;
}
