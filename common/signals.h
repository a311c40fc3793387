#pragma once

// SIGTERM/SIGINT handling for the services' main(): block the signals before
// any thread starts (so every thread inherits the mask), then wait for one
// synchronously. No async signal handler touches program state.

#include <csignal>
#include <pthread.h>

namespace broker::common {

// Call first thing in main(), before threads exist.
inline void BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

// Returns the signal that arrived (SIGTERM or SIGINT).
inline int WaitForTerminationSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int signal = 0;
  sigwait(&set, &signal);
  return signal;
}

}  // namespace broker::common
