#include "common/metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace broker::common::metrics {
namespace {

// Label values escape backslash, double quote and newline; HELP text
// escapes backslash and newline (exposition format 0.0.4).
std::string Escape(const std::string& text, bool quote) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Number(double value) {
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (std::isnan(value)) return "NaN";
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    return absl::StrCat(static_cast<std::int64_t>(value));
  }
  return absl::StrFormat("%.9g", value);
}

// {a="x",b="y"} (with `extra` appended, e.g. le="0.5"), or "" without labels.
std::string LabelText(const std::vector<std::string>& names,
                      const std::vector<std::string>& values,
                      const std::string& extra = "") {
  std::string out;
  const std::size_t n = std::min(names.size(), values.size());
  for (std::size_t i = 0; i < n; ++i) {
    absl::StrAppend(&out, out.empty() ? "" : ",", names[i], "=\"",
                    Escape(values[i], /*quote=*/true), "\"");
  }
  if (!extra.empty()) absl::StrAppend(&out, out.empty() ? "" : ",", extra);
  return out.empty() ? out : absl::StrCat("{", out, "}");
}

void Header(std::string& out, const std::string& name, const std::string& help,
            const char* type) {
  absl::StrAppend(&out, "# HELP ", name, " ", Escape(help, /*quote=*/false),
                  "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(new std::atomic<std::uint64_t>[bounds_.size() + 1]) {
  for (std::size_t i = 0; i <= bounds_.size(); ++i) counts_[i] = 0;
}

void Histogram::Observe(double value) {
  const auto bucket = static_cast<std::size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) -
      bounds_.begin());
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  double sum = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(sum, sum + value,
                                     std::memory_order_relaxed)) {
  }
  count_.fetch_add(1, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative.push_back(running);
  }
  snapshot.count = running;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

std::vector<double> LatencySecondsBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
          0.5,    1,     2.5,    5,     10,   30,    60,   300};
}

Family<Counter>& Registry::AddCounter(const std::string& name,
                                      const std::string& help,
                                      std::vector<std::string> labels) {
  absl::MutexLock lock(&mu_);
  Entry entry;
  entry.counter = std::make_unique<Family<Counter>>(
      name, help, std::move(labels),
      [] { return std::make_unique<Counter>(); });
  entries_.push_back(std::move(entry));
  return *entries_.back().counter;
}

Family<Gauge>& Registry::AddGauge(const std::string& name,
                                  const std::string& help,
                                  std::vector<std::string> labels) {
  absl::MutexLock lock(&mu_);
  Entry entry;
  entry.gauge = std::make_unique<Family<Gauge>>(
      name, help, std::move(labels), [] { return std::make_unique<Gauge>(); });
  entries_.push_back(std::move(entry));
  return *entries_.back().gauge;
}

Family<Histogram>& Registry::AddHistogram(const std::string& name,
                                          const std::string& help,
                                          std::vector<std::string> labels,
                                          std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  Entry entry;
  entry.histogram = std::make_unique<Family<Histogram>>(
      name, help, std::move(labels), [bounds = std::move(bounds)] {
        return std::make_unique<Histogram>(bounds);
      });
  entries_.push_back(std::move(entry));
  return *entries_.back().histogram;
}

void Registry::AddCallback(const std::string& name, const std::string& help,
                           std::vector<std::string> labels,
                           std::function<std::vector<Sample>()> read,
                           bool counter) {
  absl::MutexLock lock(&mu_);
  Entry entry;
  entry.callback = std::make_unique<Callback>(
      Callback{name, help, std::move(labels), std::move(read), counter});
  entries_.push_back(std::move(entry));
}

std::string Registry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const Entry& entry : entries_) {
    if (entry.counter) {
      const Family<Counter>& f = *entry.counter;
      Header(out, f.name(), f.help(), "counter");
      for (const auto& [values, counter] : f.Children()) {
        absl::StrAppend(&out, f.name(), LabelText(f.labels(), values), " ",
                        counter->Value(), "\n");
      }
    } else if (entry.gauge) {
      const Family<Gauge>& f = *entry.gauge;
      Header(out, f.name(), f.help(), "gauge");
      for (const auto& [values, gauge] : f.Children()) {
        absl::StrAppend(&out, f.name(), LabelText(f.labels(), values), " ",
                        gauge->Value(), "\n");
      }
    } else if (entry.histogram) {
      const Family<Histogram>& f = *entry.histogram;
      Header(out, f.name(), f.help(), "histogram");
      for (const auto& [values, histogram] : f.Children()) {
        const Histogram::Snapshot s = histogram->Read();
        const std::vector<double>& bounds = histogram->bounds();
        for (std::size_t i = 0; i <= bounds.size(); ++i) {
          const std::string le = absl::StrCat(
              "le=\"",
              i < bounds.size() ? Number(bounds[i]) : std::string("+Inf"),
              "\"");
          absl::StrAppend(&out, f.name(), "_bucket",
                          LabelText(f.labels(), values, le), " ",
                          s.cumulative[i], "\n");
        }
        absl::StrAppend(&out, f.name(), "_sum", LabelText(f.labels(), values),
                        " ", Number(s.sum), "\n", f.name(), "_count",
                        LabelText(f.labels(), values), " ", s.count, "\n");
      }
    } else if (entry.callback) {
      const Callback& c = *entry.callback;
      Header(out, c.name, c.help, c.counter ? "counter" : "gauge");
      for (const Sample& sample : c.read()) {
        absl::StrAppend(&out, c.name, LabelText(c.labels, sample.label_values),
                        " ", Number(sample.value), "\n");
      }
    }
  }
  return out;
}

}  // namespace broker::common::metrics
