#include "common/grpc/rpc_metrics.h"

#include "broker/ha/v1/ha_agent.grpc.pb.h"

#include "grpcpp/grpcpp.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <memory>
#include <utility>
#include <vector>

namespace broker::common::rpc {
namespace {

using ::testing::HasSubstr;

// Report answers OK unless the worker says DISCONNECTED.
class FakeAgent final : public ha::v1::HaAgent::CallbackService {
  grpc::ServerUnaryReactor* Report(grpc::CallbackServerContext* context,
                                   const ha::v1::ReportRequest* request,
                                   ha::v1::ReportResponse*) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(request->state() == ha::v1::ReportRequest::DISCONNECTED
                        ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "no")
                        : grpc::Status::OK);
    return reactor;
  }
};

TEST(RpcMetricsTest, CountsRpcsByMethodAndCodeOnBothSides) {
  metrics::Registry registry;
  RpcMetrics server_rpcs(registry, RpcMetrics::Side::kServer);
  RpcMetrics client_rpcs(registry, RpcMetrics::Side::kClient);
  FakeAgent service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      server_factories;
  server_factories.push_back(server_rpcs.ServerInterceptors());
  builder.experimental().SetInterceptorCreators(std::move(server_factories));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);

  std::vector<
      std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
      client_factories;
  client_factories.push_back(client_rpcs.ClientInterceptors());
  auto channel = grpc::experimental::CreateCustomChannelWithInterceptors(
      absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials(),
      grpc::ChannelArguments(), std::move(client_factories));
  auto stub = ha::v1::HaAgent::NewStub(channel);
  for (auto state :
       {ha::v1::ReportRequest::CONNECTED, ha::v1::ReportRequest::CONNECTED,
        ha::v1::ReportRequest::DISCONNECTED}) {
    grpc::ClientContext context;
    ha::v1::ReportRequest request;
    request.set_state(state);
    ha::v1::ReportResponse response;
    (void)stub->Report(&context, request, &response);
  }
  server->Shutdown();

  const std::string text = registry.Render();
  const std::string labels =
      R"(grpc_service="broker.ha.v1.HaAgent",grpc_method="Report",grpc_type="unary")";
  for (const char* side : {"server", "client"}) {
    SCOPED_TRACE(side);
    EXPECT_THAT(text, HasSubstr(absl::StrCat("grpc_", side, "_started_total{",
                                             labels, "} 3\n")));
    EXPECT_THAT(text, HasSubstr(absl::StrCat("grpc_", side, "_handled_total{",
                                             labels, R"(,grpc_code="OK"} 2)")));
    EXPECT_THAT(text,
                HasSubstr(absl::StrCat("grpc_", side, "_handled_total{", labels,
                                       R"(,grpc_code="UNAVAILABLE"} 1)")));
    EXPECT_THAT(
        text, HasSubstr(absl::StrCat("grpc_", side, "_handling_seconds_count{",
                                     labels, "} 3\n")));
  }
}

TEST(RpcMetricsTest, NamesEveryStatusCode) {
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::RESOURCE_EXHAUSTED),
            "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::UNAUTHENTICATED),
            "UNAUTHENTICATED");
}

}  // namespace
}  // namespace broker::common::rpc
