#include "filters/path_pattern.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

#include <cctype>

namespace broker::filters {
namespace {

bool IsWordChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
}

// A byte as a character-class member, escaped whatever it is.
std::string ClassChar(char c) {
  if (absl::ascii_isalnum(static_cast<unsigned char>(c))) return {c};
  return absl::StrCat(
      "\\x", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
}

// path-to-regexp's escapeGroup: escapes = ! : $ / ( ) inside a user group.
std::string EscapeGroup(absl::string_view group) {
  std::string out;
  for (char c : group) {
    if (absl::StrContains("=!:$/()", c)) {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

// JavaScript regex meanings RE2 spells differently: "\\s" also takes
// "\\v" and U+00A0, "." refuses "\\r" as well as "\\n".
std::string JsGroupToRe2(absl::string_view group) {
  constexpr absl::string_view kSpace = "\\t\\n\\x0b\\f\\r \\xa0";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < group.size(); ++i) {
    char c = group[i];
    if (c == '\\' && i + 1 < group.size()) {
      char next = group[++i];
      if (next == 's') {
        absl::StrAppend(&out, in_class ? "" : "[", kSpace, in_class ? "" : "]");
      } else if (next == 'S' && !in_class) {
        absl::StrAppend(&out, "[^", kSpace, "]");
      } else {
        out.push_back(c);
        out.push_back(next);
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out.push_back(c);
      if (i + 1 < group.size() && group[i + 1] == '^')
        out.push_back(group[++i]);
      if (i + 1 < group.size() && group[i + 1] == ']')
        out.push_back(group[++i]);
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    if (c == '.' && !in_class) {
      out += "[^\\n\\r]";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

// Matches path-to-regexp's group syntax "(" ( "\\." | [^\\()] )+ ")" at
// `pos`; returns the length consumed (0 when absent) and the inner text.
size_t MatchGroup(absl::string_view s, size_t pos, std::string* inner) {
  if (pos >= s.size() || s[pos] != '(') return 0;
  size_t i = pos + 1;
  std::string text;
  while (i < s.size()) {
    char c = s[i];
    if (c == '\\' && i + 1 < s.size()) {
      text.append(s.substr(i, 2).data(), 2);
      i += 2;
    } else if (c == '\\' || c == '(' || c == ')') {
      break;
    } else {
      text.push_back(c);
      ++i;
    }
  }
  if (text.empty() || i >= s.size() || s[i] != ')') return 0;
  *inner = std::move(text);
  return i + 1 - pos;
}

// One match of path-to-regexp's PATH_REGEXP (without the escape branch).
struct ParamMatch {
  size_t length = 0;  // 0: no match
  char prefix = 0;    // '/' or '.', or 0
  std::string name;
  std::string pattern;  // capture or group
  bool has_pattern = false;
  char modifier = 0;  // '+', '*', '?' or 0
  bool asterisk = false;
};

ParamMatch MatchParamBody(absl::string_view s, size_t pos) {
  ParamMatch m;
  if (pos >= s.size()) return m;
  size_t i = pos;
  if (s[i] == ':') {
    size_t j = i + 1;
    while (j < s.size() && IsWordChar(s[j])) ++j;
    if (j == i + 1) return m;
    m.name = std::string(s.substr(i + 1, j - i - 1));
    std::string inner;
    size_t g = MatchGroup(s, j, &inner);
    if (g > 0) {
      m.pattern = std::move(inner);
      m.has_pattern = true;
      j += g;
    }
    i = j;
  } else if (s[i] == '(') {
    std::string inner;
    size_t g = MatchGroup(s, i, &inner);
    if (g == 0) return m;
    m.pattern = std::move(inner);
    m.has_pattern = true;
    i += g;
  } else if (s[i] == '*') {
    m.asterisk = true;
    m.length = i + 1 - pos;
    return m;
  } else {
    return m;
  }
  if (i < s.size() && (s[i] == '+' || s[i] == '*' || s[i] == '?')) {
    m.modifier = s[i];
    ++i;
  }
  m.length = i - pos;
  return m;
}

ParamMatch MatchParam(absl::string_view s, size_t pos) {
  if (s[pos] == '/' || s[pos] == '.') {
    ParamMatch m = MatchParamBody(s, pos + 1);
    if (m.length > 0) {
      m.prefix = s[pos];
      m.length += 1;
      return m;
    }
  }
  return MatchParamBody(s, pos);
}

struct ParsedToken {
  PathPattern::Token token;
  std::string prefix;
  std::string pattern;  // RE2 source for one repetition
  bool partial = false;
};

}  // namespace

RE2::Options PathPatternOptions() {
  RE2::Options options;
  options.set_encoding(RE2::Options::EncodingLatin1);
  options.set_case_sensitive(false);
  options.set_log_errors(false);
  return options;
}

absl::StatusOr<PathPattern> PathPattern::Compile(absl::string_view path_text) {
  std::string path(path_text);
  if (path.empty() || path[0] != '/') path.insert(0, "/");

  // parse(): literal text and parameter tokens, as path-to-regexp 1.9.0.
  std::vector<ParsedToken> tokens;
  std::string literal;
  auto flush_literal = [&] {
    if (literal.empty()) return;
    ParsedToken t;
    t.token.is_literal = true;
    t.token.text = literal;
    tokens.push_back(std::move(t));
    literal.clear();
  };
  int unnamed = 0;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '\\' && i + 1 < path.size()) {
      literal.push_back(path[i + 1]);
      i += 2;
      continue;
    }
    ParamMatch m = MatchParam(path, i);
    if (m.length == 0) {
      literal.push_back(path[i]);
      ++i;
      continue;
    }
    flush_literal();
    size_t next_pos = i + m.length;
    ParsedToken t;
    t.token.is_literal = false;
    t.token.text = m.name.empty() ? std::to_string(unnamed++) : m.name;
    t.token.optional = m.modifier == '?' || m.modifier == '*';
    t.token.repeat = m.modifier == '+' || m.modifier == '*';
    t.token.asterisk = m.asterisk;
    t.token.custom_pattern = m.has_pattern;
    t.prefix = m.prefix ? std::string(1, m.prefix) : "";
    t.partial =
        m.prefix != 0 && next_pos < path.size() && path[next_pos] != m.prefix;
    const char delimiter = m.prefix ? m.prefix : '/';
    if (m.has_pattern) {
      t.pattern = JsGroupToRe2(EscapeGroup(m.pattern));
    } else if (m.asterisk) {
      // JavaScript's "." stops at line terminators; RE2's only at "\n".
      t.pattern = "[^\\n\\r]*";
    } else {
      // restrictBacktrack(): the text before the parameter.
      std::string prev_text = t.prefix;
      if (prev_text.empty() && !tokens.empty() &&
          tokens.back().token.is_literal) {
        prev_text = tokens.back().token.text;
      }
      if (prev_text.empty() || absl::StrContains(prev_text, delimiter)) {
        t.pattern = absl::StrCat("[^", ClassChar(delimiter), "]+?");
      } else if (prev_text.size() == 1) {
        t.pattern =
            absl::StrCat(ClassChar(prev_text[0]), "|[^", ClassChar(delimiter),
                         ClassChar(prev_text[0]), "]+?");
      } else {
        // path-to-regexp uses a look-ahead here, which RE2 cannot run.
        return absl::InvalidArgumentError(absl::StrCat(
            "path \"", path_text, "\": parameter \":", t.token.text,
            "\" directly after the text \"", prev_text,
            "\" is not supported; put a \"/\" or \".\" before it"));
      }
    }
    tokens.push_back(std::move(t));
    i = next_pos;
  }
  flush_literal();

  // A trailing "/" is optional, as in non-strict mode.
  if (!tokens.empty() && tokens.back().token.is_literal &&
      absl::EndsWith(tokens.back().token.text, "/")) {
    std::string& text = tokens.back().token.text;
    text.pop_back();
    if (text.empty()) tokens.pop_back();
    // Keep the token list faithful to the written path for lint.
  }

  // tokensToRegExp()
  std::string route;
  for (const ParsedToken& t : tokens) {
    if (t.token.is_literal) {
      route += RE2::QuoteMeta(t.token.text);
      continue;
    }
    std::string prefix = RE2::QuoteMeta(t.prefix);
    std::string capture = absl::StrCat("(?:", t.pattern, ")");
    if (t.token.repeat) {
      capture = absl::StrCat(capture, "(?:", prefix, capture, ")*");
    }
    if (t.token.optional) {
      if (!t.partial) {
        capture = absl::StrCat("(?:", prefix, "(", capture, "))?");
      } else {
        capture = absl::StrCat(prefix, "(", capture, ")?");
      }
    } else {
      capture = absl::StrCat(prefix, "(", capture, ")");
    }
    route += capture;
  }
  route += "(?:/)?";

  PathPattern pattern;
  pattern.path_ = std::move(path);
  pattern.regex_ = route;
  pattern.re_ = std::make_unique<RE2>(route, PathPatternOptions());
  if (!pattern.re_->ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "path \"", path_text, "\": invalid pattern: ", pattern.re_->error()));
  }
  pattern.tokens_.reserve(tokens.size());
  for (ParsedToken& t : tokens) pattern.tokens_.push_back(std::move(t.token));
  return pattern;
}

bool PathPattern::Matches(absl::string_view path) const {
  return re_ != nullptr &&
         RE2::FullMatch(re2::StringPiece(path.data(), path.size()), *re_);
}

}  // namespace broker::filters
