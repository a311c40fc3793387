#include "filters/query_string.h"

#include "filters/url_checks.h"

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

namespace broker::filters {
namespace {

// qs stops after this many parameters.
constexpr int kParameterLimit = 1000;

// Strict UTF-8, as decodeURIComponent demands: no overlong forms, no
// surrogates, nothing above U+10FFFF.
bool IsValidUtf8(absl::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto lead = static_cast<unsigned char>(s[i]);
    int n = 0;
    unsigned char low = 0x80;
    unsigned char high = 0xBF;
    if (lead < 0x80) {
      n = 1;
    } else if (lead >= 0xC2 && lead <= 0xDF) {
      n = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      n = 3;
      if (lead == 0xE0) low = 0xA0;
      if (lead == 0xED) high = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      n = 4;
      if (lead == 0xF0) low = 0x90;
      if (lead == 0xF4) high = 0x8F;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    for (int k = 1; k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (c < low || c > high) : (c & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// qs's decoder: "+" is a space, then decodeURIComponent, which fails as a
// whole on any malformed escape (then the "+"-replaced text is kept).
std::string Decode(absl::string_view raw) {
  std::string spaced(raw);
  for (char& c : spaced) {
    if (c == '+') c = ' ';
  }
  if (!absl::StrContains(spaced, '%')) return spaced;
  std::string out;
  out.reserve(spaced.size());
  for (size_t i = 0; i < spaced.size(); ++i) {
    if (spaced[i] != '%') {
      out.push_back(spaced[i]);
      continue;
    }
    if (i + 2 >= spaced.size() || HexDigitValue(spaced[i + 1]) < 0 ||
        HexDigitValue(spaced[i + 2]) < 0) {
      return spaced;
    }
    out.push_back(static_cast<char>(HexDigitValue(spaced[i + 1]) * 16 +
                                    HexDigitValue(spaced[i + 2])));
    i += 2;
  }
  if (!IsValidUtf8(out)) return spaced;
  return out;
}

}  // namespace

QueryParams ParseQueryString(absl::string_view query) {
  QueryParams params;
  int seen = 0;
  for (absl::string_view part : absl::StrSplit(query, '&')) {
    // Empty pieces count towards the limit, as in qs.
    if (++seen > kParameterLimit) break;
    if (part.empty()) continue;
    size_t bracket_equals = part.find("]=");
    size_t pos = bracket_equals == absl::string_view::npos ? part.find('=')
                                                           : bracket_equals + 1;
    std::string key;
    std::string value;
    if (pos == absl::string_view::npos) {
      key = Decode(part);
    } else {
      key = Decode(part.substr(0, pos));
      value = Decode(part.substr(pos + 1));
    }
    // "name[...]" makes name an array or object.
    bool structured = false;
    size_t open = key.find('[');
    if (open != std::string::npos && key.find(']', open) != std::string::npos) {
      if (open == 0) {
        size_t close = key.find(']');
        std::string inner = key.substr(1, close - 1);
        structured = key.find('[', close) != std::string::npos;
        key = inner;
      } else {
        key.resize(open);
        structured = true;
      }
    }
    if (key.empty()) continue;
    QueryValue& entry = params[key];
    if (entry.count == 0) entry.value = std::move(value);
    ++entry.count;
    entry.structured = entry.structured || structured;
  }
  return params;
}

}  // namespace broker::filters
