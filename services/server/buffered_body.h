#pragma once

// Body buffering for the few platform requests whose public rules read the
// body (`valid` body or body-regex checks, see filters::RuleSet::NeedsBody).
// Such a request's body is read whole (common::http::ReadWholeBody),
// bounded, evaluated, and then relayed from the buffer through an Exchange
// that replays it; every other request streams untouched (docs/tunnel.md).

#include "common/http/server.h"
#include "common/http/whole_body.h"

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace broker::server {

// The most body the server holds to evaluate body checks. Snyk's server
// parses every request body with a 10 MB limit (reference 5.4) and answers
// 413 above it; we hold one only for body-check rules, with the same limit.
inline constexpr std::uint64_t kMaxInspectedBodyBytes =
    std::uint64_t{10} * 1024 * 1024;

// Largest chunk the replayed body hands out: well under the tunnel's 1 MiB
// gRPC message limit.
inline constexpr std::size_t kReplayChunkBytes = std::size_t{64} * 1024;

// `inner` with its body replaced by `body`, which was read from it whole:
// request() reports Content-Length body.size() (no chunking), body() hands
// out `body` in chunks of at most kReplayChunkBytes, each handler run on
// `io` (never inside Read()), and ends with `last`. Answers, cancellation
// and the address go to `inner`. Same threading as any Exchange.
std::shared_ptr<common::http::Exchange> WithBufferedBody(
    boost::asio::io_context& io, std::shared_ptr<common::http::Exchange> inner,
    std::string body);

}  // namespace broker::server
