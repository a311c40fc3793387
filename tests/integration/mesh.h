#pragma once

// Starts real binaries on loopback for integration tests: a test origin, a
// broker-server and broker-tunnel workers, each a separate process, with
// accept files written to a temporary directory.

#include "tests/testing/child_process.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sys/types.h>

namespace broker::testing {

struct ServerProcess {
  std::unique_ptr<ChildProcess> process;
  int http_port = 0;
  int tunnel_port = 0;
};

struct TunnelProcess {
  std::unique_ptr<ChildProcess> process;
  int http_port = 0;
  int egress_port = 0;  // with BROKER_TUNNEL_EGRESS_PORT set, else 0
};

// Prints what `process` wrote to stdout, under a "--- <name> stdout" line
// (for a failed test's TearDown); nothing for a process never started.
void PrintOutput(const std::string& name, ChildProcess* process);

// A scratch directory removed with everything in it.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  // Writes `contents` to path()/name and returns the full path.
  std::string Write(const std::string& name, const std::string& contents) const;

 private:
  std::string path_;
};

// The origin (tests/testing/test_origin) as a process, with its command
// line (`[--git-root=DIR] port [cert key]`) and environment; sets *port.
absl::StatusOr<std::unique_ptr<ChildProcess>> StartOrigin(
    int* port, const std::vector<std::string>& args = {"0"},
    const std::map<std::string, std::string>& env = {});

absl::StatusOr<ServerProcess> StartServer(
    const std::string& accept_path,
    std::map<std::string, std::string> extra_env = {});

// Starts a worker and waits until the server logged it connected.
absl::StatusOr<TunnelProcess> StartTunnel(
    const std::string& token, int server_tunnel_port,
    const std::string& accept_path, ChildProcess& server,
    std::map<std::string, std::string> extra_env = {});

// Reads an int member of a JSON line.
absl::StatusOr<int> JsonInt(const std::string& line, const std::string& key);

// What a process holds, for the fault tests' "nothing leaks": its open
// descriptors (/proc/<pid>/fd) and resident memory in KiB (VmRSS); -1 when
// unreadable.
int OpenFiles(pid_t pid);
long ResidentKiB(pid_t pid);
// Waits until `pid` holds at most `most` descriptors (a connection being
// closed takes a moment to go); returns the last count.
int WaitForOpenFilesAtMost(pid_t pid, int most, absl::Duration timeout);

}  // namespace broker::testing
