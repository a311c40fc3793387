#include "tests/testing/child_process.h"

#include "common/status.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <sys/wait.h>

namespace broker::testing {
namespace {

absl::Mutex g_secrets_mu(absl::kConstInit);
std::vector<std::string>& Secrets()
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(g_secrets_mu) {
  static auto* secrets = new std::vector<std::string>();
  return *secrets;
}

}  // namespace

void ForbidInChildOutput(const std::string& secret) {
  if (secret.size() < 8) return;
  absl::MutexLock lock(&g_secrets_mu);
  std::vector<std::string>& secrets = Secrets();
  if (std::find(secrets.begin(), secrets.end(), secret) == secrets.end()) {
    secrets.push_back(secret);
  }
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::string& path, const std::vector<std::string>& args,
    const std::map<std::string, std::string>& env) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  int err_fds[2];
  if (pipe2(err_fds, O_CLOEXEC) != 0) {
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) {
    env_strings.push_back(k + "=" + v);
    if (absl::EndsWith(k, "TOKEN")) ForbidInChildOutput(v);
  }
  // Sanitizer settings (CI's, or a developer's log_path) reach the child.
  for (const char* name :
       {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && env.count(name) == 0) {
      env_strings.push_back(std::string(name) + "=" + value);
    }
  }
  if (env.count("PATH") == 0) {
    const char* path_env = std::getenv("PATH");
    env_strings.push_back(std::string("PATH=") +
                          (path_env ? path_env : "/usr/bin:/bin"));
  }
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(path.c_str()));
  for (const std::string& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  pid_t pid = fork();
  if (pid < 0) {
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    dup2(pipe_fds[1], STDOUT_FILENO);
    dup2(err_fds[1], STDERR_FILENO);
    // Nothing else of the test's: Asio opens sockets without O_CLOEXEC, so
    // a child would otherwise hold the test's connections (a load's, a
    // fetcher's) open after the test closed them, and its leak checks
    // would count them.
    close_range(3, ~0U, 0);
    // The test may have blocked signals; the child starts clean.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(path.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  close(pipe_fds[1]);
  close(err_fds[1]);
  return std::unique_ptr<ChildProcess>(
      new ChildProcess(path, pid, pipe_fds[0], err_fds[0]));
}

ChildProcess::ChildProcess(std::string path, pid_t pid, int stdout_fd,
                           int stderr_fd)
    : path_(std::move(path)),
      pid_(pid),
      stdout_fd_(stdout_fd),
      stderr_fd_(stderr_fd),
      reader_([this] { Drain(); }),
      stderr_reader_([this] { DrainStderr(); }) {}

ChildProcess::~ChildProcess() {
  if (!exited_) {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  reader_.join();  // EOF once the child (and its inheritors) are gone
  stderr_reader_.join();
  close(stdout_fd_);
  close(stderr_fd_);
  CheckForSecrets();
}

void ChildProcess::CheckForSecrets() {
  std::vector<std::string> secrets;
  {
    absl::MutexLock lock(&g_secrets_mu);
    secrets = Secrets();
  }
  absl::MutexLock lock(&mu_);
  for (const std::string& secret : secrets) {
    for (const std::string* output : {&buffer_, &stderr_}) {
      const size_t at = output->find(secret);
      if (at == std::string::npos) continue;
      const size_t line_start = output->rfind('\n', at);
      const size_t begin = line_start == std::string::npos ? 0 : line_start + 1;
      const size_t end = output->find('\n', at);
      ADD_FAILURE() << path_ << " (pid " << pid_ << ") printed a token to "
                    << (output == &buffer_ ? "stdout" : "stderr")
                    << " (token hidden below):\n"
                    << absl::StrReplaceAll(
                           output->substr(begin, end == std::string::npos
                                                     ? std::string::npos
                                                     : end - begin),
                           {{secret, "<TOKEN>"}});
    }
  }
}

void ChildProcess::DrainStderr() {
  char chunk[4096];
  while (true) {
    ssize_t n = read(stderr_fd_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    // Sanitizer reports and gRPC's own lines stay visible in the test log.
    ssize_t written = 0;
    while (written < n) {
      const ssize_t w = write(STDERR_FILENO, chunk + written,
                              static_cast<size_t>(n - written));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      written += w;
    }
    absl::MutexLock lock(&mu_);
    stderr_.append(chunk, static_cast<size_t>(n));
  }
}

void ChildProcess::Drain() {
  char chunk[4096];
  while (true) {
    ssize_t n = read(stdout_fd_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    absl::MutexLock lock(&mu_);
    if (n <= 0) {
      eof_ = true;
      return;
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

absl::StatusOr<std::string> ChildProcess::WaitForLine(const std::string& needle,
                                                      absl::Duration timeout) {
  BROKER_ASSIGN_OR_RETURN(std::vector<std::string> lines,
                          WaitForLines({needle}, timeout));
  return std::move(lines.front());
}

absl::StatusOr<std::vector<std::string>> ChildProcess::WaitForLines(
    const std::vector<std::string>& needles, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<std::string> found(needles.size());
  std::vector<bool> matched(needles.size(), false);
  size_t missing = needles.size();
  size_t scanned = consumed_;
  while (true) {
    size_t newline;
    while (missing > 0 &&
           (newline = buffer_.find('\n', scanned)) != std::string::npos) {
      absl::string_view line(buffer_.data() + scanned, newline - scanned);
      scanned = newline + 1;
      for (size_t i = 0; i < needles.size(); ++i) {
        if (!matched[i] && absl::StrContains(line, needles[i])) {
          matched[i] = true;
          found[i] = std::string(line);
          --missing;
          break;
        }
      }
    }
    if (missing == 0) {
      consumed_ = scanned;
      return found;
    }
    const std::string first_missing =
        needles[std::find(matched.begin(), matched.end(), false) -
                matched.begin()];
    if (eof_) {
      return absl::UnavailableError(absl::StrCat(
          "pid ", pid_, " closed stdout before \"", first_missing, "\""));
    }
    const size_t seen = buffer_.size();
    auto grew = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return eof_ || buffer_.size() != seen;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&grew), deadline)) {
      return absl::DeadlineExceededError(
          absl::StrCat("no line with \"", first_missing, "\" from pid ", pid_));
    }
  }
}

std::string ChildProcess::Output() {
  absl::MutexLock lock(&mu_);
  return buffer_;
}

void ChildProcess::Signal(int signal) {
  if (!exited_) kill(pid_, signal);
}

absl::StatusOr<int> ChildProcess::Wait(absl::Duration timeout) {
  if (exited_) return exit_code_;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      exit_code_ =
          WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_code_;
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("pid ", pid_, " still running"));
    }
    // The child's stdout closes when it exits: wait for that, briefly.
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&eof_), absl::Milliseconds(20));
  }
}

}  // namespace broker::testing
