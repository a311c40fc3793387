// libFuzzer target: the Serve messages broker-server receives from a
// worker that holds a valid token but is broken or hostile. The whole
// server (services/server: platform ingress, registry, relay, tunnel
// service) runs in this process on loopback, for the whole run; the fuzzer
// plays the worker over a real gRPC connection and the platform over a real
// HTTP connection.
//
// Each input is a script, read with FuzzedDataProvider:
//   - a lane opens with LaneReady and is parked;
//   - a platform request takes it (GET, DELETE, POST; no body, chunked,
//     sized);
//   - the "worker" reads the request head, then answers with any sequence
//     of ServeUp messages: heads, bodies, ends, failures, a second
//     LaneReady, any field values (malformed, truncated, out of order);
//   - sometimes a second platform request follows on the same lane (a lane
//     used twice, kept or not);
//   - the call then ends by half-close or cancel.
// Besides crashes and sanitizer reports, a broken invariant aborts:
//   - every platform request is answered or closed within the relay's
//     deadline plus a margin (nothing hangs, whatever the worker sends);
//   - whatever came back starts with a well-formed HTTP/1.1 status line,
//     or is nothing at all (the connection cut mid-answer is allowed only
//     after a status line).
//
// Seeds: fuzz/corpus/tunnel_serve/. Run with scripts/fuzz.sh.

#include "services/server/broker_server.h"

#include "broker/tunnel/v1/tunnel.grpc.pb.h"

#include "grpcpp/grpcpp.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <unistd.h>

#include "fuzz/loopback.h"
#include <fuzzer/FuzzedDataProvider.h>

namespace broker::server {
namespace {

namespace v1 = tunnel::v1;

constexpr char kToken[] = "fuzz-token-0123456789";
constexpr char kClientId[] = "5b0b4c55-1d7e-4d43-9c4a-8f1f7f0c2a11";
// The relay's deadline for each platform request (short: an input whose
// worker never finishes its answer costs this much); the invariant allows
// a margin for the 2 s lane wait, a re-send and a loaded machine.
constexpr absl::Duration kRequestTimeout = absl::Seconds(1);
constexpr absl::Duration kAnswerLimit = absl::Seconds(15);

using ::broker::fuzz::Fail;

// The server, and the worker's Control call that keeps its token
// connected, for the whole run.
struct Rig {
  Rig() {
    char dir_template[] = "/tmp/tunnel-serve-fuzz.XXXXXX";
    if (mkdtemp(dir_template) == nullptr) Fail("mkdtemp", "");
    const std::string accept = absl::StrCat(dir_template, "/accept.json");
    std::ofstream(accept) << R"({"public":[{"method":"any","path":"/*"}]})";
    ServerConfig config;
    config.address = "127.0.0.1";
    config.http_port = 0;
    config.tunnel_port = 0;
    config.accept_path = accept;
    config.request_timeout = kRequestTimeout;
    config.max_clients_per_token = 0;
    config.metrics_enabled = false;
    config.io_threads = 1;
    config.drain_wait = absl::ZeroDuration();
    auto created = BrokerServer::Create(std::move(config));
    if (!created.ok()) Fail("BrokerServer::Create", created.status().message());
    server = *std::move(created);
    auto ports = server->Start();
    if (!ports.ok()) Fail("BrokerServer::Start", ports.status().message());
    http_port = ports->http;
    channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", ports->tunnel),
                                  grpc::InsecureChannelCredentials());
    stub = v1::Tunnel::NewStub(channel);
    AddIdentity(control_context);
    control = stub->Control(&control_context);
    v1::WorkerControl hello;
    hello.mutable_hello()->set_client_id(kClientId);
    hello.mutable_hello()->set_version("fuzz");
    v1::ServerControl welcome;
    if (!control->Write(hello) || !control->Read(&welcome) ||
        !welcome.has_welcome()) {
      Fail("the Control call was not welcomed", "");
    }
  }

  static void AddIdentity(grpc::ClientContext& context) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
    context.AddMetadata("x-broker-client-id", kClientId);
  }

  std::unique_ptr<BrokerServer> server;
  int http_port = 0;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Tunnel::Stub> stub;
  grpc::ClientContext control_context;
  std::unique_ptr<
      grpc::ClientReaderWriter<v1::WorkerControl, v1::ServerControl>>
      control;
};

Rig& TheRig() {
  static Rig* const rig = new Rig();
  return *rig;
}

// One platform request on its own connection and thread: sends it, reads
// everything until the server closes, and checks the invariants.
class PlatformRequest {
 public:
  PlatformRequest(int port, std::string request)
      : thread_([this, port, request = std::move(request)] {
          Run(port, request);
        }) {}
  ~PlatformRequest() { thread_.join(); }

 private:
  void Run(int port, const std::string& request) {
    // The server reads the body as the relay streams it; a stalled send
    // past the limit is a hang too.
    const std::string received = ::broker::fuzz::Exchange(
        port, request, kAnswerLimit, /*close_write_side=*/false);
    if (!received.empty() && !absl::StartsWith(received, "HTTP/1.1 ")) {
      Fail("the answer does not start with a status line", received);
    }
  }

  std::thread thread_;
};

// The platform's request. Mostly kinds the relay does not re-send when the
// worker breaks the lane (so they fail fast): bodiless DELETE and POST,
// chunked bodies, bodies over the 64 KiB held for re-sending. A GET, which
// goes to another worker and waits for one, is one input in eight.
std::string PlatformRequestBytes(FuzzedDataProvider& in) {
  const std::string head =
      absl::StrCat("/broker/", kToken, "/fuzz HTTP/1.1\r\nhost: fuzz\r\n",
                   "connection: close\r\n");
  switch (in.ConsumeIntegralInRange(0, 7)) {
    case 0:
      return absl::StrCat("GET ", head, "\r\n");
    case 1:
      return absl::StrCat("DELETE ", head, "\r\n");
    case 2:
      return absl::StrCat("POST ", head, "content-length: 0\r\n\r\n");
    case 3:
    case 4:
    case 5: {
      const size_t n = in.ConsumeIntegralInRange<size_t>(1, 70000);
      return absl::StrCat("POST ", head, "transfer-encoding: chunked\r\n\r\n",
                          absl::Hex(n), "\r\n", std::string(n, 'c'),
                          "\r\n0\r\n\r\n");
    }
    default: {
      const size_t n = in.ConsumeIntegralInRange<size_t>(65537, 100000);
      return absl::StrCat("POST ", head, "content-length: ", n, "\r\n\r\n",
                          std::string(n, 'b'));
    }
  }
}

// A ServeUp built from the input: any kind, any field values.
v1::ServeUp NextMessage(FuzzedDataProvider& in) {
  v1::ServeUp up;
  switch (in.ConsumeIntegralInRange(0, 5)) {
    case 0:
      up.mutable_ready();
      break;
    case 1: {
      v1::ResponseHead* head = up.mutable_head();
      head->set_status(in.ConsumeIntegralInRange(-10, 1000));
      const int headers = in.ConsumeIntegralInRange(0, 3);
      for (int i = 0; i < headers; ++i) {
        v1::Header* h = head->add_headers();
        h->set_name(in.ConsumeRandomLengthString(40));
        h->set_value(in.ConsumeRandomLengthString(80));
      }
      head->set_body_length(in.ConsumeIntegralInRange<std::int64_t>(-3, 5000));
      head->set_body(in.ConsumeRandomLengthString(3000));
      if (in.ConsumeBool()) {
        head->mutable_end()->set_aborted(in.ConsumeBool());
        head->mutable_end()->set_keep_lane(in.ConsumeBool());
      }
      break;
    }
    case 2:
      up.set_body(in.ConsumeRandomLengthString(5000));
      break;
    case 3:
      up.mutable_end()->set_aborted(in.ConsumeBool());
      up.mutable_end()->set_keep_lane(in.ConsumeBool());
      break;
    case 4:
      up.mutable_failure()->set_status(in.ConsumeIntegralInRange(-10, 1000));
      up.mutable_failure()->set_code(in.ConsumeRandomLengthString(30));
      up.mutable_failure()->set_body(in.ConsumeRandomLengthString(300));
      break;
    default:
      // Raw bytes parsed as a message: unknown fields, several kinds.
      up.ParsePartialFromString(in.ConsumeRandomLengthString(200));
      break;
  }
  return up;
}

void RunScript(FuzzedDataProvider& in) {
  Rig& rig = TheRig();
  grpc::ClientContext context;
  Rig::AddIdentity(context);
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(5));
  auto lane = rig.stub->Serve(&context);
  v1::ServeUp ready;
  ready.mutable_ready();
  if (!lane->Write(ready)) return;

  // A second exchange on the same lane in one input of four: it waits for
  // the first to end, which costs the relay's deadline when the worker
  // left that answer unfinished.
  const int exchanges = in.ConsumeIntegralInRange(0, 3) == 3 ? 2 : 1;
  for (int e = 0; e < exchanges; ++e) {
    PlatformRequest platform(rig.http_port, PlatformRequestBytes(in));
    v1::ServeDown down;
    if (!lane->Read(&down)) break;  // the server ended the lane
    // The request body, when the input wants the worker to read it.
    if (in.ConsumeBool()) {
      while (down.has_head() || down.has_body()) {
        if (down.has_head() && down.head().body_length() == 0) break;
        if (!lane->Read(&down)) break;
      }
    }
    const int messages = in.ConsumeIntegralInRange(0, 6);
    // Whether the last message ended the answer and asked to keep the
    // lane: only then can a second exchange use it without waiting out the
    // relay's deadline.
    bool kept = false;
    for (int m = 0; m < messages && in.remaining_bytes() > 0; ++m) {
      const v1::ServeUp up = NextMessage(in);
      const v1::BodyEnd* end = up.has_end() ? &up.end()
                               : up.has_head() && up.head().has_end()
                                   ? &up.head().end()
                                   : nullptr;
      kept = end != nullptr && end->keep_lane() && !end->aborted();
      if (!lane->Write(up)) break;
    }
    if (e + 1 < exchanges && kept) continue;  // the same lane, once more
    // The worker half-closes or cancels (a worker that just stops
    // answering is the relay deadline's case, tested in
    // tests/integration/data_path_test.cc; here it would only slow the
    // fuzzer down).
    if (in.ConsumeBool()) {
      lane->WritesDone();
    } else {
      context.TryCancel();
    }
    // `platform` joins here, once its request ended (answered, aborted
    // or timed out by the relay).
    break;
  }
  context.TryCancel();
  lane->Finish().ok();
}

}  // namespace
}  // namespace broker::server

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  FuzzedDataProvider in(data, size);
  broker::server::RunScript(in);
  return 0;
}
