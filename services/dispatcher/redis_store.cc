#include "services/dispatcher/redis_store.h"

#include "common/status.h"
#include "services/dispatcher/placement.h"

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include <hiredis/hiredis.h>
#include <sys/time.h>

namespace broker::dispatcher {
namespace {

// Shared by every script. ARGV[1] is always the key prefix.
constexpr absl::string_view kPrelude = R"lua(
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(s, now)
  local score = redis.call('ZSCORE', P .. 'servers', s)
  return score ~= false and tonumber(score) > now
end
local function tunnel_of(s)
  local t = redis.call('HGET', P .. 'server:' .. s, 'tunnel_url')
  if not t then return '' end
  return t
end
local function drop_lease(h, c)
  local s = redis.call('HGET', P .. 'alloc:' .. h, c)
  if s then redis.call('ZREM', P .. 'load:' .. s, h .. '/' .. c) end
  redis.call('HDEL', P .. 'alloc:' .. h, c)
  redis.call('ZREM', P .. 'token:' .. h, c)
end
local function set_lease(h, c, s, now, ttl)
  local old = redis.call('HGET', P .. 'alloc:' .. h, c)
  if old and old ~= s then
    redis.call('ZREM', P .. 'load:' .. old, h .. '/' .. c)
  end
  redis.call('HSET', P .. 'alloc:' .. h, c, s)
  redis.call('ZADD', P .. 'token:' .. h, now + ttl, c)
  redis.call('ZADD', P .. 'load:' .. s, now + ttl, h .. '/' .. c)
  redis.call('PEXPIRE', P .. 'alloc:' .. h, ttl)
  redis.call('PEXPIRE', P .. 'token:' .. h, ttl)
  redis.call('PEXPIRE', P .. 'load:' .. s, ttl)
end
local function purge_token(h, now)
  local expired = redis.call('ZRANGEBYSCORE', P .. 'token:' .. h, '-inf', now)
  for _, c in ipairs(expired) do drop_lease(h, c) end
end
-- Members are "<64 hex chars>/<client id>".
local function purge_server(s, now)
  local expired = redis.call('ZRANGEBYSCORE', P .. 'load:' .. s, '-inf', now)
  for _, m in ipairs(expired) do
    local h, c = string.sub(m, 1, 64), string.sub(m, 66)
    if redis.call('HGET', P .. 'alloc:' .. h, c) == s then
      drop_lease(h, c)
    else
      redis.call('ZREM', P .. 'load:' .. s, m)
    end
  end
end
)lua";

// ARGV: prefix. The live server ids.
constexpr absl::string_view kLiveServers = R"lua(
return redis.call('ZRANGEBYSCORE', P .. 'servers', '(' .. now_ms(), '+inf')
)lua";

// ARGV: prefix, hash, client, cap, lease ttl ms, slack permille, ranked ids...
// {'existing'|'new', server, tunnel_url} | {'full', count} | {'noservers'}
constexpr absl::string_view kAllocate = R"lua(
local h, c = ARGV[2], ARGV[3]
local cap, ttl, slack = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
purge_token(h, now)
local existing = redis.call('HGET', P .. 'alloc:' .. h, c)
if existing and live(existing, now) then
  set_lease(h, c, existing, now, ttl)
  return {'existing', existing, tunnel_of(existing)}
end
local others = redis.call('ZCARD', P .. 'token:' .. h)
if existing then others = others - 1 end
if others >= cap then return {'full', tostring(others)} end
local ids, loads, mine = {}, {}, {}
for i = 7, #ARGV do
  local s = ARGV[i]
  if live(s, now) then
    purge_server(s, now)
    local n = #ids + 1
    ids[n] = s
    loads[n] = redis.call('ZCARD', P .. 'load:' .. s)
    mine[n] = 0
  end
end
local n = #ids
if n == 0 then return {'noservers'} end
local held = redis.call('HGETALL', P .. 'alloc:' .. h)
for i = 1, #held, 2 do
  if held[i] ~= c then
    for j = 1, n do
      if ids[j] == held[i + 1] then mine[j] = mine[j] + 1 end
    end
  end
end
local total = 0
for j = 1, n do total = total + loads[j] end
-- Placement::LoadBound, in exact integer arithmetic on doubles.
local bound = math.floor(((total + 1) * (1000 + slack) + 1000 * n - 1) /
                         (1000 * n))
local pick = nil
for j = 1, n do
  if mine[j] == 0 and loads[j] < bound then pick = j; break end
end
if not pick then
  for j = 1, n do
    if loads[j] < bound and (not pick or mine[j] < mine[pick]) then pick = j end
  end
end
if not pick then return redis.error_reply('no server under the load bound') end
set_lease(h, c, ids[pick], now, ttl)
return {'new', ids[pick], tunnel_of(ids[pick])}
)lua";

// ARGV: prefix, id, health_check_link, tunnel_url, internal_url, server ttl.
// 1 if the server was not registered before.
constexpr absl::string_view kRegister = R"lua(
local id = ARGV[2]
local now = now_ms()
local created = redis.call('ZADD', P .. 'servers', now + tonumber(ARGV[6]), id)
redis.call('DEL', P .. 'server:' .. id)
redis.call('HSET', P .. 'server:' .. id, 'health_check_link', ARGV[3],
           'tunnel_url', ARGV[4], 'internal_url', ARGV[5])
return created
)lua";

// ARGV: prefix, id. The number of live leases freed.
constexpr absl::string_view kRemove = R"lua(
local id = ARGV[2]
local now = now_ms()
redis.call('ZREM', P .. 'servers', id)
redis.call('DEL', P .. 'server:' .. id)
local freed = 0
for _, m in ipairs(redis.call('ZRANGE', P .. 'load:' .. id, 0, -1)) do
  local h, c = string.sub(m, 1, 64), string.sub(m, 66)
  if redis.call('HGET', P .. 'alloc:' .. h, c) == id then
    local expires = redis.call('ZSCORE', P .. 'token:' .. h, c)
    if expires and tonumber(expires) > now then freed = freed + 1 end
    drop_lease(h, c)
  end
end
redis.call('DEL', P .. 'load:' .. id)
return freed
)lua";

// ARGV: prefix, server, hash, client, cap, lease ttl, server ttl.
// {'ok'} | {'full', count}
constexpr absl::string_view kRefresh = R"lua(
local s, h, c = ARGV[2], ARGV[3], ARGV[4]
local cap, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
purge_token(h, now)
redis.call('ZADD', P .. 'servers', now + tonumber(ARGV[7]), s)
if not redis.call('ZSCORE', P .. 'token:' .. h, c) then
  local count = redis.call('ZCARD', P .. 'token:' .. h)
  if count >= cap then return {'full', tostring(count)} end
end
set_lease(h, c, s, now, ttl)
return {'ok'}
)lua";

// ARGV: prefix, server, hash, client, server ttl. 1 if freed.
constexpr absl::string_view kRelease = R"lua(
local s, h, c = ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
purge_token(h, now)
if redis.call('ZSCORE', P .. 'servers', s) then
  redis.call('ZADD', P .. 'servers', now + tonumber(ARGV[5]), s)
end
if redis.call('HGET', P .. 'alloc:' .. h, c) == s then
  drop_lease(h, c)
  return 1
end
return 0
)lua";

// ARGV: prefix, hash. Flat {id, internal_url, tunnel_url, clients, ...}.
constexpr absl::string_view kLookup = R"lua(
local h = ARGV[2]
local now = now_ms()
purge_token(h, now)
local held = redis.call('HGETALL', P .. 'alloc:' .. h)
local counts, order = {}, {}
for i = 1, #held, 2 do
  local s = held[i + 1]
  if not counts[s] then counts[s] = 0; order[#order + 1] = s end
  counts[s] = counts[s] + 1
end
local out = {}
for _, s in ipairs(order) do
  if live(s, now) then
    local info = redis.call('HMGET', P .. 'server:' .. s, 'internal_url',
                            'tunnel_url')
    out[#out + 1] = s
    out[#out + 1] = info[1] or ''
    out[#out + 1] = info[2] or ''
    out[#out + 1] = counts[s]
  end
end
return out
)lua";

// ARGV: prefix. {live servers, live leases on them}.
constexpr absl::string_view kCounts = R"lua(
local now = now_ms()
local servers = redis.call('ZRANGEBYSCORE', P .. 'servers', '(' .. now, '+inf')
local leases = 0
for _, s in ipairs(servers) do
  leases = leases + redis.call('ZCOUNT', P .. 'load:' .. s, '(' .. now, '+inf')
end
return {#servers, leases}
)lua";

// How long calls fail at once after a failed connect.
constexpr absl::Duration kConnectBackoff = absl::Milliseconds(200);
// Idle connections kept for reuse.
constexpr size_t kMaxIdleConnections = 16;

struct ContextDeleter {
  void operator()(redisContext* context) const { redisFree(context); }
};
using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;

struct ReplyDeleter {
  void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

std::string Sha1Hex(absl::string_view text) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  BROKER_CHECK(EVP_Digest(text.data(), text.size(), digest.data(), &length,
                          EVP_sha1(), nullptr) == 1);
  constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xF]);
  }
  return out;
}

struct Script {
  explicit Script(absl::string_view body)
      : text(absl::StrCat(kPrelude, body)), sha(Sha1Hex(text)) {}
  std::string text;
  std::string sha;
};

std::string ReplyString(const redisReply& reply) {
  if (reply.type == REDIS_REPLY_STRING || reply.type == REDIS_REPLY_STATUS ||
      reply.type == REDIS_REPLY_ERROR) {
    return std::string(reply.str, reply.len);
  }
  if (reply.type == REDIS_REPLY_INTEGER) return absl::StrCat(reply.integer);
  return "";
}

// Errors Redis answers while it cannot serve for now.
bool IsTransientError(absl::string_view message) {
  for (absl::string_view prefix : {"LOADING", "BUSY", "MASTERDOWN", "READONLY",
                                   "TRYAGAIN", "CLUSTERDOWN", "OOM"}) {
    if (absl::StartsWith(message, prefix)) return true;
  }
  return false;
}

absl::Status ReplyShapeError(absl::string_view what, const redisReply& reply) {
  return absl::InternalError(absl::StrCat("redis: unexpected reply to ", what,
                                          " (type ", reply.type, ")"));
}

class DefaultRedisStore final : public RedisStore {
 public:
  DefaultRedisStore(StoreOptions options, RedisOptions redis)
      : options_(options),
        redis_(std::move(redis)),
        prefix_(absl::StrCat("{", redis_.key_prefix, "}:")),
        address_(absl::StrCat(redis_.endpoint.host, ":", redis_.endpoint.port)),
        placement_(PlacementOptions{options.max_clients_per_token,
                                    options.load_slack_permille}),
        live_servers_(kLiveServers),
        allocate_(kAllocate),
        register_(kRegister),
        remove_(kRemove),
        refresh_(kRefresh),
        release_(kRelease),
        lookup_(kLookup),
        counts_(kCounts) {}

  absl::StatusOr<AllocationResult> Allocate(
      const std::string& token_hash, const std::string& client_id) override {
    BROKER_ASSIGN_OR_RETURN(ReplyPtr live, Run(live_servers_, {}));
    if (live->type != REDIS_REPLY_ARRAY) {
      return ReplyShapeError("live servers", *live);
    }
    std::vector<std::string> ids;
    ids.reserve(live->elements);
    for (size_t i = 0; i < live->elements; ++i) {
      ids.push_back(ReplyString(*live->element[i]));
    }
    std::vector<std::string> args = {
        token_hash, client_id, absl::StrCat(options_.max_clients_per_token),
        absl::StrCat(absl::ToInt64Milliseconds(options_.lease_ttl)),
        absl::StrCat(options_.load_slack_permille)};
    for (std::string& id : placement_.Rank(token_hash, ids)) {
      args.push_back(std::move(id));
    }
    BROKER_ASSIGN_OR_RETURN(ReplyPtr reply, Run(allocate_, args));
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
      return ReplyShapeError("allocate", *reply);
    }
    const std::string outcome = ReplyString(*reply->element[0]);
    if (outcome == "full" && reply->elements == 2) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the token already has ", ReplyString(*reply->element[1]),
          " of at most ", options_.max_clients_per_token, " clients"));
    }
    if (outcome == "noservers") {
      return absl::FailedPreconditionError("no broker server is registered");
    }
    if ((outcome != "new" && outcome != "existing") || reply->elements != 3) {
      return ReplyShapeError("allocate", *reply);
    }
    return AllocationResult{ReplyString(*reply->element[1]),
                            ReplyString(*reply->element[2]),
                            outcome == "existing"};
  }

  absl::StatusOr<bool> RegisterServer(
      const ServerRegistration& registration) override {
    BROKER_ASSIGN_OR_RETURN(
        ReplyPtr reply,
        Run(register_,
            {registration.id, registration.health_check_link,
             registration.tunnel_url, registration.internal_url,
             absl::StrCat(absl::ToInt64Milliseconds(options_.server_ttl))}));
    if (reply->type != REDIS_REPLY_INTEGER) {
      return ReplyShapeError("register", *reply);
    }
    return reply->integer == 1;
  }

  absl::StatusOr<std::int64_t> RemoveServer(
      const std::string& server_id) override {
    BROKER_ASSIGN_OR_RETURN(ReplyPtr reply, Run(remove_, {server_id}));
    if (reply->type != REDIS_REPLY_INTEGER) {
      return ReplyShapeError("remove", *reply);
    }
    return static_cast<std::int64_t>(reply->integer);
  }

  absl::Status RefreshClient(const std::string& server_id,
                             const std::string& token_hash,
                             const std::string& client_id) override {
    BROKER_ASSIGN_OR_RETURN(
        ReplyPtr reply,
        Run(refresh_,
            {server_id, token_hash, client_id,
             absl::StrCat(options_.max_clients_per_token),
             absl::StrCat(absl::ToInt64Milliseconds(options_.lease_ttl)),
             absl::StrCat(absl::ToInt64Milliseconds(options_.server_ttl))}));
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
      return ReplyShapeError("refresh", *reply);
    }
    const std::string outcome = ReplyString(*reply->element[0]);
    if (outcome == "ok") return absl::OkStatus();
    if (outcome == "full" && reply->elements == 2) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the token already has ", ReplyString(*reply->element[1]),
          " of at most ", options_.max_clients_per_token, " clients"));
    }
    return ReplyShapeError("refresh", *reply);
  }

  absl::StatusOr<bool> ReleaseClient(const std::string& server_id,
                                     const std::string& token_hash,
                                     const std::string& client_id) override {
    BROKER_ASSIGN_OR_RETURN(
        ReplyPtr reply,
        Run(release_,
            {server_id, token_hash, client_id,
             absl::StrCat(absl::ToInt64Milliseconds(options_.server_ttl))}));
    if (reply->type != REDIS_REPLY_INTEGER) {
      return ReplyShapeError("release", *reply);
    }
    return reply->integer == 1;
  }

  absl::StatusOr<std::vector<TokenServer>> ServersForToken(
      const std::string& token_hash) override {
    BROKER_ASSIGN_OR_RETURN(ReplyPtr reply, Run(lookup_, {token_hash}));
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 4 != 0) {
      return ReplyShapeError("lookup", *reply);
    }
    std::vector<TokenServer> out;
    for (size_t i = 0; i < reply->elements; i += 4) {
      const redisReply& count = *reply->element[i + 3];
      if (count.type != REDIS_REPLY_INTEGER) {
        return ReplyShapeError("lookup", count);
      }
      out.push_back({ReplyString(*reply->element[i]),
                     ReplyString(*reply->element[i + 1]),
                     ReplyString(*reply->element[i + 2]),
                     static_cast<std::int64_t>(count.integer)});
    }
    std::sort(
        out.begin(), out.end(),
        [](const TokenServer& a, const TokenServer& b) { return a.id < b.id; });
    return out;
  }

  absl::StatusOr<StoreCounts> Counts() override {
    BROKER_ASSIGN_OR_RETURN(ReplyPtr reply, Run(counts_, {}));
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_INTEGER) {
      return ReplyShapeError("counts", *reply);
    }
    return StoreCounts{static_cast<std::int64_t>(reply->element[0]->integer),
                       static_cast<std::int64_t>(reply->element[1]->integer)};
  }

  absl::Status Ping() override {
    BROKER_ASSIGN_OR_RETURN(ReplyPtr reply,
                            WithConnection([this](redisContext& context) {
                              return Command(context, {"PING"});
                            }));
    if (reply->type == REDIS_REPLY_ERROR) {
      return absl::UnavailableError(
          absl::StrCat("redis ", address_, ": ", ReplyString(*reply)));
    }
    return absl::OkStatus();
  }

 private:
  // One command on `context`. An I/O error (the context is then unusable:
  // the caller must not Release it) is Unavailable; an error reply is
  // returned as a reply.
  absl::StatusOr<ReplyPtr> Command(redisContext& context,
                                   const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lengths;
    argv.reserve(args.size());
    lengths.reserve(args.size());
    for (const std::string& arg : args) {
      argv.push_back(arg.data());
      lengths.push_back(arg.size());
    }
    auto* reply = static_cast<redisReply*>(redisCommandArgv(
        &context, static_cast<int>(argv.size()), argv.data(), lengths.data()));
    if (reply == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("redis ", address_, ": ",
                       context.err != 0 ? context.errstr : "no reply"));
    }
    return ReplyPtr(reply);
  }

  // Runs `op` on a pooled connection (`op` returns an error only for an
  // I/O error, after which the connection is dropped). A connection taken
  // from the pool may have died while idle (Redis restarted): when such a
  // call fails fast, it is tried once more on a new connection. Every
  // operation here is idempotent, so a command that ran but lost its reply
  // is safe to repeat.
  absl::StatusOr<ReplyPtr> WithConnection(
      absl::FunctionRef<absl::StatusOr<ReplyPtr>(redisContext&)> op) {
    for (int attempt = 0;; ++attempt) {
      bool reused = false;
      BROKER_ASSIGN_OR_RETURN(ContextPtr context, Acquire(&reused));
      const absl::Time start = absl::Now();
      absl::StatusOr<ReplyPtr> reply = op(*context);
      if (reply.ok()) {
        Release(std::move(context));
        return reply;
      }
      const bool fast = absl::Now() - start < redis_.timeout / 2;
      if (!(reused && fast && attempt == 0)) return reply.status();
    }
  }

  // Runs `script` with the prefix and `args` as ARGV (no KEYS: every key is
  // derived from the prefix, all in one hash slot).
  absl::StatusOr<ReplyPtr> Run(const Script& script,
                               const std::vector<std::string>& args) {
    std::vector<std::string> command = {"EVALSHA", script.sha, "0", prefix_};
    command.insert(command.end(), args.begin(), args.end());
    BROKER_ASSIGN_OR_RETURN(
        ReplyPtr reply,
        WithConnection([&](redisContext& context) -> absl::StatusOr<ReplyPtr> {
          BROKER_ASSIGN_OR_RETURN(ReplyPtr first, Command(context, command));
          if (first->type != REDIS_REPLY_ERROR ||
              !absl::StartsWith(ReplyString(*first), "NOSCRIPT")) {
            return first;
          }
          // Redis restarted or its script cache was flushed: send the
          // text, which caches it again.
          std::vector<std::string> eval = command;
          eval[0] = "EVAL";
          eval[1] = script.text;
          return Command(context, eval);
        }));
    if (reply->type == REDIS_REPLY_ERROR) {
      const std::string message = ReplyString(*reply);
      if (IsTransientError(message)) {
        return absl::UnavailableError(
            absl::StrCat("redis ", address_, ": ", message));
      }
      return absl::InternalError(absl::StrCat("redis script: ", message));
    }
    return reply;
  }

  // A pooled connection, or a new one. While Redis is known to be down (the
  // last connect failed), only one caller at a time tries to connect, and
  // not more often than kConnectBackoff: the others fail at once instead of
  // each waiting out the connect timeout.
  absl::StatusOr<ContextPtr> Acquire(bool* reused) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (!idle_.empty()) {
        ContextPtr context = std::move(idle_.back());
        idle_.pop_back();
        *reused = true;
        return context;
      }
      if (down_ && (probing_ || absl::Now() < connect_retry_after_)) {
        return absl::UnavailableError(last_connect_error_);
      }
      if (down_) probing_ = true;
    }
    *reused = false;
    absl::StatusOr<ContextPtr> context = Connect();
    absl::MutexLock lock(&mu_);
    probing_ = false;
    down_ = !context.ok();
    if (down_) {
      connect_retry_after_ = absl::Now() + kConnectBackoff;
      last_connect_error_ = std::string(context.status().message());
    }
    return context;
  }

  void Release(ContextPtr context) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (idle_.size() < kMaxIdleConnections) idle_.push_back(std::move(context));
  }

  absl::StatusOr<ContextPtr> Connect() {
    const timeval timeout = absl::ToTimeval(redis_.timeout);
    ContextPtr context(redisConnectWithTimeout(redis_.endpoint.host.c_str(),
                                               redis_.endpoint.port, timeout));
    if (context == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("redis ", address_, ": cannot allocate a context"));
    }
    if (context->err != 0) {
      return absl::UnavailableError(
          absl::StrCat("redis ", address_, ": ", context->errstr));
    }
    if (redisSetTimeout(context.get(), timeout) != REDIS_OK) {
      return absl::UnavailableError(
          absl::StrCat("redis ", address_, ": cannot set the timeout"));
    }
    // Best effort: notices a peer that vanished without a FIN.
    (void)redisEnableKeepAlive(context.get());
    if (!redis_.endpoint.password.empty()) {
      std::vector<std::string> auth = {"AUTH"};
      if (!redis_.endpoint.username.empty()) {
        auth.push_back(redis_.endpoint.username);
      }
      auth.push_back(redis_.endpoint.password);
      BROKER_ASSIGN_OR_RETURN(ReplyPtr reply, Command(*context, auth));
      if (reply->type == REDIS_REPLY_ERROR) {
        // The reply names no secret ("WRONGPASS invalid username-password").
        return absl::UnavailableError(
            absl::StrCat("redis ", address_, ": AUTH: ", ReplyString(*reply)));
      }
    }
    if (redis_.endpoint.db != 0) {
      BROKER_ASSIGN_OR_RETURN(
          ReplyPtr reply,
          Command(*context, {"SELECT", absl::StrCat(redis_.endpoint.db)}));
      if (reply->type == REDIS_REPLY_ERROR) {
        return absl::UnavailableError(absl::StrCat(
            "redis ", address_, ": SELECT: ", ReplyString(*reply)));
      }
    }
    return context;
  }

  const StoreOptions options_;
  const RedisOptions redis_;
  const std::string prefix_;
  const std::string address_;  // host:port, for messages
  const Placement placement_;
  const Script live_servers_;
  const Script allocate_;
  const Script register_;
  const Script remove_;
  const Script refresh_;
  const Script release_;
  const Script lookup_;
  const Script counts_;

  absl::Mutex mu_;
  std::vector<ContextPtr> idle_ ABSL_GUARDED_BY(mu_);
  bool down_ ABSL_GUARDED_BY(mu_) = false;     // the last connect failed
  bool probing_ ABSL_GUARDED_BY(mu_) = false;  // a connect runs while down_
  absl::Time connect_retry_after_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::string last_connect_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<RedisEndpoint> ParseRedisUrl(absl::string_view url) {
  constexpr absl::string_view kScheme = "redis://";
  if (absl::StartsWithIgnoreCase(url, "rediss://")) {
    return absl::InvalidArgumentError(
        "rediss:// (TLS) is not supported; use redis:// on a trusted network "
        "or a TLS sidecar");
  }
  if (!absl::StartsWithIgnoreCase(url, kScheme)) {
    return absl::InvalidArgumentError(
        "must look like redis://host[:port][/db]");
  }
  absl::string_view rest = url.substr(kScheme.size());
  RedisEndpoint endpoint;
  if (const size_t at = rest.rfind('@'); at != absl::string_view::npos) {
    absl::string_view userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const size_t colon = userinfo.find(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          "credentials must look like [user]:password@");
    }
    endpoint.username = std::string(userinfo.substr(0, colon));
    endpoint.password = std::string(userinfo.substr(colon + 1));
  }
  absl::string_view authority = rest.substr(0, rest.find('/'));
  absl::string_view path = rest.substr(authority.size());
  if (!path.empty() && path != "/") {
    if (!absl::SimpleAtoi(path.substr(1), &endpoint.db) || endpoint.db < 0) {
      return absl::InvalidArgumentError(
          "the database after the last / must be a number >= 0");
    }
  }
  absl::string_view host = authority;
  if (absl::StartsWith(authority, "[")) {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError("unclosed [ in the host");
    }
    host = authority.substr(1, close - 1);
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (!absl::StartsWith(after, ":") ||
          !absl::SimpleAtoi(after.substr(1), &endpoint.port)) {
        return absl::InvalidArgumentError("bad port");
      }
    }
  } else if (const size_t colon = authority.rfind(':');
             colon != absl::string_view::npos) {
    host = authority.substr(0, colon);
    if (!absl::SimpleAtoi(authority.substr(colon + 1), &endpoint.port)) {
      return absl::InvalidArgumentError("bad port");
    }
  }
  if (host.empty()) return absl::InvalidArgumentError("no host");
  if (endpoint.port < 1 || endpoint.port > 65535) {
    return absl::InvalidArgumentError("the port must be 1..65535");
  }
  endpoint.host = std::string(host);
  return endpoint;
}

absl::StatusOr<std::unique_ptr<RedisStore>> RedisStore::Create(
    StoreOptions options, RedisOptions redis) {
  if (redis.endpoint.host.empty()) {
    return absl::InvalidArgumentError("redis: no host");
  }
  if (redis.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("redis: the timeout must be positive");
  }
  return std::unique_ptr<RedisStore>(
      new DefaultRedisStore(options, std::move(redis)));
}

}  // namespace broker::dispatcher
