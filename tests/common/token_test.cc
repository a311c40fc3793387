#include "common/token.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <string>

namespace broker::common {
namespace {

using ::testing::MatchesRegex;

TEST(HashTokenTest, Sha256TestVectors) {
  // FIPS 180-2 appendix B.1 and the empty message.
  EXPECT_EQ(HashToken("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HashToken(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // FIPS 180-2 appendix B.2 (two blocks).
  EXPECT_EQ(
      HashToken("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(HashTokenTest, HashesTheBytesExactlyAsGiven) {
  const std::string token = "01234567-89ab-cdef-0123-456789abcdef";
  EXPECT_NE(HashToken(token), HashToken(" " + token));
  EXPECT_NE(HashToken(token),
            HashToken("01234567-89AB-CDEF-0123-456789ABCDEF"));
  EXPECT_EQ(HashToken(token), HashToken(std::string(token)));
  // Embedded NUL bytes count.
  EXPECT_NE(HashToken(std::string("a\0b", 3)), HashToken("a"));
  EXPECT_THAT(HashToken(token), MatchesRegex("[0-9a-f]{64}"));
}

TEST(MaskTokenTest, UuidShowsFirstAndLastFour) {
  EXPECT_EQ(MaskToken("01234567-89ab-cdef-0123-456789abcdef"), "0123-...-cdef");
}

TEST(MaskTokenTest, ShortTokensRevealNothing) {
  EXPECT_EQ(MaskToken(""), "***");
  EXPECT_EQ(MaskToken("a"), "***");
  EXPECT_EQ(MaskToken("abcdefgh"), "***");
  EXPECT_EQ(MaskToken("abcdefghijk"), "***");             // 11 characters
  EXPECT_EQ(MaskToken("abcdefghijkl"), "abcd-...-ijkl");  // 12 characters
}

TEST(MaskTokenTest, NeverRevealsMoreThanEightCharacters) {
  // Every length up to 200, with all-distinct characters so that counting
  // which token characters appear in the mask is exact.
  std::string alphabet;
  for (int c = 0x21; c < 0x7F; ++c) alphabet.push_back(static_cast<char>(c));
  alphabet += alphabet;  // 188 characters
  for (size_t length = 0; length <= alphabet.size(); ++length) {
    const std::string token = alphabet.substr(0, length);
    const std::string masked = MaskToken(token);
    if (length < kMinMaskableTokenLength) {
      EXPECT_EQ(masked, "***") << length;
      continue;
    }
    ASSERT_EQ(masked.size(), 4 + 5 + 4) << length;
    EXPECT_EQ(masked.substr(0, 4), token.substr(0, 4));
    EXPECT_EQ(masked.substr(4, 5), "-...-");
    EXPECT_EQ(masked.substr(9), token.substr(length - 4));
    // Nothing of the token beyond those 8 characters appears.
    if (length > 8) {
      EXPECT_EQ(masked.find(token.substr(4, length - 8)), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace broker::common
