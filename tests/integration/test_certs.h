#pragma once

// Certificates made at test time (OpenSSL, P-256): a CA, a server leaf it
// signed, valid for 127.0.0.1 and localhost, and a client leaf (for mutual
// TLS), written as PEM files.

#include "absl/status/statusor.h"

#include <string>

namespace broker::testing {

struct TestPki {
  std::string ca_cert_file;      // the CA certificate (trust anchor)
  std::string leaf_cert_file;    // server certificate: SAN IP:127.0.0.1,
                                 // DNS:localhost; serverAuth
  std::string leaf_key_file;     // its private key (PKCS#8)
  std::string client_cert_file;  // client certificate: clientAuth
  std::string client_key_file;   // its private key (PKCS#8)
};

// Writes <dir>/<prefix>-ca.pem, <prefix>-cert.pem, <prefix>-key.pem,
// <prefix>-client-cert.pem and <prefix>-client-key.pem.
// `ca_name` is the CA's common name (tests make unrelated CAs).
[[nodiscard]] absl::StatusOr<TestPki> MakeTestPki(const std::string& dir,
                                                  const std::string& prefix,
                                                  const std::string& ca_name);

}  // namespace broker::testing
