#pragma once

// A log-bucketed latency histogram in the spirit of HdrHistogram: exact
// below 256, then 128 buckets per power of two, so any recorded value is
// reported within 0.8%. Fixed size (about 60 KiB), no allocation on Record.
//
// Not thread-safe: give each thread its own and Merge() them at the end.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

namespace broker::bench {

class Histogram {
 public:
  void Record(std::uint64_t value) {
    ++counts_[Index(value)];
    ++count_;
    sum_ += value;
    max_ = std::max(max_, value);
  }

  void Merge(const Histogram& other) {
    for (std::size_t i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    max_ = std::max(max_, other.max_);
  }

  // The value at quantile q (0 < q <= 1): the smallest bucket holding at
  // least q of the values, as the middle of that bucket (never above max).
  std::uint64_t Quantile(double q) const {
    if (count_ == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(
        std::max(1.0, q * static_cast<double>(count_) + 0.5));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(Middle(i), max_);
    }
    return max_;
  }

  std::uint64_t count() const { return count_; }
  std::uint64_t max() const { return max_; }
  double mean() const {
    return count_ == 0
               ? 0.0
               : static_cast<double>(sum_) / static_cast<double>(count_);
  }

 private:
  static constexpr int kSubBits = 7;  // 128 buckets per power of two
  static constexpr std::uint64_t kExact = std::uint64_t{2} << kSubBits;  // 256
  static constexpr std::size_t kBuckets =
      kExact + (64 - kSubBits - 1) * (std::size_t{1} << kSubBits);

  static std::size_t Index(std::uint64_t value) {
    if (value < kExact) return static_cast<std::size_t>(value);
    const int msb = 63 - __builtin_clzll(value);
    const int shift = msb - kSubBits;
    const std::uint64_t sub = value >> shift;  // in [128, 256)
    return static_cast<std::size_t>(
        kExact + static_cast<std::uint64_t>(shift - 1) * (kExact / 2) +
        (sub - kExact / 2));
  }

  static std::uint64_t Middle(std::size_t index) {
    if (index < kExact) return index;
    const std::uint64_t k = index - kExact;
    const std::uint64_t shift = k / (kExact / 2) + 1;
    const std::uint64_t sub = k % (kExact / 2) + kExact / 2;
    const std::uint64_t low = sub << shift;
    return low + ((std::uint64_t{1} << shift) - 1) / 2;
  }

  std::array<std::uint64_t, kBuckets> counts_{};
  std::uint64_t count_ = 0;
  std::uint64_t sum_ = 0;
  std::uint64_t max_ = 0;
};

}  // namespace broker::bench
