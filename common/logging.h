#pragma once

// The one logging facade (STYLE 5.9). Every line is one JSON object on
// stdout, for Kubernetes:
//
//   {"time":"2024-11-25T01:04:05.123Z","level":"info",
//    "service":"broker-tunnel","component":"tunnel","msg":"Relayed 512 bytes",
//    "request_id":"r-1","hashed_token":"9f86..."}
//
// Call sites use BROKER_LOG only:
//
//   BROKER_LOG(kTunnel, kInfo, {{"request_id", id}, {"bytes", n}},
//              "Relayed {} bytes to {}", n, host);
//   BROKER_LOG(kServer, kDebug, {}, "No fields here");
//
// The level is checked before anything else: a disabled line evaluates
// neither its fields nor its format arguments. Messages use fmt syntax
// ("{}"); field values are strings, integers, floating point or bool, and
// every string (message, keys, values) is JSON-escaped, with invalid UTF-8
// replaced by U+FFFD. Field keys that collide with time/level/component/msg
// are prefixed with "field." so that they cannot overwrite them.
//
// Secrets: never pass a token in clear; use HashToken()/MaskToken()
// (common/token.h).
//
// Only this header and logging.cc know the backend (spdlog 1.10 today); a
// move to absl/log touches logging.cc alone.
//
// Thread-safety: everything here may be called from any thread. Lines from
// different threads never interleave.

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "fmt/format.h"

namespace broker::common {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// One named logger per component; the name is the "component" member.
enum class LogComponent : int {
  kServer,
  kTunnel,
  kHa,
  kWebhook,
  kDispatcher,
  kGrpc,
  kFilters,
};
inline constexpr int kLogComponentCount = 7;

// "debug", "info", "warn", "error".
absl::string_view LogLevelName(LogLevel level);
// "server", "tunnel", "ha", "webhook", "dispatcher", "grpc", "filters".
absl::string_view LogComponentName(LogComponent component);

// Parses "debug" | "info" | "warn" | "error" (exactly, as LOG_LEVEL is
// documented); anything else is InvalidArgument naming the value.
[[nodiscard]] absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view level);

// Sets the minimum level from its name (see ParseLogLevel) and the
// "service" member of every line (the binary's name; omitted when empty).
// Logging works before this is called, at level info. Called by main(),
// once, before it starts any thread.
[[nodiscard]] absl::Status InitLogging(absl::string_view level,
                                       absl::string_view service = "");

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();

// Writes out anything buffered (shutdown, STYLE 5.18).
void FlushLogs();

// Writes `line` and a newline to stdout in one locked write, then flushes:
// for the "listening" line that tests and scripts parse, which log lines
// from other threads must never split.
void WriteStdoutLine(absl::string_view line);

namespace internal {
// The minimum level, read on every BROKER_LOG. Constant-initialised, so it
// is usable before main() and from any thread.
extern std::atomic<int> g_min_log_level;
}  // namespace internal

// True if a line of `level` from `component` would be written. This is the
// whole cost of a disabled BROKER_LOG: one relaxed load and a branch.
inline bool ShouldLog(LogComponent /*component*/, LogLevel level) {
  return static_cast<int>(level) >=
         internal::g_min_log_level.load(std::memory_order_relaxed);
}

// A key/value pair attached to a line as a JSON member. It refers to the
// key and a string value without copying: build it in the BROKER_LOG call
// (temporaries live until the line is written), never store it.
class LogField {
 public:
  enum class Kind { kString, kInt, kUint, kDouble, kBool };

  LogField(absl::string_view key, absl::string_view value)
      : key_(key), string_(value) {}
  LogField(absl::string_view key, const char* value)
      : LogField(key, absl::string_view(value)) {}
  LogField(absl::string_view key, const std::string& value)
      : LogField(key, absl::string_view(value)) {}
  LogField(absl::string_view key, std::string_view value)
      : LogField(key, absl::string_view(value.data(), value.size())) {}
  LogField(absl::string_view key, bool value)
      : key_(key), kind_(Kind::kBool), bool_(value) {}
  LogField(absl::string_view key, double value)
      : key_(key), kind_(Kind::kDouble), double_(value) {}
  template <typename T,
            std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>,
                             int> = 0>
  LogField(absl::string_view key, T value) : key_(key) {
    if constexpr (std::is_signed_v<T>) {
      kind_ = Kind::kInt;
      int_ = static_cast<std::int64_t>(value);
    } else {
      kind_ = Kind::kUint;
      uint_ = static_cast<std::uint64_t>(value);
    }
  }

  absl::string_view key() const { return key_; }
  Kind kind() const { return kind_; }
  absl::string_view string_value() const { return string_; }
  std::int64_t int_value() const { return int_; }
  std::uint64_t uint_value() const { return uint_; }
  double double_value() const { return double_; }
  bool bool_value() const { return bool_; }

 private:
  absl::string_view key_;
  Kind kind_ = Kind::kString;
  absl::string_view string_;
  std::int64_t int_ = 0;
  std::uint64_t uint_ = 0;
  double double_ = 0;
  bool bool_ = false;
};

// `{{"k", v}, ...}` at the call site, or a std::vector<LogField>.
using LogFields = absl::Span<const LogField>;

namespace internal {
// Formats the message and writes the line. Never throws: a bad format
// string is written as such, with a "format_error" member.
void EmitLog(LogComponent component, LogLevel level, LogFields fields,
             fmt::string_view format, fmt::format_args args);
}  // namespace internal

// Writes one line, without checking the level; use BROKER_LOG.
template <typename... Args>
void Log(LogComponent component, LogLevel level, LogFields fields,
         fmt::format_string<Args...> format, Args&&... args) {
  internal::EmitLog(component, level, fields, format,
                    fmt::make_format_args(args...));
}

// Receives every line written while registered: the JSON object without the
// trailing newline. Write() is called from the logging thread, one line at a
// time (never concurrently), and must not log. For tests
// (tests/testing/scoped_log_capture.h).
class LogSink {
 public:
  virtual ~LogSink() = default;
  virtual void Write(absl::string_view line) = 0;
};
// `sink` must stay alive until RemoveLogSink(sink) returns.
void AddLogSink(LogSink& sink);
void RemoveLogSink(LogSink& sink);

}  // namespace broker::common

// BROKER_LOG(component, level, fields, format, args...): `component` is a
// LogComponent enumerator (kTunnel), `level` a LogLevel one (kInfo),
// `fields` a braced list of {"key", value} pairs ({} for none), `format` an
// fmt format string. Nothing after `level` is evaluated when the level is
// disabled.
// NOLINTBEGIN(bugprone-macro-parentheses): `component` and `level` are
// enumerator names spliced after `::`; parentheses would not compile.
#define BROKER_LOG(component, level, ...)                                      \
  do {                                                                         \
    if (::broker::common::ShouldLog(::broker::common::LogComponent::component, \
                                    ::broker::common::LogLevel::level)) {      \
      ::broker::common::Log(::broker::common::LogComponent::component,         \
                            ::broker::common::LogLevel::level, __VA_ARGS__);   \
    }                                                                          \
  } while (false)
// NOLINTEND(bugprone-macro-parentheses)
