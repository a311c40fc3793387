#include "services/dispatcher/placement.h"

#include "common/status.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <limits>
#include <utility>

namespace broker::dispatcher {
namespace {

struct Weighted {
  std::uint64_t weight;
  const std::string* id;
};

bool Before(const Weighted& a, const Weighted& b) {
  if (a.weight != b.weight) return a.weight < b.weight;
  return *a.id < *b.id;
}

}  // namespace

Placement::Placement(PlacementOptions options) : options_(options) {
  BROKER_CHECK(options_.max_clients_per_token >= 1);
  BROKER_CHECK(options_.load_slack_permille >= 0);
}

std::uint64_t Placement::Weight(absl::string_view token_hash,
                                absl::string_view server_id) {
  std::string input;
  input.reserve(token_hash.size() + 1 + server_id.size());
  input.append(token_hash.data(), token_hash.size());
  input.push_back('\0');
  input.append(server_id.data(), server_id.size());
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  BROKER_CHECK(EVP_Digest(input.data(), input.size(), digest.data(), &length,
                          EVP_sha256(), nullptr) == 1);
  std::uint64_t weight = 0;
  for (int i = 0; i < 8; ++i) weight = (weight << 8) | digest[i];
  return weight;
}

std::vector<std::string> Placement::Rank(
    absl::string_view token_hash,
    absl::Span<const std::string> server_ids) const {
  std::vector<Weighted> ring;
  ring.reserve(server_ids.size());
  for (const std::string& id : server_ids) {
    ring.push_back({Weight(token_hash, id), &id});
  }
  std::sort(ring.begin(), ring.end(), Before);
  const std::size_t n = ring.size();
  std::vector<bool> taken(n, false);
  std::vector<std::string> ranked;
  ranked.reserve(n);

  const int slots = options_.max_clients_per_token;
  const std::uint64_t probes = (static_cast<std::uint64_t>(slots) + 1) / 2;
  const std::uint64_t step = std::numeric_limits<std::uint64_t>::max() / probes;
  for (int slot = 0; slot < slots && ranked.size() < n; ++slot) {
    const std::uint64_t probe = static_cast<std::uint64_t>(slot / 2) * step;
    // The first server at or above the probe; n when there is none.
    const std::size_t at_or_above = static_cast<std::size_t>(
        std::lower_bound(
            ring.begin(), ring.end(), probe,
            [](const Weighted& w, std::uint64_t p) { return w.weight < p; }) -
        ring.begin());
    std::size_t i = 0;
    if (slot % 2 == 0) {
      // Walk down from just below the probe (probe 0: from the top).
      i = (at_or_above + n - 1) % n;
      while (taken[i]) i = (i + n - 1) % n;
    } else {
      i = at_or_above % n;
      while (taken[i]) i = (i + 1) % n;
    }
    taken[i] = true;
    ranked.push_back(*ring[i].id);
  }
  for (std::size_t i = n; i-- > 0;) {
    if (!taken[i]) ranked.push_back(*ring[i].id);
  }
  return ranked;
}

std::int64_t Placement::LoadBound(std::int64_t total, std::int64_t live_servers,
                                  int slack_permille) {
  BROKER_CHECK(live_servers > 0);
  const std::int64_t numerator = (total + 1) * (1000 + slack_permille);
  const std::int64_t denominator = 1000 * live_servers;
  return (numerator + denominator - 1) / denominator;
}

std::size_t Placement::Choose(
    absl::Span<const PlacementCandidate> ranked) const {
  BROKER_CHECK(!ranked.empty());
  std::int64_t total = 0;
  for (const PlacementCandidate& c : ranked) total += c.load;
  const std::int64_t bound =
      LoadBound(total, static_cast<std::int64_t>(ranked.size()),
                options_.load_slack_permille);
  for (std::size_t i = 0; i < ranked.size(); ++i) {
    if (ranked[i].token_clients == 0 && ranked[i].load < bound) return i;
  }
  std::size_t best = ranked.size();
  for (std::size_t i = 0; i < ranked.size(); ++i) {
    if (ranked[i].load >= bound) continue;
    if (best == ranked.size() ||
        ranked[i].token_clients < ranked[best].token_clients) {
      best = i;
    }
  }
  // The bound exceeds the mean load, so some server is under it.
  BROKER_CHECK(best < ranked.size());
  return best;
}

}  // namespace broker::dispatcher
