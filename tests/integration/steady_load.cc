#include "tests/integration/steady_load.h"

#include "tests/integration/http_fetch.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include <utility>

namespace broker::testing {

SteadyLoad::SteadyLoad(std::vector<std::string> urls, int threads)
    : urls_(std::move(urls)) {
  threads_.reserve(threads);
  for (int t = 0; t < threads; ++t)
    threads_.emplace_back([this, t] { Run(t); });
}

SteadyLoad::~SteadyLoad() { Stop(); }

void SteadyLoad::Run(int thread) {
  Fetcher fetcher;
  for (std::size_t i = thread; !stop_.load(); ++i) {
    auto r = fetcher.Fetch("GET", urls_[i % urls_.size()]);
    if (r.ok() && r->status == 200 && r->body_status.ok()) {
      ok_.fetch_add(1);
      continue;
    }
    failed_.fetch_add(1);
    absl::MutexLock lock(&mu_);
    if (first_failure_.empty()) {
      first_failure_ = r.ok() ? absl::StrCat(r->status, " ", r->body, " ",
                                             r->Header("x-broker-failure"))
                              : r.status().ToString();
    }
  }
}

bool SteadyLoad::WaitForMore(int more, absl::Duration timeout) const {
  const int want = ok() + more;
  const absl::Time deadline = absl::Now() + timeout;
  while (ok() < want) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

void SteadyLoad::Stop() {
  stop_.store(true);
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

std::string SteadyLoad::first_failure() const {
  absl::MutexLock lock(&mu_);
  return first_failure_;
}

}  // namespace broker::testing
