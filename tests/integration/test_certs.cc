#include "tests/integration/test_certs.h"

#include "common/openssl_ptr.h"
#include "common/status.h"

#include "absl/strings/str_cat.h"
#include "openssl/ec.h"
#include "openssl/err.h"
#include "openssl/pem.h"
#include "openssl/rand.h"
#include "openssl/x509v3.h"

#include <array>
#include <cstdint>

namespace broker::testing {
namespace {

using X509ExtensionPtr =
    common::OpenSslPtr<X509_EXTENSION, X509_EXTENSION_free>;

constexpr std::int64_t kOneHour = std::int64_t{60} * 60;
constexpr std::int64_t kOneDay = 24 * kOneHour;

// The OpenSSL error queue as a Status (and cleared).
[[nodiscard]] absl::Status OpenSslError(absl::string_view what) {
  std::string message(what);
  while (const auto code = ERR_get_error()) {
    std::array<char, 256> text{};
    ERR_error_string_n(code, text.data(), text.size());
    absl::StrAppend(&message, ": ", text.data());
  }
  return absl::InternalError(message);
}

[[nodiscard]] absl::StatusOr<common::EvpPkeyPtr> NewKey() {
  common::EvpPkeyPtr key(EVP_EC_gen("P-256"));
  if (key == nullptr) return OpenSslError("EVP_EC_gen");
  return key;
}

// Adds the extension `nid` = `value` (openssl.cnf syntax) to `cert`.
[[nodiscard]] absl::Status AddExtension(X509& cert, X509& issuer, int nid,
                                        const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, &issuer, &cert, nullptr, nullptr, 0);
  X509ExtensionPtr extension(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (extension == nullptr || X509_add_ext(&cert, extension.get(), -1) != 1) {
    return OpenSslError(absl::StrCat("extension ", OBJ_nid2sn(nid)));
  }
  return absl::OkStatus();
}

enum class Usage { kServer, kClient };

// A certificate for `key` named `common_name`, issued by `issuer` (itself,
// a CA, when null) and signed with `issuer_key`; a leaf is for `usage`.
[[nodiscard]] absl::StatusOr<common::X509Ptr> MakeCertificate(
    EVP_PKEY& key, const std::string& common_name, X509* issuer,
    EVP_PKEY& issuer_key, Usage usage = Usage::kServer) {
  common::X509Ptr cert(X509_new());
  if (cert == nullptr) return OpenSslError("X509_new");
  std::uint32_t serial = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&serial), sizeof(serial)) !=
      1) {
    return OpenSslError("RAND_bytes");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_set_version(cert.get(), 2) != 1 ||
      ASN1_INTEGER_set_uint64(X509_get_serialNumber(cert.get()), serial) != 1 ||
      X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kOneHour) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), kOneDay) == nullptr ||
      X509_set_pubkey(cert.get(), &key) != 1 ||
      X509_NAME_add_entry_by_txt(
          name, "CN", MBSTRING_ASC,
          reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
          0) != 1 ||
      X509_set_issuer_name(
          cert.get(),
          issuer == nullptr ? name : X509_get_subject_name(issuer)) != 1) {
    return OpenSslError("certificate fields");
  }
  X509& signer = issuer == nullptr ? *cert : *issuer;
  BROKER_RETURN_IF_ERROR(
      AddExtension(*cert, signer, NID_subject_key_identifier, "hash"));
  if (issuer == nullptr) {
    BROKER_RETURN_IF_ERROR(
        AddExtension(*cert, signer, NID_basic_constraints, "critical,CA:TRUE"));
    BROKER_RETURN_IF_ERROR(AddExtension(*cert, signer, NID_key_usage,
                                        "critical,keyCertSign,cRLSign"));
  } else {
    BROKER_RETURN_IF_ERROR(AddExtension(*cert, signer, NID_basic_constraints,
                                        "critical,CA:FALSE"));
    BROKER_RETURN_IF_ERROR(AddExtension(*cert, signer, NID_key_usage,
                                        "critical,digitalSignature"));
    if (usage == Usage::kServer) {
      BROKER_RETURN_IF_ERROR(
          AddExtension(*cert, signer, NID_ext_key_usage, "serverAuth"));
      BROKER_RETURN_IF_ERROR(AddExtension(*cert, signer, NID_subject_alt_name,
                                          "IP:127.0.0.1,DNS:localhost"));
    } else {
      BROKER_RETURN_IF_ERROR(
          AddExtension(*cert, signer, NID_ext_key_usage, "clientAuth"));
    }
    BROKER_RETURN_IF_ERROR(AddExtension(
        *cert, signer, NID_authority_key_identifier, "keyid:always"));
  }
  if (X509_sign(cert.get(), &issuer_key, EVP_sha256()) == 0) {
    return OpenSslError("X509_sign");
  }
  return cert;
}

[[nodiscard]] absl::Status WriteCertificate(const std::string& path,
                                            X509& cert) {
  common::BioPtr bio(BIO_new_file(path.c_str(), "w"));
  if (bio == nullptr || PEM_write_bio_X509(bio.get(), &cert) != 1) {
    return OpenSslError(absl::StrCat("writing ", path));
  }
  return absl::OkStatus();
}

[[nodiscard]] absl::Status WriteKey(const std::string& path, EVP_PKEY& key) {
  common::BioPtr bio(BIO_new_file(path.c_str(), "w"));
  if (bio == nullptr ||
      PEM_write_bio_PrivateKey(bio.get(), &key, nullptr, nullptr, 0, nullptr,
                               nullptr) != 1) {
    return OpenSslError(absl::StrCat("writing ", path));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TestPki> MakeTestPki(const std::string& dir,
                                    const std::string& prefix,
                                    const std::string& ca_name) {
  BROKER_ASSIGN_OR_RETURN(common::EvpPkeyPtr ca_key, NewKey());
  BROKER_ASSIGN_OR_RETURN(common::X509Ptr ca,
                          MakeCertificate(*ca_key, ca_name, nullptr, *ca_key));
  BROKER_ASSIGN_OR_RETURN(common::EvpPkeyPtr leaf_key, NewKey());
  BROKER_ASSIGN_OR_RETURN(
      common::X509Ptr leaf,
      MakeCertificate(*leaf_key, "127.0.0.1", ca.get(), *ca_key));
  BROKER_ASSIGN_OR_RETURN(common::EvpPkeyPtr client_key, NewKey());
  BROKER_ASSIGN_OR_RETURN(common::X509Ptr client,
                          MakeCertificate(*client_key, "broker test worker",
                                          ca.get(), *ca_key, Usage::kClient));
  TestPki pki;
  pki.ca_cert_file = absl::StrCat(dir, "/", prefix, "-ca.pem");
  pki.leaf_cert_file = absl::StrCat(dir, "/", prefix, "-cert.pem");
  pki.leaf_key_file = absl::StrCat(dir, "/", prefix, "-key.pem");
  pki.client_cert_file = absl::StrCat(dir, "/", prefix, "-client-cert.pem");
  pki.client_key_file = absl::StrCat(dir, "/", prefix, "-client-key.pem");
  BROKER_RETURN_IF_ERROR(WriteCertificate(pki.ca_cert_file, *ca));
  BROKER_RETURN_IF_ERROR(WriteCertificate(pki.leaf_cert_file, *leaf));
  BROKER_RETURN_IF_ERROR(WriteKey(pki.leaf_key_file, *leaf_key));
  BROKER_RETURN_IF_ERROR(WriteCertificate(pki.client_cert_file, *client));
  BROKER_RETURN_IF_ERROR(WriteKey(pki.client_key_file, *client_key));
  return pki;
}

}  // namespace broker::testing
