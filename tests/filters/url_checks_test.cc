// Tests of the request-target checks that run before path matching.
//
// NormalizationWouldChange expectations come from node 20:
// `path.posix.normalize(p) !== p`. FindPathTraversal follows the deliberate
// deviation in docs/accept-rules.md ("Encoded traversal is blocked").

#include "filters/url_checks.h"

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <optional>
#include <string>

namespace broker::filters {
namespace {

struct SplitCase {
  absl::string_view url;
  absl::string_view path;
  absl::string_view query;
};

TEST(SplitRequestTargetTest, DropsFragmentAndSplitsAtFirstQuestionMark) {
  constexpr SplitCase kCases[] = {
      {"/a", "/a", ""},
      {"/a?b=1", "/a", "b=1"},
      {"/a?b=1#frag", "/a", "b=1"},
      {"/a#frag", "/a", ""},
      {"/a#frag?x=1", "/a", ""},
      {"/a#", "/a", ""},
      {"/a?", "/a", ""},
      {"/a?#x", "/a", ""},
      {"/a?b?c", "/a", "b?c"},
      {"/a?b=?&c=d?e", "/a", "b=?&c=d?e"},
      {"/a??b", "/a", "?b"},
      {"/a?b#c#d", "/a", "b"},
      {"/a?b#c?d", "/a", "b"},
      {"?x", "", "x"},
      {"#x", "", ""},
      {"", "", ""},
      {"/repos/a/b/contents/x%3Fy%23z?ref=main",
       "/repos/a/b/contents/x%3Fy%23z", "ref=main"},
      {"/api/v4/projects/g%2Fp/statuses/abc?target_url=https://ci/x?y=1",
       "/api/v4/projects/g%2Fp/statuses/abc", "target_url=https://ci/x?y=1"},
  };
  for (const SplitCase& c : kCases) {
    const SplitUrl split = SplitRequestTarget(c.url);
    EXPECT_EQ(split.path, c.path) << "url " << c.url;
    EXPECT_EQ(split.query, c.query) << "url " << c.url;
  }
}

struct NormalizeCase {
  absl::string_view path;
  bool would_change;
};

TEST(NormalizationWouldChangeTest, AgreesWithNodePathPosixNormalize) {
  // node -e "console.log(path.posix.normalize(p) !== p)"
  constexpr NormalizeCase kCases[] = {
      {"/", false},
      {"/a", false},
      {"/a/", false},
      {"//a", true},
      {"/a//b", true},
      {"/./a", true},
      {"/a/.", true},
      {"/a/..", true},
      {"/..", true},
      {"/a/b/../c", true},
      {"/.a", false},
      {"/a..b", false},
      {"/...", false},
      {"a/b", false},
      {"", true},
      {"/a/./", true},
      {"/a/../", true},
      {"//", true},
      {"///", true},
      {"/a//", true},
      {"/a/./b", true},
      {"/a/b/.", true},
      {"/a/b/", false},
      {"/a/.b/", false},
      {"/a/b.", false},
      {"/a/b..", false},
      {"/.../", false},
      {"/a/..../b", false},
      {"a", false},
      {"a/", false},
      {".", false},
      {"..", false},
      {"./a", true},
      // Only "/" separates segments; nothing is decoded.
      {"/a%2e%2e/b", false},
      {"/a/%2e/b", false},
      {"/a/%2e%2e/b", false},
      {"/a\\..\\b", false},
      {"/a/..;/b", false},
      {"/%2F%2F", false},
  };
  for (const NormalizeCase& c : kCases) {
    EXPECT_EQ(NormalizationWouldChange(c.path), c.would_change)
        << "path \"" << c.path << "\"";
  }
}

struct DecodeCase {
  absl::string_view text;
  std::string decoded;
};

TEST(PercentDecodeTest, DecodesOnceAndKeepsInvalidEscapes) {
  const DecodeCase kCases[] = {
      {"", ""},
      {"abc", "abc"},
      {"%41", "A"},
      {"a%2Fb", "a/b"},
      {"a%2fb", "a/b"},
      {"%2e%2E", ".."},
      {"%C3%A9", "\xc3\xa9"},
      {"%e9", "\xe9"},
      {"%ff%FE", "\xff\xfe"},
      {"%00", std::string(1, '\0')},
      {"a%00b", std::string("a\0b", 3)},
      {"a+b", "a+b"},
      {"%20", " "},
      // Once only.
      {"%252e", "%2e"},
      {"%25", "%"},
      // Invalid or truncated escapes stay as they are.
      {"%zz", "%zz"},
      {"a%zzb", "a%zzb"},
      {"%4", "%4"},
      {"%4g", "%4g"},
      {"%g4", "%g4"},
      {"%", "%"},
      {"a%", "a%"},
      {"100%", "100%"},
      {"%%41", "%A"},
      {"%41%zz%42", "A%zzB"},
  };
  for (const DecodeCase& c : kCases) {
    EXPECT_EQ(absl::CHexEscape(PercentDecode(c.text)),
              absl::CHexEscape(c.decoded))
        << "text \"" << c.text << "\"";
  }
}

TEST(FindPathTraversalTest, BlocksEncodedTraversal) {
  constexpr absl::string_view kBlocked[] = {
      "/repos/a/b/contents/%2e%2e/secret",
      "/repos/a/b/contents/%2E%2E/secret",
      "/repos/a/b/contents/%2e%2E/secret",
      "/repos/a/b/contents/.%2e/secret",
      "/repos/a/b/contents/%2e./secret",
      "/repos/a/b/contents/..%2fsecret",
      "/repos/a/b/contents/..%2Fsecret",
      "/repos/a/b/contents/%2e%2e%2fsecret",
      "/repos/a/b/contents/x%2f..%2fsecret",
      "/repos/a/b/contents/..%5csecret",
      "/repos/a/b/contents/..%5Csecret",
      "/repos/a/b/contents/%2e%2e%5csecret",
      "/repos/a/b/contents/..;/secret",
      "/repos/a/b/contents/..\\secret",
      "/repos/a/b/contents/x\\..\\secret",
      "/repos/a/b/contents/%252e%252e/secret",
      "/repos/a/b/contents/%25252e%25252e/secret",
      "/repos/a/b/contents/%252e%252e%252fsecret",
      "/a/..;jsessionid=x/b",
      "/a/..%252fb",
      "/a/%2e%2e%255cb",
      "/a%5c..%5cb",
      "/a/.%2e;x/b",
      "/a/%2e%2e;x/b",
      "/a/..%3b/b",
      "/a/..%3Bx=y/b",
      // A single dot is traversal too.
      "/a/%2e/b",
      "/a/.%2fb",
      "/a/.;/b",
      // At the end of the path.
      "/a/%2e%2e",
      "/a/..%2f",
      // Decoding "%%32%65" once gives "%2e", which decodes to ".".
      "/a/%%32%65%%32%65/b",
      // GitLab-style encoded path with a traversal inside.
      "/api/v4/projects/group%2F..%2Fother/repository/files/x/raw",
      "/api/v4/projects/1/repository/files/src%2F..%2F..%2Fetc%2Fpasswd/raw",
      // Plain traversal is also reported (normalisation catches it first).
      "/a/../b",
      "/a/./b",
  };
  for (absl::string_view path : kBlocked) {
    EXPECT_NE(FindPathTraversal(path), std::nullopt) << "path " << path;
  }
}

TEST(FindPathTraversalTest, AllowsCleanPaths) {
  constexpr absl::string_view kClean[] = {
      "/",
      "/a",
      "/a/",
      "/api/v4/projects/group%2Fproject/repository/files/src%2Fmain.c/raw",
      "/api/v4/projects/group%2Fsub%2Fproject/repository/tree",
      "/a/b.c/d",
      "/a/...",
      "/a/.../b",
      "/a/....",
      "/a/.hidden",
      "/a/..hidden",
      "/a/hidden..",
      "/a/%2e%2ehidden",
      "/a/%2ehidden",
      "/a/x%2e%2e",
      "/acme/app.git/info/refs",
      "/repos/a/b/contents/.github/workflows/ci.yml",
      "/a/b;c/d",
      "/a/%zz/b",
      "/a/%2/b",
      "/a/b%20c",
      "/a/b%2Fc.d",
      "/a\\b",
  };
  for (absl::string_view path : kClean) {
    const std::optional<std::string> found = FindPathTraversal(path);
    EXPECT_EQ(found, std::nullopt) << "path " << path << ": " << *found;
  }
}

}  // namespace
}  // namespace broker::filters
