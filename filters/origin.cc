#include "filters/origin.h"

#include "filters/rule.h"
#include "filters/url_checks.h"

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace broker::filters {

Variables Variables::FromEnviron(const char* const* environ) {
  absl::flat_hash_map<std::string, std::string> values;
  for (const char* const* entry = environ; entry && *entry; ++entry) {
    absl::string_view line(*entry);
    size_t equals = line.find('=');
    if (equals == absl::string_view::npos || equals == 0) continue;
    values.emplace(line.substr(0, equals), line.substr(equals + 1));
  }
  return Variables(std::move(values));
}

const std::string* Variables::Find(absl::string_view name) const {
  auto it = values_.find(name);
  return it == values_.end() ? nullptr : &it->second;
}

Template::Template(absl::string_view text) : text_(text) {
  // Snyk's /(\${.*?})/g: the shortest "${...}" on one line.
  size_t i = 0;
  std::string literal;
  while (i < text.size()) {
    if (text[i] == '$' && i + 1 < text.size() && text[i + 1] == '{') {
      size_t close = text.find('}', i + 2);
      size_t newline = text.find('\n', i + 2);
      if (close != absl::string_view::npos && close < newline) {
        if (!literal.empty()) pieces_.push_back({false, std::move(literal)});
        literal.clear();
        pieces_.push_back(
            {true, std::string(text.substr(i + 2, close - i - 2))});
        i = close + 1;
        continue;
      }
    }
    literal.push_back(text[i]);
    ++i;
  }
  if (!literal.empty()) pieces_.push_back({false, std::move(literal)});
}

std::vector<std::string> Template::VariableNames() const {
  std::vector<std::string> names;
  for (const Piece& piece : pieces_) {
    if (piece.is_variable) names.push_back(piece.text);
  }
  return names;
}

OriginResolver::OriginResolver(Variables variables)
    : variables_(std::move(variables)) {
  for (const auto& [name, value] : variables_.values()) {
    if (!absl::EndsWith(name, "_POOL") || value.empty()) continue;
    auto pool = std::make_unique<Pool>();
    pool->values = absl::StrSplit(value, ',');
    pools_.emplace(name.substr(0, name.size() - 5), std::move(pool));
  }
}

std::string OriginResolver::Expand(const Template& text) const {
  std::string out;
  for (const Template::Piece& piece : text.pieces_) {
    if (!piece.is_variable) {
      out += piece.text;
      continue;
    }
    auto pool = pools_.find(piece.text);
    if (pool != pools_.end()) {
      const Pool& p = *pool->second;
      uint64_t n = p.next.fetch_add(1, std::memory_order_relaxed);
      out += p.values[n % p.values.size()];
      continue;
    }
    if (const std::string* value = variables_.Find(piece.text)) out += *value;
  }
  return out;
}

absl::StatusOr<ForwardTarget> OriginResolver::Resolve(
    const Rule& rule, absl::string_view request_url) const {
  if (!rule.origin) {
    return absl::FailedPreconditionError(
        absl::StrCat(rule.Label(), " has no origin to forward to"));
  }
  ForwardTarget target;
  target.url = absl::StrCat(Expand(*rule.origin), request_url);
  if (!absl::StartsWith(target.url, "http")) {
    target.url.insert(0, "https://");
  }

  // Userinfo, as Node's url.parse finds it: the last "@" of the authority.
  std::string userinfo;
  size_t scheme_end = target.url.find("://");
  if (scheme_end != std::string::npos) {
    size_t authority = scheme_end + 3;
    size_t authority_end = target.url.find_first_of("/?#", authority);
    if (authority_end == std::string::npos) authority_end = target.url.size();
    size_t at = target.url.rfind('@', authority_end - 1);
    if (at != std::string::npos && at >= authority && at < authority_end) {
      userinfo = PercentDecode(
          absl::string_view(target.url).substr(authority, at - authority));
      target.url.erase(authority, at + 1 - authority);
    }
  }

  if (rule.auth) {
    const AuthSpec& auth = *rule.auth;
    std::string token = auth.token ? Expand(*auth.token) : "";
    switch (auth.scheme) {
      case AuthSpec::Scheme::kBasic:
        if (auth.username) {
          std::string password = auth.password ? Expand(*auth.password) : "";
          target.authorization = absl::StrCat(
              "Basic ", absl::Base64Escape(absl::StrCat(Expand(*auth.username),
                                                        ":", password)));
        } else {
          target.authorization =
              absl::StrCat("Basic ", absl::Base64Escape(token));
        }
        break;
      case AuthSpec::Scheme::kBearer:
        target.authorization = absl::StrCat("Bearer ", token);
        break;
      case AuthSpec::Scheme::kToken:
        target.authorization = absl::StrCat("Token ", token);
        break;
      case AuthSpec::Scheme::kRaw:
        target.authorization = token;
        break;
    }
  } else if (!userinfo.empty()) {
    if (absl::StrContains(userinfo, ':')) {
      target.authorization =
          absl::StrCat("Basic ", absl::Base64Escape(userinfo));
    } else {
      target.authorization = absl::StrCat("token ", userinfo);
    }
  }
  return target;
}

}  // namespace broker::filters
