#pragma once

// Pod-to-pod forwarding (ARCHITECTURE.md section 4, step 4): a platform
// request that reached a server without a tunnel for its token goes, once,
// to a server that has one, streamed both ways. The forwarded copy carries
// kForwardedHeader, and a server never forwards a request carrying it, so
// forwarding cannot chain or loop.

#include "common/http/client.h"
#include "common/http/server.h"

#include "absl/functional/any_invocable.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <memory>
#include <string>

namespace broker::server {

inline constexpr absl::string_view kForwardedHeader = "x-broker-forwarded-by";

// Whether another server forwarded this request here.
bool IsForwarded(const common::http::RequestHead& request);

// The answer of a server without a tunnel for the request's token: 404
// {"ok":false} with `x-broker-failure: no-connection` (the behaviour
// reference's), which is also what makes ForwardToPeer's `tunnel_moved` run.
void RespondNoConnection(common::http::Exchange& exchange,
                         absl::string_view request_id);

// Sends the exchange's request to `peer_base_url` + its target and streams
// the answer back. Before the answer starts, a failure is answered 502 with
// `x-broker-failure: error-forwarding`; after, the answer is cut short (an
// error for the platform, never a clean short body). `from_server_id` goes
// in kForwardedHeader.
//
// `tunnel_moved` (optional): for a request without a body, runs instead of
// an answer when the peer no longer holds the tunnel (404 no-connection) or
// cannot be reached (it is stopping): the token's workers are moving, and
// the caller may wait for them to arrive and serve the request itself.
void ForwardToPeer(common::http::Client& client,
                   std::shared_ptr<common::http::Exchange> exchange,
                   const std::string& peer_base_url,
                   const std::string& from_server_id,
                   const std::string& request_id, absl::Time deadline,
                   absl::AnyInvocable<void() &&> tunnel_moved = nullptr);

}  // namespace broker::server
