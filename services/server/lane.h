#pragma once

// The server's view of one parked Serve call ("lane") of a worker, and of
// the request that takes it. See docs/tunnel.md.

#include "broker/tunnel/v1/tunnel.pb.h"

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"

#include <memory>
#include <string>

namespace broker::server {

// What a lane tells the request that took it. Every callback runs on a gRPC
// reaction thread and must not block: implementations post to their own
// executor (the platform connection's strand).
class LaneListener {
 public:
  virtual ~LaneListener() = default;
  // The previous Send*() finished (ok=false: the call is broken).
  virtual void OnSent(bool ok) = 0;
  // One message from the worker; call Lane::ReadNext() for the next one.
  virtual void OnReceived(tunnel::v1::ServeUp message) = 0;
  // The call is over. `status` is OK only after a complete exchange.
  virtual void OnClosed(absl::Status status) = 0;
};

// A parked lane, handed out by the registry to exactly one request.
// Thread-safe; at most one Send and one ReadNext in flight (the protocol
// alternates, see docs/tunnel.md).
class Lane {
 public:
  virtual ~Lane() = default;
  // Binds the request; must be called once, before anything else.
  virtual void Attach(std::shared_ptr<LaneListener> listener) = 0;
  virtual void Send(tunnel::v1::ServeDown message) = 0;
  virtual void ReadNext() = 0;
  // Ends the call: OK after a complete exchange, CANCELLED when the platform
  // went away (the worker drops the origin call).
  virtual void Close(absl::Status status) = 0;
  // After a complete exchange whose worker end said keep_lane: detaches the
  // request and parks the lane again for the next one (or ends it, when
  // the worker left meanwhile). Nothing may be called on it afterwards.
  virtual void Repark() = 0;
  virtual const std::string& client_id() const = 0;
};

}  // namespace broker::server
