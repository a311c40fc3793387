#pragma once

// Prometheus metrics for every binary's /metrics: counters, gauges and
// histograms in labelled families, rendered in the text exposition format
// (version 0.0.4). Small on purpose: no client library is packaged in
// Debian 12, and the services need only these three kinds.
//
// Thread-safety: everything here may be used from any thread. Updating a
// metric is a few atomic operations; looking up a labelled child takes the
// family's lock, so hot paths keep the reference they got (children live
// as long as the registry).

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace broker::common::metrics {

class Counter {
 public:
  void Increment(std::uint64_t by = 1) {
    value_.fetch_add(by, std::memory_order_relaxed);
  }
  std::uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

class Gauge {
 public:
  void Set(std::int64_t value) {
    value_.store(value, std::memory_order_relaxed);
  }
  void Add(std::int64_t by) { value_.fetch_add(by, std::memory_order_relaxed); }
  std::int64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::int64_t> value_{0};
};

class Histogram {
 public:
  // `bounds`: the buckets' upper bounds, ascending (+Inf is implied).
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<std::uint64_t> cumulative;  // per bound, then +Inf
    double sum = 0;
    std::uint64_t count = 0;
  };
  Snapshot Read() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> counts_;  // bounds_ + 1
  std::atomic<double> sum_{0};
  std::atomic<std::uint64_t> count_{0};
};

// Buckets for request latencies in seconds: 0.5 ms to 5 min.
std::vector<double> LatencySecondsBuckets();

// One metric name with its label names; one child per set of label
// values, created on first use.
template <typename Metric>
class Family {
 public:
  using Factory = std::function<std::unique_ptr<Metric>()>;
  Family(std::string name, std::string help, std::vector<std::string> labels,
         Factory factory)
      : name_(std::move(name)),
        help_(std::move(help)),
        labels_(std::move(labels)),
        factory_(std::move(factory)) {}

  // The child for `values`, one per label name, in order.
  Metric& With(const std::vector<std::string>& values)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::unique_ptr<Metric>& child = children_[values];
    if (child == nullptr) {
      child = factory_();
      order_.push_back({values, child.get()});
    }
    return *child;
  }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& labels() const { return labels_; }
  // The children in creation order.
  std::vector<std::pair<std::vector<std::string>, const Metric*>> Children()
      const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return order_;
  }

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> labels_;
  const Factory factory_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::vector<std::string>, std::unique_ptr<Metric>>
      children_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::vector<std::string>, const Metric*>> order_
      ABSL_GUARDED_BY(mu_);
};

// A value computed when /metrics is read (tunnels per token, lanes...).
struct Sample {
  std::vector<std::string> label_values;
  double value = 0;
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Each name once; the returned family lives as long as the registry.
  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              std::vector<std::string> labels = {})
      ABSL_LOCKS_EXCLUDED(mu_);
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          std::vector<std::string> labels = {})
      ABSL_LOCKS_EXCLUDED(mu_);
  Family<Histogram>& AddHistogram(const std::string& name,
                                  const std::string& help,
                                  std::vector<std::string> labels,
                                  std::vector<double> bounds)
      ABSL_LOCKS_EXCLUDED(mu_);
  // A gauge (or, with `counter`, a counter) whose samples `read` returns
  // at each Render(). `read` runs on the caller's thread and must not
  // block.
  void AddCallback(const std::string& name, const std::string& help,
                   std::vector<std::string> labels,
                   std::function<std::vector<Sample>()> read,
                   bool counter = false) ABSL_LOCKS_EXCLUDED(mu_);

  // Every family in the text exposition format, in the order added.
  std::string Render() const ABSL_LOCKS_EXCLUDED(mu_);

  // The Content-Type of Render()'s text.
  static constexpr char kContentType[] =
      "text/plain; version=0.0.4; charset=utf-8";

 private:
  struct Callback {
    std::string name;
    std::string help;
    std::vector<std::string> labels;
    std::function<std::vector<Sample>()> read;
    bool counter;
  };
  struct Entry {
    std::unique_ptr<Family<Counter>> counter;
    std::unique_ptr<Family<Gauge>> gauge;
    std::unique_ptr<Family<Histogram>> histogram;
    std::unique_ptr<Callback> callback;
  };

  mutable absl::Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::common::metrics
