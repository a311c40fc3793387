#pragma once

#include "filters/rule_set.h"

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

#include <memory>
#include <string>

namespace broker::filters {

// Holds the rule set in force and swaps it atomically on reload. A new file
// is parsed and compiled off to the side; only a set that loaded cleanly
// replaces the old one, so a broken file keeps the old rules. Evaluations
// hold their own shared_ptr and finish on the set they started with.
//
// Thread-safe: Current() from any request thread, Reload*() from any thread.
class RuleSetHolder {
 public:
  explicit RuleSetHolder(std::shared_ptr<const RuleSet> initial)
      : current_(std::move(initial)) {}

  std::shared_ptr<const RuleSet> Current() const ABSL_LOCKS_EXCLUDED(mu_);

  void Replace(std::shared_ptr<const RuleSet> next) ABSL_LOCKS_EXCLUDED(mu_);

  // Loads `path`; on success swaps it in, otherwise keeps the current set and
  // returns why.
  [[nodiscard]] absl::Status ReloadFromFile(const std::string& path)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const RuleSet> current_ ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::filters
