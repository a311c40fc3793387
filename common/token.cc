#include "common/token.h"

#include "common/openssl_ptr.h"
#include "common/status.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include <openssl/evp.h>

namespace broker::common {

std::string HashToken(absl::string_view token) {
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  BROKER_CHECK(ctx != nullptr);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_length = 0;
  // SHA-256 is always available in OpenSSL 3's default provider; failing
  // here means a broken installation, not bad input.
  BROKER_CHECK(EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1);
  BROKER_CHECK(EVP_DigestUpdate(ctx.get(), token.data(), token.size()) == 1);
  BROKER_CHECK(EVP_DigestFinal_ex(ctx.get(), digest, &digest_length) == 1);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), digest_length));
}

std::string MaskToken(absl::string_view token) {
  if (token.size() < kMinMaskableTokenLength) return "***";
  return absl::StrCat(token.substr(0, 4), "-...-",
                      token.substr(token.size() - 4));
}

}  // namespace broker::common
