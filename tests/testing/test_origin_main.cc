// test-origin [port] [cert.pem key.pem]: runs the test origin (see
// tests/testing/test_origin.h) on 127.0.0.1, prints the bound port on stdout
// and serves until SIGINT or SIGTERM. Integration tests start it as a real
// process.

#include "tests/testing/test_origin.h"

#include "absl/strings/numbers.h"

#include <csignal>
#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  broker::testing::TestOriginOptions options;
  if (argc != 1 && argc != 2 && argc != 4) {
    std::fprintf(stderr, "usage: %s [port] [cert.pem key.pem]\n", argv[0]);
    return 2;
  }
  if (argc >= 2 && (!absl::SimpleAtoi(argv[1], &options.port) ||
                    options.port < 0 || options.port > 65535)) {
    std::fprintf(stderr, "test-origin: bad port '%s'\n", argv[1]);
    return 2;
  }
  if (argc == 4) {
    options.tls_cert_file = argv[2];
    options.tls_key_file = argv[3];
  }
  // Block the stop signals before any thread starts, so that only
  // sigwait() below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // One line per request head, for integration tests to wait on.
  options.on_request = [](absl::string_view method, absl::string_view target) {
    std::printf("request %.*s %.*s\n", static_cast<int>(method.size()),
                method.data(), static_cast<int>(target.size()), target.data());
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
