#include "common/env_config.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <unistd.h>

namespace broker::common {
namespace {

constexpr size_t kMaxQuotedValue = 64;

// A value for an error message: quoted, escaped and cut short.
std::string Quote(absl::string_view value) {
  const bool cut = value.size() > kMaxQuotedValue;
  return absl::StrCat("\"", absl::CHexEscape(value.substr(0, kMaxQuotedValue)),
                      cut ? "...\"" : "\"");
}

// A URL for an error message. One with '@' may carry credentials, so it is
// not shown at all.
std::string QuoteUrl(absl::string_view url) {
  if (absl::StrContains(url, '@'))
    return "the URL (not shown: it contains '@')";
  return Quote(url);
}

absl::Status VariableError(absl::string_view name, absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": ", reason));
}

// A plain decimal number (digits only: no sign, no spaces) up to `max`.
std::optional<std::uint64_t> ParseDecimal(absl::string_view text,
                                          std::uint64_t max) {
  if (text.empty()) return std::nullopt;
  std::uint64_t value = 0;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return std::nullopt;
    }
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (value > (max - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  return value;
}

bool IsHostNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' ||
         c == '.' || c == '_';
}

bool IsIpv6LiteralChar(char c) {
  return absl::ascii_isxdigit(static_cast<unsigned char>(c)) || c == ':' ||
         c == '.';
}

}  // namespace

absl::StatusOr<Url> ParseHttpUrl(absl::string_view text) {
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7F) {
      return absl::InvalidArgumentError(absl::StrCat(
          QuoteUrl(text), " contains spaces or control characters"));
    }
  }
  const size_t scheme_end = text.find("://");
  if (scheme_end == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(QuoteUrl(text),
                     " is not an absolute URL (want http(s)://host[:port])"));
  }
  Url url;
  url.scheme = absl::AsciiStrToLower(text.substr(0, scheme_end));
  int default_port = 0;
  if (url.scheme == "http") {
    default_port = 80;
  } else if (url.scheme == "https") {
    default_port = 443;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("scheme must be http or https, got ",
                     QuoteUrl(text.substr(0, scheme_end))));
  }

  absl::string_view rest = text.substr(scheme_end + 3);
  const size_t authority_end = rest.find_first_of("/?#");
  absl::string_view authority = rest.substr(0, authority_end);
  const absl::string_view path = authority_end == absl::string_view::npos
                                     ? absl::string_view()
                                     : rest.substr(authority_end);
  if (absl::StrContains(path, '?') || absl::StrContains(path, '#')) {
    return absl::InvalidArgumentError("URL must not have a query or fragment");
  }
  if (absl::StrContains(authority, '@')) {
    // Credentials in a URL end up in logs; they belong in their own
    // variables.
    return absl::InvalidArgumentError("URL must not contain user info");
  }

  absl::string_view host;
  absl::string_view port_part;
  bool has_port = false;
  if (absl::StartsWith(authority, "[")) {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("unterminated IPv6 literal in ", QuoteUrl(text)));
    }
    host = authority.substr(0, close + 1);
    const absl::string_view literal = host.substr(1, host.size() - 2);
    if (literal.empty() ||
        !std::all_of(literal.begin(), literal.end(), IsIpv6LiteralChar)) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid IPv6 literal in ", QuoteUrl(text)));
    }
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        return absl::InvalidArgumentError(
            absl::StrCat("unexpected text after the host in ", QuoteUrl(text)));
      }
      has_port = true;
      port_part = after.substr(1);
    }
  } else {
    const size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != absl::string_view::npos) {
      has_port = true;
      port_part = authority.substr(colon + 1);
    }
    if (!std::all_of(host.begin(), host.end(), IsHostNameChar)) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid host name in ", QuoteUrl(text)));
    }
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("URL ", QuoteUrl(text), " has no host"));
  }
  url.host = absl::AsciiStrToLower(host);

  url.port = default_port;
  if (has_port) {
    const auto port = ParseDecimal(port_part, 65535);
    if (!port.has_value() || *port == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid port ", Quote(port_part), " in URL (want 1..65535)"));
    }
    url.port = static_cast<int>(*port);
  }
  url.path = std::string(path);
  return url;
}

EnvReader EnvReader::FromEnviron() {
  Map vars;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const absl::string_view line(*entry);
    const size_t equals = line.find('=');
    if (equals == absl::string_view::npos) continue;
    // Like getenv(): the first definition of a duplicated name wins.
    vars.emplace(line.substr(0, equals), line.substr(equals + 1));
  }
  return EnvReader(std::move(vars));
}

const std::string* EnvReader::Find(absl::string_view name) const {
  auto it = vars_.find(name);
  return it == vars_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::string> EnvReader::Required(absl::string_view name) const {
  const std::string* value = Find(name);
  if (value == nullptr) return VariableError(name, "required but not set");
  if (value->empty()) return VariableError(name, "required but empty");
  return *value;
}

std::string EnvReader::Optional(absl::string_view name,
                                absl::string_view default_value) const {
  const std::string* value = Find(name);
  if (value == nullptr || value->empty()) return std::string(default_value);
  return *value;
}

absl::StatusOr<int> EnvReader::Port(absl::string_view name, int default_value,
                                    PortZero zero) const {
  const std::string* value = Find(name);
  if (value == nullptr || value->empty()) return default_value;
  const auto port =
      ParseDecimal(absl::StripAsciiWhitespace(*value), /*max=*/65535);
  const bool zero_ok = zero == PortZero::kAllowed;
  if (!port.has_value() || (*port == 0 && !zero_ok)) {
    return VariableError(name,
                         absl::StrCat(Quote(*value), " is not a port number (",
                                      zero_ok ? "0" : "1", "..65535)"));
  }
  return static_cast<int>(*port);
}

absl::StatusOr<bool> EnvReader::Bool(absl::string_view name,
                                     bool default_value) const {
  const std::string* value = Find(name);
  if (value == nullptr) return default_value;
  const std::string lower =
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(*value));
  if (lower == "true" || lower == "yes") return true;
  if (lower == "false" || lower == "no" || lower.empty()) return false;
  return VariableError(
      name, absl::StrCat(Quote(*value),
                         " is not a boolean (want true, yes, false or no)"));
}

absl::StatusOr<absl::Duration> EnvReader::DurationMs(
    absl::string_view name, absl::Duration default_value) const {
  const std::string* value = Find(name);
  if (value == nullptr || value->empty()) return default_value;
  // Bounded well below INT64_MAX so that later arithmetic cannot overflow:
  // 10^15 ms is about 31,700 years.
  constexpr std::uint64_t kMaxMs = 1'000'000'000'000'000;
  const auto ms = ParseDecimal(absl::StripAsciiWhitespace(*value), kMaxMs);
  if (!ms.has_value()) {
    return VariableError(
        name,
        absl::StrCat(Quote(*value), " is not a whole number of milliseconds"));
  }
  return absl::Milliseconds(static_cast<std::int64_t>(*ms));
}

absl::StatusOr<std::int64_t> EnvReader::Integer(absl::string_view name,
                                                std::int64_t default_value,
                                                std::int64_t min_value,
                                                std::int64_t max_value) const {
  const std::string* value = Find(name);
  if (value == nullptr || value->empty()) return default_value;
  std::int64_t n = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*value), &n) ||
      n < min_value || n > max_value) {
    return VariableError(
        name, absl::StrCat(Quote(*value), " is not a whole number from ",
                           min_value, " to ", max_value));
  }
  return n;
}

absl::StatusOr<Url> EnvReader::HttpUrl(absl::string_view name) const {
  const std::string* value = Find(name);
  if (value == nullptr) return VariableError(name, "required but not set");
  if (value->empty()) return VariableError(name, "required but empty");
  auto url = ParseHttpUrl(*value);
  if (!url.ok()) return VariableError(name, url.status().message());
  return url;
}

}  // namespace broker::common
