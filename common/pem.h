#pragma once

// PEM files read at start-up and checked before gRPC or Asio sees them, so
// that a wrong path or a file that is not what its variable says is one
// clear start-up error instead of a failed handshake later. Errors name the
// path (never the contents); the caller prefixes the variable.

#include "absl/status/statusor.h"

#include <string>

namespace broker::common {

// A certificate chain (leaf first) and the private key of its leaf.
struct PemKeyCertPair {
  std::string cert_chain;
  std::string private_key;
};

// The file's text; it holds at least one certificate and nothing that fails
// to parse as one (a CA bundle or a chain).
[[nodiscard]] absl::StatusOr<std::string> ReadPemCertificates(
    const std::string& path);

// Both files' text; the chain parses, the key parses, and the key belongs
// to the chain's first certificate.
[[nodiscard]] absl::StatusOr<PemKeyCertPair> ReadPemKeyCertPair(
    const std::string& cert_path, const std::string& key_path);

}  // namespace broker::common
