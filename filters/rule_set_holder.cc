#include "filters/rule_set_holder.h"

namespace broker::filters {

std::shared_ptr<const RuleSet> RuleSetHolder::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

void RuleSetHolder::Replace(std::shared_ptr<const RuleSet> next) {
  // The old set is released outside the lock: its last reader may free it.
  std::shared_ptr<const RuleSet> old;
  {
    absl::MutexLock lock(&mu_);
    old = std::exchange(current_, std::move(next));
  }
}

absl::Status RuleSetHolder::ReloadFromFile(const std::string& path) {
  absl::StatusOr<std::shared_ptr<const RuleSet>> next = RuleSet::FromFile(path);
  if (!next.ok()) return next.status();
  Replace(*std::move(next));
  return absl::OkStatus();
}

}  // namespace broker::filters
