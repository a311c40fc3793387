// libFuzzer target: arbitrary bytes sent to the HTTP/1.1 server every
// ingress uses (common/http/server.h: broker-server's platform port, the
// webhook ingress, the dispatcher, the workers' local ports), over a real
// loopback connection, with the limits of production scaled down (4 KiB
// heads, 64 KiB bodies) so the fuzzer reaches them.
//
// The server runs for the whole process on its own I/O thread; its handler
// reads the body to the end and answers 200 with the body's length. Each
// input is written on a new connection, the write side is closed, and
// everything the server answers is read until it closes. Besides crashes
// and sanitizer reports, a broken invariant aborts:
//   - the server closes the connection within 5 s (no hang, whatever the
//     bytes: a half-closed peer must not keep a session alive);
//   - what comes back is a sequence of well-formed HTTP/1.1 answers
//     ("HTTP/1.1 <3 digits> "), each with a status the server documents
//     (100 Continue included);
//   - a body the handler read never exceeds the configured limit.
//
// Seeds: fuzz/corpus/http_ingress/. Run with scripts/fuzz.sh.

#include "common/executor.h"
#include "common/http/message.h"
#include "common/http/server.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <unistd.h>

#include "fuzz/loopback.h"

namespace broker::common::http {
namespace {

constexpr std::uint64_t kMaxBody = 64 * 1024;

using ::broker::fuzz::Fail;

// Reads the whole body, then answers 200 with its length.
void ReadAll(std::shared_ptr<Exchange> exchange, std::uint64_t so_far) {
  BodyReader& body = exchange->body();
  body.Read([exchange, so_far](absl::Status status, BodyChunk chunk) mutable {
    if (!status.ok()) return;  // the server answers (413, 400) or closes
    const std::uint64_t total = so_far + chunk.data.size();
    if (total > kMaxBody) Fail("the handler read past the body limit", "");
    if (!chunk.last) {
      ReadAll(std::move(exchange), total);
      return;
    }
    exchange->RespondSimple(200, {{"content-type", "text/plain"}},
                            absl::StrCat(total));
  });
}

struct Ingress {
  Ingress() : executor(1) {
    ServerOptions options;
    options.address = "127.0.0.1";
    options.limits.max_header_bytes = 4 * 1024;
    options.limits.max_body_bytes = kMaxBody;
    options.limits.header_timeout = absl::Seconds(2);
    options.limits.idle_timeout = absl::Seconds(2);
    options.limits.io_timeout = absl::Seconds(2);
    auto created = Server::Create(
        executor.io(), options,
        [](std::shared_ptr<Exchange> exchange) { ReadAll(exchange, 0); });
    if (!created.ok()) Fail("Server::Create", created.status().message());
    server = *std::move(created);
    auto bound = server->Start();
    if (!bound.ok()) Fail("Server::Start", bound.status().message());
    port = *bound;
  }
  Executor executor;
  std::unique_ptr<Server> server;
  int port = 0;
};

Ingress& TheIngress() {
  static Ingress* const ingress = new Ingress();
  return *ingress;
}

// Every answer in `received` starts with a well-formed status line whose
// status the server documents. Answers are found by their status lines
// (bodies here are short and never contain one).
void CheckAnswers(absl::string_view received) {
  static const std::set<int> kStatuses = {100, 200, 400, 408,
                                          413, 431, 500, 505};
  if (received.empty()) return;  // closed without an answer (nothing read)
  size_t at = 0;
  while ((at = received.find("HTTP/1.1 ", at)) != absl::string_view::npos) {
    int status = 0;
    if (at + 12 > received.size() ||
        !absl::SimpleAtoi(received.substr(at + 9, 3), &status)) {
      Fail("a malformed status line", received);
    }
    if (kStatuses.count(status) == 0) Fail("an undocumented status", received);
    at += 12;
  }
  if (!absl::StartsWith(received, "HTTP/1.1 ")) {
    Fail("the answer does not start with a status line", received);
  }
}

}  // namespace
}  // namespace broker::common::http

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  // Half-closed: the server must not keep the session alive (5 s).
  broker::common::http::CheckAnswers(broker::fuzz::Exchange(
      broker::common::http::TheIngress().port, input, absl::Seconds(5),
      /*close_write_side=*/true));
  return 0;
}
