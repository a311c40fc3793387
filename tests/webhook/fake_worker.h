#pragma once

// A fake broker-tunnel worker for broker-webhook's tests: an in-process
// gRPC server on 127.0.0.1 with broker.webhook.v1.Egress and the default
// grpc.health.v1 service (SetServing flips it), recording what each
// Deliver call carried and answering as its Mode says.
//
// Threading: public methods may be called from any thread; calls are
// served on gRPC threads.

#include "broker/tunnel/v1/tunnel.pb.h"

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace grpc {
class Server;
}  // namespace grpc

namespace broker::testing {

class FakeWorker {
 public:
  enum class Mode {
    kAnswer,         // reads the whole event, answers 202 with a JSON body
                     // (whole in the ResponseHead)
    kEcho,           // reads the whole event, streams its body back
                     // (200, Content-Length, 64 KiB messages)
    kFailAtOnce,     // ends the call with UNAVAILABLE before reading
    kFailAfterBody,  // reads the whole event, then UNAVAILABLE
    kFailMidBody,    // reads 64 KiB or so, then UNAVAILABLE
    kFailure,        // reads the whole event, answers a Failure (401)
    kHeadThenDie,    // reads the event, sends a head, then UNAVAILABLE
    kBadHead,        // reads the event, answers status 42 (not HTTP)
  };

  // One Deliver call, as seen by the worker.
  struct Seen {
    std::string delivery_id;  // x-broker-delivery-id
    std::string attempt;      // x-broker-delivery-attempt
    broker::tunnel::v1::RequestHead head;
    std::uint64_t body_bytes = 0;
    std::string body_sha256;  // hex
    bool complete = false;    // the end message arrived (or no body)
    bool cancelled = false;   // the call was cancelled by the caller
  };

  [[nodiscard]] static absl::StatusOr<std::unique_ptr<FakeWorker>> Start(
      std::string name, Mode mode = Mode::kAnswer);
  ~FakeWorker();

  const std::string& name() const { return name_; }
  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:<port>"

  void SetServing(bool serving);
  void SetMode(Mode mode) ABSL_LOCKS_EXCLUDED(mu_);
  Mode mode() const ABSL_LOCKS_EXCLUDED(mu_);
  // Stops the server (the port closes); calls in flight are cancelled.
  void Stop();

  // Calls started so far.
  int calls() const ABSL_LOCKS_EXCLUDED(mu_);
  // Calls that ended, as seen, in the order they ended.
  std::vector<Seen> seen() const ABSL_LOCKS_EXCLUDED(mu_);
  // Events fully received (complete) with a given delivery id.
  int CompleteWithId(const std::string& delivery_id) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until a call with this delivery id ended; false at the timeout.
  [[nodiscard]] bool WaitForDelivery(const std::string& delivery_id,
                                     absl::Duration timeout) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until `n` calls ended; false at the timeout.
  [[nodiscard]] bool WaitForEnded(int n, absl::Duration timeout) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // For the reactors.
  void OnCallStarted() ABSL_LOCKS_EXCLUDED(mu_);
  void OnCallEnded(Seen seen) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  class Service;
  explicit FakeWorker(std::string name, Mode mode);

  const std::string name_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;

  mutable absl::Mutex mu_;
  Mode mode_ ABSL_GUARDED_BY(mu_);
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Seen> seen_ ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::testing
