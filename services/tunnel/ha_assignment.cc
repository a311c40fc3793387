#include "services/tunnel/ha_assignment.h"

#include "common/env_config.h"
#include "common/executor.h"
#include "common/grpc/rpc_metrics.h"
#include "common/logging.h"
#include "common/uuid.h"

#include "broker/ha/v1/ha_agent.grpc.pb.h"

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/client_callback.h>

#include "absl/base/thread_annotations.h"
#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

namespace broker::tunnel {
namespace {

constexpr size_t kMaxQueuedReports = 32;

class WatcherImpl;

// How many of the watcher's gRPC call objects still exist. Each holds a
// Token as its first member, which is destroyed last, after the call's
// ClientContext: gRPC has let go of the call by then (a unary callback's
// captures outlive the callback, and gRPC unrefs the call between the
// two). Shutdown() waits for none, so that destroying the channel next,
// and perhaps gRPC itself, never races a gRPC thread still finishing a
// call.
class LiveCalls {
 public:
  class Token {
   public:
    explicit Token(std::shared_ptr<LiveCalls> calls)
        : calls_(std::move(calls)) {
      calls_->Add(1);
    }
    ~Token() { calls_->Add(-1); }
    Token(const Token&) = delete;
    Token& operator=(const Token&) = delete;

   private:
    // Shared: the count outlives the watcher while the last token goes.
    std::shared_ptr<LiveCalls> calls_;
  };

  void WaitForNone() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto none = [this]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return count_ == 0; };
    mu_.Await(absl::Condition(&none));
  }

 private:
  void Add(int delta) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    count_ += delta;
  }

  absl::Mutex mu_;
  int count_ ABSL_GUARDED_BY(mu_) = 0;
};

// One Watch stream. Owned by itself (`self_`) until OnDone; the watcher
// keeps a shared_ptr only to cancel it.
class WatchStream final : public grpc::ClientReadReactor<ha::v1::Assignment> {
 public:
  WatchStream(WatcherImpl& watcher, std::shared_ptr<LiveCalls> calls)
      : token_(std::move(calls)), watcher_(watcher) {}

  // `self` keeps this alive until OnDone; the caller keeps its own copy
  // across the call (OnDone may run inside StartCall()).
  void Begin(ha::v1::HaAgent::Stub& stub, ha::v1::WatchRequest request,
             std::shared_ptr<WatchStream> self) {
    self_ = std::move(self);
    request_ = std::move(request);
    // A stream to an agent that is away waits for it instead of failing.
    context_.set_wait_for_ready(true);
    stub.async()->Watch(&context_, &request_, this);
    StartRead(&in_);
    StartCall();
  }

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

  void Cancel() { context_.TryCancel(); }

 private:
  const LiveCalls::Token token_;  // first: destroyed last
  WatcherImpl& watcher_;
  std::shared_ptr<WatchStream> self_;
  grpc::ClientContext context_;
  ha::v1::WatchRequest request_;
  ha::v1::Assignment in_;
  bool received_ = false;  // only touched by this stream's reactions
};

// One Report call: its context and messages live until its callback.
struct ReportCall {
  explicit ReportCall(std::shared_ptr<LiveCalls> calls)
      : token(std::move(calls)) {}
  const LiveCalls::Token token;  // first: destroyed last
  grpc::ClientContext context;
  ha::v1::ReportRequest request;
  ha::v1::ReportResponse response;
};

class WatcherImpl final : public AssignmentWatcher {
 public:
  WatcherImpl(AssignmentWatcherOptions options, Callback on_assignment)
      : options_(std::move(options)),
        worker_id_(options_.worker_id.empty() ? common::NewUuid()
                                              : options_.worker_id),
        on_assignment_(std::move(on_assignment)),
        executor_(1),
        reconnect_timer_(executor_.io()),
        backoff_(options_.backoff_initial) {
    grpc::ChannelArguments args;
    // The agent is a sidecar on loopback: reconnecting is cheap, and a
    // restarted agent should be found at once.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetMaxReceiveMessageSize(1 << 20);
    if (options_.rpc_metrics == nullptr) {
      channel_ = grpc::CreateCustomChannel(
          options_.agent_address, grpc::InsecureChannelCredentials(), args);
    } else {
      std::vector<std::unique_ptr<
          grpc::experimental::ClientInterceptorFactoryInterface>>
          interceptors;
      interceptors.push_back(options_.rpc_metrics->ClientInterceptors());
      channel_ = grpc::experimental::CreateCustomChannelWithInterceptors(
          options_.agent_address, grpc::InsecureChannelCredentials(), args,
          std::move(interceptors));
    }
    stub_ = ha::v1::HaAgent::NewStub(channel_);
  }

  // NOLINTNEXTLINE(bugprone-exception-escape): only allocation failures.
  ~WatcherImpl() override { Shutdown(); }

  std::optional<ha::v1::Assignment> Current() const override
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return current_;
  }

  void Report(ha::v1::ReportRequest::TunnelState state,
              const std::string& server_id, const std::string& detail) override
      ABSL_LOCKS_EXCLUDED(mu_);
  void Shutdown() override ABSL_LOCKS_EXCLUDED(mu_);
  const std::string& worker_id() const override { return worker_id_; }

  void StartStream() ABSL_LOCKS_EXCLUDED(mu_);
  // From the stream's reactions.
  void OnAssignment(const ha::v1::Assignment& assignment)
      ABSL_LOCKS_EXCLUDED(mu_);
  void OnStreamDone(const WatchStream* stream, const grpc::Status& status,
                    bool received) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // The next report to send, taking the in-flight slot; null when none.
  std::shared_ptr<ReportCall> NextReportLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendReport(const std::shared_ptr<ReportCall>& call)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Deliver(const ha::v1::Assignment& assignment) ABSL_LOCKS_EXCLUDED(mu_);

  const AssignmentWatcherOptions options_;
  const std::string worker_id_;
  Callback on_assignment_;  // only on the executor's thread
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<ha::v1::HaAgent::Stub> stub_;
  common::Executor executor_;  // callbacks and the reconnect timer
  const std::shared_ptr<LiveCalls> live_calls_ = std::make_shared<LiveCalls>();

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<ha::v1::Assignment> current_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<WatchStream> stream_ ABSL_GUARDED_BY(mu_);
  bool stream_running_ ABSL_GUARDED_BY(mu_) = false;
  bool connected_logged_ ABSL_GUARDED_BY(mu_) = false;
  boost::asio::steady_timer reconnect_timer_ ABSL_GUARDED_BY(mu_);
  absl::Duration backoff_ ABSL_GUARDED_BY(mu_);
  absl::BitGen gen_ ABSL_GUARDED_BY(mu_);
  std::deque<ha::v1::ReportRequest> reports_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<ReportCall> report_in_flight_ ABSL_GUARDED_BY(mu_);
};

void WatchStream::OnReadDone(bool ok) {
  if (!ok) return;  // OnDone follows with the status
  received_ = true;
  watcher_.OnAssignment(in_);
  StartRead(&in_);
}

void WatchStream::OnDone(const grpc::Status& status) {
  watcher_.OnStreamDone(this, status, received_);
  std::shared_ptr<WatchStream> self = std::move(self_);  // may delete this
}

void WatcherImpl::StartStream() {
  ha::v1::WatchRequest request;
  request.set_worker_id(worker_id_);
  std::shared_ptr<WatchStream> stream;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || stream_running_) return;
    if (current_.has_value()) {
      request.set_client_id(current_->client_id());
      request.set_server_id(current_->server_id());
      request.set_tunnel_url(current_->tunnel_url());
    }
    stream = std::make_shared<WatchStream>(*this, live_calls_);
    stream_ = stream;
    stream_running_ = true;
  }
  stream->Begin(*stub_, std::move(request), stream);
}

void WatcherImpl::OnAssignment(const ha::v1::Assignment& assignment) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    current_ = assignment;
    if (!connected_logged_) {
      connected_logged_ = true;
      BROKER_LOG(kTunnel, kInfo,
                 {{"agent", options_.agent_address}, {"worker_id", worker_id_}},
                 "watching the ha-agent for tunnel assignments");
    }
  }
  executor_.Post([this, assignment] { Deliver(assignment); });
}

void WatcherImpl::Deliver(const ha::v1::Assignment& assignment) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
  }
  on_assignment_(assignment);
}

void WatcherImpl::OnStreamDone(const WatchStream* stream,
                               const grpc::Status& status, bool received) {
  absl::MutexLock lock(&mu_);
  if (stream_.get() == stream) {
    stream_.reset();
    stream_running_ = false;
  }
  if (stopping_) return;
  if (received) backoff_ = options_.backoff_initial;
  if (connected_logged_) {
    connected_logged_ = false;
    BROKER_LOG(kTunnel, kWarn,
               {{"agent", options_.agent_address},
                {"worker_id", worker_id_},
                {"grpc_status", static_cast<int>(status.error_code())},
                {"error", status.error_message()}},
               "lost the ha-agent's assignment stream; watching again");
  }
  // Jittered: [b/2, b], then the base doubles up to the maximum.
  const int64_t max_us = absl::ToInt64Microseconds(backoff_);
  const absl::Duration delay = absl::Microseconds(absl::Uniform<int64_t>(
      absl::IntervalClosedClosed, gen_, max_us / 2, max_us));
  backoff_ = std::min(backoff_ * 2, options_.backoff_max);
  reconnect_timer_.expires_after(absl::ToChronoMicroseconds(delay));
  reconnect_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) StartStream();
  });
}

void WatcherImpl::Report(ha::v1::ReportRequest::TunnelState state,
                         const std::string& server_id,
                         const std::string& detail) {
  std::shared_ptr<ReportCall> call;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    ha::v1::ReportRequest request;
    request.set_worker_id(worker_id_);
    if (current_.has_value()) request.set_client_id(current_->client_id());
    request.set_state(state);
    request.set_server_id(server_id);
    request.set_detail(detail);
    reports_.push_back(std::move(request));
    while (reports_.size() > kMaxQueuedReports) reports_.pop_front();
    if (report_in_flight_ != nullptr) return;
    call = NextReportLocked();
  }
  SendReport(call);
}

std::shared_ptr<ReportCall> WatcherImpl::NextReportLocked() {
  if (stopping_ || reports_.empty()) return nullptr;
  auto call = std::make_shared<ReportCall>(live_calls_);
  call->request = std::move(reports_.front());
  reports_.pop_front();
  call->context.set_deadline(
      absl::ToChronoTime(absl::Now() + options_.report_timeout));
  report_in_flight_ = call;
  return call;
}

void WatcherImpl::SendReport(const std::shared_ptr<ReportCall>& call) {
  if (call == nullptr) return;
  ReportCall* raw = call.get();
  // The callback may run inside Report() (a call that fails at once); the
  // recursion is then bounded by the queue's length.
  stub_->async()->Report(
      &raw->context, &raw->request, &raw->response,
      [this, call](const grpc::Status& status) {
        if (!status.ok() &&
            status.error_code() != grpc::StatusCode::CANCELLED) {
          BROKER_LOG(kTunnel, kDebug,
                     {{"agent", options_.agent_address},
                      {"grpc_status", static_cast<int>(status.error_code())},
                      {"error", status.error_message()}},
                     "tunnel report to the ha-agent failed");
        }
        std::shared_ptr<ReportCall> next;
        {
          absl::MutexLock lock(&mu_);
          if (report_in_flight_ == call) report_in_flight_.reset();
          next = NextReportLocked();
        }
        SendReport(next);
      });
}

void WatcherImpl::Shutdown() {
  std::shared_ptr<WatchStream> stream;
  std::shared_ptr<ReportCall> report;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    reconnect_timer_.cancel();
    reports_.clear();
    stream = stream_;
    report = report_in_flight_;
  }
  if (stream != nullptr) stream->Cancel();
  if (report != nullptr) report->context.TryCancel();
  stream.reset();
  report.reset();
  {
    absl::MutexLock lock(&mu_);
    auto ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !stream_running_ && report_in_flight_ == nullptr;
    };
    mu_.Await(absl::Condition(&ended));
  }
  live_calls_->WaitForNone();
  // Joins the callback thread: a callback in progress returns first.
  executor_.Stop();
}

}  // namespace

absl::StatusOr<TunnelEndpoint> EndpointFor(
    const ha::v1::Assignment& assignment) {
  if (assignment.state() != ha::v1::Assignment::ASSIGNED &&
      assignment.state() != ha::v1::Assignment::HA_DISABLED) {
    return absl::FailedPreconditionError(
        absl::StrCat("no tunnel to open: ",
                     ha::v1::Assignment::State_Name(assignment.state()), " (",
                     assignment.detail(), ")"));
  }
  const std::string& url = assignment.tunnel_url();
  if (url.empty()) {
    return absl::FailedPreconditionError("the assignment has no tunnel_url");
  }
  TunnelEndpoint endpoint;
  endpoint.url = url;
  const absl::string_view without_fragment =
      absl::string_view(url).substr(0, url.find('#'));
  const size_t question = without_fragment.find('?');
  endpoint.server_url = std::string(without_fragment.substr(0, question));
  if (question != absl::string_view::npos) {
    endpoint.query = std::string(without_fragment.substr(question + 1));
  }
  auto parsed = common::ParseHttpUrl(endpoint.server_url);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tunnel_url: ", parsed.status().message()));
  }
  endpoint.grpc_target = absl::StrCat(parsed->host, ":", parsed->port);
  endpoint.tls = parsed->scheme == "https";
  endpoint.server_id = assignment.server_id();
  endpoint.client_id = assignment.client_id();
  return endpoint;
}

bool SameTunnel(const ha::v1::Assignment& a, const ha::v1::Assignment& b) {
  return a.state() == b.state() && a.client_id() == b.client_id() &&
         a.server_id() == b.server_id() && a.tunnel_url() == b.tunnel_url();
}

absl::StatusOr<std::unique_ptr<AssignmentWatcher>> AssignmentWatcher::Create(
    AssignmentWatcherOptions options, Callback on_assignment) {
  if (options.agent_address.empty()) {
    return absl::InvalidArgumentError(
        "BROKER_HA_AGENT_ADDR: the ha-agent's host:port is required");
  }
  if (on_assignment == nullptr) {
    return absl::InvalidArgumentError("an assignment callback is required");
  }
  if (options.backoff_initial <= absl::ZeroDuration() ||
      options.backoff_max < options.backoff_initial) {
    return absl::InvalidArgumentError("inconsistent watch backoff");
  }
  auto watcher = std::make_unique<WatcherImpl>(std::move(options),
                                               std::move(on_assignment));
  watcher->StartStream();
  return watcher;
}

}  // namespace broker::tunnel
