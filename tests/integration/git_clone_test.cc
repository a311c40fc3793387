// `git clone` through the tunnel with the real git on both ends: the test
// origin serves a bare repository with `git http-backend` (smart HTTP), the
// platform side is the git client talking to broker-server, and the
// worker's accept rules allow exactly the fetch half of the protocol. The
// clone must be byte-identical to the source.

#include "tests/integration/mesh.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <poll.h>
#include <random>
#include <spawn.h>
#include <string>
#include <unistd.h>
#include <vector>

#include <sys/wait.h>

namespace broker::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "9e1f0c2d-1b2e-4c3d-9e8f-0a1b2c3d4e5f";
constexpr absl::Duration kGitTimeout = absl::Seconds(60);

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout; stderr goes to the test's stderr
};

// Runs `argv` (argv[0] looked up on PATH) with exactly `env`, collects its
// stdout and waits for it, killing it at `timeout`.
absl::StatusOr<CommandResult> RunCommand(
    const std::vector<std::string>& argv,
    const std::map<std::string, std::string>& env,
    absl::Duration timeout = kGitTimeout) {
  std::array<int, 2> out{-1, -1};
  if (pipe2(out.data(), O_CLOEXEC) != 0) return absl::InternalError("pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  std::vector<std::string> env_strings;
  env_strings.reserve(env.size());
  for (const auto& [name, value] : env) {
    env_strings.push_back(absl::StrCat(name, "=", value));
  }
  std::vector<char*> envp;
  envp.reserve(env_strings.size() + 1);
  for (std::string& entry : env_strings) envp.push_back(entry.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  argp.reserve(args.size() + 1);
  for (std::string& arg : args) argp.push_back(arg.data());
  argp.push_back(nullptr);
  pid_t pid = 0;
  const int spawned =
      posix_spawnp(&pid, argp[0], &actions, nullptr, argp.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  if (spawned != 0) {
    close(out[0]);
    return absl::InternalError(
        absl::StrCat("spawn ", argv[0], ": errno ", spawned));
  }
  CommandResult result;
  const absl::Time deadline = absl::Now() + timeout;
  bool timed_out = false;
  std::array<char, std::size_t{64} * 1024> chunk{};
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    const int ready =
        poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready <= 0) continue;
    const ssize_t n = read(out[0], chunk.data(), chunk.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.out.append(chunk.data(), static_cast<size_t>(n));
  }
  close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat(absl::StrJoin(argv, " "), " did not finish"));
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  return result;
}

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(gen() & 0xFF);
  return out;
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void WriteFile(const std::filesystem::path& path, const std::string& data) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

class GitCloneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string home = dir_.path() + "/home";
    std::filesystem::create_directories(home);
    // Neither the machine's nor the user's git configuration applies.
    git_env_ = {
        {"HOME", home},
        {"GIT_CONFIG_NOSYSTEM", "1"},
        {"GIT_TERMINAL_PROMPT", "0"},
        {"GIT_AUTHOR_NAME", "Broker Test"},
        {"GIT_AUTHOR_EMAIL", "test@example.com"},
        {"GIT_COMMITTER_NAME", "Broker Test"},
        {"GIT_COMMITTER_EMAIL", "test@example.com"},
        {"LC_ALL", "C"},
    };
    // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in the test sets env.
    const char* path = std::getenv("PATH");
    git_env_["PATH"] = path != nullptr ? path : "/usr/bin:/bin";
    work_ = dir_.path() + "/work";
    root_ = dir_.path() + "/root";
    std::filesystem::create_directories(root_);
    ASSERT_NO_FATAL_FAILURE(MakeSourceRepository());

    auto origin =
        StartOrigin(&origin_port_, {absl::StrCat("--git-root=", root_), "0"},
                    {{"HOME", home}, {"GIT_CONFIG_NOSYSTEM", "1"}});
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);

    // The server's public rules have Snyk's shape for git; the worker's
    // allow the fetch half of smart HTTP only (no git-receive-pack).
    const std::string server_accept =
        dir_.Write("server-accept.json", R"json({"public": [
      {"method": "GET", "path": "*/info/refs*"},
      {"method": "POST", "path": "*/git-upload-pack"}
    ]})json");
    const std::string client_accept =
        dir_.Write("client-accept.json", absl::StrCat(R"json({"private": [
      {"method": "GET", "path": "/git/:repo.git/info/refs",
       "valid": [{"queryParam": "service", "values": ["git-upload-pack"]}],
       "origin": "http://pat:${GIT_TOKEN}@127.0.0.1:)json",
                                                      origin_port_, R"json("},
      {"method": "POST", "path": "/git/:repo.git/git-upload-pack",
       "origin": "http://pat:${GIT_TOKEN}@127.0.0.1:)json",
                                                      origin_port_, R"json("}
    ]})json"));
    auto server = StartServer(server_accept);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto tunnel = StartTunnel(kToken, server_.tunnel_port, client_accept,
                              *server_.process, {{"GIT_TOKEN", "not-checked"}});
    ASSERT_TRUE(tunnel.ok()) << tunnel.status();
    tunnel_ = *std::move(tunnel);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("test-origin", origin_.get());
    PrintOutput("broker-server", server_.process.get());
    PrintOutput("broker-tunnel", tunnel_.process.get());
  }

  // Runs git with `args`; fails the test unless it exits 0. Its stdout.
  std::string Git(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"git"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto result = RunCommand(argv, git_env_);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return "";
    EXPECT_EQ(result->exit_code, 0) << absl::StrJoin(argv, " ");
    return result->out;
  }

  std::string Head(const std::string& repo) {
    return std::string(absl::StripTrailingAsciiWhitespace(
        Git({"-C", repo, "rev-parse", "HEAD"})));
  }

  void Commit(const std::string& message) {
    Git({"-C", work_, "add", "-A"});
    Git({"-C", work_, "commit", "-q", "-m", message});
  }

  // Three commits: text, a nested directory, a 384 KiB random binary, an
  // executable and a removal; then a bare copy under the origin's root.
  void MakeSourceRepository() {
    Git({"init", "-q", "--initial-branch=main", work_});
    WriteFile(work_ + "/README.md", "# project\n");
    WriteFile(work_ + "/src/deep/nested/dir/file.txt", "nested\n");
    WriteFile(work_ + "/old.txt", "to be removed\n");
    Commit("first");
    WriteFile(work_ + "/assets/blob.bin", RandomBytes(size_t{384} * 1024, 42));
    WriteFile(work_ + "/bin/run.sh", "#!/bin/sh\necho run\n");
    std::filesystem::permissions(work_ + "/bin/run.sh",
                                 std::filesystem::perms::owner_exec,
                                 std::filesystem::perm_options::add);
    Commit("second: a binary and a script");
    WriteFile(work_ + "/README.md", "# project\n\nmore\n");
    std::filesystem::remove(work_ + "/old.txt");
    Commit("third");
    Git({"clone", "-q", "--bare", work_, root_ + "/project.git"});
    ASSERT_FALSE(HasFailure());
  }

  std::string CloneUrl() const {
    return absl::StrCat("http://127.0.0.1:", server_.http_port, "/broker/",
                        kToken, "/git/project.git");
  }

  // Every file of HEAD in work_ (`expected` of them) has the same bytes in
  // the checkout `clone`.
  void ExpectSameFiles(const std::string& clone, int expected) {
    const std::string files = Git({"-C", work_, "ls-files", "-z"});
    int count = 0;
    for (size_t start = 0; start < files.size();) {
      const size_t end = files.find('\0', start);
      const std::string name = files.substr(start, end - start);
      start = end + 1;
      ++count;
      EXPECT_TRUE(ReadFile(absl::StrCat(work_, "/", name)) ==
                  ReadFile(absl::StrCat(clone, "/", name)))
          << name << " differs";
    }
    EXPECT_EQ(count, expected);
  }

  TempDir dir_;
  std::map<std::string, std::string> git_env_;
  std::string work_;
  std::string root_;
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  ServerProcess server_;
  TunnelProcess tunnel_;
};

TEST_F(GitCloneTest, CloneIsByteIdentical) {
  const std::string clone = dir_.path() + "/clone";
  Git({"clone", "-q", CloneUrl(), clone});
  ASSERT_FALSE(HasFailure());
  EXPECT_EQ(Head(clone), Head(work_));
  // Same tree (names, modes, blob ids) and the same history.
  EXPECT_EQ(Git({"-C", clone, "ls-tree", "-r", "HEAD"}),
            Git({"-C", work_, "ls-tree", "-r", "HEAD"}));
  EXPECT_EQ(Git({"-C", clone, "log", "--format=%H %T %s"}),
            Git({"-C", work_, "log", "--format=%H %T %s"}));
  EXPECT_EQ(Git({"-C", clone, "rev-list", "--count", "HEAD"}), "3\n");
  Git({"-C", clone, "fsck", "--full", "--strict"});
  ExpectSameFiles(clone, 4);
  // It went through the tunnel to git http-backend.
  EXPECT_TRUE(origin_
                  ->WaitForLine("request POST /git/project.git/git-upload-pack",
                                absl::Seconds(10))
                  .ok());
}

TEST_F(GitCloneTest, ShallowCloneThenFetchOfANewCommit) {
  const std::string clone = dir_.path() + "/shallow";
  Git({"clone", "-q", "--depth", "1", CloneUrl(), clone});
  ASSERT_FALSE(HasFailure());
  EXPECT_EQ(Head(clone), Head(work_));
  EXPECT_EQ(Git({"-C", clone, "rev-list", "--count", "HEAD"}), "1\n");
  ExpectSameFiles(clone, 4);

  // A new commit upstream arrives with an incremental fetch (the client
  // negotiates with what it has), and the history can be deepened.
  WriteFile(work_ + "/src/deep/nested/dir/file.txt", "changed\n");
  WriteFile(work_ + "/assets/second.bin", RandomBytes(size_t{200} * 1024, 7));
  Commit("fourth");
  Git({"-C", work_, "push", "-q", root_ + "/project.git", "main"});
  Git({"-C", clone, "fetch", "-q", "origin"});
  Git({"-C", clone, "merge", "-q", "--ff-only", "origin/main"});
  EXPECT_EQ(Head(clone), Head(work_));
  ExpectSameFiles(clone, 5);
  Git({"-C", clone, "fetch", "-q", "--unshallow", "origin"});
  EXPECT_EQ(Git({"-C", clone, "rev-list", "--count", "HEAD"}), "4\n");
  EXPECT_EQ(Git({"-C", clone, "log", "--format=%H %T"}),
            Git({"-C", work_, "log", "--format=%H %T"}));
}

TEST_F(GitCloneTest, PushIsRefusedByTheWorkersRules) {
  const std::string clone = dir_.path() + "/clone";
  Git({"clone", "-q", CloneUrl(), clone});
  ASSERT_FALSE(HasFailure());
  WriteFile(clone + "/pushed.txt", "should not arrive\n");
  Git({"-C", clone, "add", "-A"});
  Git({"-C", clone, "commit", "-q", "-m", "push attempt"});
  auto push = RunCommand({"git", "-C", clone, "push", "-q", "origin", "main"},
                         git_env_);
  ASSERT_TRUE(push.ok()) << push.status();
  EXPECT_NE(push->exit_code, 0);
  // The bare repository is unchanged, and receive-pack never reached it:
  // the origin logs each request before answering, so once a later request
  // (to another repository) is logged, an earlier one would be too.
  EXPECT_EQ(Head(root_ + "/project.git"), Head(work_));
  Git({"init", "-q", "--bare", root_ + "/sentinel.git"});
  Git({"ls-remote", absl::StrCat("http://127.0.0.1:", server_.http_port,
                                 "/broker/", kToken, "/git/sentinel.git")});
  EXPECT_TRUE(origin_->WaitForLine("sentinel.git", absl::Seconds(10)).ok());
  EXPECT_THAT(origin_->Output(), Not(HasSubstr("receive-pack")));
}

}  // namespace
}  // namespace broker::testing
