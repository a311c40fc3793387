#pragma once

// Captures the log lines written while it is alive (google-cloud-cpp's
// testing_util/scoped_log.h), for assertions on what code under test logs:
//
//   ScopedLogCapture logs(LogLevel::kDebug);
//   DoSomething();
//   EXPECT_THAT(logs.Messages(), Contains(HasSubstr("Relayed")));
//
// Lines still go to stdout as well. Lines from every thread are captured;
// the accessors may be called at any time from any thread.

#include "common/logging.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"

#include <optional>
#include <string>
#include <vector>

namespace broker::testing {

class ScopedLogCapture : public common::LogSink {
 public:
  // Captures at the current level.
  ScopedLogCapture();
  // Sets the level while alive and restores the previous one afterwards.
  explicit ScopedLogCapture(common::LogLevel level);
  ~ScopedLogCapture() override;

  ScopedLogCapture(const ScopedLogCapture&) = delete;
  ScopedLogCapture& operator=(const ScopedLogCapture&) = delete;

  // The captured JSON lines, without their trailing newline.
  std::vector<std::string> Lines() const ABSL_LOCKS_EXCLUDED(mu_);
  // Lines(), and forgets them.
  std::vector<std::string> ExtractLines() ABSL_LOCKS_EXCLUDED(mu_);
  // Each line parsed; a line that is not valid JSON comes back as a
  // discarded value (is_discarded()), so tests can assert on it.
  std::vector<nlohmann::json> Records() const ABSL_LOCKS_EXCLUDED(mu_);
  // The "msg" member of each line ("" for a line without one).
  std::vector<std::string> Messages() const ABSL_LOCKS_EXCLUDED(mu_);

  void Write(absl::string_view line) override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  std::optional<common::LogLevel> previous_level_;
  mutable absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::testing
