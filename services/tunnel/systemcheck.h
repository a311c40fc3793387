#pragma once

// GET /systemcheck of broker-tunnel (classic mode, reference section 4.1):
// calls BROKER_CLIENT_VALIDATION_URL once per configured credential through
// the same HTTP client as the origin calls (TLS verification on, CA_CERT
// trusted) and answers Snyk's JSON array
//
//   [{"brokerClientValidationUrl": ..., "brokerClientValidationMethod":
//     "GET", "brokerClientValidationTimeoutMs": 5000,
//     "brokerClientValidationUrlStatusCode": 200, "ok": true,
//     "maskedCredentials": "ghp***xyz"}, ...]
//
// with 200 when every check passed and 500 otherwise. Differences from
// Snyk, on purpose (README "Deliberate differences"): the status reflects
// every credential, not only the last one; the timeout is applied; a URL's
// userinfo is never shown; no URL configured fails without a call.
//
// Credentials never leave in clear: answers and logs carry MaskCredential()
// only.

#include "common/http/client.h"
#include "filters/origin.h"

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

#include <optional>
#include <string>
#include <vector>

namespace broker::tunnel {

// One credential to validate: the Authorization header sent, and the secret
// it carries (what the answer shows masked).
struct ValidationCredential {
  std::string authorization;
  std::string raw;
};

struct SystemCheckConfig {
  std::string url;  // BROKER_CLIENT_VALIDATION_URL; "" when not configured
  std::string method = "GET";                 // BROKER_CLIENT_VALIDATION_METHOD
  absl::Duration timeout = absl::Seconds(5);  // ..._TIMEOUT_MS
  // In order; empty: one check without credentials (maskedCredentials
  // null). See ResolveValidationCredentials().
  std::vector<ValidationCredential> credentials;
  std::string version;  // in the user agent, as Snyk sends it
};

// The method must be upper-case letters; the URL is checked when called
// (as Snyk does), so a bad one shows in the answer.
[[nodiscard]] absl::Status Validate(const SystemCheckConfig& config);

// The credential variables exactly as the environment has them ("" when
// unset). The *_POOL ones are comma-separated lists.
struct ValidationCredentialSettings {
  std::string authorization_header;       // ..._AUTHORIZATION_HEADER
  std::string authorization_header_pool;  // ..._AUTHORIZATION_HEADER_POOL
  std::string basic_auth;                 // ..._BASIC_AUTH ("user:pass")
  std::string basic_auth_pool;            // ..._BASIC_AUTH_POOL
};

// Snyk's choice of credentials (lib/hybrid-sdk/client/utils/credentials.ts):
// the first that is set of header pool, basic-auth pool, header, basic auth.
// Values may refer to other variables as `$NAME`; a reference to NAME whose
// NAME_POOL is set turns the value into a pool, one entry per pool value
// (so `BROKER_CLIENT_VALIDATION_AUTHORIZATION_HEADER="token $GITHUB_TOKEN"`
// with GITHUB_TOKEN_POOL validates every token), as Snyk's config does.
// The raw credential of a header is the text after its first space.
std::vector<ValidationCredential> ResolveValidationCredentials(
    const ValidationCredentialSettings& settings,
    const filters::Variables& variables);

// Snyk's `$NAME` expansion of one environment value: each `$NAME` becomes
// NAME's value (left as written when NAME is unset). When a referenced NAME
// has NAME_POOL set, one result per pool value (trimmed), else exactly one.
std::vector<std::string> ExpandEnvValue(absl::string_view value,
                                        const filters::Variables& variables);

// Snyk's systemcheck mask: "***" for 6 bytes or fewer, else the first and
// last three around "***" ("ghp***xyz").
std::string MaskCredential(absl::string_view raw);

struct SystemCheckAnswer {
  int status = 500;  // 200 only when every check passed
  nlohmann::ordered_json body = nlohmann::ordered_json::array();
};

// Runs the checks, all at once, each bounded by the configured timeout.
// Thread-safe; `client` must outlive every Run() in flight.
class SystemCheck {
 public:
  using Done = absl::AnyInvocable<void(SystemCheckAnswer) &&>;
  SystemCheck(SystemCheckConfig config, common::http::Client& client);

  // `done` runs once: on a client io thread, or inside Run() when there is
  // nothing to call (no URL configured).
  void Run(Done done) const;

  const SystemCheckConfig& config() const { return config_; }

 private:
  SystemCheckConfig config_;
  std::string display_url_;  // the URL without userinfo
  std::optional<ValidationCredential> url_credential_;  // from its userinfo
  common::http::Client& client_;
};

}  // namespace broker::tunnel
