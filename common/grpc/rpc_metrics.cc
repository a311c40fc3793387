#include "common/grpc/rpc_metrics.h"

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include <utility>
#include <vector>

namespace broker::common::rpc {
namespace {

using ::grpc::experimental::InterceptionHookPoints;

// "/broker.tunnel.v1.Tunnel/Serve" -> {"broker.tunnel.v1.Tunnel", "Serve"}.
std::pair<std::string, std::string> SplitMethod(absl::string_view method) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(absl::StripPrefix(method, "/"), absl::MaxSplits('/', 1));
  if (parts.size() != 2) return {"", std::string(method)};
  return {std::string(parts[0]), std::string(parts[1])};
}

absl::string_view ServerType(::grpc::experimental::ServerRpcInfo::Type type) {
  using Type = ::grpc::experimental::ServerRpcInfo::Type;
  switch (type) {
    case Type::UNARY:
      return "unary";
    case Type::CLIENT_STREAMING:
      return "client_stream";
    case Type::SERVER_STREAMING:
      return "server_stream";
    case Type::BIDI_STREAMING:
      return "bidi_stream";
  }
  return "unknown";
}

absl::string_view ClientType(::grpc::experimental::ClientRpcInfo::Type type) {
  using Type = ::grpc::experimental::ClientRpcInfo::Type;
  switch (type) {
    case Type::UNARY:
      return "unary";
    case Type::CLIENT_STREAMING:
      return "client_stream";
    case Type::SERVER_STREAMING:
      return "server_stream";
    case Type::BIDI_STREAMING:
      return "bidi_stream";
    case Type::UNKNOWN:
      break;
  }
  return "unknown";
}

// One per RPC: counts it when its first metadata passes, and when its
// status does.
class ServerInterceptor final : public ::grpc::experimental::Interceptor {
 public:
  ServerInterceptor(RpcMetrics& metrics,
                    ::grpc::experimental::ServerRpcInfo* info)
      : metrics_(metrics),
        method_(info->method() == nullptr ? "" : info->method()),
        type_(ServerType(info->type())) {}

  void Intercept(
      ::grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      metrics_.Started(method_, type_);
    }
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_.Handled(method_, type_, methods->GetSendStatus().error_code(),
                       absl::ToDoubleSeconds(absl::Now() - start_));
    }
    methods->Proceed();
  }

 private:
  RpcMetrics& metrics_;
  const std::string method_;
  const absl::string_view type_;
  const absl::Time start_ = absl::Now();
};

class ClientInterceptor final : public ::grpc::experimental::Interceptor {
 public:
  ClientInterceptor(RpcMetrics& metrics,
                    ::grpc::experimental::ClientRpcInfo* info)
      : metrics_(metrics),
        method_(info->method() == nullptr ? "" : info->method()),
        type_(ClientType(info->type())) {}

  void Intercept(
      ::grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      metrics_.Started(method_, type_);
    }
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_STATUS)) {
      const ::grpc::Status* status = methods->GetRecvStatus();
      metrics_.Handled(method_, type_,
                       status == nullptr ? ::grpc::StatusCode::UNKNOWN
                                         : status->error_code(),
                       absl::ToDoubleSeconds(absl::Now() - start_));
    }
    methods->Proceed();
  }

 private:
  RpcMetrics& metrics_;
  const std::string method_;
  const absl::string_view type_;
  const absl::Time start_ = absl::Now();
};

class ServerFactory final
    : public ::grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ServerFactory(RpcMetrics& metrics) : metrics_(metrics) {}
  ::grpc::experimental::Interceptor* CreateServerInterceptor(
      ::grpc::experimental::ServerRpcInfo* info) override {
    return new ServerInterceptor(metrics_, info);  // gRPC owns it
  }

 private:
  RpcMetrics& metrics_;
};

class ClientFactory final
    : public ::grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit ClientFactory(RpcMetrics& metrics) : metrics_(metrics) {}
  ::grpc::experimental::Interceptor* CreateClientInterceptor(
      ::grpc::experimental::ClientRpcInfo* info) override {
    return new ClientInterceptor(metrics_, info);  // gRPC owns it
  }

 private:
  RpcMetrics& metrics_;
};

std::string Prefix(RpcMetrics::Side side) {
  return side == RpcMetrics::Side::kServer ? "grpc_server_" : "grpc_client_";
}

}  // namespace

RpcMetrics::RpcMetrics(metrics::Registry& registry, Side side)
    : started_(registry.AddCounter(
          Prefix(side) + "started_total", "RPCs started, by method.",
          {"grpc_service", "grpc_method", "grpc_type"})),
      handled_(registry.AddCounter(
          Prefix(side) + "handled_total",
          "RPCs finished, by method and status code.",
          {"grpc_service", "grpc_method", "grpc_type", "grpc_code"})),
      seconds_(registry.AddHistogram(
          Prefix(side) + "handling_seconds",
          "Time from an RPC's start to its status, by method.",
          {"grpc_service", "grpc_method", "grpc_type"},
          metrics::LatencySecondsBuckets())) {}

std::unique_ptr<::grpc::experimental::ServerInterceptorFactoryInterface>
RpcMetrics::ServerInterceptors() {
  return std::make_unique<ServerFactory>(*this);
}

std::unique_ptr<::grpc::experimental::ClientInterceptorFactoryInterface>
RpcMetrics::ClientInterceptors() {
  return std::make_unique<ClientFactory>(*this);
}

void RpcMetrics::Started(absl::string_view method, absl::string_view type) {
  auto [service, name] = SplitMethod(method);
  started_.With({service, name, std::string(type)}).Increment();
}

void RpcMetrics::Handled(absl::string_view method, absl::string_view type,
                         ::grpc::StatusCode code, double seconds) {
  auto [service, name] = SplitMethod(method);
  handled_
      .With(
          {service, name, std::string(type), std::string(StatusCodeName(code))})
      .Increment();
  seconds_.With({service, name, std::string(type)}).Observe(seconds);
}

absl::string_view StatusCodeName(::grpc::StatusCode code) {
  switch (code) {
    case ::grpc::StatusCode::OK:
      return "OK";
    case ::grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case ::grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case ::grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case ::grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case ::grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case ::grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case ::grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case ::grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case ::grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case ::grpc::StatusCode::ABORTED:
      return "ABORTED";
    case ::grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case ::grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case ::grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case ::grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case ::grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case ::grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      break;
  }
  return "UNKNOWN";
}

}  // namespace broker::common::rpc
