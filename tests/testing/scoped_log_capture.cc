#include "tests/testing/scoped_log_capture.h"

#include <utility>

namespace broker::testing {

ScopedLogCapture::ScopedLogCapture() { common::AddLogSink(*this); }

ScopedLogCapture::ScopedLogCapture(common::LogLevel level)
    : previous_level_(common::GetLogLevel()) {
  common::SetLogLevel(level);
  common::AddLogSink(*this);
}

ScopedLogCapture::~ScopedLogCapture() {
  common::RemoveLogSink(*this);
  if (previous_level_.has_value()) common::SetLogLevel(*previous_level_);
}

std::vector<std::string> ScopedLogCapture::Lines() const {
  absl::MutexLock lock(&mu_);
  return lines_;
}

std::vector<std::string> ScopedLogCapture::ExtractLines() {
  absl::MutexLock lock(&mu_);
  return std::exchange(lines_, {});
}

std::vector<nlohmann::json> ScopedLogCapture::Records() const {
  std::vector<nlohmann::json> records;
  for (const std::string& line : Lines()) {
    records.push_back(nlohmann::json::parse(line, /*cb=*/nullptr,
                                            /*allow_exceptions=*/false));
  }
  return records;
}

std::vector<std::string> ScopedLogCapture::Messages() const {
  std::vector<std::string> messages;
  for (const nlohmann::json& record : Records()) {
    if (record.is_object() && record.contains("msg") &&
        record["msg"].is_string()) {
      messages.push_back(record["msg"].get<std::string>());
    } else {
      messages.emplace_back();
    }
  }
  return messages;
}

void ScopedLogCapture::Write(absl::string_view line) {
  absl::MutexLock lock(&mu_);
  lines_.emplace_back(line);
}

}  // namespace broker::testing
