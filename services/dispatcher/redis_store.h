#pragma once

// The dispatcher's state in Redis, so that several replicas answer alike.
// Every operation is one Lua script run atomically by Redis (EVALSHA, with
// EVAL when the server lost its script cache, e.g. after a restart), on
// Redis's own clock (TIME), so replicas with skewed clocks still agree on
// which leases are live. The ranking of servers for a token is computed
// here (Placement::Rank) over the live servers read just before; the
// allocation script then, atomically: purges the token's expired leases,
// returns a live existing allocation, checks the cap, and applies
// Placement::Choose()'s rule to the ranked candidates that are still live.
//
// Keys (all under one hash tag, "{<prefix>}:", so a Redis Cluster keeps them
// in one slot):
//   servers          ZSET server id -> live-until (ms)
//   server:<id>      HASH health_check_link, tunnel_url, internal_url
//   token:<hash>     ZSET client id -> lease expiry (ms)
//   alloc:<hash>     HASH client id -> server id
//   load:<id>        ZSET "<hash>/<client id>" -> lease expiry (ms)
// Lease keys get PEXPIRE lease_ttl on every write, so a token nobody calls
// about any more leaves nothing behind.
//
// Connections: blocking hiredis contexts in a small pool, one per calling
// thread at most (callers run on the dispatcher's store threads, never on
// an I/O thread). Connect and every command are bounded by `timeout`; a
// context that failed is dropped and the next call connects again. While
// Redis is down (the last connect failed), one caller at a time tries to
// connect, at most every 200 ms, and the others fail at once instead of
// each waiting out the timeout.
//
// Thread-safety: all methods may be called from any thread.

#include "services/dispatcher/store.h"

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <memory>
#include <string>

namespace broker::dispatcher {

struct RedisEndpoint {
  std::string host;
  int port = 6379;
  int db = 0;
  std::string username;  // Redis 6 ACL user; "" with a password: AUTH pass
  std::string password;  // never logged
};

// Parses redis://[[user]:password@]host[:port][/db]. rediss:// (TLS) is not
// supported by hiredis 0.14 and is refused. Errors never echo a password.
[[nodiscard]] absl::StatusOr<RedisEndpoint> ParseRedisUrl(
    absl::string_view url);

struct RedisOptions {
  RedisEndpoint endpoint;
  absl::Duration timeout = absl::Seconds(1);  // connect, and each command
  std::string key_prefix = "broker-dispatcher";
};

class RedisStore : public Store {
 public:
  // Does not connect: the first call does (and answers Unavailable if
  // Redis is not there yet).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RedisStore>> Create(
      StoreOptions options, RedisOptions redis);
};

}  // namespace broker::dispatcher
