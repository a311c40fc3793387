// The dispatcher's placement figures, through the real InMemoryStore (on a
// clock that does not move, so no lease expires): 10,000 tokens x 4
// clients allocated in sequence on 8 servers, then the same sequence from
// scratch on 9 servers, compared allocation by allocation.
//
//   placement_bench [--tokens=N] [--clients=N] [--servers=N]
//
// Prints the figures and checks them against the targets: max/mean server
// load <= 1.05, at most 1/(servers+1) + 2% of allocations moved, every
// token's clients on distinct servers. Exits 1 when a target is missed.

#include "common/clock.h"
#include "common/token.h"
#include "services/dispatcher/in_memory_store.h"
#include "services/dispatcher/placement.h"

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace {

using broker::dispatcher::InMemoryStore;
using broker::dispatcher::Placement;
using broker::dispatcher::PlacementCandidate;
using broker::dispatcher::PlacementOptions;
using broker::dispatcher::ServerRegistration;
using broker::dispatcher::StoreOptions;

struct Run {
  // [token][client] -> server id
  std::vector<std::vector<std::string>> placed;
  std::map<std::string, std::int64_t> load;
  absl::Duration elapsed;
};

std::string ClientId(int token, int client) {
  return absl::StrFormat("00000000-0000-4000-8000-%06d%06d", token, client);
}

std::vector<std::string> ServerIds(int n) {
  std::vector<std::string> ids;
  ids.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) ids.push_back(absl::StrCat(i));
  return ids;
}

// The sequence through the store, as the dispatcher serves it.
Run PlaceWithStore(const std::vector<std::string>& hashes, int clients,
                   const std::vector<std::string>& servers) {
  broker::common::ManualClock clock(absl::FromUnixSeconds(1700000000));
  StoreOptions options;
  options.max_clients_per_token = clients;
  InMemoryStore store(options, clock);
  for (const std::string& id : servers) {
    ServerRegistration registration;
    registration.id = id;
    if (!store.RegisterServer(registration).ok()) std::abort();
  }
  Run run;
  const absl::Time start = absl::Now();
  for (size_t t = 0; t < hashes.size(); ++t) {
    std::vector<std::string>& row = run.placed.emplace_back();
    for (int c = 0; c < clients; ++c) {
      auto result = store.Allocate(hashes[t], ClientId(static_cast<int>(t), c));
      if (!result.ok()) {
        std::fprintf(stderr, "allocation failed: %s\n",
                     result.status().ToString().c_str());
        std::exit(2);
      }
      row.push_back(result->server_id);
      ++run.load[result->server_id];
    }
  }
  run.elapsed = absl::Now() - start;
  return run;
}

// For comparison: the textbook ranking (descending rendezvous weight, the
// k-th client on the k-th server), with the same bound rule.
Run PlaceTopK(const std::vector<std::string>& hashes, int clients,
              const std::vector<std::string>& servers) {
  Placement placement(PlacementOptions{clients, 50});
  absl::flat_hash_map<std::string, std::int64_t> load;
  Run run;
  for (const std::string& hash : hashes) {
    std::vector<std::string> ranked = servers;
    std::sort(ranked.begin(), ranked.end(),
              [&](const std::string& a, const std::string& b) {
                return Placement::Weight(hash, a) > Placement::Weight(hash, b);
              });
    absl::flat_hash_map<std::string, std::int64_t> mine;
    std::vector<std::string>& row = run.placed.emplace_back();
    for (int c = 0; c < clients; ++c) {
      std::vector<PlacementCandidate> candidates;
      candidates.reserve(ranked.size());
      for (const std::string& id : ranked) {
        candidates.push_back({id, load[id], mine[id]});
      }
      const std::string& chosen = ranked[placement.Choose(candidates)];
      ++load[chosen];
      ++mine[chosen];
      row.push_back(chosen);
    }
  }
  return run;
}

double MaxOverMean(const Run& run, int servers, double allocations) {
  std::int64_t max = 0;
  for (const auto& [id, n] : run.load) max = std::max(max, n);
  return static_cast<double>(max) / (allocations / servers);
}

double MinOverMean(const Run& run, int servers, double allocations) {
  std::int64_t min = -1;
  for (const std::string& id : ServerIds(servers)) {
    auto it = run.load.find(id);
    const std::int64_t n = it == run.load.end() ? 0 : it->second;
    if (min < 0 || n < min) min = n;
  }
  return static_cast<double>(min) / (allocations / servers);
}

double MovedFraction(const Run& a, const Run& b) {
  std::int64_t moved = 0;
  std::int64_t total = 0;
  for (size_t t = 0; t < a.placed.size(); ++t) {
    for (size_t c = 0; c < a.placed[t].size(); ++c) {
      moved += a.placed[t][c] != b.placed[t][c];
      ++total;
    }
  }
  return static_cast<double>(moved) / static_cast<double>(total);
}

double DistinctFraction(const Run& run) {
  std::int64_t distinct = 0;
  for (const auto& row : run.placed) {
    absl::flat_hash_set<std::string> used(row.begin(), row.end());
    distinct += used.size() == row.size();
  }
  return static_cast<double>(distinct) / static_cast<double>(run.placed.size());
}

bool Flag(absl::string_view arg, absl::string_view name, int* value) {
  const std::string prefix = absl::StrCat("--", name, "=");
  if (!absl::StartsWith(arg, prefix)) return false;
  if (!absl::SimpleAtoi(arg.substr(prefix.size()), value) || *value < 1) {
    std::fprintf(stderr, "bad %s\n", std::string(arg).c_str());
    std::exit(2);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int tokens = 10000;
  int clients = 4;
  int servers = 8;
  for (int i = 1; i < argc; ++i) {
    if (!Flag(argv[i], "tokens", &tokens) &&
        !Flag(argv[i], "clients", &clients) &&
        !Flag(argv[i], "servers", &servers)) {
      std::fprintf(stderr,
                   "usage: placement_bench [--tokens=N] [--clients=N] "
                   "[--servers=N]\n");
      return 2;
    }
  }
  std::vector<std::string> hashes;
  hashes.reserve(tokens);
  for (int t = 0; t < tokens; ++t) {
    hashes.push_back(broker::common::HashToken(absl::StrCat("token-", t)));
  }
  const double allocations = static_cast<double>(tokens) * clients;
  const Run before = PlaceWithStore(hashes, clients, ServerIds(servers));
  const Run after = PlaceWithStore(hashes, clients, ServerIds(servers + 1));
  const Run fewer = PlaceWithStore(hashes, clients, ServerIds(servers - 1));

  const double max_mean = MaxOverMean(before, servers, allocations);
  const double max_mean_after = MaxOverMean(after, servers + 1, allocations);
  const double moved = MovedFraction(before, after);
  const double moved_limit = 1.0 / (servers + 1) + 0.02;
  const double distinct = DistinctFraction(before);
  const double distinct_after = DistinctFraction(after);

  std::printf("placement: %d tokens x %d clients = %.0f allocations\n", tokens,
              clients, allocations);
  std::printf(
      "  %d servers: max/mean load %.4f (target <= 1.05), min/mean "
      "%.4f\n",
      servers, max_mean, MinOverMean(before, servers, allocations));
  std::printf("  %d servers: max/mean load %.4f, min/mean %.4f\n", servers + 1,
              max_mean_after, MinOverMean(after, servers + 1, allocations));
  std::printf(
      "  %d -> %d servers (from scratch): %.2f%% of allocations "
      "moved (target <= 1/%d + 2%% = %.2f%%; the new server's share "
      "is %.2f%%)\n",
      servers, servers + 1, 100 * moved, servers + 1, 100 * moved_limit,
      100.0 / (servers + 1));
  std::printf(
      "  %d -> %d servers (from scratch): %.2f%% moved (the removed "
      "server held %.2f%%)\n",
      servers, servers - 1, 100 * MovedFraction(before, fewer),
      100.0 / servers);
  std::printf(
      "  tokens whose %d clients are on %d distinct servers: %.2f%% "
      "(%d servers), %.2f%% (%d servers)\n",
      clients, clients, 100 * distinct, servers, 100 * distinct_after,
      servers + 1);
  const Run top_k_before = PlaceTopK(hashes, clients, ServerIds(servers));
  const Run top_k_after = PlaceTopK(hashes, clients, ServerIds(servers + 1));
  std::printf(
      "  for comparison, the k-th client on the k-th highest weight "
      "would move %.2f%%\n",
      100 * MovedFraction(top_k_before, top_k_after));
  std::printf("  allocation cost: %.2f us each (in-memory store, %d servers)\n",
              absl::ToDoubleMicroseconds(before.elapsed) / allocations,
              servers);

  bool ok = true;
  if (max_mean > 1.05) {
    std::printf("FAIL: max/mean %.4f > 1.05\n", max_mean);
    ok = false;
  }
  if (moved > moved_limit) {
    std::printf("FAIL: moved %.4f > %.4f\n", moved, moved_limit);
    ok = false;
  }
  if (servers >= clients && distinct < 1.0) {
    std::printf("FAIL: some tokens share a server\n");
    ok = false;
  }
  std::printf(ok ? "all targets met\n" : "targets missed\n");
  return ok ? 0 : 1;
}
