#pragma once

// A stand-in for a Kubernetes Service in front of replicas, for the fault
// tests of the replicated dispatcher: a TCP port on 127.0.0.1 that sends
// each new connection to the next backend in turn, skipping a backend that
// refuses it (as a Service does once readiness has removed a dead pod),
// and relays bytes both ways until either side closes.
//
// Threading: its own io_context thread; the public methods may be called
// from any thread.

#include "absl/status/statusor.h"

#include <memory>
#include <vector>

namespace broker::testing {

class ServiceProxy {
 public:
  // Listens on 127.0.0.1 (a free port) in front of `backend_ports`.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ServiceProxy>> Start(
      std::vector<int> backend_ports);
  ~ServiceProxy();
  ServiceProxy(const ServiceProxy&) = delete;
  ServiceProxy& operator=(const ServiceProxy&) = delete;

  int port() const;

  class Impl;

 private:
  explicit ServiceProxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace broker::testing
