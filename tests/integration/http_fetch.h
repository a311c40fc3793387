#pragma once

// A blocking HTTP call for tests, on the real streaming client: the body is
// collected (tests compare bytes), with a deadline so nothing hangs.

#include "common/executor.h"
#include "common/http/client.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <memory>
#include <string>

namespace broker::testing {

struct Fetched {
  int status = 0;
  common::http::Headers headers;
  std::string body;
  absl::Status body_status;  // not OK when the body ended early
  std::string Header(absl::string_view name) const;
};

class Fetcher {
 public:
  Fetcher() : Fetcher(common::http::ClientOptions{}) {}
  // For https URLs: `options.ca_file` trusts the test's CA.
  explicit Fetcher(common::http::ClientOptions options);
  ~Fetcher();
  // `body` is sent with Content-Length unless `chunked`.
  absl::StatusOr<Fetched> Fetch(const std::string& method,
                                const std::string& url,
                                common::http::Headers headers = {},
                                std::string body = "", bool chunked = false,
                                absl::Duration timeout = absl::Seconds(30));

 private:
  common::Executor executor_;
  std::unique_ptr<common::http::Client> client_;
};

}  // namespace broker::testing
