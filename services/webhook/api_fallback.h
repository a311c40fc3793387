#pragma once

// The API fallback (BROKER_WEBHOOK_API_FALLBACK=true): with no usable
// tunnel, a /webhook/* event is posted straight to API_BASE_URL + its path,
// as Snyk's client does when its websocket is closed, with
// `x-snyk-broker: <masked token>`, and the API's answer streams back to
// the SCM.

#include "common/http/client.h"
#include "common/http/server.h"
#include "services/webhook/event.h"
#include "services/webhook/request_body.h"
#include "services/webhook/webhook_config.h"
#include "services/webhook/webhook_metrics.h"

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"

#include <memory>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace broker::webhook {

// Thread-safe. The client's calls run on `io`, which must outlive them.
class ApiFallback {
 public:
  using Done = absl::AnyInvocable<void(Outcome) &&>;

  // The HTTPS client (verification on, CA_CERT trusted besides the
  // system store) toward config.api_base_url.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ApiFallback>> Create(
      boost::asio::io_context& io, const WebhookConfig& config);

  // Posts `event` (its body read again from byte 0: `body` must be
  // replayable) and streams the API's answer to `exchange`. `done` runs
  // once, on an io thread: kFallback once the answer went out whole;
  // kFailed when the call failed (the SCM got 502/504 with
  // x-broker-failure: api-unreachable); kAborted when the API's body broke
  // off; kCancelled when `cancellation` fired or the SCM left.
  void Forward(std::shared_ptr<common::http::Exchange> exchange,
               std::shared_ptr<RequestBody> body, const Event& event,
               std::shared_ptr<common::http::CallCancellation> cancellation,
               Done done);

 private:
  ApiFallback(std::string base_url, std::string masked_token,
              std::unique_ptr<common::http::Client> client);

  const std::string base_url_;      // no trailing '/'
  const std::string masked_token_;  // the only form of the token kept
  const std::unique_ptr<common::http::Client> client_;
};

}  // namespace broker::webhook
