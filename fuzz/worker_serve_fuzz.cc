// libFuzzer target: the Serve messages a worker (services/tunnel) receives
// from a broker server that is broken or hostile. A real BrokerTunnel runs
// in this process for the whole run, with its private rules, its HTTP
// client and a real origin (tests/testing/test_origin) on loopback; the
// fuzzer plays the server over a real gRPC connection: it admits the
// worker's Control call, takes one of the lanes the worker parks, and sends
// whatever the input says.
//
// Each input is a script, read with FuzzedDataProvider:
//   - a lane parked by the worker is taken;
//   - the "server" sends ServeDown messages: request heads (methods, paths
//     the rules allow, block or cannot parse, any headers, deadlines in the
//     past or far ahead, any body length), bodies, ends, raw bytes parsed
//     as a message, in any order (a body before the head, two heads);
//   - it reads what the worker answers; when the answer ended and kept the
//     lane, a second request may follow on the same lane;
//   - the call then ends.
// Besides crashes and sanitizer reports, a broken invariant aborts:
//   - once a lane got anything, the worker ends its answer or the call
//     within its request deadline plus a margin (nothing hangs, whatever
//     the server sends);
//   - the first thing the worker sends about a request is a head with a
//     status in 100..999 or a Failure, never a body or an end;
//   - the worker keeps lanes parked: a lane is always there to take.
//
// Seeds: fuzz/corpus/worker_serve/. Run with scripts/fuzz.sh.

#include "services/tunnel/broker_tunnel.h"
#include "tests/testing/test_origin.h"

#include "broker/tunnel/v1/tunnel.grpc.pb.h"

#include "grpcpp/grpcpp.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <unistd.h>

#include "fuzz/loopback.h"
#include <fuzzer/FuzzedDataProvider.h>

namespace broker::tunnel {
namespace {

namespace v1 = ::broker::tunnel::v1;

// The worker's deadline for each relayed request (short: an input that
// leaves a request unfinished costs this much); the invariant allows a
// margin for a loaded machine.
constexpr absl::Duration kRequestTimeout = absl::Seconds(1);
constexpr absl::Duration kAnswerLimit = absl::Seconds(15);

using ::broker::fuzz::Fail;

// A Serve call the worker opened and parked, held by its handler thread
// until the script is done with it.
struct Lane {
  grpc::ServerContext* context = nullptr;
  grpc::ServerReaderWriter<v1::ServeDown, v1::ServeUp>* stream = nullptr;
  absl::Notification done;
  bool taken = false;  // by a script (FakeServer::mu_)
};

// The broker server, as the fuzzer plays it: admits the Control call and
// queues every parked lane.
class FakeServer final : public v1::Tunnel::Service {
 public:
  grpc::Status Control(
      grpc::ServerContext* /*context*/,
      grpc::ServerReaderWriter<v1::ServerControl, v1::WorkerControl>* stream)
      override {
    v1::WorkerControl in;
    if (!stream->Read(&in) || !in.has_hello()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no Hello");
    }
    v1::ServerControl welcome;
    welcome.mutable_welcome()->set_server_id("fuzz");
    welcome.mutable_welcome()->set_max_lanes(64);
    stream->Write(welcome);
    while (stream->Read(&in)) {
    }
    return grpc::Status::OK;
  }

  grpc::Status Serve(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::ServeDown, v1::ServeUp>* stream) override {
    v1::ServeUp ready;
    if (!stream->Read(&ready) || !ready.has_ready()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no LaneReady");
    }
    auto lane = std::make_shared<Lane>();
    lane->context = context;
    lane->stream = stream;
    {
      absl::MutexLock lock(&mu_);
      parked_.push_back(lane);
    }
    // Until the script is done with the lane; a lane no script took also
    // ends when its call does (the worker left it, or the server stops).
    while (!lane->done.WaitForNotificationWithTimeout(absl::Milliseconds(50))) {
      if (!context->IsCancelled()) continue;
      absl::MutexLock lock(&mu_);
      if (lane->taken) continue;
      parked_.erase(std::remove(parked_.begin(), parked_.end(), lane),
                    parked_.end());
      break;
    }
    return grpc::Status::OK;
  }

  // Lets every parked lane's handler return (the run is ending).
  void ReleaseAll() {
    absl::MutexLock lock(&mu_);
    for (auto& lane : parked_) lane->done.Notify();
    parked_.clear();
  }

  // The oldest parked lane still open, or null after `timeout`.
  std::shared_ptr<Lane> Take(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    absl::MutexLock lock(&mu_);
    while (true) {
      while (!parked_.empty()) {
        std::shared_ptr<Lane> lane = std::move(parked_.front());
        parked_.pop_front();
        if (!lane->context->IsCancelled()) {
          lane->taken = true;
          return lane;
        }
        lane->done.Notify();  // the worker already left it
      }
      if (mu_.AwaitWithDeadline(absl::Condition(this, &FakeServer::HasParked),
                                deadline)) {
        continue;
      }
      return nullptr;
    }
  }

 private:
  bool HasParked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !parked_.empty();
  }

  absl::Mutex mu_;
  std::deque<std::shared_ptr<Lane>> parked_ ABSL_GUARDED_BY(mu_);
};

// The origin, the fake server and the worker, for the whole run.
struct Rig {
  Rig() {
    auto started = testing::TestOrigin::Start({});
    if (!started.ok()) Fail("TestOrigin::Start", started.status().message());
    origin = *std::move(started);
    char dir_template[] = "/tmp/worker-serve-fuzz.XXXXXX";
    if (mkdtemp(dir_template) == nullptr) Fail("mkdtemp", "");
    const std::string accept = absl::StrCat(dir_template, "/accept.json");
    const std::string to = absl::StrCat("http://127.0.0.1:", origin->port());
    std::ofstream(accept) << absl::StrCat(
        R"({"private":[)", R"({"method":"GET","path":"/bytes/:n","origin":")",
        to, R"("},)", R"({"method":"POST","path":"/echo","origin":")", to,
        R"("},)", R"({"method":"any","path":"/status/:code","origin":")", to,
        R"("},)", R"({"method":"GET","path":"/slow/:ms","origin":")", to,
        R"("},)", R"({"method":"GET","path":"/die-mid-body/:n","origin":")", to,
        R"("},)", R"({"method":"PUT","path":"/echo-body","origin":")", to,
        R"("}]})");

    grpc::ServerBuilder builder;
    // As broker-server allows: the worker pings every second.
    builder.AddChannelArgument(
        GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &server_port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    if (server == nullptr || server_port == 0) Fail("the fake server", "");

    TunnelConfig config;
    config.token = "fuzz-worker-token-0123456789";
    config.server_url = absl::StrCat("http://127.0.0.1:", server_port);
    config.accept_path = accept;
    config.address = "127.0.0.1";
    config.http_port = 0;
    config.lanes = 2;
    config.io_threads = 1;
    config.request_timeout = kRequestTimeout;
    config.metrics_enabled = false;
    auto created = BrokerTunnel::Create(std::move(config));
    if (!created.ok()) Fail("BrokerTunnel::Create", created.status().message());
    worker = *std::move(created);
    auto ports = worker->Start();
    if (!ports.ok()) Fail("BrokerTunnel::Start", ports.status().message());
  }

  std::unique_ptr<testing::TestOrigin> origin;
  FakeServer service;
  int server_port = 0;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<BrokerTunnel> worker;
};

Rig* the_rig = nullptr;

// At exit, before LeakSanitizer's check (registered earlier, so run
// later): the worker stops, the parked lanes' handlers return, and the
// fake server shuts down, so that what their threads hold is freed.
void ShutDownRig() {
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  the_rig->worker->Shutdown(deadline);
  the_rig->service.ReleaseAll();
  the_rig->server->Shutdown(absl::ToChronoTime(deadline));
  the_rig->service.ReleaseAll();  // lanes parked meanwhile
}

Rig& TheRig() {
  if (the_rig == nullptr) {
    the_rig = new Rig();
    std::atexit(ShutDownRig);
  }
  return *the_rig;
}

// A request head built from the input: mostly ones the rules allow.
v1::RequestHead NextHead(FuzzedDataProvider& in) {
  static constexpr const char* kMethods[] = {"GET", "POST",  "PUT", "DELETE",
                                             "",    "G\nET", "HEAD"};
  static constexpr const char* kPaths[] = {"/bytes/10",
                                           "/bytes/70000",
                                           "/echo",
                                           "/status/204",
                                           "/status/500",
                                           "/slow/3000",
                                           "/die-mid-body/5000",
                                           "/echo-body",
                                           "/blocked",
                                           "/bytes/%2e%2e/etc",
                                           "",
                                           "bytes/10",
                                           "/bytes/10?x=1#f"};
  v1::RequestHead head;
  head.set_request_id(in.ConsumeRandomLengthString(40));
  head.set_method(in.ConsumeBool() ? in.PickValueInArray(kMethods)
                                   : in.ConsumeRandomLengthString(10));
  head.set_url(in.ConsumeIntegralInRange(0, 7) != 0
                   ? in.PickValueInArray(kPaths)
                   : in.ConsumeRandomLengthString(100));
  const int headers = in.ConsumeIntegralInRange(0, 4);
  for (int i = 0; i < headers; ++i) {
    v1::Header* h = head.add_headers();
    h->set_name(in.ConsumeRandomLengthString(40));
    h->set_value(in.ConsumeRandomLengthString(80));
  }
  const absl::Time now = absl::Now();
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0:
      break;  // none: the worker's own deadline
    case 1:
      head.set_deadline_unix_micros(absl::ToUnixMicros(now - absl::Seconds(1)));
      break;
    case 2:
      head.set_deadline_unix_micros(
          absl::ToUnixMicros(now + absl::Milliseconds(200)));
      break;
    default:
      head.set_deadline_unix_micros(absl::ToUnixMicros(now + absl::Hours(24)));
      break;
  }
  head.set_body_length(in.ConsumeIntegralInRange<std::int64_t>(-3, 100000));
  return head;
}

v1::ServeDown NextMessage(FuzzedDataProvider& in) {
  v1::ServeDown down;
  switch (in.ConsumeIntegralInRange(0, 4)) {
    case 0:
      *down.mutable_head() = NextHead(in);
      break;
    case 1:
    case 2:
      down.set_body(in.ConsumeRandomLengthString(5000));
      break;
    case 3:
      down.mutable_end()->set_aborted(in.ConsumeBool());
      down.mutable_end()->set_keep_lane(in.ConsumeBool());
      break;
    default:
      // Raw bytes parsed as a message: unknown fields, several kinds.
      down.ParsePartialFromString(in.ConsumeRandomLengthString(200));
      break;
  }
  return down;
}

// Reads the worker's answer on `lane` until it ends (true when it ended
// and kept the lane) or the call does; aborts past kAnswerLimit.
bool ReadAnswer(Lane& lane, absl::string_view script) {
  absl::Notification finished;
  // Read blocks: a watchdog cancels the call at the limit and fails.
  std::thread watchdog([&] {
    if (!finished.WaitForNotificationWithTimeout(kAnswerLimit)) {
      Fail("the worker neither answered nor ended the lane", script);
    }
  });
  bool kept = false;
  bool first = true;
  v1::ServeUp up;
  while (lane.stream->Read(&up)) {
    if (first && !up.has_head() && !up.has_failure()) {
      Fail("an answer that does not start with a head or a failure",
           up.ShortDebugString());
    }
    if (first && up.has_head() &&
        (up.head().status() < 100 || up.head().status() > 999)) {
      Fail("a head with a status out of range", up.ShortDebugString());
    }
    first = false;
    const v1::BodyEnd* end = up.has_end() ? &up.end()
                             : up.has_head() && up.head().has_end()
                                 ? &up.head().end()
                                 : nullptr;
    if (end != nullptr || up.has_failure()) {
      kept = end != nullptr && end->keep_lane() && !end->aborted();
      break;
    }
  }
  finished.Notify();
  watchdog.join();
  return kept;
}

void RunScript(FuzzedDataProvider& in) {
  Rig& rig = TheRig();
  std::shared_ptr<Lane> lane = rig.service.Take(kAnswerLimit);
  if (lane == nullptr) Fail("the worker keeps no lane parked", "");
  const int exchanges = in.ConsumeIntegralInRange(0, 3) == 3 ? 2 : 1;
  for (int e = 0; e < exchanges; ++e) {
    std::string script;
    const int messages = in.ConsumeIntegralInRange(1, 6);
    bool wrote = false;
    // Mostly a head first, as a server sends it.
    if (in.ConsumeIntegralInRange(0, 7) != 0) {
      v1::ServeDown down;
      *down.mutable_head() = NextHead(in);
      absl::StrAppend(&script, down.ShortDebugString(), "\n");
      if (!lane->stream->Write(down)) break;
      wrote = true;
    }
    for (int m = 0; m < messages && in.remaining_bytes() > 0; ++m) {
      const v1::ServeDown down = NextMessage(in);
      absl::StrAppend(&script, down.ShortDebugString().substr(0, 200), "\n");
      if (!lane->stream->Write(down)) break;
      wrote = true;
    }
    if (!wrote) break;
    if (!ReadAnswer(*lane, script)) break;  // the lane is over
  }
  lane->done.Notify();
}

}  // namespace
}  // namespace broker::tunnel

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  FuzzedDataProvider in(data, size);
  broker::tunnel::RunScript(in);
  return 0;
}
