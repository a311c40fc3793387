#include "filters/glob.h"

#include "common/status.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace broker::filters {
namespace {

constexpr size_t kMaxBraceExpansions = 4096;

// UTF-8, so that "?" is one character as in JavaScript (for the BMP).
RE2::Options SegmentOptions() {
  RE2::Options options;
  options.set_log_errors(false);
  return options;
}

// Index of the `close` matching the `open_char` at `open` (nesting and "\\"
// escapes honoured), or npos when unbalanced.
size_t FindClosing(absl::string_view s, size_t open, char open_char,
                   char close) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == open_char) {
      ++depth;
    } else if (s[i] == close) {
      if (--depth == 0) return i;
    }
  }
  return absl::string_view::npos;
}

// Splits the body of a brace set on top-level commas.
std::vector<std::string> SplitTopLevelCommas(absl::string_view body) {
  std::vector<std::string> parts;
  std::string current;
  int depth = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c == '\\' && i + 1 < body.size()) {
      current.push_back(c);
      current.push_back(body[++i]);
      continue;
    }
    if (c == '{') ++depth;
    if (c == '}') --depth;
    if (c == ',' && depth == 0) {
      parts.push_back(std::move(current));
      current.clear();
      continue;
    }
    current.push_back(c);
  }
  parts.push_back(std::move(current));
  return parts;
}

// "{1..3}", "{a..c}", "{1..10..2}" as brace-expansion understands them.
bool ExpandSequence(absl::string_view body, std::vector<std::string>* out) {
  std::vector<absl::string_view> ends = absl::StrSplit(body, "..");
  if (ends.size() != 2 && ends.size() != 3) return false;
  int64_t step = 1;
  if (ends.size() == 3 && !absl::SimpleAtoi(ends[2], &step)) return false;
  if (step == 0) step = 1;
  if (step < 0) step = -step;
  int64_t from = 0;
  int64_t to = 0;
  bool alpha = false;
  if (absl::SimpleAtoi(ends[0], &from) && absl::SimpleAtoi(ends[1], &to)) {
  } else if (ends[0].size() == 1 && ends[1].size() == 1 &&
             absl::ascii_isalpha(static_cast<unsigned char>(ends[0][0])) &&
             absl::ascii_isalpha(static_cast<unsigned char>(ends[1][0]))) {
    alpha = true;
    from = static_cast<unsigned char>(ends[0][0]);
    to = static_cast<unsigned char>(ends[1][0]);
  } else {
    return false;
  }
  // brace-expansion pads "{01..10}" to the wider end.
  auto padded = [](absl::string_view n) {
    absl::ConsumePrefix(&n, "-");
    return n.size() > 1 && n[0] == '0';
  };
  const size_t width = !alpha && (padded(ends[0]) || padded(ends[1]))
                           ? std::max(ends[0].size(), ends[1].size())
                           : 0;
  int64_t direction = from <= to ? 1 : -1;
  for (int64_t v = from; direction > 0 ? v <= to : v >= to;
       v += direction * step) {
    if (out->size() >= kMaxBraceExpansions) return false;
    if (alpha) {
      out->push_back(std::string(1, static_cast<char>(v)));
      continue;
    }
    std::string digits = std::to_string(v < 0 ? -v : v);
    size_t sign = v < 0 ? 1 : 0;
    if (digits.size() + sign < width) {
      digits.insert(0, width - digits.size() - sign, '0');
    }
    out->push_back(v < 0 ? "-" + digits : digits);
  }
  return true;
}

// Brace expansion, as the brace-expansion package does for minimatch.
absl::Status BraceExpand(const std::string& pattern,
                         std::vector<std::string>* out) {
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\') {
      ++i;
      continue;
    }
    if (pattern[i] != '{') continue;
    if (i > 0 && pattern[i - 1] == '$') continue;  // "${...}" is not a set
    size_t close = FindClosing(pattern, i, '{', '}');
    if (close == std::string::npos) continue;
    absl::string_view body =
        absl::string_view(pattern).substr(i + 1, close - i - 1);
    std::vector<std::string> options;
    std::vector<std::string> commas = SplitTopLevelCommas(body);
    if (commas.size() > 1) {
      options = std::move(commas);
    } else if (!ExpandSequence(body, &options)) {
      continue;  // "{x}" is literal; look for a later set
    }
    std::string pre = pattern.substr(0, i);
    std::string post = pattern.substr(close + 1);
    for (const std::string& option : options) {
      std::vector<std::string> expanded;
      BROKER_RETURN_IF_ERROR(
          BraceExpand(absl::StrCat(pre, option, post), &expanded));
      for (std::string& e : expanded) {
        if (out->size() >= kMaxBraceExpansions) {
          return absl::InvalidArgumentError(absl::StrCat(
              "glob \"", pattern, "\": too many brace expansions"));
        }
        out->push_back(std::move(e));
      }
    }
    return absl::OkStatus();
  }
  out->push_back(pattern);
  return absl::OkStatus();
}

// Appends `c` to a regex as a literal. Bytes of multi-byte UTF-8
// characters go in as they are (RE2 reads the pattern as UTF-8).
void AppendLiteral(char c, std::string* re) {
  const auto byte = static_cast<unsigned char>(c);
  if (absl::ascii_isalnum(byte) || byte >= 0x80) {
    re->push_back(c);
  } else {
    absl::StrAppend(re, "\\x",
                    absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
  }
}

// Translates a "[...]" class starting at `open`. Returns the characters
// consumed, or 0 when it is not a valid class (then "[" is literal).
size_t TranslateClass(absl::string_view s, size_t open, std::string* re) {
  size_t i = open + 1;
  std::string body;
  if (i < s.size() && (s[i] == '!' || s[i] == '^')) {
    body.push_back('^');
    ++i;
  }
  size_t first = i;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c == ']' && i > first) break;
    if (c == '\\' && i + 1 < s.size()) {
      AppendLiteral(s[++i], &body);
      continue;
    }
    if (c == '-' && i > first && i + 1 < s.size() && s[i + 1] != ']') {
      body.push_back('-');
      continue;
    }
    AppendLiteral(c, &body);
  }
  if (i >= s.size() || body.empty() || body == "^") return 0;
  std::string candidate = absl::StrCat("[", body, "]");
  RE2 check(candidate, SegmentOptions());
  if (!check.ok()) return 0;
  re->append(candidate);
  return i + 1 - open;
}

// Splits an extglob body on top-level "|".
std::vector<absl::string_view> SplitAlternatives(absl::string_view body) {
  std::vector<absl::string_view> out;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] == '\\') {
      ++i;
    } else if (body[i] == '(') {
      ++depth;
    } else if (body[i] == ')') {
      --depth;
    } else if (body[i] == '|' && depth == 0) {
      out.push_back(body.substr(start, i - start));
      start = i + 1;
    }
  }
  out.push_back(body.substr(start));
  return out;
}

// What translating a piece of a glob segment found.
struct Translation {
  std::string re;       // RE2 source
  std::string literal;  // the unescaped text, meaningful without magic
  bool has_magic = false;
  bool starts_with_wildcard = false;
};

// Translates `s` (no "/") to RE2 as minimatch's parse() does: "*", "?",
// "[...]", "\\" escapes, and the extglobs "@(a|b)", "?(..)", "*(..)",
// "+(..)". "!(..)" needs a look-ahead RE2 cannot run and is refused.
absl::Status Translate(absl::string_view s, Translation* out) {
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool at_start = out->re.empty();
    if (c == '\\') {
      char lit = i + 1 < s.size() ? s[++i] : '\\';
      AppendLiteral(lit, &out->re);
      out->literal.push_back(lit);
      continue;
    }
    if ((c == '+' || c == '@' || c == '!' || c == '?' || c == '*') &&
        i + 1 < s.size() && s[i + 1] == '(') {
      size_t close = FindClosing(s, i + 1, '(', ')');
      if (close != absl::string_view::npos) {
        if (c == '!') {
          return absl::InvalidArgumentError(absl::StrCat(
              "glob \"", s, "\": the negated extglob !(...) is not supported"));
        }
        std::vector<std::string> alternatives;
        for (absl::string_view alt :
             SplitAlternatives(s.substr(i + 2, close - i - 2))) {
          Translation inner;
          BROKER_RETURN_IF_ERROR(Translate(alt, &inner));
          alternatives.push_back(std::move(inner.re));
        }
        absl::StrAppend(&out->re, "(?:", absl::StrJoin(alternatives, "|"), ")",
                        c == '@' ? "" : std::string(1, c));
        out->has_magic = true;
        out->starts_with_wildcard |= at_start;
        i = close;
        continue;
      }
    }
    if (c == '*') {
      out->has_magic = true;
      out->starts_with_wildcard |= at_start;
      while (i + 1 < s.size() && s[i + 1] == '*') ++i;
      out->re += "[^/]*";
      continue;
    }
    if (c == '?') {
      out->has_magic = true;
      out->starts_with_wildcard |= at_start;
      out->re += "[^/]";
      continue;
    }
    if (c == '[') {
      size_t used = TranslateClass(s, i, &out->re);
      if (used > 0) {
        out->has_magic = true;
        out->starts_with_wildcard |= at_start;
        i += used - 1;
        continue;
      }
    }
    AppendLiteral(c, &out->re);
    out->literal.push_back(c);
  }
  return absl::OkStatus();
}

// One "/"-free piece of the pattern (minimatch's parse()).
absl::StatusOr<Glob::Part> ParseSegment(absl::string_view segment) {
  Glob::Part part;
  if (segment == "**") {
    part.globstar = true;
    return part;
  }
  Translation t;
  BROKER_RETURN_IF_ERROR(Translate(segment, &t));
  if (!t.has_magic) {
    part.literal = std::move(t.literal);
    return part;
  }
  part.non_empty = true;
  part.no_dot_segment = t.starts_with_wildcard;
  auto regex = std::make_shared<RE2>(t.re, SegmentOptions());
  if (!regex->ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("glob segment \"", segment, "\": ", regex->error()));
  }
  part.regex = std::move(regex);
  return part;
}

bool IsDotSegment(absl::string_view s) { return s == "." || s == ".."; }

// JavaScript's "." (in minimatch's "(?=.)") refuses line terminators.
bool StartsWithLineTerminator(absl::string_view s) {
  return !s.empty() &&
         (s[0] == '\n' || s[0] == '\r' || absl::StartsWith(s, "\xE2\x80\xA8") ||
          absl::StartsWith(s, "\xE2\x80\xA9"));
}

bool PartMatches(const Glob::Part& part, absl::string_view segment) {
  if (!part.regex) return segment == part.literal;
  if (part.non_empty &&
      (segment.empty() || StartsWithLineTerminator(segment))) {
    return false;
  }
  if (part.no_dot_segment && IsDotSegment(segment)) return false;
  return RE2::FullMatch(re2::StringPiece(segment.data(), segment.size()),
                        *part.regex);
}

}  // namespace

bool Glob::HasMagic(absl::string_view pattern) {
  return pattern.find_first_of("*?[{!") != absl::string_view::npos;
}

absl::StatusOr<Glob> Glob::Compile(absl::string_view pattern_text) {
  Glob glob;
  glob.pattern_ = std::string(pattern_text);
  if (!pattern_text.empty() && pattern_text[0] == '#') {
    glob.never_ = true;
    return glob;
  }
  std::string pattern(absl::StripAsciiWhitespace(pattern_text));
  if (!pattern.empty() && pattern[0] == '#') {
    glob.never_ = true;
    return glob;
  }
  if (pattern.empty()) {
    glob.empty_only_ = true;
    return glob;
  }
  size_t bangs = 0;
  while (bangs < pattern.size() && pattern[bangs] == '!') ++bangs;
  glob.negate_ = bangs % 2 == 1;
  pattern.erase(0, bangs);

  std::vector<std::string> expanded;
  BROKER_RETURN_IF_ERROR(BraceExpand(pattern, &expanded));
  for (const std::string& one : expanded) {
    Alternative alternative;
    // minimatch splits on runs of slashes.
    std::vector<absl::string_view> segments = SplitOnSlashRuns(one);
    for (absl::string_view segment : segments) {
      BROKER_ASSIGN_OR_RETURN(Part part, ParseSegment(segment));
      alternative.push_back(std::move(part));
    }
    glob.alternatives_.push_back(std::move(alternative));
  }
  return glob;
}

std::vector<absl::string_view> SplitOnSlashRuns(absl::string_view s) {
  std::vector<absl::string_view> out;
  size_t start = 0;
  size_t i = 0;
  while (i <= s.size()) {
    if (i == s.size() || s[i] == '/') {
      out.push_back(s.substr(start, i - start));
      if (i == s.size()) break;
      while (i < s.size() && s[i] == '/') ++i;
      start = i;
      if (i == s.size()) {
        out.emplace_back();
        break;
      }
      continue;
    }
    ++i;
  }
  return out;
}

bool Glob::MatchAlternative(const Alternative& pattern,
                            const std::vector<absl::string_view>& file) {
  // below[f] = "pattern[p+1..] matches file[f..]" for the row under the
  // current one; computed bottom-up so that "**" costs O(1) per cell instead
  // of minimatch's recursive retry (exponential on hostile values).
  const size_t fl = file.size();
  const size_t pl = pattern.size();
  std::vector<char> below(fl + 1, 0);
  std::vector<char> row(fl + 1, 0);
  // Out of pattern: a hit when the file is done too, or only a trailing ""
  // (from a trailing slash) is left.
  for (size_t f = 0; f <= fl; ++f) {
    below[f] = static_cast<char>(f == fl || (f + 1 == fl && file[f].empty()));
  }
  for (size_t p = pl; p-- > 0;) {
    const Part& part = pattern[p];
    row[fl] = 0;  // out of file with pattern left: no match
    if (part.globstar && p + 1 == pl) {
      // A final "**" swallows the rest unless a "." or ".." is in it.
      bool clean = true;
      for (size_t f = fl; f-- > 0;) {
        clean = clean && !IsDotSegment(file[f]);
        row[f] = static_cast<char>(clean);
      }
    } else if (part.globstar) {
      for (size_t f = fl; f-- > 0;) {
        row[f] = static_cast<char>(below[f] ||
                                   (!IsDotSegment(file[f]) && row[f + 1]));
      }
    } else {
      for (size_t f = fl; f-- > 0;) {
        row[f] = static_cast<char>(below[f + 1] && PartMatches(part, file[f]));
      }
    }
    std::swap(row, below);
  }
  return below[0] != 0;
}

bool Glob::Matches(absl::string_view value) const {
  if (never_) return false;
  if (empty_only_) return value.empty();
  std::vector<absl::string_view> file = SplitOnSlashRuns(value);
  for (const Alternative& alternative : alternatives_) {
    if (MatchAlternative(alternative, file)) return !negate_;
  }
  return negate_;
}

}  // namespace broker::filters
