#include "services/server/dispatcher_link.h"

#include "common/http/buffered_call.h"
#include "common/logging.h"
#include "common/uuid.h"
#include "services/server/server_metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "nlohmann/json.hpp"

namespace broker::server {
namespace {

namespace http = common::http;
using nlohmann::json;

http::Headers JsonApiHeaders() {
  return {{"Content-Type", "application/vnd.api+json"},
          {"Snyk-Request-Id", common::NewUuid()}};
}

}  // namespace

std::string ServerIdFromHostname(const std::string& hostname) {
  if (hostname.empty()) return "0";
  const std::size_t dash = hostname.rfind('-');
  return dash == std::string::npos ? hostname : hostname.substr(dash + 1);
}

absl::StatusOr<std::unique_ptr<DispatcherLink>> DispatcherLink::Create(
    boost::asio::io_context& io, DispatcherConfig config,
    ServerMetrics* metrics) {
  if (config.url.empty()) return nullptr;
  http::ClientOptions options;
  options.ca_file = config.ca_file;
  auto client = http::Client::Create(io, options);
  if (!client.ok()) return client.status();
  return std::unique_ptr<DispatcherLink>(
      new DispatcherLink(io, std::move(config), *std::move(client), metrics));
}

DispatcherLink::DispatcherLink(boost::asio::io_context& io,
                               DispatcherConfig config,
                               std::unique_ptr<http::Client> client,
                               ServerMetrics* metrics)
    : config_(std::move(config)),
      client_(std::move(client)),
      metrics_(metrics),
      timer_(io) {}

// cancel() throws only on a broken reactor, which is fatal anyway.
// NOLINTNEXTLINE(bugprone-exception-escape)
DispatcherLink::~DispatcherLink() {
  absl::MutexLock lock(&mu_);
  stopped_ = true;
  timer_.cancel();
}

std::string DispatcherLink::Url(const std::string& path,
                                const std::string& query) const {
  return absl::StrCat(config_.url, path, "?", query, query.empty() ? "" : "&",
                      "version=", config_.version);
}

void DispatcherLink::Start() {
  BROKER_LOG(kServer, kInfo,
             {{"dispatcher", config_.url},
              {"server_id", config_.server_id},
              {"tunnel_url", config_.tunnel_url},
              {"internal_url", config_.internal_url}},
             "registering with the broker dispatcher");
  Register();
  ArmRefresh();
}

void DispatcherLink::Register() {
  json attributes = {{"health_check_link", config_.health_check_link}};
  if (!config_.tunnel_url.empty())
    attributes["tunnel_url"] = config_.tunnel_url;
  if (!config_.internal_url.empty()) {
    attributes["internal_url"] = config_.internal_url;
  }
  Call("POST", Url(absl::StrCat("/internal/brokerservers/", config_.server_id)),
       json{{"data", {{"attributes", attributes}}}}.dump(), "server-starting");
}

void DispatcherLink::ArmRefresh() {
  absl::MutexLock lock(&mu_);
  if (stopped_) return;
  timer_.expires_after(absl::ToChronoMilliseconds(config_.refresh));
  timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec) Refresh();
  });
}

// The registration and every lease are refreshed together: a restarted
// in-memory dispatcher relearns all of it within one period.
void DispatcherLink::Refresh() {
  std::vector<std::pair<std::string, std::string>> clients;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    clients.assign(clients_.begin(), clients_.end());
  }
  Register();
  for (const auto& [hash, client_id] : clients) {
    SendClientEvent(hash, client_id, "client-pinged");
  }
  ArmRefresh();
}

void DispatcherLink::ClientConnected(const std::string& token_hash,
                                     const std::string& client_id) {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    clients_.insert({token_hash, client_id});
  }
  SendClientEvent(token_hash, client_id, "client-connected");
}

void DispatcherLink::ClientDisconnected(const std::string& token_hash,
                                        const std::string& client_id) {
  {
    absl::MutexLock lock(&mu_);
    clients_.erase({token_hash, client_id});
  }
  Call("DELETE",
       Url(absl::StrCat("/internal/brokerservers/", config_.server_id,
                        "/connections/", token_hash),
           absl::StrCat("broker_client_id=", client_id)),
       "", "client-disconnected");
}

void DispatcherLink::SendClientEvent(const std::string& token_hash,
                                     const std::string& client_id,
                                     const std::string& request_type) {
  json attributes = {{"health_check_link", config_.health_check_link}};
  Call("POST",
       Url(absl::StrCat("/internal/brokerservers/", config_.server_id,
                        "/connections/", token_hash),
           absl::StrCat("broker_client_id=", client_id,
                        "&request_type=", request_type)),
       json{{"data", {{"attributes", attributes}}}}.dump(), request_type);
}

void DispatcherLink::Call(std::string method, std::string url, std::string body,
                          std::string what) {
  http::BufferedRequest request;
  request.method = std::move(method);
  request.url = std::move(url);
  request.headers = JsonApiHeaders();
  request.body = std::move(body);
  request.deadline = absl::Now() + config_.call_timeout;
  http::SendBuffered(
      *client_, std::move(request),
      [what = std::move(what),
       metrics = metrics_](absl::StatusOr<http::BufferedResponse> answer) {
        const bool ok = answer.ok() && answer->status < 300;
        if (metrics != nullptr) metrics->CountDispatcherWrite(ok);
        if (ok) return;
        BROKER_LOG(kServer, kWarn,
                   {{"event", what},
                    {"status", answer.ok() ? answer->status : 0},
                    {"error",
                     answer.ok() ? answer->body : answer.status().ToString()}},
                   "received unexpected status code communicating with "
                   "Dispatcher");
      });
}

void DispatcherLink::Stop(absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    timer_.cancel();
  }
  auto done = std::make_shared<absl::Notification>();
  http::BufferedRequest request;
  request.method = "DELETE";
  request.url =
      Url(absl::StrCat("/internal/brokerservers/", config_.server_id));
  request.headers = JsonApiHeaders();
  request.deadline = std::min(deadline, absl::Now() + config_.call_timeout);
  http::SendBuffered(
      *client_, std::move(request),
      [done,
       metrics = metrics_](absl::StatusOr<http::BufferedResponse> answer) {
        const bool ok = answer.ok() && answer->status < 300;
        if (metrics != nullptr) {
          metrics->CountDispatcherWrite(ok);
        }
        if (!ok) {
          BROKER_LOG(kServer, kWarn, {{"event", "server-stopping"}},
                     "could not deregister from the broker "
                     "dispatcher");
        }
        done->Notify();
      });
  done->WaitForNotificationWithDeadline(deadline);
}

void DispatcherLink::LookupPeers(const std::string& token_hash,
                                 LookupDone done) {
  {
    absl::MutexLock lock(&cache_->mu);
    auto it = cache_->lookups.find(token_hash);
    if (it != cache_->lookups.end() &&
        absl::Now() - it->second.at < config_.lookup_cache) {
      std::vector<PeerServer> peers = it->second.peers;
      std::move(done)(std::move(peers));
      return;
    }
  }
  http::BufferedRequest request;
  request.url =
      Url(absl::StrCat("/internal/tokens/", token_hash, "/brokerservers"));
  request.headers = JsonApiHeaders();
  request.deadline = absl::Now() + config_.call_timeout;
  http::SendBuffered(
      *client_, std::move(request),
      [cache = cache_, self_id = config_.server_id, token_hash,
       done = std::move(done)](
          absl::StatusOr<http::BufferedResponse> answer) mutable {
        if (!answer.ok()) {
          std::move(done)(answer.status());
          return;
        }
        if (answer->status != 200) {
          std::move(done)(absl::UnavailableError(absl::StrCat(
              "the dispatcher answered the lookup with ", answer->status)));
          return;
        }
        json body =
            json::parse(answer->body, nullptr, /*allow_exceptions=*/false);
        if (!body.is_object() || !body.contains("data") ||
            !body["data"].is_array()) {
          std::move(done)(absl::UnavailableError(
              "the dispatcher's lookup answer is not a JSON:API list"));
          return;
        }
        std::vector<PeerServer> peers;
        for (const json& server : body["data"]) {
          if (!server.is_object()) continue;
          PeerServer peer;
          if (server.contains("id") && server["id"].is_string()) {
            peer.server_id = server["id"].get<std::string>();
          }
          const json& attributes = server.value("attributes", json::object());
          if (attributes.is_object() && attributes.contains("internal_url") &&
              attributes["internal_url"].is_string()) {
            peer.internal_url = attributes["internal_url"].get<std::string>();
          }
          if (peer.server_id == self_id || peer.internal_url.empty()) {
            continue;  // never to ourselves: forwarding does not chain
          }
          peers.push_back(std::move(peer));
        }
        {
          absl::MutexLock lock(&cache->mu);
          cache->lookups[token_hash] = CachedLookup{absl::Now(), peers};
        }
        std::move(done)(std::move(peers));
      });
}

}  // namespace broker::server
