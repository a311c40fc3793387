// test-origin [--git-root=DIR] [--slow-extra-ms=N] [port] [cert.pem key.pem]:
// runs the test origin (see tests/testing/test_origin.h) on 127.0.0.1,
// prints the bound port on stdout and serves until SIGINT or SIGTERM. With
// --git-root, /git/ serves the repositories under DIR through `git
// http-backend`; --slow-extra-ms adds N ms to every /slow/<ms> answer.
// Integration tests start it as a real process.

#include "tests/testing/test_origin.h"

#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"

#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  broker::testing::TestOriginOptions options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    int extra_ms = 0;
    if (absl::ConsumePrefix(&arg, "--git-root=")) {
      options.git_project_root = std::string(arg);
    } else if (absl::ConsumePrefix(&arg, "--slow-extra-ms=")) {
      if (!absl::SimpleAtoi(arg, &extra_ms) || extra_ms < 0) {
        std::fprintf(stderr, "test-origin: bad --slow-extra-ms\n");
        return 2;
      }
      options.slow_extra = absl::Milliseconds(extra_ms);
    } else {
      positional.emplace_back(arg);
    }
  }
  if (!positional.empty() && positional.size() != 1 && positional.size() != 3) {
    std::fprintf(stderr,
                 "usage: %s [--git-root=DIR] [--slow-extra-ms=N] [port] "
                 "[cert.pem key.pem]\n",
                 argv[0]);
    return 2;
  }
  if (!positional.empty() && (!absl::SimpleAtoi(positional[0], &options.port) ||
                              options.port < 0 || options.port > 65535)) {
    std::fprintf(stderr, "test-origin: bad port '%s'\n", positional[0].c_str());
    return 2;
  }
  if (positional.size() == 3) {
    options.tls_cert_file = positional[1];
    options.tls_key_file = positional[2];
  }
  // Block the stop signals before any thread starts, so that only
  // sigwait() below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // One line per request head, and one per whole request /echo answered,
  // for integration tests to wait on and count.
  options.on_request = [](absl::string_view method, absl::string_view target) {
    std::printf("request %.*s %.*s\n", static_cast<int>(method.size()),
                method.data(), static_cast<int>(target.size()), target.data());
    std::fflush(stdout);
  };
  options.on_echoed = [](absl::string_view method, absl::string_view path) {
    std::printf("echoed %.*s %.*s\n", static_cast<int>(method.size()),
                method.data(), static_cast<int>(path.size()), path.data());
    std::fflush(stdout);
  };
  options.on_client_gone = [](absl::string_view target) {
    std::printf("gone %.*s\n", static_cast<int>(target.size()), target.data());
    std::fflush(stdout);
  };
  auto origin = broker::testing::TestOrigin::Start(std::move(options));
  if (!origin.ok()) {
    std::fprintf(stderr, "test-origin: %s\n",
                 origin.status().ToString().c_str());
    return 1;
  }
  std::printf("%d\n", (*origin)->port());
  std::fflush(stdout);
  int signal = 0;
  sigwait(&stop_signals, &signal);
  return 0;
}
