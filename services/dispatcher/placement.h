#pragma once

// Where a new broker client of a token goes: rendezvous hashing of (hashed
// token, server id) with bounded load. Pure computation, no I/O and no
// state, so the in-memory store and the Redis store (whose Lua script
// applies Choose()'s rule to the ranking computed here) give the same
// answers for the same inputs, on every replica and after every restart.
//
// Rank(): every server gets a per-token weight, the first 8 bytes of
// SHA-256(hash "\0" server_id). A token has `max_clients_per_token` slots;
// each slot is the server holding one order statistic of those weights:
//   slot 0: the highest weight (the classic rendezvous winner),
//   slot 1: the lowest weight,
//   slot 2, 3: the nearest weights just below / at-or-above 2^63,
//   ... (probes spread evenly over the weight range, two slots per probe),
// walking on (to the next lower / higher weight, wrapping) past a server an
// earlier slot took. The ranking is the slot servers in slot order, then
// every other server by descending weight.
//
// Why not simply "the 2nd, 3rd, 4th highest weight": a new server that
// ranks above them would shift every lower slot down by one, moving up to
// four clients of the token (28% of all allocations measured for 8 -> 9
// servers). Each order statistic above changes only when the new server
// wins it, so adding a server moves about its fair share, 1/n (12.5%
// measured for 8 -> 9 with the load bound; see bench/placement_bench.cc),
// and removing one moves only the clients it held.
//
// Choose(): the first server of the ranking that (a) holds no client of
// this token and (b) is under the load bound
//   ceil((total + 1) / live_servers * (1 + slack)),  slack = 5%,
// where total is the number of live allocations on the candidates; if no
// such server exists (the token has more clients than there are servers,
// or every server it does not use is full), the server under the bound
// that holds the fewest clients of this token, earliest in the ranking.
//
// Thread-safety: immutable; all methods may be called from any thread.

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace broker::dispatcher {

struct PlacementOptions {
  int max_clients_per_token = 4;  // slots per token; >= 1
  // The load bound's slack, in thousandths (50 = 5%).
  int load_slack_permille = 50;
};

// One live server, as Choose() sees it.
struct PlacementCandidate {
  std::string id;
  std::int64_t load = 0;           // live allocations it holds (all tokens)
  std::int64_t token_clients = 0;  // of those, clients of this token
};

class Placement {
 public:
  explicit Placement(PlacementOptions options);

  // The token's per-server weight (exposed for tests and the benchmark).
  static std::uint64_t Weight(absl::string_view token_hash,
                              absl::string_view server_id);

  // `server_ids` (live, distinct, any order) in the token's order; the
  // same set gives the same order whatever the input order.
  std::vector<std::string> Rank(absl::string_view token_hash,
                                absl::Span<const std::string> server_ids) const;

  // ceil((total + 1) * (1000 + slack) / (1000 * live_servers)): the most
  // allocations a server may hold after the next one is placed.
  static std::int64_t LoadBound(std::int64_t total, std::int64_t live_servers,
                                int slack_permille);

  // The index in `ranked` (Rank() order, non-empty) of the server for a new
  // client, by the rule in the file comment.
  std::size_t Choose(absl::Span<const PlacementCandidate> ranked) const;

  const PlacementOptions& options() const { return options_; }

 private:
  PlacementOptions options_;
};

}  // namespace broker::dispatcher
