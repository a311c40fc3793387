#include "services/webhook/egress_channel.h"

#include "common/logging.h"

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

#include <chrono>
#include <climits>
#include <utility>

namespace broker::webhook {

EgressChannel::EgressChannel(std::string target,
                             std::shared_ptr<grpc::Channel> channel)
    : target_(std::move(target)),
      channel_(std::move(channel)),
      stub_(broker::webhook::v1::Egress::NewStub(channel_)),
      watcher_([this] { Watch(); }) {}

EgressChannel::~EgressChannel() {
  {
    // No watch is armed after this; the one pending ends within 250 ms.
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  watch_queue_.Shutdown();
  watcher_.join();
}

void EgressChannel::Watch() {
  constexpr auto kWatchFor = std::chrono::milliseconds(250);
  grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
  auto arm = [&] {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    channel_->NotifyOnStateChange(state,
                                  std::chrono::system_clock::now() + kWatchFor,
                                  &watch_queue_, nullptr);
  };
  arm();
  void* tag = nullptr;
  bool ok = false;
  while (watch_queue_.Next(&tag, &ok)) {
    const grpc_connectivity_state now = channel_->GetState(true);
    if (now != state) {
      BROKER_LOG(kWebhook, kDebug,
                 {{"egress_target", target_},
                  {"state", std::string(ChannelStateName(now))}},
                 "tunnel workers' egress channel is {}",
                 std::string(ChannelStateName(now)));
      state = now;
    }
    arm();
  }
}

std::unique_ptr<EgressChannel> EgressChannel::Create(
    const std::string& target, const std::string& tls_root_certs,
    std::vector<
        std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
        interceptors) {
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(kEgressServiceConfig);
  // A dead worker is noticed within a few seconds even while no event
  // flows (the workers' egress servers permit pings without calls).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // A restarted worker is back in the rotation quickly.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  // Also the shortest connect attempt: room for a busy worker to answer.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  // DNS targets: a worker gone makes the channel resolve again; let that
  // happen every second at most rather than every 30.
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 1000);
  // Never go idle: health is watched all the time, and /healthcheck tells
  // the truth without an event having to wake the channel.
  args.SetInt(GRPC_ARG_CLIENT_IDLE_TIMEOUT_MS, INT_MAX);
  // Body messages are at most 64 KiB; the workers send at most 1 MiB.
  args.SetMaxSendMessageSize(1 << 20);
  args.SetMaxReceiveMessageSize(2 << 20);
  // Plaintext unless BROKER_TUNNEL_EGRESS_CA is set, as the workers'
  // egress listens (same private network; what passes is checked again by
  // the server's private rules).
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::InsecureChannelCredentials();
  if (!tls_root_certs.empty()) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = tls_root_certs;
    credentials = grpc::SslCredentials(tls);
  }
  std::shared_ptr<grpc::Channel> channel =
      grpc::experimental::CreateCustomChannelWithInterceptors(
          target, credentials, args, std::move(interceptors));
  channel->GetState(/*try_to_connect=*/true);
  return std::unique_ptr<EgressChannel>(
      new EgressChannel(target, std::move(channel)));
}

absl::string_view ChannelStateName(grpc_connectivity_state state) {
  switch (state) {
    case GRPC_CHANNEL_IDLE:
      return "IDLE";
    case GRPC_CHANNEL_CONNECTING:
      return "CONNECTING";
    case GRPC_CHANNEL_READY:
      return "READY";
    case GRPC_CHANNEL_TRANSIENT_FAILURE:
      return "TRANSIENT_FAILURE";
    case GRPC_CHANNEL_SHUTDOWN:
      return "SHUTDOWN";
  }
  return "UNKNOWN";
}

}  // namespace broker::webhook
