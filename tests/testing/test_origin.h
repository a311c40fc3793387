#pragma once

// A real HTTP/1.1 origin on loopback for tests (plain Boost.Beast, its own
// io_context and thread pool), used by the HTTP client tests and, as the
// `test-origin` binary, by the integration tests. Routes:
//
//   ANY /echo              200 JSON {"method","path","query","headers":{..},
//                          "body_sha256","body_bytes"}; header names are
//                          lower-cased, repeated headers joined with ", ".
//   ANY /webhook/<path>    the same as /echo: the platform's webhook
//                          endpoint in the You => Snyk tests.
//   ANY /sink              200 JSON {"body_bytes"}: the body counted and
//                          dropped, no hash, so that an upload benchmark
//                          measures the path to the origin, not SHA-256.
//   ANY /echo-body         the request body streamed back unchanged, with the
//                          request's Content-Type (Content-Length when the
//                          request had one, chunked otherwise).
//   GET /bytes/<n>         n bytes of TestPattern(0, n), Content-Length;
//                          ?chunked=1 sends them chunked, ?close=1 with
//                          neither (the body ends when the connection does).
//   GET /slow/<ms>         waits <ms> milliseconds (plus `slow_extra`), then
//                          200 "slow"; a client leaving meanwhile ends the
//                          wait (on_client_gone).
//   GET /slow-body/<n>?rate=<bytes per second>
//                          Content-Length n, the body trickled at that rate.
//   ANY /status/<code>     answers <code> (body "status <code>" unless the
//                          code forbids a body).
//   GET /die-mid-body/<n>  Content-Length n (or ?chunked=1), writes n/2
//                          bytes, then closes the socket.
//   GET /bad-chunk         a chunked body with a malformed chunk size.
//   ANY /headers           200 JSON {name: value} of the request headers.
//   ANY /git/<path>        with TestOriginOptions::git_project_root set: the
//                          real `git http-backend` run as a CGI over that
//                          root (smart HTTP, every repository exported), so
//                          `git clone http://<origin>/git/<repo>.git` works.
//                          The request body is read whole, then fed to the
//                          CGI's stdin while its stdout is read; the answer
//                          has a Content-Length. One thread per request.
//   GET /api/v3/repos/<owner>/<repo>
//                          with git_project_root set: a small GitHub-like
//                          API over the bare repository
//                          <root>/<owner>/<repo>.git: 200 JSON
//                          {"full_name","name","default_branch","private"}
//                          (the branch from its HEAD file; private true).
//   GET /api/v3/repos/<owner>/<repo>/contents/<path>
//                          the file <path> at HEAD: 200 JSON {"type":"file",
//                          "name","path","sha" (the blob's),"size",
//                          "encoding":"base64","content"}, read with `git
//                          cat-file --batch` on a thread of its own.
//                          Under /api/v3/: 404 {"message":"Not Found"} for
//                          anything else (no such repository or file, a
//                          directory, another method); 400 {"message":"Bad
//                          Request"} for a "." or ".." segment (also
//                          percent-encoded), a control character or a
//                          backslash.
//
// Every route reads the whole request body first except /echo-body. HEAD
// requests get the head only; "Expect: 100-continue" gets "100 Continue".
// Connections are kept alive when the client asks for it.
//
// Threading: public methods may be called from any thread; requests are
// served on the origin's own threads.

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "openssl/evp.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace broker::testing {

struct TestOriginOptions {
  std::string address = "127.0.0.1";
  int port = 0;  // 0: any free port
  int threads = 2;
  // HTTPS when both are set (PEM files).
  std::string tls_cert_file;
  std::string tls_key_file;
  // Serves /git/ through `git http-backend` (found on PATH) when set.
  std::string git_project_root;
  // Added to every /slow/<ms> wait: a slower origin behind one worker, for
  // the spreading benchmark.
  absl::Duration slow_extra = absl::ZeroDuration();
  // Called on an origin thread when a request head arrived (integration
  // tests use it to know a request reached the origin).
  std::function<void(absl::string_view method, absl::string_view target)>
      on_request;
  // Called when /echo (or /webhook/) read a whole request body and answers:
  // the request arrived complete, not only its head.
  std::function<void(absl::string_view method, absl::string_view path)>
      on_echoed;
  // Called when the client left while /slow/<ms> was waiting (tests of
  // cancellation use it to know the origin call was dropped).
  std::function<void(absl::string_view target)> on_client_gone;
};

class TestOrigin {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<TestOrigin>> Start(
      TestOriginOptions options);
  TestOrigin(const TestOrigin&) = delete;
  TestOrigin& operator=(const TestOrigin&) = delete;
  // Stops serving; open connections are closed.
  ~TestOrigin();

  int port() const;
  // "http://127.0.0.1:<port><path>" (https with TLS).
  std::string Url(absl::string_view path) const;
  // Request heads read so far, on every connection.
  std::uint64_t request_count() const;
  // Request body bytes read so far, on every connection.
  std::uint64_t body_bytes_received() const;
  // Connections accepted and not yet closed.
  int open_connections() const;
  // Connections accepted since the start, closed or not.
  int accepted_connections() const;
  // Waits until no connection is open; false on timeout.
  [[nodiscard]] bool WaitForNoConnections(absl::Duration timeout) const;

  class Impl;

 private:
  explicit TestOrigin(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// What RunProcess() saw: the exit code (128 + signal when killed) and
// everything the program wrote to stdout.
struct ProcessResult {
  int exit_code = 0;
  std::string out;
};

// Runs `argv` (argv[0] looked up on PATH) with exactly `env` ("NAME=value"
// entries), writes `input` to its stdin, collects its stdout and waits for
// it; stderr is inherited. Blocking. Used for git by the origin, and by
// tests to make repositories.
[[nodiscard]] absl::StatusOr<ProcessResult> RunProcess(
    const std::vector<std::string>& argv, std::vector<std::string> env,
    std::string input = "");

// The deterministic pseudo-random bytes [offset, offset + n) of /bytes.
std::string TestPattern(std::uint64_t offset, std::size_t n);
// The same bytes without a copy, for n up to 64 KiB; the view is valid for
// the life of the process.
absl::string_view TestPatternSlice(std::uint64_t offset, std::size_t n);

// Incremental SHA-256, as hex (what /echo reports).
class Sha256 {
 public:
  Sha256();
  void Update(absl::string_view data);
  std::string HexDigest();

 private:
  struct Free {
    void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
  };
  std::unique_ptr<EVP_MD_CTX, Free> ctx_;
};

}  // namespace broker::testing
