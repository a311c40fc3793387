#include "common/uuid.h"

#include "absl/base/const_init.h"
#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

#include <cstdint>

namespace broker::common {

std::string NewUuid() {
  static absl::Mutex mu(absl::kConstInit);
  static auto* gen = new absl::BitGen();
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;
  {
    absl::MutexLock lock(&mu);
    hi = absl::Uniform<std::uint64_t>(*gen);
    lo = absl::Uniform<std::uint64_t>(*gen);
  }
  hi = (hi & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;  // variant 1
  return absl::StrFormat("%08x-%04x-%04x-%04x-%012x", hi >> 32,
                         (hi >> 16) & 0xFFFF, hi & 0xFFFF, lo >> 48,
                         lo & 0xFFFFFFFFFFFFULL);
}

bool IsUuid(const std::string& text) {
  if (text.size() != 36) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return false;
    } else if (!absl::ascii_isxdigit(static_cast<unsigned char>(text[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace broker::common
