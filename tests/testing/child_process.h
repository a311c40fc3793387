#pragma once

// A real binary started by a test: fork/exec with its own environment,
// stdout captured line by line (to learn the ports it bound), stopped with
// a signal. No sleeps: reads wait on poll() with a deadline.
//
// Tokens never appear in logs: a child's whole output (stdout, and stderr,
// which is also copied to the test's stderr) is checked when it is
// destroyed against every secret the test process has seen, and the test
// fails naming the binary if one is there. Secrets are the values of
// environment variables whose name ends in TOKEN that any child was given,
// and whatever a test adds with ForbidInChildOutput().

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

namespace broker::testing {

// Adds `secret` (at least 8 bytes; shorter values would match by chance)
// to what no child's output may contain, for the rest of the test process.
void ForbidInChildOutput(const std::string& secret);

class ChildProcess {
 public:
  // Starts `path` with `args` and exactly `env` as its environment
  // (PATH is added). stderr goes to the test's stderr as well.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      const std::string& path, const std::vector<std::string>& args,
      const std::map<std::string, std::string>& env);

  // SIGKILL if still running, then reaps, then checks the output for
  // secrets.
  ~ChildProcess();

  // The next stdout line containing `needle`, waiting up to `timeout`.
  // Lines before it are consumed: a later wait does not see them.
  [[nodiscard]] absl::StatusOr<std::string> WaitForLine(
      const std::string& needle, absl::Duration timeout);

  // Waits until each needle has appeared in an unconsumed line, in any
  // order (for lines that concurrent threads of the child print), and
  // consumes up to the last of them. The matched lines, in needle order.
  [[nodiscard]] absl::StatusOr<std::vector<std::string>> WaitForLines(
      const std::vector<std::string>& needles, absl::Duration timeout);

  // Everything the child wrote to stdout so far (to print on failure).
  std::string Output() ABSL_LOCKS_EXCLUDED(mu_);

  void Signal(int signal);
  // Waits for exit; returns the exit status (or 128+signal), or an error at
  // the deadline.
  [[nodiscard]] absl::StatusOr<int> Wait(absl::Duration timeout);

  pid_t pid() const { return pid_; }

 private:
  ChildProcess(std::string path, pid_t pid, int stdout_fd, int stderr_fd);
  void Drain();  // reader thread: the pipe never fills, whatever the child logs
  void DrainStderr();  // copies to the test's stderr, keeps it for the check
  void CheckForSecrets() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string path_;
  const pid_t pid_;
  const int stdout_fd_;
  const int stderr_fd_;
  bool exited_ = false;
  int exit_code_ = 0;

  absl::Mutex mu_;
  std::string buffer_ ABSL_GUARDED_BY(mu_);
  size_t consumed_ ABSL_GUARDED_BY(mu_) = 0;
  bool eof_ ABSL_GUARDED_BY(mu_) = false;
  std::string stderr_ ABSL_GUARDED_BY(mu_);

  // Last: the threads start in the constructor and use every member above.
  std::thread reader_;
  std::thread stderr_reader_;
};

}  // namespace broker::testing
