#include "common/metrics.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <thread>
#include <vector>

namespace broker::common::metrics {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, RendersCountersAndGaugesWithLabels) {
  Registry registry;
  auto& requests = registry.AddCounter("broker_requests_total", "Requests.",
                                       {"method", "code"});
  requests.With({"GET", "200"}).Increment();
  requests.With({"GET", "200"}).Increment(2);
  requests.With({"POST", "401"}).Increment();
  registry.AddGauge("broker_tunnels", "Open tunnels.").With({}).Set(4);
  EXPECT_EQ(registry.Render(),
            "# HELP broker_requests_total Requests.\n"
            "# TYPE broker_requests_total counter\n"
            "broker_requests_total{method=\"GET\",code=\"200\"} 3\n"
            "broker_requests_total{method=\"POST\",code=\"401\"} 1\n"
            "# HELP broker_tunnels Open tunnels.\n"
            "# TYPE broker_tunnels gauge\n"
            "broker_tunnels 4\n");
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  Registry registry;
  auto& latency =
      registry.AddHistogram("rpc_seconds", "Latency.", {"m"}, {0.1, 1});
  Histogram& h = latency.With({"Serve"});
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(0.5);
  h.Observe(7);
  const std::string text = registry.Render();
  EXPECT_THAT(text,
              HasSubstr("rpc_seconds_bucket{m=\"Serve\",le=\"0.1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("rpc_seconds_bucket{m=\"Serve\",le=\"1\"} 3\n"));
  EXPECT_THAT(text,
              HasSubstr("rpc_seconds_bucket{m=\"Serve\",le=\"+Inf\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("rpc_seconds_sum{m=\"Serve\"} 8.05\n"));
  EXPECT_THAT(text, HasSubstr("rpc_seconds_count{m=\"Serve\"} 4\n"));
}

TEST(MetricsTest, LabelValuesAreEscaped) {
  Registry registry;
  registry.AddCounter("c", "Help with \\ and\nnewline.", {"v"})
      .With({"a\"b\\c\nd"})
      .Increment();
  const std::string text = registry.Render();
  EXPECT_THAT(text, HasSubstr("# HELP c Help with \\\\ and\\nnewline.\n"));
  EXPECT_THAT(text, HasSubstr("c{v=\"a\\\"b\\\\c\\nd\"} 1\n"));
}

TEST(MetricsTest, CallbacksAreReadAtRender) {
  Registry registry;
  int tunnels = 1;
  registry.AddCallback("broker_tunnels_per_token", "Tunnels.", {"token"},
                       [&tunnels] {
                         return std::vector<Sample>{{{"abc"}, 1.0 * tunnels}};
                       });
  tunnels = 3;
  EXPECT_THAT(registry.Render(),
              HasSubstr("broker_tunnels_per_token{token=\"abc\"} 3\n"));
}

TEST(MetricsTest, ConcurrentUpdatesAreNotLost) {
  Registry registry;
  auto& family = registry.AddCounter("n", "N.", {"t"});
  auto& histogram = registry.AddHistogram("h", "H.", {}, {1});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        family.With({"x"}).Increment();
        histogram.With({}).Observe(0.5);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(family.With({"x"}).Value(), 40000U);
  EXPECT_EQ(histogram.With({}).Read().count, 40000U);
  EXPECT_DOUBLE_EQ(histogram.With({}).Read().sum, 20000);
}

}  // namespace
}  // namespace broker::common::metrics
