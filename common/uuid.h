#pragma once

#include <string>

namespace broker::common {

// A random (version 4) UUID in its 36-character text form, as Snyk uses for
// request ids and broker client ids. Thread-safe.
std::string NewUuid();

// Whether `text` has the 8-4-4-4-12 hexadecimal UUID form.
bool IsUuid(const std::string& text);

}  // namespace broker::common
