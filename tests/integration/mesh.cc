#include "tests/integration/mesh.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace broker::testing {

constexpr absl::Duration kStartTimeout = absl::Seconds(20);

void PrintOutput(const std::string& name, ChildProcess* process) {
  if (process == nullptr) return;
  std::cerr << "--- " << name << " stdout\n" << process->Output();
}

TempDir::TempDir() {
  std::string pattern =
      (std::filesystem::temp_directory_path() / "broker-test-XXXXXX").string();
  char* made = mkdtemp(pattern.data());
  path_ = made ? made : "";
}

TempDir::~TempDir() {
  std::error_code ignored;
  if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::Write(const std::string& name,
                           const std::string& contents) const {
  std::string full = path_ + "/" + name;
  std::ofstream(full, std::ios::binary) << contents;
  return full;
}

int OpenFiles(pid_t pid) {
  std::error_code ec;
  int n = 0;
  for (std::filesystem::directory_iterator
           it(absl::StrCat("/proc/", pid, "/fd"), ec),
       end;
       !ec && it != end; it.increment(ec)) {
    ++n;
  }
  return ec ? -1 : n;
}

long ResidentKiB(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    long kib = 0;
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, "VmRSS:") &&
        absl::SimpleAtoi(
            absl::StripSuffix(absl::StripAsciiWhitespace(rest), " kB"), &kib)) {
      return kib;
    }
  }
  return -1;
}

int WaitForOpenFilesAtMost(pid_t pid, int most, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  int n = OpenFiles(pid);
  while (n > most && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
    n = OpenFiles(pid);
  }
  return n;
}

absl::StatusOr<int> JsonInt(const std::string& line, const std::string& key) {
  nlohmann::json parsed =
      nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.contains(key) ||
      !parsed[key].is_number_integer()) {
    return absl::InternalError(absl::StrCat("no \"", key, "\" in: ", line));
  }
  return parsed[key].get<int>();
}

absl::StatusOr<std::unique_ptr<ChildProcess>> StartOrigin(
    int* port, const std::vector<std::string>& args,
    const std::map<std::string, std::string>& env) {
  auto origin = ChildProcess::Start(TEST_ORIGIN_BIN, args, env);
  if (!origin.ok()) return origin.status();
  auto line = (*origin)->WaitForLine("", kStartTimeout);  // the port
  if (!line.ok()) return line.status();
  if (!absl::SimpleAtoi(*line, port)) {
    return absl::InternalError(absl::StrCat("test-origin said: ", *line));
  }
  return origin;
}

absl::StatusOr<ServerProcess> StartServer(
    const std::string& accept_path, std::map<std::string, std::string> env) {
  env.emplace("ACCEPT", accept_path);
  env.emplace("PORT", "0");
  env.emplace("BROKER_TUNNEL_PORT", "0");
  env.emplace("LOG_LEVEL", "info");
  auto process = ChildProcess::Start(BROKER_SERVER_BIN, {}, env);
  if (!process.ok()) return process.status();
  auto line = (*process)->WaitForLine("broker-server listening", kStartTimeout);
  if (!line.ok()) return line.status();
  ServerProcess server;
  auto http = JsonInt(*line, "port");
  auto tunnel = JsonInt(*line, "tunnel_port");
  if (!http.ok()) return http.status();
  if (!tunnel.ok()) return tunnel.status();
  server.http_port = *http;
  server.tunnel_port = *tunnel;
  server.process = *std::move(process);
  return server;
}

absl::StatusOr<TunnelProcess> StartTunnel(
    const std::string& token, int server_tunnel_port,
    const std::string& accept_path, ChildProcess& server,
    std::map<std::string, std::string> env) {
  env.emplace("BROKER_TOKEN", token);
  env.emplace("BROKER_SERVER_URL",
              absl::StrCat("http://127.0.0.1:", server_tunnel_port));
  env.emplace("ACCEPT", accept_path);
  env.emplace("PORT", "0");
  env.emplace("LOG_LEVEL", "info");
  auto process = ChildProcess::Start(BROKER_TUNNEL_BIN, {}, env);
  if (!process.ok()) return process.status();
  // The worker may read the server's Welcome (its /healthcheck then reports
  // the tunnel) before main() prints the port: wait for both lines at once.
  auto lines = (*process)->WaitForLines(
      {"broker-tunnel listening", "tunnel connected to the broker server"},
      kStartTimeout);
  if (!lines.ok()) return lines.status();
  TunnelProcess tunnel;
  auto port = JsonInt(lines->front(), "port");
  if (!port.ok()) return port.status();
  tunnel.http_port = *port;
  tunnel.egress_port = JsonInt(lines->front(), "egress_port").value_or(0);
  // The server registered the worker too.
  auto connected = server.WaitForLine("broker client connected", kStartTimeout);
  if (!connected.ok()) return connected.status();
  tunnel.process = *std::move(process);
  return tunnel;
}

}  // namespace broker::testing
