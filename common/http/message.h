#pragma once

// HTTP/1.1 message heads and the streaming body interfaces shared by the
// server ingress (common/http/server.h) and the origin client
// (common/http/client.h). Bodies are never buffered whole: they move as
// chunks, one outstanding operation at a time, which is the back-pressure.

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace broker::common::http {

struct Header {
  std::string name;  // as received; compare case-insensitively
  std::string value;
};
using Headers = std::vector<Header>;

// First value of `name` (case-insensitive), or nullopt.
// Percent-encodes everything but RFC 3986's unreserved characters: one
// path segment or query value.
std::string PercentEncode(absl::string_view value);

std::optional<absl::string_view> FindHeader(const Headers& headers,
                                            absl::string_view name);

struct RequestHead {
  std::string method;  // "GET", as sent
  std::string target;  // "/path?query", as sent (still percent-encoded)
  Headers headers;     // hop-by-hop headers included; the relay decides
  // Length of the body when the sender gave Content-Length; nullopt with
  // chunked encoding or no body.
  std::optional<std::uint64_t> content_length;
  bool chunked = false;
  bool keep_alive = true;
};

struct ResponseHead {
  int status = 200;
  Headers headers;  // without Content-Length/Transfer-Encoding: see below
  // Known length: sent as Content-Length. nullopt: sent chunked (or, for a
  // HEAD request / 204 / 304, no body).
  std::optional<std::uint64_t> content_length;
};

// One step of reading a body.
struct BodyChunk {
  std::string data;   // may be empty
  bool last = false;  // no more data after this one
};

// The pull side of a body. Read() delivers the next chunk; call it again
// only after the previous handler ran. A body that ends early (peer gone,
// deadline, malformed chunking) ends with a non-OK status, never with a
// clean `last`.
class BodyReader {
 public:
  using ReadHandler = absl::AnyInvocable<void(absl::Status, BodyChunk) &&>;
  virtual ~BodyReader() = default;
  virtual void Read(ReadHandler handler) = 0;
};

// The push side of a response body. Write() sends one chunk; call it again
// only after its handler ran. Finish() ends the body cleanly; Abort() ends
// it as a truncated transfer (the connection is closed without the final
// chunk, or before Content-Length bytes), so the receiver can tell it from
// a complete short body.
class BodyWriter {
 public:
  using DoneHandler = absl::AnyInvocable<void(absl::Status) &&>;
  virtual ~BodyWriter() = default;
  virtual void Write(std::string data, DoneHandler done) = 0;
  virtual void Finish(DoneHandler done) = 0;
  virtual void Abort() = 0;
};

}  // namespace broker::common::http
