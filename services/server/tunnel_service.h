#pragma once

#include "services/server/tunnel_registry.h"

#include "broker/tunnel/v1/tunnel.grpc.pb.h"

#include "absl/status/statusor.h"

#include <functional>
#include <memory>
#include <string>

namespace broker::server {

// The gRPC side of the server: accepts workers' Control calls and parks
// their Serve lanes in the registry. Reactors follow STYLE section 2: one
// read and one write in flight, nothing blocking in a reaction, Finish never
// with a write outstanding, each reactor freed after OnDone.
class TunnelService final : public tunnel::v1::Tunnel::CallbackService {
 public:
  explicit TunnelService(TunnelRegistry& registry) : registry_(registry) {}

  grpc::ServerBidiReactor<tunnel::v1::WorkerControl, tunnel::v1::ServerControl>*
  Control(grpc::CallbackServerContext* context) override;

  grpc::ServerBidiReactor<tunnel::v1::ServeUp, tunnel::v1::ServeDown>* Serve(
      grpc::CallbackServerContext* context) override;

 private:
  TunnelRegistry& registry_;
};

// The caller of a tunnel call, from its metadata: `authorization: Bearer
// <token>` and `x-broker-client-id`. The token itself is only hashed.
struct CallIdentity {
  std::string token_hash;
  std::string masked_token;
  std::string client_id;
};
absl::StatusOr<CallIdentity> IdentifyCall(
    const grpc::CallbackServerContext& context);

}  // namespace broker::server
