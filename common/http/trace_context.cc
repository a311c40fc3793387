#include "common/http/trace_context.h"

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

#include <algorithm>
#include <cstdint>

namespace broker::common::http {
namespace {

bool IsLowerHex(absl::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
}

bool AllZero(absl::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c == '0'; });
}

std::string RandomHex(int bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  // absl::BitGen is not thread-safe; one per thread.
  thread_local absl::BitGen gen;
  std::string out;
  out.reserve(static_cast<size_t>(bytes) * 2);
  while (out.empty() || AllZero(out)) {
    out.clear();
    for (int i = 0; i < bytes; ++i) {
      const auto byte = absl::Uniform<std::uint8_t>(gen);
      out.push_back(kDigits[byte >> 4]);
      out.push_back(kDigits[byte & 0xf]);
    }
  }
  return out;
}

}  // namespace

std::string TraceParent::ToHeader() const {
  return absl::StrCat("00-", trace_id, "-", parent_id, "-", flags);
}

std::optional<TraceParent> ParseTraceParent(absl::string_view value) {
  value = absl::StripAsciiWhitespace(value);
  // version(2) - trace-id(32) - parent-id(16) - flags(2)
  constexpr size_t kLength = 55;
  if (value.size() < kLength || value[2] != '-' || value[35] != '-' ||
      value[52] != '-') {
    return std::nullopt;
  }
  const absl::string_view version = value.substr(0, 2);
  if (!IsLowerHex(version) || version == "ff") return std::nullopt;
  // Version 00 has exactly these fields; a later one may add more after a
  // dash.
  if (version == "00" ? value.size() != kLength
                      : value.size() > kLength && value[kLength] != '-') {
    return std::nullopt;
  }
  TraceParent parsed{std::string(value.substr(3, 32)),
                     std::string(value.substr(36, 16)),
                     std::string(value.substr(53, 2))};
  if (!IsLowerHex(parsed.trace_id) || AllZero(parsed.trace_id) ||
      !IsLowerHex(parsed.parent_id) || AllZero(parsed.parent_id) ||
      !IsLowerHex(parsed.flags)) {
    return std::nullopt;
  }
  return parsed;
}

TraceParent NewTrace() { return {RandomHex(16), RandomHex(8), "00"}; }

TraceParent ChildOf(const TraceParent& parent) {
  // Only the sampled bit is defined for version 00; others are not passed.
  const char low = parent.flags.size() == 2 ? parent.flags[1] : '0';
  const int low_value = low <= '9' ? low - '0' : low - 'a' + 10;
  const bool sampled = (low_value & 0x01) != 0;
  return {parent.trace_id, RandomHex(8), sampled ? "01" : "00"};
}

std::string ContinueTrace(Headers& headers) {
  std::optional<TraceParent> incoming;
  bool seen = false;
  for (const Header& h : headers) {
    if (!absl::EqualsIgnoreCase(h.name, kTraceparentHeader)) continue;
    // Two traceparent headers are as invalid as a malformed one.
    incoming = seen ? std::nullopt : ParseTraceParent(h.value);
    seen = true;
  }
  const TraceParent next = incoming ? ChildOf(*incoming) : NewTrace();
  headers.erase(
      std::remove_if(
          headers.begin(), headers.end(),
          [&](const Header& h) {
            return absl::EqualsIgnoreCase(h.name, kTraceparentHeader) ||
                   (!incoming && absl::EqualsIgnoreCase(h.name, "tracestate"));
          }),
      headers.end());
  headers.push_back({std::string(kTraceparentHeader), next.ToHeader()});
  return next.trace_id;
}

}  // namespace broker::common::http
