#pragma once

// gRPC interceptors shared by every service (server and client side): per
// method, RPCs started and finished by status code, and their latency, as
// the Prometheus families the Go and Java gRPC ecosystems use
// (grpc_server_started_total, grpc_server_handled_total{grpc_code},
// grpc_server_handling_seconds, and grpc_client_* likewise).
//
//   common::rpc::RpcMetrics server_rpcs(registry, RpcMetrics::Side::kServer);
//   std::vector<std::unique_ptr<ServerInterceptorFactoryInterface>> f;
//   f.push_back(server_rpcs.ServerInterceptors());
//   builder.experimental().SetInterceptorCreators(std::move(f));
//
// Thread-safe; interceptors run on gRPC threads and never block.

#include "common/metrics.h"

#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/status.h"

#include "absl/strings/string_view.h"

#include <memory>
#include <string>

namespace broker::common::rpc {

class RpcMetrics {
 public:
  enum class Side { kServer, kClient };
  // Adds the three families to `registry`, which must outlive this.
  RpcMetrics(metrics::Registry& registry, Side side);

  // For ServerBuilder::experimental().SetInterceptorCreators() (kServer).
  std::unique_ptr<::grpc::experimental::ServerInterceptorFactoryInterface>
  ServerInterceptors();
  // For grpc::experimental::CreateCustomChannelWithInterceptors() (kClient).
  std::unique_ptr<::grpc::experimental::ClientInterceptorFactoryInterface>
  ClientInterceptors();

  // What the interceptors record; `method` is "/package.Service/Method".
  void Started(absl::string_view method, absl::string_view type);
  void Handled(absl::string_view method, absl::string_view type,
               ::grpc::StatusCode code, double seconds);

 private:
  metrics::Family<metrics::Counter>& started_;
  metrics::Family<metrics::Counter>& handled_;
  metrics::Family<metrics::Histogram>& seconds_;
};

// "OK", "CANCELLED", ... as gRPC spells the codes.
absl::string_view StatusCodeName(::grpc::StatusCode code);

}  // namespace broker::common::rpc
