#pragma once

#include "common/http/server.h"
#include "services/server/lane.h"
#include "services/server/tunnel_registry.h"

#include "absl/time/time.h"

#include <cstdint>
#include <memory>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace broker::server {

class ServerMetrics;

// What the relay needs to know about one platform request.
struct RelayRequest {
  std::string token_hash;
  std::string request_id;
  std::string url;  // path?query for the worker, /broker/<token> removed
  common::http::Headers headers;  // to send down, framing headers removed
  absl::Time deadline;
  int attempt = 0;  // re-sends so far, after workers died (failover)
  // A body read whole before the relay (at most kResendableBodyBytes), and
  // the exchange it was read from: with them the request can be re-sent
  // whatever its method, the body replayed from this copy.
  std::shared_ptr<const std::string> held_body;
  std::shared_ptr<common::http::Exchange> unbuffered;
  // Answer sizes and re-sends (/metrics); may be null.
  ServerMetrics* metrics = nullptr;
};

// Bodies up to this size are read whole before they are relayed, so that
// the request can go to another worker if its tunnel breaks before the
// answer starts. Larger bodies stream and fail fast instead.
inline constexpr std::uint64_t kResendableBodyBytes = std::uint64_t{64} * 1024;

// Streams one platform request down a taken lane and the worker's answer
// back, both ways at once, one chunk in flight each way (docs/tunnel.md).
// Ends the answer as an aborted transfer when the tunnel or the origin dies
// mid-body, and answers 502/504 with `x-broker-failure` when it dies before
// the answer started. Never hangs: the deadline closes the lane.
// Failover: a request without a body whose method is safe to repeat (GET,
// HEAD, OPTIONS), or one whose body is held whole (`held_body`), is re-sent
// on another worker's lane when its tunnel breaks before the answer
// started (at most kMaxResends times).
//
// Thread-safe: lane callbacks arrive on gRPC threads, exchange callbacks on
// the connection's strand, the timer on an io thread.
void StartRelay(boost::asio::io_context& io, TunnelRegistry& registry,
                TunnelRegistry::Taken taken,
                std::shared_ptr<common::http::Exchange> exchange,
                RelayRequest request);

// Hop-by-hop and framing headers, which each hop sets for itself.
bool IsHopByHopHeader(absl::string_view name);

}  // namespace broker::server
