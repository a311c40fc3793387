#include "common/pem.h"

#include "common/file.h"
#include "common/openssl_ptr.h"
#include "common/status.h"

#include "absl/strings/str_cat.h"
#include "openssl/err.h"
#include "openssl/pem.h"

#include <climits>

namespace broker::common {
namespace {

// A memory BIO over `text` (which must outlive it).
BioPtr MemoryBio(const std::string& text) {
  if (text.size() > static_cast<size_t>(INT_MAX)) return nullptr;
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Parses every certificate in `text`; the first one, or an error naming
// `path`. The OpenSSL error queue is cleared either way.
absl::StatusOr<X509Ptr> ParseCertificates(const std::string& text,
                                          const std::string& path) {
  BioPtr bio = MemoryBio(text);
  if (bio == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  }
  X509Ptr first;
  int count = 0;
  while (true) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) break;
    if (first == nullptr) first = std::move(cert);
    ++count;
  }
  // The loop ends on "no start line" at the end of the text; anything else
  // (a truncated or corrupt block) is an error.
  const auto last = ERR_peek_last_error();
  ERR_clear_error();
  const bool clean_end = ERR_GET_LIB(last) == ERR_LIB_PEM &&
                         ERR_GET_REASON(last) == PEM_R_NO_START_LINE;
  if (count == 0 || !clean_end) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a PEM certificate file"));
  }
  return first;
}

}  // namespace

absl::StatusOr<std::string> ReadPemCertificates(const std::string& path) {
  BROKER_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  BROKER_ASSIGN_OR_RETURN(X509Ptr ignored, ParseCertificates(text, path));
  return text;
}

absl::StatusOr<PemKeyCertPair> ReadPemKeyCertPair(const std::string& cert_path,
                                                  const std::string& key_path) {
  PemKeyCertPair pair;
  BROKER_ASSIGN_OR_RETURN(pair.cert_chain, ReadFileToString(cert_path));
  BROKER_ASSIGN_OR_RETURN(X509Ptr leaf,
                          ParseCertificates(pair.cert_chain, cert_path));
  BROKER_ASSIGN_OR_RETURN(pair.private_key, ReadFileToString(key_path));
  BioPtr bio = MemoryBio(pair.private_key);
  EvpPkeyPtr key(bio == nullptr ? nullptr
                                : PEM_read_bio_PrivateKey(bio.get(), nullptr,
                                                          nullptr, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_path, " is not an unencrypted PEM private key"));
  }
  if (X509_check_private_key(leaf.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("the key in ", key_path,
                     " does not match the certificate in ", cert_path));
  }
  return pair;
}

}  // namespace broker::common
