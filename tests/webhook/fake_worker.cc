#include "tests/webhook/fake_worker.h"

#include "tests/testing/test_origin.h"

#include "broker/webhook/v1/egress.grpc.pb.h"

#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include <algorithm>
#include <atomic>
#include <utility>

namespace broker::testing {
namespace {

using broker::tunnel::v1::DeliverDown;
using broker::tunnel::v1::DeliverUp;
using Mode = FakeWorker::Mode;

constexpr std::size_t kChunk = std::size_t{64} * 1024;

std::string Metadata(const grpc::CallbackServerContext& context,
                     const char* key) {
  auto it = context.client_metadata().find(key);
  if (it == context.client_metadata().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

// One call. Reads the event (one read at a time), then answers (one write
// at a time) and finishes; every path ends in exactly one Finish, never
// with a write outstanding (STYLE 2, rule 5).
class FakeDeliver final
    : public grpc::ServerBidiReactor<DeliverUp, DeliverDown> {
 public:
  FakeDeliver(FakeWorker& worker, const grpc::CallbackServerContext& context)
      : worker_(worker), mode_(worker.mode()) {
    seen_.delivery_id = Metadata(context, "x-broker-delivery-id");
    seen_.attempt = Metadata(context, "x-broker-delivery-attempt");
    worker_.OnCallStarted();
    if (mode_ == Mode::kFailAtOnce) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "fake worker: no tunnel"));
      return;
    }
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The caller closed its side before the end, or the call broke.
      Finish(grpc::Status(grpc::StatusCode::CANCELLED,
                          "fake worker: the event was cut short"));
      return;
    }
    switch (in_.kind_case()) {
      case DeliverUp::kHead:
        seen_.head = in_.head();
        if (seen_.head.body_length() == 0) {
          seen_.complete = true;
          Answer();
          return;
        }
        break;
      case DeliverUp::kBody:
        seen_.body_bytes += in_.body().size();
        sha_.Update(in_.body());
        if (mode_ == Mode::kEcho) body_ += in_.body();
        if (mode_ == Mode::kFailMidBody && seen_.body_bytes >= kChunk) {
          Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "fake worker: died mid-body"));
          return;
        }
        break;
      case DeliverUp::kEnd:
        seen_.complete = true;
        Answer();
        return;
      case DeliverUp::KIND_NOT_SET:
        break;
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "fake worker: gone"));
      return;
    }
    if (mode_ == Mode::kHeadThenDie) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "fake worker: died mid-answer"));
      return;
    }
    if (mode_ == Mode::kEcho && !echo_done_) {
      WriteEcho();
      return;
    }
    Finish(grpc::Status::OK);
  }

  void OnCancel() override { cancelled_ = true; }

  void OnDone() override {
    seen_.body_sha256 = sha_.HexDigest();
    seen_.cancelled = cancelled_.load();
    worker_.OnCallEnded(std::move(seen_));
    delete this;
  }

 private:
  void Answer() {
    switch (mode_) {
      case Mode::kAnswer: {
        auto* head = out_.mutable_head();
        head->set_status(202);
        AddHeader("content-type", "application/json");
        AddHeader("x-fake-worker", worker_.name());
        AddHeader("x-seen-bytes", absl::StrCat(seen_.body_bytes));
        const std::string body =
            absl::StrCat("{\"worker\":\"", worker_.name(),
                         "\",\"delivery_id\":\"", seen_.delivery_id, "\"}");
        head->set_body_length(static_cast<std::int64_t>(body.size()));
        head->set_body(body);
        head->mutable_end();
        StartWrite(&out_);
        return;
      }
      case Mode::kEcho: {
        auto* head = out_.mutable_head();
        head->set_status(200);
        AddHeader("content-type", "application/octet-stream");
        AddHeader("x-fake-worker", worker_.name());
        head->set_body_length(static_cast<std::int64_t>(body_.size()));
        StartWrite(&out_);
        return;
      }
      case Mode::kFailure: {
        auto* failure = out_.mutable_failure();
        failure->set_status(401);
        failure->set_code("FILTER_BLOCKED");
        failure->set_body(
            "{\"code\":\"FILTER_BLOCKED\",\"message\":\"blocked\"}");
        StartWrite(&out_);
        return;
      }
      case Mode::kHeadThenDie: {
        auto* head = out_.mutable_head();
        head->set_status(200);
        head->set_body_length(1000);
        head->set_body(std::string(10, 'x'));
        StartWrite(&out_);
        return;
      }
      case Mode::kBadHead: {
        auto* head = out_.mutable_head();
        head->set_status(42);
        head->set_body_length(2);
        head->set_body("hi");
        StartWrite(&out_);
        return;
      }
      case Mode::kFailAfterBody:
      case Mode::kFailAtOnce:
      case Mode::kFailMidBody:
        break;
    }
    Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "fake worker: the tunnel broke"));
  }

  void WriteEcho() {
    out_.Clear();
    if (echo_offset_ < body_.size()) {
      const std::size_t n = std::min(kChunk, body_.size() - echo_offset_);
      out_.set_body(body_.substr(echo_offset_, n));
      echo_offset_ += n;
    } else {
      out_.mutable_end();
      echo_done_ = true;
    }
    StartWrite(&out_);
  }

  void AddHeader(const std::string& name, const std::string& value) {
    auto* h = out_.mutable_head()->add_headers();
    h->set_name(name);
    h->set_value(value);
  }

  FakeWorker& worker_;
  const Mode mode_;
  FakeWorker::Seen seen_;
  Sha256 sha_;
  std::atomic<bool> cancelled_{false};
  DeliverUp in_;
  DeliverDown out_;
  std::string body_;  // kEcho
  std::size_t echo_offset_ = 0;
  bool echo_done_ = false;
};

}  // namespace

class FakeWorker::Service final
    : public broker::webhook::v1::Egress::CallbackService {
 public:
  explicit Service(FakeWorker& worker) : worker_(worker) {}
  grpc::ServerBidiReactor<DeliverUp, DeliverDown>* Deliver(
      grpc::CallbackServerContext* context) override {
    return new FakeDeliver(worker_, *context);
  }

 private:
  FakeWorker& worker_;
};

FakeWorker::FakeWorker(std::string name, Mode mode)
    : name_(std::move(name)), mode_(mode) {}

absl::StatusOr<std::unique_ptr<FakeWorker>> FakeWorker::Start(std::string name,
                                                              Mode mode) {
  // Process-wide; must come before the server is built.
  grpc::EnableDefaultHealthCheckService(true);
  std::unique_ptr<FakeWorker> worker(new FakeWorker(std::move(name), mode));
  worker->service_ = std::make_unique<Service>(*worker);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &worker->port_);
  builder.RegisterService(worker->service_.get());
  builder.SetMaxReceiveMessageSize(1 << 20);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  worker->server_ = builder.BuildAndStart();
  if (worker->server_ == nullptr || worker->port_ == 0) {
    return absl::UnavailableError("fake worker: cannot listen");
  }
  worker->SetServing(true);
  return worker;
}

FakeWorker::~FakeWorker() { Stop(); }

std::string FakeWorker::address() const {
  return absl::StrCat("127.0.0.1:", port_);
}

void FakeWorker::SetServing(bool serving) {
  if (server_ == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health != nullptr) health->SetServingStatus(serving);
}

void FakeWorker::SetMode(Mode mode) {
  absl::MutexLock lock(&mu_);
  mode_ = mode;
}

FakeWorker::Mode FakeWorker::mode() const {
  absl::MutexLock lock(&mu_);
  return mode_;
}

void FakeWorker::Stop() {
  if (server_ == nullptr) return;
  server_->Shutdown(absl::ToChronoTime(absl::Now()));
  server_->Wait();
  server_.reset();
}

int FakeWorker::calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

std::vector<FakeWorker::Seen> FakeWorker::seen() const {
  absl::MutexLock lock(&mu_);
  return seen_;
}

int FakeWorker::CompleteWithId(const std::string& delivery_id) const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(
      std::count_if(seen_.begin(), seen_.end(), [&](const Seen& s) {
        return s.complete && s.delivery_id == delivery_id;
      }));
}

bool FakeWorker::WaitForEnded(int n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto ended = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<int>(seen_.size()) >= n;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&ended), timeout);
}

bool FakeWorker::WaitForDelivery(const std::string& delivery_id,
                                 absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto ended = [this, &delivery_id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::any_of(seen_.begin(), seen_.end(), [&](const Seen& s) {
      return s.delivery_id == delivery_id;
    });
  };
  return mu_.AwaitWithTimeout(absl::Condition(&ended), timeout);
}

void FakeWorker::OnCallStarted() {
  absl::MutexLock lock(&mu_);
  ++calls_;
}

void FakeWorker::OnCallEnded(Seen seen) {
  absl::MutexLock lock(&mu_);
  seen_.push_back(std::move(seen));
}

}  // namespace broker::testing
