#pragma once

// Reading a request body whole, bounded: for the few requests whose accept
// rules inspect the body (and small ones kept for a re-send). Everything
// else streams.

#include "common/http/server.h"

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"

#include <cstdint>
#include <memory>
#include <string>

namespace broker::common::http {

// Reads the whole body of `exchange`, at most `max_bytes`. `done` runs once,
// on the exchange's strand, with the body; ResourceExhausted when it is
// longer (a declared Content-Length over the limit fails at once, inside the
// call, reading nothing); or the read's error (the client went away,
// malformed chunking).
void ReadWholeBody(
    std::shared_ptr<Exchange> exchange, std::uint64_t max_bytes,
    absl::AnyInvocable<void(absl::StatusOr<std::string>) &&> done);

}  // namespace broker::common::http
