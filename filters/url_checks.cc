#include "filters/url_checks.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

#include <vector>

namespace broker::filters {
namespace {

// How many rounds of percent-decoding a segment may need before we call it
// an evasion attempt on its own.
constexpr int kMaxDecodeRounds = 8;

// Node's path.posix.normalize().
std::string NodeNormalize(absl::string_view path) {
  if (path.empty()) return ".";
  const bool absolute = path.front() == '/';
  const bool trailing = path.back() == '/';
  std::vector<absl::string_view> stack;
  for (absl::string_view segment : absl::StrSplit(path, '/')) {
    if (segment.empty() || segment == ".") continue;
    if (segment == "..") {
      if (!stack.empty() && stack.back() != "..") {
        stack.pop_back();
      } else if (!absolute) {
        stack.push_back(segment);
      }
      continue;
    }
    stack.push_back(segment);
  }
  std::string out = absl::StrJoin(stack, "/");
  if (out.empty()) {
    if (absolute) return "/";
    return trailing ? "./" : ".";
  }
  if (trailing) out += '/';
  return absolute ? absl::StrCat("/", out) : out;
}

// Overlong UTF-8 (C0 AE is ".", C0 AF is "/") is never legitimate, and some
// servers still decode it.
bool HasOverlongUtf8(absl::string_view s) {
  for (size_t i = 0; i < s.size(); ++i) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b == 0xC0 || b == 0xC1) return true;
    if (i + 1 < s.size()) {
      const auto next = static_cast<unsigned char>(s[i + 1]);
      if (b == 0xE0 && next < 0xA0) return true;
      if (b == 0xF0 && next < 0x90) return true;
    }
  }
  return false;
}

// Whether decoding or splitting could turn the segment into something else.
bool NeedsDecoding(absl::string_view segment) {
  for (char c : segment) {
    if (c == '%' || c == '\\' || c == ';' || c == '.' ||
        static_cast<unsigned char>(c) >= 0xC0) {
      return true;
    }
  }
  return false;
}

bool IsDotPiece(absl::string_view piece) {
  piece = piece.substr(0, piece.find(';'));
  return piece == "." || piece == "..";
}

}  // namespace

int HexDigitValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

SplitUrl SplitRequestTarget(absl::string_view url) {
  url = url.substr(0, url.find('#'));
  size_t question = url.find('?');
  if (question == absl::string_view::npos) return {url, absl::string_view()};
  return {url.substr(0, question), url.substr(question + 1)};
}

bool NormalizationWouldChange(absl::string_view path) {
  // Fast path: no "//", no "." or ".." segment, not empty.
  if (path.empty()) return true;
  bool suspicious = false;
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '.' ||
        (path[i] == '/' && i + 1 < path.size() && path[i + 1] == '/')) {
      suspicious = true;
      break;
    }
  }
  if (!suspicious) return false;
  return NodeNormalize(path) != path;
}

std::string PercentDecode(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() &&
        HexDigitValue(text[i + 1]) >= 0 && HexDigitValue(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexDigitValue(text[i + 1]) * 16 +
                                      HexDigitValue(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::optional<std::string> FindPathTraversal(absl::string_view path) {
  for (absl::string_view segment : absl::StrSplit(path, '/')) {
    // Most segments carry nothing that decoding or splitting could turn into
    // a dot segment.
    if (!NeedsDecoding(segment)) continue;
    std::string decoded(segment);
    int rounds = 0;
    while (absl::StrContains(decoded, '%')) {
      std::string next = PercentDecode(decoded);
      if (next == decoded) break;
      if (++rounds > kMaxDecodeRounds) {
        return absl::StrCat("path segment \"", segment,
                            "\" is percent-encoded more than ",
                            kMaxDecodeRounds, " times");
      }
      decoded = std::move(next);
    }
    if (HasOverlongUtf8(decoded)) {
      return absl::StrCat("path segment \"", segment.substr(0, 256),
                          "\" holds overlong UTF-8, which some servers decode "
                          "to \".\" or \"/\"");
    }
    for (absl::string_view piece :
         absl::StrSplit(decoded, absl::ByAnyChar("/\\"))) {
      if (IsDotPiece(piece)) {
        return absl::StrCat("path segment \"", segment.substr(0, 256),
                            "\" decodes to \"", piece.substr(0, 256),
                            "\", a traversal");
      }
    }
  }
  return std::nullopt;
}

}  // namespace broker::filters
