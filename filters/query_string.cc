#include "filters/query_string.h"

#include "absl/strings/str_split.h"

namespace broker::filters {
namespace {

// qs stops after this many parameters.
constexpr int kParameterLimit = 1000;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Length of the UTF-8 sequence starting with `lead`, 0 when invalid.
int Utf8Length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

bool IsValidUtf8(absl::string_view s) {
  for (size_t i = 0; i < s.size();) {
    int n = Utf8Length(static_cast<unsigned char>(s[i]));
    if (n == 0 || i + n > s.size()) return false;
    for (int k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
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
  if (spaced.find('%') == std::string::npos) return spaced;
  std::string out;
  out.reserve(spaced.size());
  for (size_t i = 0; i < spaced.size(); ++i) {
    if (spaced[i] != '%') {
      out.push_back(spaced[i]);
      continue;
    }
    if (i + 2 >= spaced.size() || HexValue(spaced[i + 1]) < 0 ||
        HexValue(spaced[i + 2]) < 0) {
      return spaced;
    }
    out.push_back(static_cast<char>(HexValue(spaced[i + 1]) * 16 +
                                    HexValue(spaced[i + 2])));
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
    if (part.empty()) continue;
    if (++seen > kParameterLimit) break;
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
