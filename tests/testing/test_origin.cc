#include "tests/testing/test_origin.h"

#include "common/status.h"

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl/context.hpp"
#include "boost/asio/ssl/stream.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core/flat_buffer.hpp"
#include "boost/beast/core/stream_traits.hpp"
#include "boost/beast/core/tcp_stream.hpp"
#include "boost/beast/http/buffer_body.hpp"
#include "boost/beast/http/message.hpp"
#include "boost/beast/http/parser.hpp"
#include "boost/beast/http/read.hpp"
#include "boost/beast/http/serializer.hpp"
#include "boost/beast/http/string_body.hpp"
#include "boost/beast/http/write.hpp"
#include "nlohmann/json.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <pthread.h>
#include <spawn.h>
#include <thread>
#include <type_traits>
#include <unistd.h>
#include <utility>
#include <vector>

#include <sys/wait.h>

namespace broker::testing {
namespace {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

constexpr std::size_t kChunkBytes = std::size_t{64} * 1024;
constexpr std::chrono::milliseconds kSlowTick(50);

std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }
absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }

// The value of `name` in "a=1&b=2" (no percent-decoding: tests only).
std::optional<std::string> QueryParam(absl::string_view query,
                                      absl::string_view name) {
  for (absl::string_view pair : absl::StrSplit(query, '&')) {
    const std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(pair, absl::MaxSplits('=', 1));
    if (kv.first == name) return std::string(kv.second);
  }
  return std::nullopt;
}

// "<prefix><n>" -> n.
std::optional<std::uint64_t> NumberAfter(absl::string_view path,
                                         absl::string_view prefix) {
  std::uint64_t n = 0;
  if (!absl::ConsumePrefix(&path, prefix) || !absl::SimpleAtoi(path, &n)) {
    return std::nullopt;
  }
  return n;
}

// What a CGI program answered: its Status line, its other header lines
// and the body after the blank line.
struct CgiResult {
  unsigned status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

[[nodiscard]] absl::Status ErrnoError(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// Splits a CGI program's output into its header lines and body.
absl::StatusOr<CgiResult> ParseCgiOutput(const std::string& output) {
  const std::size_t crlf = output.find("\r\n\r\n");
  const std::size_t lf = output.find("\n\n");
  std::size_t end = std::min(crlf, lf);
  if (end == std::string::npos) {
    return absl::InternalError("the CGI answered no header block");
  }
  const std::size_t body_start = end + (end == crlf ? 4 : 2);
  CgiResult result;
  for (absl::string_view line :
       absl::StrSplit(absl::string_view(output).substr(0, end), '\n')) {
    absl::ConsumeSuffix(&line, "\r");
    if (line.empty()) continue;
    const std::size_t colon = line.find(':');
    if (colon == absl::string_view::npos) {
      return absl::InternalError(absl::StrCat("bad CGI header: ", line));
    }
    const absl::string_view name = line.substr(0, colon);
    const absl::string_view value =
        absl::StripAsciiWhitespace(line.substr(colon + 1));
    if (absl::EqualsIgnoreCase(name, "Status")) {
      // "404 Not Found"
      if (!absl::SimpleAtoi(value.substr(0, value.find(' ')), &result.status)) {
        return absl::InternalError(absl::StrCat("bad CGI status: ", value));
      }
    } else {
      result.headers.emplace_back(std::string(name), std::string(value));
    }
  }
  result.body = output.substr(body_start);
  return result;
}

}  // namespace

absl::StatusOr<ProcessResult> RunProcess(const std::vector<std::string>& argv,
                                         std::vector<std::string> env,
                                         std::string input) {
  if (argv.empty()) return absl::InvalidArgumentError("RunProcess: no argv");
  std::array<int, 2> in{-1, -1};
  std::array<int, 2> out{-1, -1};
  // O_CLOEXEC: a program started concurrently must not inherit these ends,
  // or this one's stdin would never see EOF.
  if (pipe2(in.data(), O_CLOEXEC) != 0) return ErrnoError("pipe");
  absl::Cleanup close_in = [&in] {
    for (int fd : in) {
      if (fd >= 0) close(fd);
    }
  };
  if (pipe2(out.data(), O_CLOEXEC) != 0) return ErrnoError("pipe");
  absl::Cleanup close_out = [&out] {
    for (int fd : out) {
      if (fd >= 0) close(fd);
    }
  };

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  absl::Cleanup destroy_actions = [&actions] {
    posix_spawn_file_actions_destroy(&actions);
  };
  posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  // Not the origin's client connections (Asio opens them without
  // O_CLOEXEC): a CGI must not keep one open after the origin closed it.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  absl::Cleanup destroy_attr = [&attr] { posix_spawnattr_destroy(&attr); };
  // The caller's threads may block signals (test-origin blocks SIGTERM);
  // the program starts with none blocked and SIGPIPE at its default.
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  argp.reserve(args.size() + 1);
  for (std::string& arg : args) argp.push_back(arg.data());
  argp.push_back(nullptr);
  std::vector<char*> envp;
  envp.reserve(env.size() + 1);
  for (std::string& entry : env) envp.push_back(entry.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  const int spawned =
      posix_spawnp(&pid, argp[0], &actions, &attr, argp.data(), envp.data());
  if (spawned != 0) {
    return absl::InternalError(
        absl::StrCat("spawn ", argv[0], ": ", std::strerror(spawned)));
  }
  close(in[0]);
  in[0] = -1;
  close(out[1]);
  out[1] = -1;

  // The writer owns the write end and closes it when done: a program that
  // reads its stdin to EOF needs that to finish. It writes on a second
  // thread while this one reads, so neither pipe can fill up and stall the
  // other.
  std::thread writer([fd = std::exchange(in[1], -1), &input] {
    // A program that exits without reading its stdin must not kill the
    // origin with SIGPIPE: blocked here, the write fails with EPIPE instead.
    sigset_t pipe_signal;
    sigemptyset(&pipe_signal);
    sigaddset(&pipe_signal, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
    std::size_t written = 0;
    while (written < input.size()) {
      const ssize_t n =
          write(fd, input.data() + written, input.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      written += static_cast<std::size_t>(n);
    }
    close(fd);
  });
  ProcessResult result;
  std::array<char, std::size_t{64} * 1024> chunk{};
  while (true) {
    const ssize_t n = read(out[0], chunk.data(), chunk.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.out.append(chunk.data(), static_cast<std::size_t>(n));
  }
  writer.join();
  int wait_status = 0;
  while (waitpid(pid, &wait_status, 0) < 0) {
    if (errno != EINTR) return ErrnoError("waitpid");
  }
  result.exit_code = WIFEXITED(wait_status)     ? WEXITSTATUS(wait_status)
                     : WIFSIGNALED(wait_status) ? 128 + WTERMSIG(wait_status)
                                                : 255;
  return result;
}

namespace {

// Runs `git http-backend` with exactly `env`, `body` on its stdin. Blocking:
// call it on a thread of its own.
absl::StatusOr<CgiResult> RunGitHttpBackend(std::vector<std::string> env,
                                            std::string body) {
  BROKER_ASSIGN_OR_RETURN(
      ProcessResult run,
      RunProcess({"git", "http-backend"}, std::move(env), std::move(body)));
  if (run.exit_code != 0 && run.out.empty()) {
    return absl::InternalError(absl::StrCat(
        "git http-backend failed (exit code ", run.exit_code, ")"));
  }
  return ParseCgiOutput(run.out);
}

// Copies `name` from this process's environment into `env`, if set.
void PassThrough(const char* name, std::vector<std::string>& env) {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in the origin sets env.
  if (const char* value = std::getenv(name)) {
    env.push_back(absl::StrCat(name, "=", value));
  }
}

// The environment of the git programs the origin runs.
std::vector<std::string> GitEnv() {
  std::vector<std::string> env = {"LC_ALL=C"};
  for (const char* name :
       {"PATH", "HOME", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL"}) {
    PassThrough(name, env);
  }
  return env;
}

// --- The SCM-like API over the git root ------------------------------------

constexpr absl::string_view kApiPrefix = "/api/v3/";
constexpr absl::string_view kReposPrefix = "/api/v3/repos/";

// "%2e%2E" -> "..": std::nullopt on a malformed escape.
std::optional<std::string> PercentDecode(absl::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    int value = 0;
    if (i + 2 >= in.size() || !absl::ascii_isxdigit(in[i + 1]) ||
        !absl::ascii_isxdigit(in[i + 2]) ||
        !absl::SimpleHexAtoi(in.substr(i + 1, 2), &value)) {
      return std::nullopt;
    }
    out.push_back(static_cast<char>(value));
    i += 2;
  }
  return out;
}

struct ApiAnswer {
  unsigned status = 200;
  nlohmann::json body;
};

ApiAnswer ApiError(unsigned status, absl::string_view message) {
  return {status, nlohmann::json{{"message", std::string(message)}}};
}

// An owner or repository name: [A-Za-z0-9._-]+, not starting with '.'.
bool IsRepoName(absl::string_view name) {
  if (name.empty() || name.front() == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-';
  });
}

// The first line of <git_dir>/HEAD: "ref: refs/heads/main" -> "main".
std::optional<std::string> DefaultBranch(const std::string& git_dir) {
  std::ifstream head(git_dir + "/HEAD");
  std::string line;
  if (!head || !std::getline(head, line)) return std::nullopt;
  absl::string_view ref = absl::StripAsciiWhitespace(line);
  if (!absl::ConsumePrefix(&ref, "ref: refs/heads/")) return "HEAD";
  return std::string(ref);
}

// The file `path` at HEAD of `git_dir`, through `git cat-file --batch`:
// {sha, content}, or std::nullopt when HEAD has no such file (or no HEAD).
// Blocking.
absl::StatusOr<std::optional<std::pair<std::string, std::string>>> HeadBlob(
    const std::string& git_dir, const std::string& path) {
  BROKER_ASSIGN_OR_RETURN(
      ProcessResult run,
      RunProcess(
          {"git", absl::StrCat("--git-dir=", git_dir), "cat-file", "--batch"},
          GitEnv(), absl::StrCat("HEAD:", path, "\n")));
  if (run.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("git cat-file exited with ", run.exit_code));
  }
  // "<sha> <type> <size>\n<content>\n", or "<object> missing\n".
  const std::size_t eol = run.out.find('\n');
  if (eol == std::string::npos) {
    return absl::InternalError("git cat-file answered no line");
  }
  const std::vector<absl::string_view> head =
      absl::StrSplit(absl::string_view(run.out).substr(0, eol), ' ');
  std::size_t size = 0;
  if (head.size() != 3 || head[1] != "blob" ||
      !absl::SimpleAtoi(head[2], &size)) {
    return std::nullopt;  // missing, or a tree
  }
  if (run.out.size() < eol + 1 + size) {
    return absl::InternalError("git cat-file answered a short object");
  }
  return std::make_pair(std::string(head[0]), run.out.substr(eol + 1, size));
}

// Whether the API request for `path` runs git (and so a thread of its own).
bool ApiNeedsGit(absl::string_view path) {
  return absl::StrContains(path, "/contents/");
}

// The answer of the API route for `method` `path` (a path under
// kApiPrefix) over the repositories under `git_root`. Blocking when
// ApiNeedsGit(path).
ApiAnswer ScmApi(const std::string& git_root, absl::string_view method,
                 absl::string_view path) {
  std::vector<std::string> segments;
  for (absl::string_view raw : absl::StrSplit(path, '/')) {
    std::optional<std::string> segment = PercentDecode(raw);
    // No way out of the root: no "..", no "." and nothing that could end
    // a `git cat-file --batch` line or a path.
    if (!segment.has_value() || *segment == ".." || *segment == "." ||
        std::any_of(segment->begin(), segment->end(),
                    [](char c) {
                      return static_cast<unsigned char>(c) < 0x20 || c == '\\';
                    }) ||
        absl::StrContains(*segment, '/')) {
      return ApiError(400, "Bad Request");
    }
    segments.push_back(*std::move(segment));
  }
  if (!absl::StartsWith(path, kReposPrefix) ||
      (method != "GET" && method != "HEAD")) {
    return ApiError(404, "Not Found");
  }
  // "", "api", "v3", "repos", owner, repo[, "contents", path...]
  constexpr std::size_t kOwner = 4;
  const bool repo_only = segments.size() == kOwner + 2;
  const bool contents = segments.size() > kOwner + 3 &&
                        segments[kOwner + 2] == "contents" &&
                        !segments.back().empty();
  if (!repo_only && !contents) return ApiError(404, "Not Found");
  const std::string& owner = segments[kOwner];
  const std::string& repo = segments[kOwner + 1];
  if (!IsRepoName(owner) || !IsRepoName(repo)) {
    return ApiError(404, "Not Found");
  }
  const std::string git_dir =
      absl::StrCat(git_root, "/", owner, "/", repo, ".git");
  const std::optional<std::string> branch = DefaultBranch(git_dir);
  if (!branch.has_value()) return ApiError(404, "Not Found");
  if (repo_only) {
    return {200, nlohmann::json{{"full_name", absl::StrCat(owner, "/", repo)},
                                {"name", repo},
                                {"default_branch", *branch},
                                {"private", true}}};
  }
  std::vector<std::string> file_segments(
      segments.begin() + static_cast<std::ptrdiff_t>(kOwner + 3),
      segments.end());
  if (std::any_of(file_segments.begin(), file_segments.end(),
                  [](const std::string& s) { return s.empty(); })) {
    return ApiError(404, "Not Found");
  }
  const std::string file = absl::StrJoin(file_segments, "/");
  absl::StatusOr<std::optional<std::pair<std::string, std::string>>> blob =
      HeadBlob(git_dir, file);
  if (!blob.ok()) return ApiError(500, blob.status().message());
  if (!blob->has_value()) return ApiError(404, "Not Found");
  const auto& [sha, content] = **blob;
  return {200, nlohmann::json{{"type", "file"},
                              {"name", file_segments.back()},
                              {"path", file},
                              {"sha", sha},
                              {"size", content.size()},
                              {"encoding", "base64"},
                              {"content", absl::Base64Escape(content)}}};
}

}  // namespace

class TestOrigin::Impl {
 public:
  explicit Impl(TestOriginOptions options) : options_(std::move(options)) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  ~Impl() {
    io_.stop();
    for (std::thread& thread : threads_) thread.join();
    // CGI threads end when their git does; what they post to the stopped
    // io_context is destroyed with it.
    std::vector<std::thread> workers;
    {
      absl::MutexLock lock(&mu_);
      workers.swap(workers_);
    }
    for (std::thread& worker : workers) worker.join();
    beast::error_code ignored;
    acceptor_.close(ignored);
    // Members after this point go first: the acceptor, then the io_context,
    // which destroys the sessions still in its queue.
  }

  [[nodiscard]] absl::Status Listen();
  void Run();
  int port() const { return port_; }
  bool tls() const { return tls_.has_value(); }

  void CountRequest() { requests_.fetch_add(1); }
  const TestOriginOptions& options() const { return options_; }
  void CountBodyBytes(std::size_t n) { body_bytes_.fetch_add(n); }
  std::uint64_t request_count() const { return requests_.load(); }
  std::uint64_t body_bytes_received() const { return body_bytes_.load(); }

  void ConnectionOpened() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++connections_;
    ++accepted_;
  }
  void ConnectionClosed() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    --connections_;
  }
  // Runs blocking work (a CGI) on a thread of its own, joined when the
  // origin stops.
  void RunOnThread(std::function<void()> work) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    workers_.emplace_back(std::move(work));
  }
  int open_connections() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return connections_;
  }
  int accepted_connections() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return accepted_;
  }
  bool WaitForNoConnections(absl::Duration timeout) const
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(this, &Impl::NoConnections),
                                timeout);
  }

 private:
  bool NoConnections() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return connections_ == 0;
  }
  void Accept();

  const TestOriginOptions options_;
  std::atomic<std::uint64_t> requests_{0};
  std::atomic<std::uint64_t> body_bytes_{0};
  mutable absl::Mutex mu_;
  int connections_ ABSL_GUARDED_BY(mu_) = 0;
  int accepted_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(mu_);
  std::optional<ssl::context> tls_;
  // Sessions refer to everything above; they die with io_.
  net::io_context io_;
  tcp::acceptor acceptor_{io_};
  std::vector<std::thread> threads_;
  int port_ = 0;
};

namespace {

// One connection. Every handler runs on the connection's strand (the
// executor of its socket); the session owns itself through the pending
// operations.
template <typename Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

  template <typename... Args>
  explicit Session(TestOrigin::Impl& origin, Args&&... args)
      : origin_(origin),
        stream_(std::forward<Args>(args)...),
        timer_(stream_.get_executor()) {
    origin_.ConnectionOpened();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { origin_.ConnectionClosed(); }

  void Start() {
    if constexpr (kTls) {
      stream_.async_handshake(
          ssl::stream_base::server,
          [self = this->shared_from_this()](const beast::error_code& ec) {
            if (ec) {
              self->Close();
              return;
            }
            self->ReadRequest();
          });
    } else {
      ReadRequest();
    }
  }

 private:
  using Then = std::function<void()>;
  // How a streamed body ends.
  enum class Framing { kLength, kChunked, kClose };
  using ChunkHandler =
      std::function<void(beast::error_code, absl::string_view, bool)>;

  void Close() {
    beast::error_code ignored;
    auto& tcp_layer = beast::get_lowest_layer(stream_);
    tcp_layer.socket().shutdown(tcp::socket::shutdown_both, ignored);
    tcp_layer.close();
  }

  void ReadRequest() {
    // Beast reads max(512, free capacity) bytes at a time: without room,
    // a body arrives in 512-byte reads.
    buffer_.reserve(kChunkBytes);
    parser_.emplace();
    parser_->header_limit(64 * 1024);
    // No limit. Not boost::none: Beast 1.74 compares `len > optional` in
    // basic_parser.ipp, which is true for none.
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    sha_ = Sha256();
    request_body_bytes_ = 0;
    keep_body_ = false;
    hash_body_ = true;
    body_.clear();
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self = this->shared_from_this()](
                                 const beast::error_code& ec, std::size_t) {
                               if (ec) {
                                 self->Close();
                                 return;
                               }
                               self->OnRequest();
                             });
  }

  void OnRequest() {
    origin_.CountRequest();
    const auto& request = parser_->get();
    keep_alive_ = request.keep_alive();
    head_ = request.method() == bhttp::verb::head;
    const absl::string_view target = ToAbsl(request.target());
    const std::size_t question = target.find('?');
    path_ = std::string(target.substr(0, question));
    query_ = question == absl::string_view::npos
                 ? std::string()
                 : std::string(target.substr(question + 1));
    if (origin_.options().on_request) {
      origin_.options().on_request(ToAbsl(request.method_string()), target);
    }
    auto self = this->shared_from_this();
    if (absl::EqualsIgnoreCase(ToAbsl(request[bhttp::field::expect]),
                               "100-continue")) {
      out_ = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(stream_, net::buffer(out_),
                       [self](const beast::error_code& ec, std::size_t) {
                         if (ec) {
                           self->Close();
                           return;
                         }
                         self->Route();
                       });
      return;
    }
    Route();
  }

  void Route() {
    const bool chunked = QueryParam(query_, "chunked") == "1";
    auto self = this->shared_from_this();

    if (path_ == "/echo-body") {
      EchoBody();
    } else if (path_ == "/sink") {
      hash_body_ = false;
      DrainBody([self] { self->RespondSink(); });
    } else if (path_ == "/echo" || absl::StartsWith(path_, "/webhook/")) {
      DrainBody([self] { self->RespondEcho(); });
    } else if (path_ == "/headers") {
      DrainBody([self] {
        self->RespondSimple(
            200, "application/json",
            self->HeadersJson().dump(-1, ' ', false,
                                     nlohmann::json::error_handler_t::replace));
      });
    } else if (auto n = NumberAfter(path_, "/bytes/")) {
      const Framing framing = chunked ? Framing::kChunked
                              : QueryParam(query_, "close") == "1"
                                  ? Framing::kClose
                                  : Framing::kLength;
      DrainBody([self, n = *n, framing] { self->StreamBytes(n, framing); });
    } else if (auto ms = NumberAfter(path_, "/slow/")) {
      DrainBody([self, ms = *ms] {
        self->timer_.expires_after(
            std::chrono::milliseconds(ms) +
            absl::ToChronoMilliseconds(self->origin_.options().slow_extra));
        self->timer_.async_wait([self](const beast::error_code& ec) {
          if (ec) return;  // cancelled: the client left
          self->waiting_ = false;
          beast::error_code ignored;
          beast::get_lowest_layer(self->stream_).socket().cancel(ignored);
          self->RespondSimple(200, "text/plain", "slow");
        });
        // The socket turning readable while we wait means the client left
        // (tests never pipeline): stop, as a real origin's failed write
        // would, and say so.
        self->waiting_ = true;
        beast::get_lowest_layer(self->stream_)
            .socket()
            .async_wait(tcp::socket::wait_read,
                        [self](const beast::error_code& ec) {
                          if (ec || !self->waiting_) return;
                          self->waiting_ = false;
                          self->timer_.cancel();
                          if (self->origin_.options().on_client_gone) {
                            self->origin_.options().on_client_gone(self->path_);
                          }
                          self->Close();
                        });
      });
    } else if (auto slow = NumberAfter(path_, "/slow-body/")) {
      std::uint64_t rate = 1000;
      if (auto r = QueryParam(query_, "rate")) {
        if (!absl::SimpleAtoi(*r, &rate) || rate == 0) rate = 1000;
      }
      DrainBody([self, n = *slow, rate] { self->SlowBody(n, rate); });
    } else if (auto code = NumberAfter(path_, "/status/");
               code.has_value() && *code >= 100 && *code <= 999) {
      DrainBody([self, code = static_cast<unsigned>(*code)] {
        self->RespondSimple(code, "text/plain", absl::StrCat("status ", code));
      });
    } else if (auto die = NumberAfter(path_, "/die-mid-body/")) {
      DrainBody([self, n = *die, chunked] { self->DieMidBody(n, chunked); });
    } else if (path_ == "/bad-chunk") {
      DrainBody([self] { self->BadChunk(); });
    } else if (absl::StartsWith(path_, "/git/") &&
               !origin_.options().git_project_root.empty()) {
      keep_body_ = true;
      DrainBody([self] { self->RunGit(); });
    } else if (absl::StartsWith(path_, kApiPrefix) &&
               !origin_.options().git_project_root.empty()) {
      DrainBody([self] { self->RunApi(); });
    } else {
      DrainBody([self] { self->RespondSimple(404, "text/plain", "no route"); });
    }
  }

  // Reads the next piece of the request body into buf_.
  void ReadChunk(ChunkHandler handler) {
    if (parser_->is_done()) {
      handler({}, {}, true);
      return;
    }
    auto& body = parser_->get().body();
    body.data = buf_.data();
    body.size = buf_.size();
    bhttp::async_read_some(
        stream_, buffer_, *parser_,
        [self = this->shared_from_this(), handler = std::move(handler)](
            beast::error_code ec, std::size_t) {
          if (ec == bhttp::error::need_buffer) ec = {};
          const std::size_t n =
              self->buf_.size() - self->parser_->get().body().size;
          self->origin_.CountBodyBytes(n);
          self->request_body_bytes_ += n;
          handler(ec, absl::string_view(self->buf_.data(), n),
                  !ec && self->parser_->is_done());
        });
  }

  void DrainBody(Then then) {
    ReadChunk([self = this->shared_from_this(), then = std::move(then)](
                  beast::error_code ec, absl::string_view data, bool done) {
      if (ec) {
        self->Close();
        return;
      }
      if (self->hash_body_) self->sha_.Update(data);
      if (self->keep_body_) self->body_.append(data.data(), data.size());
      if (done) {
        then();
      } else {
        self->DrainBody(then);
      }
    });
  }

  nlohmann::json HeadersJson() const {
    nlohmann::json headers = nlohmann::json::object();
    for (const auto& field : parser_->get()) {
      const std::string name =
          absl::AsciiStrToLower(ToAbsl(field.name_string()));
      const std::string value(field.value());
      if (headers.contains(name)) {
        headers[name] =
            absl::StrCat(headers[name].get<std::string>(), ", ", value);
      } else {
        headers[name] = value;
      }
    }
    return headers;
  }

  void RespondEcho() {
    if (origin_.options().on_echoed) {
      origin_.options().on_echoed(ToAbsl(parser_->get().method_string()),
                                  path_);
    }
    nlohmann::json echo;
    echo["method"] = std::string(parser_->get().method_string());
    echo["path"] = path_;
    echo["query"] = query_;
    echo["headers"] = HeadersJson();
    echo["body_sha256"] = sha_.HexDigest();
    echo["body_bytes"] = request_body_bytes_;
    RespondSimple(
        200, "application/json",
        echo.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }

  void RespondSink() {
    nlohmann::json sink;
    sink["body_bytes"] = request_body_bytes_;
    RespondSimple(200, "application/json", sink.dump());
  }

  // /api/v3/...: the SCM-like API; on a thread of its own when it runs git,
  // the answer coming back on the strand.
  void RunApi() {
    std::string method(parser_->get().method_string());
    if (!ApiNeedsGit(path_)) {
      RespondApi(ScmApi(origin_.options().git_project_root, method, path_));
      return;
    }
    origin_.RunOnThread([self = this->shared_from_this(),
                         method = std::move(method), path = path_]() mutable {
      ApiAnswer answer =
          ScmApi(self->origin_.options().git_project_root, method, path);
      auto executor = self->stream_.get_executor();
      net::post(executor,
                [self = std::move(self), answer = std::move(answer)]() mutable {
                  self->RespondApi(std::move(answer));
                });
    });
  }

  void RespondApi(const ApiAnswer& answer) {
    RespondSimple(answer.status, "application/json; charset=utf-8",
                  answer.body.dump(-1, ' ', false,
                                   nlohmann::json::error_handler_t::replace));
  }

  // /git/<path>: `git http-backend` on a thread of its own, as a CGI with
  // PATH_INFO=/<path>; the answer comes back on the strand.
  void RunGit() {
    const auto& request = parser_->get();
    std::vector<std::string> env = {
        absl::StrCat("GIT_PROJECT_ROOT=", origin_.options().git_project_root),
        "GIT_HTTP_EXPORT_ALL=1",
        "GATEWAY_INTERFACE=CGI/1.1",
        "REMOTE_ADDR=127.0.0.1",
        absl::StrCat("REQUEST_METHOD=", ToAbsl(request.method_string())),
        absl::StrCat("PATH_INFO=",
                     absl::string_view(path_).substr(std::strlen("/git"))),
        absl::StrCat("QUERY_STRING=", query_),
        absl::StrCat("CONTENT_TYPE=",
                     ToAbsl(request[bhttp::field::content_type])),
        absl::StrCat("CONTENT_LENGTH=", body_.size()),
    };
    for (const auto& [field, variable] :
         {std::pair<absl::string_view, absl::string_view>{"Git-Protocol",
                                                          "HTTP_GIT_PROTOCOL"},
          {"Content-Encoding", "HTTP_CONTENT_ENCODING"}}) {
      const auto it = request.find(ToStd(field));
      if (it != request.end()) {
        env.push_back(absl::StrCat(variable, "=", ToAbsl(it->value())));
      }
    }
    for (const char* name :
         {"PATH", "HOME", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL"}) {
      PassThrough(name, env);
    }
    origin_.RunOnThread([self = this->shared_from_this(), env = std::move(env),
                         body = std::move(body_)]() mutable {
      absl::StatusOr<CgiResult> result =
          RunGitHttpBackend(std::move(env), std::move(body));
      auto executor = self->stream_.get_executor();
      net::post(executor,
                [self = std::move(self), result = std::move(result)]() mutable {
                  self->RespondCgi(std::move(result));
                });
    });
  }

  void RespondCgi(absl::StatusOr<CgiResult> result) {
    if (!result.ok()) {
      RespondSimple(500, "text/plain", std::string(result.status().message()));
      return;
    }
    std::string content_type;
    std::vector<std::pair<std::string, std::string>> headers;
    for (auto& [name, value] : result->headers) {
      if (absl::EqualsIgnoreCase(name, "Content-Type")) {
        content_type = std::move(value);
      } else if (!absl::EqualsIgnoreCase(name, "Content-Length")) {
        headers.emplace_back(std::move(name), std::move(value));
      }
    }
    RespondSimple(result->status, content_type, std::move(result->body),
                  headers);
  }

  void RespondSimple(
      unsigned status, absl::string_view content_type, std::string body,
      const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    simple_.emplace();
    simple_->version(11);
    simple_->result(status);
    simple_->keep_alive(keep_alive_);
    for (const auto& [name, value] : headers) simple_->set(name, value);
    const bool no_body = status < 200 || status == 204 || status == 304;
    if (!no_body) {
      if (!content_type.empty()) {
        simple_->set(bhttp::field::content_type, ToStd(content_type));
      }
      simple_->body() = std::move(body);
      simple_->prepare_payload();
      // HEAD: the length of the body that a GET would get, and no body.
      if (head_) simple_->body().clear();
    }
    bhttp::async_write(stream_, *simple_,
                       [self = this->shared_from_this()](
                           const beast::error_code& ec, std::size_t) {
                         self->OnResponseDone(ec);
                       });
  }

  void OnResponseDone(const beast::error_code& ec) {
    if (ec || !keep_alive_) {
      Close();
      return;
    }
    ReadRequest();
  }

  // Streamed answers: StartStream() writes the head, WriteStream() each
  // piece of the body.
  // No `length`: chunked, or with kClose neither length nor chunks, and
  // the body ends when the connection closes.
  void StartStream(const std::string& content_type,
                   std::optional<std::uint64_t> length, Then then,
                   Framing framing = Framing::kChunked) {
    serializer_.reset();
    response_.emplace();
    response_->version(11);
    response_->result(bhttp::status::ok);
    if (framing == Framing::kClose) keep_alive_ = false;
    response_->keep_alive(keep_alive_);
    if (!content_type.empty()) {
      response_->set(bhttp::field::content_type, content_type);
    }
    if (length.has_value()) {
      response_->content_length(*length);
    } else if (framing == Framing::kChunked) {
      response_->chunked(true);
    }
    response_->body().data = nullptr;
    response_->body().size = 0;
    response_->body().more = true;
    serializer_.emplace(*response_);
    bhttp::async_write_header(
        stream_, *serializer_,
        [self = this->shared_from_this(), then = std::move(then)](
            const beast::error_code& ec, std::size_t) {
          if (ec) {
            self->Close();
          } else if (self->head_) {
            self->OnResponseDone(ec);
          } else {
            then();
          }
        });
  }

  void WriteStream(std::string data, bool last, Then then) {
    out_ = std::move(data);
    WriteStreamView(out_, last, std::move(then));
  }

  // `data` must stay valid until `then` runs (out_, or the pattern table).
  void WriteStreamView(absl::string_view data, bool last, Then then) {
    auto& body = response_->body();
    // Beast's buffer_body only reads through this pointer when serializing.
    body.data = data.empty() ? nullptr : const_cast<char*>(data.data());
    body.size = data.size();
    body.more = !last;
    bhttp::async_write(
        stream_, *serializer_,
        [self = this->shared_from_this(), then = std::move(then)](
            beast::error_code ec, std::size_t) {
          if (ec == bhttp::error::need_buffer) ec = {};
          if (ec) {
            self->Close();
            return;
          }
          then();
        });
  }

  void StreamBytes(std::uint64_t n, Framing framing) {
    offset_ = 0;
    total_ = n;
    StartStream(
        "application/octet-stream",
        framing == Framing::kLength ? std::optional<std::uint64_t>(n)
                                    : std::nullopt,
        [self = this->shared_from_this()] { self->WriteBytes(); }, framing);
  }

  void WriteBytes() {
    const std::size_t len = static_cast<std::size_t>(
        std::min<std::uint64_t>(kChunkBytes, total_ - offset_));
    const bool last = offset_ + len == total_;
    const absl::string_view data = TestPatternSlice(offset_, len);
    offset_ += len;
    WriteStreamView(data, last, [self = this->shared_from_this(), last] {
      if (last) {
        self->OnResponseDone({});
      } else {
        self->WriteBytes();
      }
    });
  }

  void SlowBody(std::uint64_t n, std::uint64_t rate) {
    offset_ = 0;
    total_ = n;
    // Bytes per tick, at least one.
    step_ = std::max<std::uint64_t>(1, rate * kSlowTick.count() / 1000);
    StartStream("application/octet-stream", n,
                [self = this->shared_from_this()] { self->SlowTick(); });
  }

  void SlowTick() {
    const std::size_t len =
        static_cast<std::size_t>(std::min(step_, total_ - offset_));
    const bool last = offset_ + len == total_;
    std::string data = TestPattern(offset_, len);
    offset_ += len;
    WriteStream(std::move(data), last, [self = this->shared_from_this(), last] {
      if (last) {
        self->OnResponseDone({});
        return;
      }
      self->timer_.expires_after(kSlowTick);
      self->timer_.async_wait([self](const beast::error_code& ec) {
        if (!ec) self->SlowTick();
      });
    });
  }

  void DieMidBody(std::uint64_t n, bool chunked) {
    StartStream("application/octet-stream",
                chunked ? std::nullopt : std::optional<std::uint64_t>(n),
                [self = this->shared_from_this(), n] {
                  self->WriteStream(
                      TestPattern(0, static_cast<std::size_t>(n / 2)), false,
                      [self] { self->Close(); });
                });
  }

  void BadChunk() {
    out_ =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\nzz\r\nnot a chunk\r\n";
    net::async_write(
        stream_, net::buffer(out_),
        [self = this->shared_from_this()](const beast::error_code&,
                                          std::size_t) { self->Close(); });
  }

  void EchoBody() {
    const auto& request = parser_->get();
    std::optional<std::uint64_t> length;
    if (!parser_->chunked()) length = parser_->content_length().value_or(0);
    StartStream(std::string(request[bhttp::field::content_type]), length,
                [self = this->shared_from_this()] { self->EchoNext(); });
  }

  void EchoNext() {
    ReadChunk([self = this->shared_from_this()](
                  beast::error_code ec, absl::string_view data, bool done) {
      if (ec) {
        self->Close();
        return;
      }
      self->WriteStream(std::string(data), done, [self, done] {
        if (done) {
          self->OnResponseDone({});
        } else {
          self->EchoNext();
        }
      });
    });
  }

  TestOrigin::Impl& origin_;
  Stream stream_;
  net::steady_timer timer_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::buffer_body>> parser_;
  std::array<char, kChunkBytes> buf_{};
  Sha256 sha_;
  std::uint64_t request_body_bytes_ = 0;
  bool keep_body_ = false;  // the route needs the body (kept in body_)
  bool hash_body_ = true;   // /echo reports the body's SHA-256; /sink not
  std::string body_;
  std::string path_;
  bool waiting_ = false;  // /slow: the timer and the socket watch race
  std::string query_;
  bool keep_alive_ = true;
  bool head_ = false;

  std::optional<bhttp::response<bhttp::string_body>> simple_;
  std::optional<bhttp::response_serializer<bhttp::buffer_body>> serializer_;
  std::optional<bhttp::response<bhttp::buffer_body>> response_;
  std::string out_;
  std::uint64_t offset_ = 0;
  std::uint64_t total_ = 0;
  std::uint64_t step_ = 1;
};

}  // namespace

absl::Status TestOrigin::Impl::Listen() {
  beast::error_code ec;
  if (!options_.tls_cert_file.empty() || !options_.tls_key_file.empty()) {
    tls_.emplace(ssl::context::tls_server);
    tls_->use_certificate_chain_file(options_.tls_cert_file, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("test origin: certificate: ", ec.message()));
    }
    tls_->use_private_key_file(options_.tls_key_file, ssl::context::pem, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("test origin: key: ", ec.message()));
    }
  }
  const net::ip::address address = net::ip::make_address(options_.address, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("test origin: address: ", ec.message()));
  }
  const tcp::endpoint endpoint(address,
                               static_cast<std::uint16_t>(options_.port));
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("test origin: listen on ", options_.address, ":",
                     options_.port, ": ", ec.message()));
  }
  port_ = acceptor_.local_endpoint(ec).port();
  if (ec) return absl::InternalError(ec.message());
  return absl::OkStatus();
}

void TestOrigin::Impl::Run() {
  Accept();
  const int threads = std::max(1, options_.threads);
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { io_.run(); });
  }
}

void TestOrigin::Impl::Accept() {
  acceptor_.async_accept(net::make_strand(io_), [this](beast::error_code ec,
                                                       tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) {
      return;
    }
    if (!ec) {
      // Like real origins: no Nagle delay between a head and its body.
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      if (tls_.has_value()) {
        std::make_shared<Session<ssl::stream<beast::tcp_stream>>>(
            *this, std::move(socket), *tls_)
            ->Start();
      } else {
        std::make_shared<Session<beast::tcp_stream>>(*this, std::move(socket))
            ->Start();
      }
    }
    Accept();
  });
}

absl::StatusOr<std::unique_ptr<TestOrigin>> TestOrigin::Start(
    TestOriginOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  BROKER_RETURN_IF_ERROR(impl->Listen());
  impl->Run();
  return std::unique_ptr<TestOrigin>(new TestOrigin(std::move(impl)));
}

TestOrigin::TestOrigin(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TestOrigin::~TestOrigin() = default;

int TestOrigin::port() const { return impl_->port(); }

std::string TestOrigin::Url(absl::string_view path) const {
  return absl::StrCat(impl_->tls() ? "https" : "http",
                      "://127.0.0.1:", impl_->port(), path);
}

std::uint64_t TestOrigin::request_count() const {
  return impl_->request_count();
}

std::uint64_t TestOrigin::body_bytes_received() const {
  return impl_->body_bytes_received();
}

int TestOrigin::open_connections() const { return impl_->open_connections(); }

int TestOrigin::accepted_connections() const {
  return impl_->accepted_connections();
}

bool TestOrigin::WaitForNoConnections(absl::Duration timeout) const {
  return impl_->WaitForNoConnections(timeout);
}

namespace {

// The pattern repeats every kPatternPeriod bytes. A prime period keeps a
// chunk that is duplicated, dropped or reordered at any power-of-two
// granularity from matching. The table holds one period plus one chunk, so
// every slice of up to kChunkBytes is contiguous and a sender needs no copy.
constexpr std::size_t kPatternPeriod = 65521;

const std::string& PatternTable() {
  static const std::string* const table = [] {
    auto* bytes = new std::string(kPatternPeriod + kChunkBytes, '\0');
    for (std::size_t i = 0; i < bytes->size(); ++i) {
      // The top byte of a multiplicative hash of the position.
      const std::uint64_t x = (i % kPatternPeriod) * 0x9E3779B97F4A7C15ULL;
      (*bytes)[i] = static_cast<char>(x >> 56);
    }
    return bytes;
  }();
  return *table;
}

}  // namespace

absl::string_view TestPatternSlice(std::uint64_t offset, std::size_t n) {
  BROKER_CHECK(n <= kChunkBytes);
  return absl::string_view(PatternTable())
      .substr(static_cast<std::size_t>(offset % kPatternPeriod), n);
}

std::string TestPattern(std::uint64_t offset, std::size_t n) {
  std::string out;
  out.reserve(n);
  while (out.size() < n) {
    const std::size_t piece = std::min(kChunkBytes, n - out.size());
    const absl::string_view slice =
        TestPatternSlice(offset + out.size(), piece);
    out.append(slice.data(), slice.size());
  }
  return out;
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  BROKER_CHECK(ctx_ != nullptr);
  BROKER_CHECK(EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1);
}

void Sha256::Update(absl::string_view data) {
  BROKER_CHECK(EVP_DigestUpdate(ctx_.get(), data.data(), data.size()) == 1);
}

std::string Sha256::HexDigest() {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  BROKER_CHECK(EVP_DigestFinal_ex(ctx_.get(), digest.data(), &size) == 1);
  BROKER_CHECK(EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(std::size_t{size} * 2);
  for (unsigned int i = 0; i < size; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xf]);
  }
  return out;
}

}  // namespace broker::testing
