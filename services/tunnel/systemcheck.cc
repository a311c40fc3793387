#include "services/tunnel/systemcheck.h"

#include "common/logging.h"
#include "filters/url_checks.h"

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"

#include <algorithm>
#include <memory>
#include <utility>

namespace broker::tunnel {
namespace {

namespace http = common::http;
using json = nlohmann::ordered_json;

bool IsNameChar(char c) { return absl::ascii_isalnum(c) || c == '_'; }

std::vector<std::string> SplitPool(absl::string_view pool) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(pool, ',')) {
    out.emplace_back(absl::StripAsciiWhitespace(part));
  }
  return out;
}

// Header credentials: the secret is what follows the scheme.
std::string RawFromHeader(absl::string_view header) {
  const size_t space = header.find(' ');
  return std::string(
      space == absl::string_view::npos ? header : header.substr(space + 1));
}

ValidationCredential FromHeader(std::string header) {
  ValidationCredential out;
  out.raw = RawFromHeader(header);
  out.authorization = std::move(header);
  return out;
}

ValidationCredential FromBasic(std::string user_pass) {
  ValidationCredential out;
  out.authorization = absl::StrCat("Basic ", absl::Base64Escape(user_pass));
  out.raw = std::move(user_pass);
  return out;
}

// One expanded value, or the pool it became (Snyk sets KEY_POOL then).
std::vector<std::string> Expanded(const std::string& value,
                                  const filters::Variables& variables) {
  if (value.empty()) return {};
  return ExpandEnvValue(value, variables);
}

// Shared by the calls of one Run(); the last to finish answers.
class RunState {
 public:
  RunState(size_t count, SystemCheck::Done done)
      : results_(count), pending_(count), done_(std::move(done)) {}

  void Set(size_t index, json result, bool ok) ABSL_LOCKS_EXCLUDED(mu_) {
    SystemCheck::Done done;
    SystemCheckAnswer answer;
    {
      absl::MutexLock lock(&mu_);
      results_[index] = std::move(result);
      all_ok_ = all_ok_ && ok;
      if (--pending_ > 0) return;
      answer.status = all_ok_ ? 200 : 500;
      for (json& r : results_) answer.body.push_back(std::move(r));
      done = std::move(done_);
    }
    std::move(done)(std::move(answer));
  }

 private:
  absl::Mutex mu_;
  std::vector<json> results_ ABSL_GUARDED_BY(mu_);
  size_t pending_ ABSL_GUARDED_BY(mu_);
  bool all_ok_ ABSL_GUARDED_BY(mu_) = true;
  SystemCheck::Done done_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::vector<std::string> ExpandEnvValue(absl::string_view value,
                                        const filters::Variables& variables) {
  // Split into literal text and `$NAME` references.
  struct Piece {
    std::string text;
    bool is_reference = false;
  };
  std::vector<Piece> pieces;
  const std::vector<std::string>* pool = nullptr;
  std::string pool_name;
  std::vector<std::string> pool_values;
  size_t i = 0;
  while (i < value.size()) {
    const size_t dollar = value.find('$', i);
    if (dollar == absl::string_view::npos) {
      pieces.push_back({std::string(value.substr(i)), false});
      break;
    }
    size_t end = dollar + 1;
    while (end < value.size() && IsNameChar(value[end])) ++end;
    const bool escaped = dollar > 0 && value[dollar - 1] == '\\';
    if (end == dollar + 1 || escaped) {
      pieces.push_back({std::string(value.substr(i, end - i)), false});
      i = end;
      continue;
    }
    pieces.push_back({std::string(value.substr(i, dollar - i)), false});
    std::string name(value.substr(dollar + 1, end - dollar - 1));
    if (pool == nullptr) {
      if (const std::string* p = variables.Find(absl::StrCat(name, "_POOL"));
          p != nullptr && !p->empty()) {
        pool_values = SplitPool(*p);
        pool = &pool_values;
        pool_name = name;
      }
    }
    pieces.push_back({std::move(name), true});
    i = end;
  }

  auto render = [&](const std::string* pool_value) {
    std::string out;
    for (const Piece& piece : pieces) {
      if (!piece.is_reference) {
        out += piece.text;
      } else if (pool_value != nullptr && piece.text == pool_name) {
        out += *pool_value;
      } else if (const std::string* v = variables.Find(piece.text);
                 v != nullptr && !v->empty()) {
        out += *v;
      } else {
        absl::StrAppend(&out, "$", piece.text);  // unset: as written
      }
    }
    return out;
  };
  std::vector<std::string> out;
  if (pool == nullptr) {
    out.push_back(render(nullptr));
  } else {
    for (const std::string& v : *pool) out.push_back(render(&v));
  }
  return out;
}

std::vector<ValidationCredential> ResolveValidationCredentials(
    const ValidationCredentialSettings& settings,
    const filters::Variables& variables) {
  // A single value that refers to a pool becomes that pool and, as in
  // Snyk's config, replaces an explicit *_POOL.
  std::vector<std::string> header_pool;
  if (!settings.authorization_header_pool.empty()) {
    header_pool = SplitPool(settings.authorization_header_pool);
  }
  std::vector<std::string> header =
      Expanded(settings.authorization_header, variables);
  if (header.size() > 1) header_pool = header;

  std::vector<std::string> basic_pool;
  if (!settings.basic_auth_pool.empty()) {
    basic_pool = SplitPool(settings.basic_auth_pool);
  }
  std::vector<std::string> basic = Expanded(settings.basic_auth, variables);
  if (basic.size() > 1) basic_pool = basic;

  std::vector<ValidationCredential> out;
  if (!header_pool.empty()) {
    for (std::string& h : header_pool) out.push_back(FromHeader(std::move(h)));
  } else if (!basic_pool.empty()) {
    for (std::string& b : basic_pool) out.push_back(FromBasic(std::move(b)));
  } else if (!header.empty()) {
    out.push_back(FromHeader(std::move(header.front())));
  } else if (!basic.empty()) {
    out.push_back(FromBasic(std::move(basic.front())));
  }
  return out;
}

absl::Status Validate(const SystemCheckConfig& config) {
  if (config.method.empty() ||
      !std::all_of(config.method.begin(), config.method.end(),
                   [](char c) { return absl::ascii_isupper(c); })) {
    return absl::InvalidArgumentError(
        "BROKER_CLIENT_VALIDATION_METHOD must be an HTTP method (GET, HEAD, "
        "POST, ...)");
  }
  if (config.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "BROKER_CLIENT_VALIDATION_TIMEOUT_MS must be positive");
  }
  return absl::OkStatus();
}

std::string MaskCredential(absl::string_view raw) {
  if (raw.size() <= 6) return "***";
  return absl::StrCat(raw.substr(0, 3), "***", raw.substr(raw.size() - 3));
}

SystemCheck::SystemCheck(SystemCheckConfig config, http::Client& client)
    : config_(std::move(config)), client_(client) {
  // Userinfo, as Node finds it: the last "@" of the authority. It is sent
  // as Basic auth when no credential is configured (as Snyk's HTTP library
  // does) and never shown.
  display_url_ = config_.url;
  const size_t scheme_end = display_url_.find("://");
  if (scheme_end == std::string::npos) return;
  const size_t authority = scheme_end + 3;
  size_t authority_end = display_url_.find_first_of("/?#", authority);
  if (authority_end == std::string::npos) authority_end = display_url_.size();
  const size_t at = display_url_.rfind('@', authority_end - 1);
  if (at == std::string::npos || at < authority || at >= authority_end) return;
  std::string userinfo = filters::PercentDecode(
      absl::string_view(display_url_).substr(authority, at - authority));
  display_url_.erase(authority, at + 1 - authority);
  if (!absl::StrContains(userinfo, ':')) userinfo += ':';
  url_credential_ = FromBasic(std::move(userinfo));
}

void SystemCheck::Run(Done done) const {
  // Each check: the credential (or none) and its masked form.
  struct Check {
    std::optional<std::string> authorization;
    json masked;  // string, or null without a credential
  };
  std::vector<Check> checks;
  for (const ValidationCredential& c : config_.credentials) {
    checks.push_back({c.authorization, MaskCredential(c.raw)});
  }
  if (checks.empty()) {
    checks.push_back({url_credential_ ? std::optional<std::string>(
                                            url_credential_->authorization)
                                      : std::nullopt,
                      nullptr});
  }
  auto state = std::make_shared<RunState>(checks.size(), std::move(done));
  const int64_t timeout_ms = absl::ToInt64Milliseconds(config_.timeout);

  for (size_t index = 0; index < checks.size(); ++index) {
    // Members in Snyk's order.
    json result = json::object();
    if (!display_url_.empty()) {
      result["brokerClientValidationUrl"] = display_url_;
    }
    result["brokerClientValidationMethod"] = config_.method;
    result["brokerClientValidationTimeoutMs"] = timeout_ms;
    json masked = std::move(checks[index].masked);
    if (config_.url.empty()) {
      // Snyk's HTTP library rejects the missing URL; nothing is called.
      result["ok"] = false;
      result["error"] =
          "BROKER_CLIENT_VALIDATION_URL is not set: nothing to check";
      result["maskedCredentials"] = std::move(masked);
      state->Set(index, std::move(result), false);
      continue;
    }
    http::ClientRequest request;
    request.method = config_.method;
    request.url = config_.url;
    request.headers.push_back(
        {"user-agent", absl::StrCat("Snyk Broker client ", config_.version)});
    if (checks[index].authorization) {
      request.headers.push_back(
          {"authorization", *checks[index].authorization});
    }
    request.deadline = absl::Now() + config_.timeout;
    client_.Send(
        std::move(request),
        [state, index, result = std::move(result), masked = std::move(masked)](
            absl::StatusOr<http::ClientResponse> response) mutable {
          std::string error;
          if (!response.ok()) {
            // The client's messages name host:port, never the URL or a
            // header value.
            error =
                response.status().code() == absl::StatusCode::kDeadlineExceeded
                    ? absl::StrCat("ETIMEDOUT: ", response.status().message())
                    : std::string(response.status().message());
          } else {
            const int status = response->head.status;
            result["brokerClientValidationUrlStatusCode"] = status;
            if (status < 200 || status > 299) {
              error = status == 401 || status == 403
                          ? "Failed due to invalid credentials"
                          : "Status code is not 2xx";
            }
          }
          // Dropping the response closes its connection: the body is not
          // needed.
          response = absl::CancelledError();
          const bool ok = error.empty();
          result["ok"] = ok;
          if (!ok) result["error"] = error;
          if (!ok) {
            BROKER_LOG(kTunnel, kWarn,
                       {{"maskedCredentials",
                         masked.is_string() ? masked.get<std::string>() : ""},
                        {"credentialIndex", static_cast<int64_t>(index)},
                        {"error", error}},
                       "systemcheck failed");
          }
          result["maskedCredentials"] = std::move(masked);
          state->Set(index, std::move(result), ok);
        });
  }
}

}  // namespace broker::tunnel
