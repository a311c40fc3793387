#include "common/logging.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include <spdlog/logger.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <exception>
#include <iterator>
#include <memory>
#include <string>

namespace broker::common {
namespace internal {
std::atomic<int> g_min_log_level{static_cast<int>(LogLevel::kInfo)};
}  // namespace internal

namespace {

static_assert(static_cast<int>(LogComponent::kFilters) + 1 ==
                  kLogComponentCount,
              "kLogComponentCount must follow LogComponent");

using Buffer = spdlog::memory_buf_t;

void Append(Buffer& out, absl::string_view text) {
  out.append(text.data(), text.data() + text.size());
}

constexpr absl::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

bool IsContinuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the well-formed UTF-8 sequence at the start of `in` (Unicode
// 15, table 3-7), or 0 if there is none. `*invalid_prefix` is then the
// length of the maximal ill-formed subpart to replace by one U+FFFD.
size_t Utf8SequenceLength(absl::string_view in, size_t* invalid_prefix) {
  const auto c0 = static_cast<unsigned char>(in[0]);
  size_t length = 0;
  unsigned char second_min = 0x80;
  unsigned char second_max = 0xBF;
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    length = 2;
  } else if (c0 >= 0xE0 && c0 <= 0xEF) {
    length = 3;
    if (c0 == 0xE0) second_min = 0xA0;  // no overlong forms
    if (c0 == 0xED) second_max = 0x9F;  // no surrogates
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    length = 4;
    if (c0 == 0xF0) second_min = 0x90;  // no overlong forms
    if (c0 == 0xF4) second_max = 0x8F;  // nothing above U+10FFFF
  } else {
    *invalid_prefix = 1;  // 80..C1 and F5..FF never start a sequence
    return 0;
  }
  for (size_t i = 1; i < length; ++i) {
    const bool ok =
        i < in.size() &&
        (i == 1 ? static_cast<unsigned char>(in[i]) >= second_min &&
                      static_cast<unsigned char>(in[i]) <= second_max
                : IsContinuation(static_cast<unsigned char>(in[i])));
    if (!ok) {
      *invalid_prefix = i;
      return 0;
    }
  }
  return length;
}

// Appends `text` as the inside of a JSON string: quotes, backslashes and
// control characters escaped, ill-formed UTF-8 replaced by U+FFFD.
void AppendJsonEscaped(Buffer& out, absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      size_t invalid_prefix = 0;
      const size_t length = Utf8SequenceLength(text.substr(i), &invalid_prefix);
      if (length == 0) {
        Append(out, kReplacementCharacter);
        i += invalid_prefix;
      } else {
        Append(out, text.substr(i, length));
        i += length;
      }
      continue;
    }
    switch (c) {
      case '"':
        Append(out, "\\\"");
        break;
      case '\\':
        Append(out, "\\\\");
        break;
      case '\b':
        Append(out, "\\b");
        break;
      case '\f':
        Append(out, "\\f");
        break;
      case '\n':
        Append(out, "\\n");
        break;
      case '\r':
        Append(out, "\\r");
        break;
      case '\t':
        Append(out, "\\t");
        break;
      default:
        if (c < 0x20) {
          fmt::format_to(std::back_inserter(out), "\\u{:04x}",
                         static_cast<unsigned>(c));
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
}

void AppendJsonString(Buffer& out, absl::string_view text) {
  out.push_back('"');
  AppendJsonEscaped(out, text);
  out.push_back('"');
}

bool IsReservedKey(absl::string_view key) {
  return key == "time" || key == "level" || key == "service" ||
         key == "component" || key == "msg" || key == "format_error";
}

void AppendField(Buffer& out, const LogField& field) {
  out.push_back(',');
  out.push_back('"');
  if (IsReservedKey(field.key())) Append(out, "field.");
  AppendJsonEscaped(out, field.key());
  Append(out, "\":");
  auto it = std::back_inserter(out);
  switch (field.kind()) {
    case LogField::Kind::kString:
      AppendJsonString(out, field.string_value());
      break;
    case LogField::Kind::kInt:
      fmt::format_to(it, "{}", field.int_value());
      break;
    case LogField::Kind::kUint:
      fmt::format_to(it, "{}", field.uint_value());
      break;
    case LogField::Kind::kDouble:
      // JSON has no NaN or infinity.
      if (std::isfinite(field.double_value())) {
        fmt::format_to(it, "{}", field.double_value());
      } else {
        Append(out, "null");
      }
      break;
    case LogField::Kind::kBool:
      Append(out, field.bool_value() ? "true" : "false");
      break;
  }
}

absl::string_view SpdlogLevelName(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    default:
      return "error";
  }
}

spdlog::level::level_enum ToSpdlogLevel(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
  }
  return spdlog::level::err;
}

// RFC 3339 in UTC with milliseconds: 2024-11-25T01:04:05.123Z.
void AppendTime(Buffer& out, std::chrono::system_clock::time_point time) {
  const auto since_epoch =
      std::chrono::duration_cast<std::chrono::milliseconds>(
          time.time_since_epoch());
  const std::time_t seconds = std::chrono::system_clock::to_time_t(
      std::chrono::system_clock::time_point(
          std::chrono::duration_cast<std::chrono::seconds>(since_epoch)));
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  fmt::format_to(std::back_inserter(out),
                 "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z",
                 utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour,
                 utc.tm_min, utc.tm_sec,
                 static_cast<int>(since_epoch.count() % 1000));
}

// The "service" member: set by InitLogging() before any thread starts,
// read-only afterwards.
std::string& ServiceName() {
  static auto* name = new std::string();
  return *name;
}

// Turns a record into the JSON line. The payload is already the rendered
// members from "msg" on (see EmitLog); the logger name is the component.
class JsonLineFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, Buffer& dest) override {
    Append(dest, "{\"time\":\"");
    AppendTime(dest, msg.time);
    Append(dest, "\",\"level\":\"");
    Append(dest, SpdlogLevelName(msg.level));
    dest.push_back('"');
    if (!ServiceName().empty()) {
      Append(dest, ",\"service\":");
      AppendJsonString(dest, ServiceName());
    }
    Append(dest, ",\"component\":");
    AppendJsonString(dest, absl::string_view(msg.logger_name.data(),
                                             msg.logger_name.size()));
    dest.push_back(',');
    dest.append(msg.payload.data(), msg.payload.data() + msg.payload.size());
    Append(dest, "}\n");
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonLineFormatter>();
  }
};

// Hands formatted lines to a LogSink. Only the distributing sink calls it,
// under that sink's mutex, so it needs no lock of its own.
class ForwardingSink final
    : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  explicit ForwardingSink(LogSink& target)
      : base_sink(std::make_unique<JsonLineFormatter>()), target_(target) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    Buffer line;
    formatter_->format(msg, line);
    size_t size = line.size();
    if (size > 0 && line[size - 1] == '\n') --size;
    target_.Write(absl::string_view(line.data(), size));
  }
  void flush_() override {}

 private:
  LogSink& target_;
};

// The spdlog side: one logger per component, all writing to one
// distributing sink, which writes to stdout and to the registered LogSinks.
// Created on first use and never destroyed, so that logging from other
// threads or static destructors at exit stays safe.
class Backend {
 public:
  Backend() : dist_(std::make_shared<spdlog::sinks::dist_sink_mt>()) {
    auto out = std::make_shared<spdlog::sinks::stdout_sink_mt>();
    out->set_formatter(std::make_unique<JsonLineFormatter>());
    dist_->add_sink(std::move(out));
    for (int i = 0; i < kLogComponentCount; ++i) {
      auto& logger = loggers_[static_cast<size_t>(i)];
      logger = std::make_shared<spdlog::logger>(
          std::string(LogComponentName(static_cast<LogComponent>(i))), dist_);
      // Filtering is ours (ShouldLog); spdlog passes everything through.
      logger->set_level(spdlog::level::trace);
    }
  }

  spdlog::logger& logger(LogComponent component) {
    return *loggers_[static_cast<size_t>(component)];
  }

  void Flush() { dist_->flush(); }

  void AddSink(LogSink& sink) ABSL_LOCKS_EXCLUDED(mu_) {
    auto forwarding = std::make_shared<ForwardingSink>(sink);
    {
      absl::MutexLock lock(&mu_);
      extra_sinks_[&sink] = forwarding;
    }
    dist_->add_sink(std::move(forwarding));
  }

  void RemoveSink(LogSink& sink) ABSL_LOCKS_EXCLUDED(mu_) {
    std::shared_ptr<spdlog::sinks::sink> forwarding;
    {
      absl::MutexLock lock(&mu_);
      auto it = extra_sinks_.find(&sink);
      if (it == extra_sinks_.end()) return;
      forwarding = std::move(it->second);
      extra_sinks_.erase(it);
    }
    // After this returns no line is being written to `sink` any more: the
    // distributing sink removes under the mutex it writes under.
    dist_->remove_sink(std::move(forwarding));
  }

 private:
  std::shared_ptr<spdlog::sinks::dist_sink_mt> dist_;
  std::array<std::shared_ptr<spdlog::logger>, kLogComponentCount> loggers_;
  absl::Mutex mu_;
  absl::flat_hash_map<LogSink*, std::shared_ptr<spdlog::sinks::sink>>
      extra_sinks_ ABSL_GUARDED_BY(mu_);
};

Backend& GetBackend() {
  static auto* backend = new Backend();
  return *backend;
}

}  // namespace

absl::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "error";
}

absl::string_view LogComponentName(LogComponent component) {
  switch (component) {
    case LogComponent::kServer:
      return "server";
    case LogComponent::kTunnel:
      return "tunnel";
    case LogComponent::kHa:
      return "ha";
    case LogComponent::kWebhook:
      return "webhook";
    case LogComponent::kDispatcher:
      return "dispatcher";
    case LogComponent::kGrpc:
      return "grpc";
    case LogComponent::kFilters:
      return "filters";
  }
  return "unknown";
}

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view level) {
  for (LogLevel candidate :
       {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError}) {
    if (level == LogLevelName(candidate)) return candidate;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("invalid log level \"", absl::CHexEscape(level),
                   "\" (want debug, info, warn or error)"));
}

absl::Status InitLogging(absl::string_view level, absl::string_view service) {
  auto parsed = ParseLogLevel(level);
  if (!parsed.ok()) return parsed.status();
  ServiceName() = std::string(service);
  GetBackend();  // create the sinks now rather than on the first line
  SetLogLevel(*parsed);
  return absl::OkStatus();
}

void SetLogLevel(LogLevel level) {
  internal::g_min_log_level.store(static_cast<int>(level),
                                  std::memory_order_relaxed);
}

LogLevel GetLogLevel() {
  return static_cast<LogLevel>(
      internal::g_min_log_level.load(std::memory_order_relaxed));
}

void FlushLogs() { GetBackend().Flush(); }

void WriteStdoutLine(absl::string_view line) {
  const std::string whole = absl::StrCat(line, "\n");
  // One fwrite holds stdout's lock for the whole line, as spdlog's stdout
  // sink does for each log line.
  std::fwrite(whole.data(), 1, whole.size(), stdout);
  std::fflush(stdout);
}

void AddLogSink(LogSink& sink) { GetBackend().AddSink(sink); }

void RemoveLogSink(LogSink& sink) { GetBackend().RemoveSink(sink); }

namespace internal {

void EmitLog(LogComponent component, LogLevel level, LogFields fields,
             fmt::string_view format, fmt::format_args args) {
  Buffer message;
  std::string format_error;
  try {
    fmt::vformat_to(std::back_inserter(message), format, args);
  } catch (const std::exception& e) {
    // A bad format string is a bug at the call site, but a log line must
    // never take the process down: write the raw format string instead.
    message.clear();
    message.append(format.data(), format.data() + format.size());
    format_error = e.what();
  }

  Buffer payload;
  Append(payload, "\"msg\":");
  AppendJsonString(payload, absl::string_view(message.data(), message.size()));
  if (!format_error.empty()) {
    Append(payload, ",\"format_error\":");
    AppendJsonString(payload, format_error);
  }
  for (const LogField& field : fields) AppendField(payload, field);

  GetBackend().logger(component).log(
      ToSpdlogLevel(level),
      spdlog::string_view_t(payload.data(), payload.size()));
}

}  // namespace internal
}  // namespace broker::common
