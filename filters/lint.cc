#include "filters/lint.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace broker::filters {
namespace {

bool IsWriteMethod(const Rule& rule) {
  return rule.method == "PUT" || rule.method == "POST" ||
         rule.method == "PATCH" || rule.method == "DELETE";
}

bool IsReadMethod(const Rule& rule) {
  return rule.method == "GET" || rule.method == "HEAD";
}

// A parameter or "*" that accepts any text: no custom (regex) group.
bool IsOpenToken(const PathPattern::Token& token) {
  return !token.is_literal && !token.custom_pattern;
}

bool HasWildcard(const PathPattern& path) {
  for (const PathPattern::Token& token : path.tokens()) {
    if (!token.is_literal && (token.asterisk || token.repeat)) return true;
  }
  return false;
}

// The path's last token accepts any file name: "*", ":param" (which takes
// "%2F" too, so any depth), ":param*".
bool EndsOpen(const PathPattern& path) {
  const auto& tokens = path.tokens();
  return !tokens.empty() && IsOpenToken(tokens.back());
}

// Names that say "this segment is a file path".
bool LooksLikeFileSegment(const PathPattern& path) {
  const auto& tokens = path.tokens();
  if (tokens.empty() || tokens.back().is_literal) return false;
  const PathPattern::Token& last = tokens.back();
  if (last.asterisk) return true;
  std::string name = absl::AsciiStrToLower(last.text);
  if (absl::StrContains(name, "path") || absl::StrContains(name, "file")) {
    return true;
  }
  if (tokens.size() < 2 || !tokens[tokens.size() - 2].is_literal) return false;
  std::string before = absl::AsciiStrToLower(tokens[tokens.size() - 2].text);
  for (absl::string_view dir :
       {"contents", "raw", "browse", "files", "blob", "src", "items"}) {
    if (absl::EndsWith(before, dir)) return true;
  }
  return false;
}

bool HasQueryCheck(const Rule& rule, absl::string_view name) {
  for (const QueryCheck& check : rule.query_checks) {
    if (check.name == name) return true;
  }
  return false;
}

// "h" of "http://user@h:80/path", "[::1]" kept with its brackets.
absl::string_view OriginHost(absl::string_view origin) {
  absl::string_view rest = origin.substr(origin.find("://") + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  size_t at = rest.rfind('@');
  if (at != absl::string_view::npos) rest.remove_prefix(at + 1);
  size_t colon = rest.rfind(':');
  if (colon != absl::string_view::npos && !absl::EndsWith(rest, "]")) {
    rest = rest.substr(0, colon);
  }
  return rest;
}

bool IsLoopbackHost(absl::string_view host) {
  return host == "localhost" || absl::StartsWith(host, "127.") ||
         host == "[::1]";
}

void Warn(const Rule& rule, std::string message, std::vector<Diagnostic>* out) {
  out->push_back({Severity::kWarning, RuleListName(rule.list), rule.index,
                  std::move(message)});
}

// What the open end of the path lets through, in words.
std::string DescribeOpenEnd(const PathPattern& path) {
  const auto& tokens = path.tokens();
  const PathPattern::Token& last = tokens.back();
  if (last.asterisk) {
    std::string after;
    if (tokens.size() >= 2 && tokens[tokens.size() - 2].is_literal) {
      absl::string_view text = tokens[tokens.size() - 2].text;
      text = text.substr(
          text.rfind('/') == absl::string_view::npos ? 0 : text.rfind('/') + 1);
      if (!text.empty()) after = absl::StrCat(" after \"", text, "\"");
    }
    return absl::StrCat("its trailing \"*\" also crosses \"/\", so any path",
                        after, " gets through (e.g. .env, id_rsa, ",
                        ".github/workflows/ci.yml below it)");
  }
  return absl::StrCat(
      "\":", last.text,
      "\" takes any file name, and \"%2F\" in it reaches any "
      "depth (e.g. .env, id_rsa, .github%2Fworkflows%2Fci.yml)");
}

void CheckRule(const Rule& rule, std::vector<Diagnostic>* out) {
  const std::string what = absl::StrCat(rule.method, " ", rule.path.path());
  const bool file_end = EndsOpen(rule.path) && LooksLikeFileSegment(rule.path);
  if (IsWriteMethod(rule) && file_end && !rule.HasValidity()) {
    Warn(rule,
         absl::StrCat(what, " can overwrite any file it reaches: ",
                      DescribeOpenEnd(rule.path),
                      "; name the files it may write instead, e.g. "
                      "\":path(package\\\\.json|pom\\\\.xml)\", or add a "
                      "\"valid\" check"),
         out);
  }
  const bool git_discovery =
      absl::StrContains(absl::AsciiStrToLower(rule.path.path()), "info/refs");
  if (IsReadMethod(rule) && file_end && !git_discovery && !rule.HasValidity()) {
    Warn(rule,
         absl::StrCat(what, " can read any file it reaches: ",
                      DescribeOpenEnd(rule.path),
                      "; restrict it to the manifests you need, e.g. "
                      "\":path(package\\\\.json|pom\\\\.xml)\""),
         out);
  }
  if (git_discovery && !HasQueryCheck(rule, "service")) {
    Warn(rule,
         absl::StrCat(what,
                      " also allows git-receive-pack (push) discovery; add "
                      "{\"queryParam\": \"service\", \"values\": "
                      "[\"git-upload-pack\"]}"),
         out);
  }
  if (rule.AnyMethod() && HasWildcard(rule.path)) {
    Warn(
        rule,
        absl::StrCat("method \"any\" with the wildcard path ", rule.path.path(),
                     " allows every method, writes included, on every path "
                     "below it; list the methods you need in separate rules"),
        out);
  }
  if (rule.list == RuleList::kPrivate && !rule.origin) {
    Warn(rule,
         absl::StrCat(
             what,
             " has no \"origin\": requests it allows cannot be "
             "forwarded; add the origin, e.g. \"https://${GITHUB_API}\""),
         out);
  }
  if (rule.origin && absl::StartsWith(rule.origin->text(), "http://")) {
    if (!IsLoopbackHost(OriginHost(rule.origin->text()))) {
      Warn(rule,
           absl::StrCat("origin ", rule.origin->text(),
                        " uses plain http:// to a host that is not loopback: "
                        "source code and credentials cross the network "
                        "unencrypted; use https://"),
           out);
    }
  }
}

}  // namespace

std::vector<Diagnostic> RiskWarnings(const RuleSet& rule_set) {
  std::vector<Diagnostic> out;
  for (RuleList list : {RuleList::kPrivate, RuleList::kPublic}) {
    for (const Rule& rule : rule_set.rules(list)) CheckRule(rule, &out);
  }
  return out;
}

std::vector<Diagnostic> Lint(absl::string_view text,
                             absl::string_view source_name) {
  LoadResult result = RuleSet::Parse(text, source_name);
  std::vector<Diagnostic> out = std::move(result.diagnostics);
  if (result.rule_set) {
    std::vector<Diagnostic> risks = RiskWarnings(*result.rule_set);
    out.insert(out.end(), risks.begin(), risks.end());
  }
  return out;
}

}  // namespace broker::filters
