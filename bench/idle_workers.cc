// idle_workers: connects N idle workers to a broker-server's tunnel port, the
// way broker-tunnel does, so that bench/run_data_path_bench.sh can measure
// what an idle connected worker costs the server.
//
//   idle_workers --target 127.0.0.1:<tunnel port> [--workers 1000]
//                [--lanes 16] [--batch 50] [--hold-seconds 300]
//
// Each worker gets its own gRPC channel (its own TCP connection), its own
// token and client id, a Control call that sends the Hello and waits for the
// Welcome, then `lanes` parked Serve calls that each sent their LaneReady
// (services/tunnel/broker_tunnel.cc: Worker::Connect, ServeLane::Open).
// Once every worker is up (or failed) it prints one JSON line with
// "ready":true and holds the calls open until SIGTERM/SIGINT (or
// --hold-seconds), then cancels them and exits.
//
// Threading: main() starts calls and waits; the reactors run on gRPC's
// callback threads and only touch the Fleet's counters (under its mutex).

#include "common/token.h"
#include "common/uuid.h"

#include "broker/tunnel/v1/tunnel.grpc.pb.h"

#include "grpcpp/grpcpp.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace broker::bench {
namespace {

namespace v1 = ::broker::tunnel::v1;

// What the reactors report. Thread-safe.
class Fleet {
 public:
  void Welcomed() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++welcomed_;
  }
  void ControlEnded(bool before_welcome, const grpc::Status& status)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++controls_done_;
    if (before_welcome) {
      ++failed_;
      last_error_ =
          absl::StrCat(status.error_code(), ": ", status.error_message());
    }
  }
  void LaneSent(bool ok) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++(ok ? lanes_ready_ : lanes_failed_);
  }
  void LaneEnded() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++lanes_done_;
  }

  // Each waits until the counts reach the targets, or the deadline; false
  // on timeout.
  bool AwaitControls(int controls, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    controls_target_ = controls;
    return mu_.AwaitWithDeadline(absl::Condition(this, &Fleet::ControlsSettled),
                                 deadline);
  }
  bool AwaitLanes(int lanes, absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    lanes_target_ = lanes;
    return mu_.AwaitWithDeadline(absl::Condition(this, &Fleet::LanesSettled),
                                 deadline);
  }
  bool AwaitAllEnded(int controls, int lanes, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    controls_target_ = controls;
    lanes_target_ = lanes;
    return mu_.AwaitWithDeadline(absl::Condition(this, &Fleet::AllEnded),
                                 deadline);
  }

  nlohmann::json Json() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    nlohmann::json out = {{"welcomed", welcomed_},
                          {"failed", failed_},
                          {"lanes_ready", lanes_ready_},
                          {"lanes_failed", lanes_failed_}};
    if (!last_error_.empty()) out["last_error"] = last_error_;
    return out;
  }

 private:
  bool ControlsSettled() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return welcomed_ + failed_ >= controls_target_;
  }
  bool LanesSettled() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return lanes_ready_ + lanes_failed_ >= lanes_target_;
  }
  bool AllEnded() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return controls_done_ >= controls_target_ && lanes_done_ >= lanes_target_;
  }

  mutable absl::Mutex mu_;
  int welcomed_ ABSL_GUARDED_BY(mu_) = 0;
  int failed_ ABSL_GUARDED_BY(mu_) = 0;
  int controls_done_ ABSL_GUARDED_BY(mu_) = 0;
  int lanes_ready_ ABSL_GUARDED_BY(mu_) = 0;
  int lanes_failed_ ABSL_GUARDED_BY(mu_) = 0;
  int lanes_done_ ABSL_GUARDED_BY(mu_) = 0;
  int controls_target_ ABSL_GUARDED_BY(mu_) = 0;
  int lanes_target_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
};

void AddIdentity(grpc::ClientContext& context, const std::string& token,
                 const std::string& client_id) {
  context.AddMetadata("authorization", "Bearer " + token);
  context.AddMetadata("x-broker-client-id", client_id);
}

// The Control call: Hello out, Welcome in, then reads until the call ends.
// Owned by its Worker, which outlives OnDone.
class ControlCall final
    : public grpc::ClientBidiReactor<v1::WorkerControl, v1::ServerControl> {
 public:
  ControlCall(Fleet& fleet, v1::Tunnel::Stub& stub, const std::string& token,
              const std::string& client_id, int lanes)
      : fleet_(fleet) {
    AddIdentity(context_, token, client_id);
    v1::Hello* hello = hello_.mutable_hello();
    hello->set_client_id(client_id);
    hello->set_role("primary");
    hello->set_version("bench-idle-workers");
    hello->add_capabilities("lanes");
    hello->set_token_hash(common::HashToken(token));
    hello->set_rules_digest("bench");
    hello->set_lane_pool_size(static_cast<std::uint32_t>(lanes));
    stub.async()->Control(&context_, this);
    StartWrite(&hello_);
    StartRead(&in_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (in_.has_welcome() && !welcomed_.exchange(true)) fleet_.Welcomed();
    StartRead(&in_);
  }

  void OnDone(const grpc::Status& status) override {
    fleet_.ControlEnded(!welcomed_.load(), status);
  }

  bool welcomed() const { return welcomed_.load(); }
  void Cancel() { context_.TryCancel(); }

 private:
  Fleet& fleet_;
  grpc::ClientContext context_;
  v1::WorkerControl hello_;
  v1::ServerControl in_;
  std::atomic<bool> welcomed_{false};
};

// A parked Serve call: LaneReady out, then a read that only ends with the
// call (no request will come).
class ServeLane final
    : public grpc::ClientBidiReactor<v1::ServeUp, v1::ServeDown> {
 public:
  ServeLane(Fleet& fleet, v1::Tunnel::Stub& stub, const std::string& token,
            const std::string& client_id)
      : fleet_(fleet) {
    AddIdentity(context_, token, client_id);
    ready_.mutable_ready();
    stub.async()->Serve(&context_, this);
    StartWrite(&ready_);
    StartRead(&in_);
    StartCall();
  }

  void OnWriteDone(bool ok) override { fleet_.LaneSent(ok); }
  void OnReadDone(bool /*ok*/) override {}
  void OnDone(const grpc::Status& /*status*/) override { fleet_.LaneEnded(); }
  void Cancel() { context_.TryCancel(); }

 private:
  Fleet& fleet_;
  grpc::ClientContext context_;
  v1::ServeUp ready_;
  v1::ServeDown in_;
};

// One idle worker: a channel of its own and its calls.
struct Worker {
  std::string token;
  std::string client_id;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Tunnel::Stub> stub;
  std::unique_ptr<ControlCall> control;
  std::vector<std::unique_ptr<ServeLane>> lanes;
};

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target) {
  grpc::ChannelArguments args;
  // Without this, channels with equal arguments share one connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                   args);
}

int Main(int argc, char** argv) {
  std::map<std::string, std::string> flags = {{"workers", "1000"},
                                              {"lanes", "16"},
                                              {"batch", "50"},
                                              {"hold-seconds", "300"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (!absl::StartsWith(key, "--")) break;
    flags[key.substr(2)] = argv[i + 1];
  }
  int workers = 0;
  int lanes = 0;
  int batch = 0;
  int hold_seconds = 0;
  if (flags["target"].empty() ||
      !absl::SimpleAtoi(flags["workers"], &workers) ||
      !absl::SimpleAtoi(flags["lanes"], &lanes) ||
      !absl::SimpleAtoi(flags["batch"], &batch) ||
      !absl::SimpleAtoi(flags["hold-seconds"], &hold_seconds) || workers < 1 ||
      lanes < 0 || batch < 1) {
    std::cerr << "usage: idle_workers --target host:port [--workers 1000] "
                 "[--lanes 16] [--batch 50] [--hold-seconds 300]\n";
    return 2;
  }

  // Only sigtimedwait() below receives the stop signals.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  Fleet fleet;
  std::vector<Worker> fleet_workers(static_cast<std::size_t>(workers));
  const absl::Time start = absl::Now();
  const absl::Duration step_timeout = absl::Seconds(30);
  // In batches, so the server's accept backlog is never the bottleneck.
  for (int first = 0; first < workers; first += batch) {
    const int end = std::min(workers, first + batch);
    for (int i = first; i < end; ++i) {
      Worker& w = fleet_workers[static_cast<std::size_t>(i)];
      // A token of its own: the server caps the clients of one token.
      w.token = absl::StrCat("bench-idle-", i, "-", common::NewUuid());
      w.client_id = common::NewUuid();
      w.channel = NewChannel(flags["target"]);
      w.stub = v1::Tunnel::NewStub(w.channel);
      w.control = std::make_unique<ControlCall>(fleet, *w.stub, w.token,
                                                w.client_id, lanes);
    }
    if (!fleet.AwaitControls(end, absl::Now() + step_timeout)) break;
    // Lanes only after the Welcome: the server parks lanes of known workers.
    for (int i = first; i < end; ++i) {
      Worker& w = fleet_workers[static_cast<std::size_t>(i)];
      if (!w.control->welcomed()) continue;
      for (int l = 0; l < lanes; ++l) {
        w.lanes.push_back(
            std::make_unique<ServeLane>(fleet, *w.stub, w.token, w.client_id));
      }
    }
  }
  int lanes_opened = 0;
  for (const Worker& w : fleet_workers) {
    lanes_opened += static_cast<int>(w.lanes.size());
  }
  const bool settled =
      fleet.AwaitLanes(lanes_opened, absl::Now() + step_timeout);
  nlohmann::json out = fleet.Json();
  out["ready"] = true;
  out["settled"] = settled;
  out["workers"] = workers;
  out["lanes_per_worker"] = lanes;
  out["seconds"] = absl::ToDoubleSeconds(absl::Now() - start);
  std::cout << out.dump() << std::endl;

  timespec hold{hold_seconds, 0};
  sigtimedwait(&stop_signals, nullptr, &hold);

  int controls = 0;
  for (Worker& w : fleet_workers) {
    if (w.control) {
      w.control->Cancel();
      ++controls;
    }
    for (auto& lane : w.lanes) lane->Cancel();
  }
  if (!fleet.AwaitAllEnded(controls, lanes_opened,
                           absl::Now() + absl::Seconds(20))) {
    // Reactors still running must not be destroyed under gRPC: leave now.
    std::cerr << "idle_workers: calls did not end in 20 s\n";
    std::quick_exit(1);
  }
  return 0;
}

}  // namespace
}  // namespace broker::bench

int main(int argc, char** argv) {
  try {
    return broker::bench::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "idle_workers: " << e.what() << "\n";
  } catch (...) {
    std::cerr << "idle_workers: unknown exception\n";
  }
  return 1;
}
