#pragma once

// Broker tokens never appear in logs or metrics in clear: they are either
// hashed (to correlate, e.g. the dispatcher's `/connections/{hash}` path and
// the `hashed_token` log field) or masked (for humans, `abcd-...-wxyz`).
// Both functions are pure and thread-safe.

#include "absl/strings/string_view.h"

#include <string>

namespace broker::common {

// Lowercase hex SHA-256 of the token's bytes exactly as given (no trimming,
// no case folding): HashToken("abc") ==
// "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".
std::string HashToken(absl::string_view token);

// The first and last 4 bytes around "-...-" ("0123-...-cdef" for the UUID
// 01234567-89ab-cdef-0123-456789abcdef). Tokens shorter than
// kMinMaskableTokenLength reveal nothing and come back as "***".
std::string MaskToken(absl::string_view token);

inline constexpr size_t kMinMaskableTokenLength = 12;

}  // namespace broker::common
