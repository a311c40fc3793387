#include "services/dispatcher/api.h"

#include "common/logging.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

#include <utility>
#include <vector>

namespace broker::dispatcher {
namespace {

using Json = nlohmann::ordered_json;

// How often a continuing store outage is logged again.
constexpr absl::Duration kOutageLogInterval = absl::Seconds(30);
// Longest URL accepted in a registration.
constexpr size_t kMaxUrlBytes = 2048;
constexpr size_t kMaxIdBytes = 253;

std::string Dump(const Json& body) {
  return body.dump(-1, ' ', false, Json::error_handler_t::replace);
}

const Json& JsonApiVersion() {
  static const Json* const kVersion = new Json({{"version", "1.0"}});
  return *kVersion;
}

ApiResponse JsonApiResponse(int status, const Json& body) {
  ApiResponse response;
  response.status = status;
  response.headers.push_back(
      {"content-type", std::string(kJsonApiContentType)});
  response.body = Dump(body);
  return response;
}

ApiResponse NoContent() {
  ApiResponse response;
  response.status = 204;
  return response;
}

ApiResponse MethodNotAllowed(absl::string_view allowed) {
  ApiResponse response =
      ErrorResponse(405, "METHOD_NOT_ALLOWED", "Method not allowed",
                    absl::StrCat("this resource accepts ", allowed));
  response.headers.push_back({"allow", std::string(allowed)});
  return response;
}

ApiResponse BadRequest(absl::string_view code, absl::string_view detail) {
  return ErrorResponse(400, code, "Bad request", detail);
}

ApiResponse TooManyClients(const absl::Status& status) {
  return ErrorResponse(409, "TOO_MANY_CLIENTS",
                       "Too many broker clients for this token",
                       status.message());
}

// The JSON document of a body; an empty body is an empty object.
absl::StatusOr<Json> ParseBodyObject(absl::string_view body) {
  if (absl::StripAsciiWhitespace(body).empty()) return Json::object();
  Json parsed = Json::parse(body.begin(), body.end(), nullptr,
                            /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError("the body is not valid JSON");
  }
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError(
        "the body must be a JSON:API document (an object)");
  }
  return parsed;
}

// body.data.attributes, or an empty object.
Json AttributesOf(const Json& document) {
  auto data = document.find("data");
  if (data == document.end() || !data->is_object()) return Json::object();
  auto attributes = data->find("attributes");
  if (attributes == data->end() || !attributes->is_object()) {
    return Json::object();
  }
  return *attributes;
}

// attributes[name] as a string: "" when absent or null; an error when it
// has another type.
absl::StatusOr<std::string> StringAttribute(const Json& attributes,
                                            absl::string_view name) {
  auto value = attributes.find(std::string(name));
  if (value == attributes.end() || value->is_null()) return std::string();
  if (!value->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data.attributes.", name, " must be a string"));
  }
  return value->get<std::string>();
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::StatusOr<std::string> PercentDecode(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    if (i + 2 >= text.size()) {
      return absl::InvalidArgumentError("a % escape is cut short");
    }
    const int high = HexValue(text[i + 1]);
    const int low = HexValue(text[i + 2]);
    if (high < 0 || low < 0) {
      return absl::InvalidArgumentError("a % escape is not hexadecimal");
    }
    out.push_back(static_cast<char>(high * 16 + low));
    i += 2;
  }
  return out;
}

}  // namespace

ApiResponse ErrorResponse(int status, absl::string_view code,
                          absl::string_view title, absl::string_view detail) {
  Json error = {{"status", absl::StrCat(status)},
                {"code", std::string(code)},
                {"title", std::string(title)},
                {"detail", std::string(detail)}};
  return JsonApiResponse(status, {{"jsonapi", JsonApiVersion()},
                                  {"errors", Json::array({error})}});
}

bool IsTokenHash(absl::string_view text) {
  if (text.size() != 64) return false;
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool IsValidId(absl::string_view text) {
  if (text.empty() || text.size() > kMaxIdBytes) return false;
  for (char c : text) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' &&
        c != '_' && c != '~' && c != '-') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::map<std::string, std::string>> ParseQuery(
    absl::string_view query) {
  std::map<std::string, std::string> out;
  for (absl::string_view part : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    const size_t equals = part.find('=');
    absl::StatusOr<std::string> name = PercentDecode(part.substr(0, equals));
    if (!name.ok()) return name.status();
    std::string value;
    if (equals != absl::string_view::npos) {
      absl::StatusOr<std::string> decoded =
          PercentDecode(part.substr(equals + 1));
      if (!decoded.ok()) return decoded.status();
      value = *std::move(decoded);
    }
    out.emplace(*std::move(name), std::move(value));
  }
  return out;
}

absl::StatusOr<AllocationRequest> ParseAllocationBody(absl::string_view body) {
  absl::StatusOr<Json> document = ParseBodyObject(body);
  if (!document.ok()) return document.status();
  const Json attributes = AttributesOf(*document);
  AllocationRequest request;
  // Lenient, as the Snyk dispatcher must be with old clients: a value of
  // another type is ignored rather than refused.
  if (auto it = attributes.find("deployment_location");
      it != attributes.end() && it->is_string()) {
    request.deployment_location = it->get<std::string>();
  }
  if (auto it = attributes.find("broker_token_first_char");
      it != attributes.end() && it->is_string()) {
    request.broker_token_first_char = it->get<std::string>();
  }
  return request;
}

absl::StatusOr<ServerRegistration> ParseRegistrationBody(
    absl::string_view server_id, absl::string_view body) {
  absl::StatusOr<Json> document = ParseBodyObject(body);
  if (!document.ok()) return document.status();
  const Json attributes = AttributesOf(*document);
  ServerRegistration registration;
  registration.id = std::string(server_id);
  std::pair<const char*, std::string*> fields[] = {
      {"health_check_link", &registration.health_check_link},
      {"tunnel_url", &registration.tunnel_url},
      {"internal_url", &registration.internal_url}};
  for (auto& [name, out] : fields) {
    absl::StatusOr<std::string> value = StringAttribute(attributes, name);
    if (!value.ok()) return value.status();
    if (value->size() > kMaxUrlBytes) {
      return absl::InvalidArgumentError(absl::StrCat("data.attributes.", name,
                                                     " is longer than ",
                                                     kMaxUrlBytes, " bytes"));
    }
    *out = *std::move(value);
  }
  return registration;
}

Api::Api(Store& store, ApiOptions options, common::Clock& clock)
    : store_(store),
      options_(std::move(options)),
      clock_(clock),
      requests_(metrics_.AddCounter("broker_dispatcher_requests_total",
                                    "API requests answered, by status code.",
                                    {"code"})),
      allocations_(metrics_.AddCounter(
          "broker_dispatcher_allocations_total",
          "Allocation requests by result: allocated (a new slot), existing "
          "(the client's slot again), refused (the token has its clients), "
          "unavailable (no server, or the store is down).",
          {"result"})),
      client_events_(metrics_.AddCounter(
          "broker_dispatcher_client_events_total",
          "Servers' client events (leases kept or freed), by type.", {"type"})),
      server_events_(metrics_.AddCounter(
          "broker_dispatcher_server_events_total",
          "Broker server registrations and deregistrations.", {"type"})),
      live_servers_(
          metrics_
              .AddGauge("broker_dispatcher_live_servers",
                        "Broker servers registered and live (seen within "
                        "the server TTL).")
              .With({})),
      live_leases_(metrics_
                       .AddGauge("broker_dispatcher_leases",
                                 "Live client leases (one per connected "
                                 "broker client) on live servers.")
                       .With({})),
      store_up_(metrics_
                    .AddGauge("broker_dispatcher_store_up",
                              "1 when the store (memory or Redis) answered "
                              "this scrape, else 0.")
                    .With({})) {}

ApiResponse Api::Metrics() {
  if (absl::StatusOr<StoreCounts> counts = store_.Counts(); counts.ok()) {
    live_servers_.Set(counts->live_servers);
    live_leases_.Set(counts->live_leases);
    store_up_.Set(1);
  } else {
    store_up_.Set(0);
  }
  ApiResponse response;
  response.headers.push_back(
      {"content-type", common::metrics::Registry::kContentType});
  response.body = metrics_.Render();
  return response;
}

ApiResponse Api::Handle(const ApiRequest& request) {
  ApiResponse response = Route(request);
  requests_.With({absl::StrCat(response.status)}).Increment();
  return response;
}

ApiResponse Api::Route(const ApiRequest& request) {
  absl::string_view target = request.target;
  const size_t question = target.find('?');
  absl::string_view path = target.substr(0, question);
  absl::string_view query_text =
      question == absl::string_view::npos ? "" : target.substr(question + 1);
  absl::StatusOr<std::map<std::string, std::string>> query =
      ParseQuery(query_text);
  if (!query.ok()) return BadRequest("INVALID_QUERY", query.status().message());

  const std::vector<absl::string_view> segments =
      absl::StrSplit(path.substr(path.empty() ? 0 : 1), '/');
  const absl::string_view method = request.method;
  const size_t n = segments.size();

  if ((n == 1 && (segments[0] == "healthcheck" || segments[0].empty()))) {
    if (method != "GET" && method != "HEAD") return MethodNotAllowed("GET");
    return Healthcheck(request);
  }
  if (n == 1 && segments[0] == "metrics") {
    if (method != "GET") return MethodNotAllowed("GET");
    return Metrics();
  }
  if (n == 5 && segments[0] == "hidden" &&
      (segments[1] == "broker" || segments[1] == "brokers") &&
      segments[3] == "connections") {
    if (method != "POST") return MethodNotAllowed("POST");
    return Allocate(segments[2], segments[4], request);
  }
  if (n == 3 && segments[0] == "internal" && segments[1] == "brokerservers") {
    if (method == "POST") return Register(segments[2], request);
    if (method == "DELETE") return Deregister(segments[2]);
    return MethodNotAllowed("POST, DELETE");
  }
  if (n == 5 && segments[0] == "internal" && segments[1] == "brokerservers" &&
      segments[3] == "connections") {
    if (method != "POST" && method != "DELETE") {
      return MethodNotAllowed("POST, DELETE");
    }
    return ClientEvent(segments[2], segments[4], *query, request);
  }
  if (n == 4 && segments[0] == "internal" && segments[1] == "tokens" &&
      segments[3] == "brokerservers") {
    if (method != "GET") return MethodNotAllowed("GET");
    return Lookup(segments[2]);
  }
  return ErrorResponse(404, "NOT_FOUND", "Not found",
                       absl::StrCat("no route for ", path));
}

ApiResponse Api::Healthcheck(const ApiRequest& /*request*/) {
  absl::Status status = store_.Ping();
  ApiResponse response;
  response.headers.push_back(
      {"content-type", "application/json; charset=utf-8"});
  if (status.ok()) {
    StoreOk();
    response.status = 200;
    response.body = Dump({{"ok", true}, {"version", options_.version}});
  } else {
    (void)StoreError(status);
    response.status = 503;
    response.body = Dump({{"ok", false}, {"version", options_.version}});
  }
  return response;
}

ApiResponse Api::Allocate(absl::string_view hash, absl::string_view client_id,
                          const ApiRequest& request) {
  if (!IsTokenHash(hash)) {
    return BadRequest("INVALID_TOKEN_HASH",
                      "the token hash must be 64 lowercase hex characters "
                      "(sha256 of the broker token)");
  }
  if (!IsValidId(client_id)) {
    return BadRequest("INVALID_CLIENT_ID",
                      "the client id must be 1..253 of [A-Za-z0-9._~-]");
  }
  absl::StatusOr<AllocationRequest> body = ParseAllocationBody(request.body);
  if (!body.ok()) return BadRequest("INVALID_BODY", body.status().message());
  const std::string hash_text(hash);
  const std::string client(client_id);
  absl::StatusOr<AllocationResult> result = store_.Allocate(hash_text, client);
  if (!result.ok()) {
    if (absl::IsResourceExhausted(result.status())) {
      StoreOk();
      BROKER_LOG(kDispatcher, kDebug,
                 {{"hashed_token", hash_text}, {"client_id", client}},
                 "refused a broker client: {}",
                 std::string(result.status().message()));
      allocations_.With({"refused"}).Increment();
      return TooManyClients(result.status());
    }
    allocations_.With({"unavailable"}).Increment();
    return StoreError(result.status());
  }
  StoreOk();
  allocations_.With({result->existing ? "existing" : "allocated"}).Increment();
  if (!result->existing) {
    BROKER_LOG(kDispatcher, kInfo,
               {{"hashed_token", hash_text},
                {"client_id", client},
                {"server_id", result->server_id},
                {"deployment_location", body->deployment_location}},
               "allocated a broker client to server {}", result->server_id);
  }
  Json attributes = {{"server_id", result->server_id}};
  if (!result->tunnel_url.empty()) {
    attributes["tunnel_url"] = result->tunnel_url;
  }
  return JsonApiResponse(201, {{"jsonapi", JsonApiVersion()},
                               {"data",
                                {{"type", "broker_connection"},
                                 {"id", client},
                                 {"attributes", std::move(attributes)}}}});
}

ApiResponse Api::Register(absl::string_view server_id,
                          const ApiRequest& request) {
  if (!IsValidId(server_id)) {
    return BadRequest("INVALID_SERVER_ID",
                      "the server id must be 1..253 of [A-Za-z0-9._~-]");
  }
  absl::StatusOr<ServerRegistration> registration =
      ParseRegistrationBody(server_id, request.body);
  if (!registration.ok()) {
    return BadRequest("INVALID_BODY", registration.status().message());
  }
  absl::StatusOr<bool> created = store_.RegisterServer(*registration);
  if (!created.ok()) return StoreError(created.status());
  StoreOk();
  server_events_.With({*created ? "registered" : "refreshed"}).Increment();
  if (*created) {
    BROKER_LOG(kDispatcher, kInfo,
               {{"server_id", registration->id},
                {"tunnel_url", registration->tunnel_url},
                {"internal_url", registration->internal_url}},
               "broker server {} registered", registration->id);
  }
  return JsonApiResponse(
      *created ? 201 : 200,
      {{"jsonapi", JsonApiVersion()},
       {"data",
        {{"type", "brokerserver"},
         {"id", registration->id},
         {"attributes",
          {{"health_check_link", registration->health_check_link},
           {"tunnel_url", registration->tunnel_url},
           {"internal_url", registration->internal_url}}}}}});
}

ApiResponse Api::Deregister(absl::string_view server_id) {
  if (!IsValidId(server_id)) {
    return BadRequest("INVALID_SERVER_ID",
                      "the server id must be 1..253 of [A-Za-z0-9._~-]");
  }
  const std::string id(server_id);
  absl::StatusOr<std::int64_t> freed = store_.RemoveServer(id);
  if (!freed.ok()) return StoreError(freed.status());
  StoreOk();
  server_events_.With({"deregistered"}).Increment();
  BROKER_LOG(kDispatcher, kInfo, {{"server_id", id}, {"freed", *freed}},
             "broker server {} deregistered; {} client slots freed", id,
             *freed);
  return NoContent();
}

ApiResponse Api::ClientEvent(absl::string_view server_id,
                             absl::string_view hash,
                             const std::map<std::string, std::string>& query,
                             const ApiRequest& request) {
  if (!IsValidId(server_id)) {
    return BadRequest("INVALID_SERVER_ID",
                      "the server id must be 1..253 of [A-Za-z0-9._~-]");
  }
  if (!IsTokenHash(hash)) {
    return BadRequest("INVALID_TOKEN_HASH",
                      "the token hash must be 64 lowercase hex characters");
  }
  auto client_it = query.find("broker_client_id");
  if (client_it == query.end() || !IsValidId(client_it->second)) {
    return BadRequest("INVALID_CLIENT_ID",
                      "broker_client_id must be 1..253 of [A-Za-z0-9._~-]");
  }
  // The body (health_check_link, broker_client_version) carries nothing we
  // keep, but a malformed one is still a client error.
  if (absl::StatusOr<Json> body = ParseBodyObject(request.body); !body.ok()) {
    return BadRequest("INVALID_BODY", body.status().message());
  }
  const std::string id(server_id);
  const std::string hash_text(hash);
  const std::string& client = client_it->second;
  if (request.method == "DELETE") {
    absl::StatusOr<bool> freed = store_.ReleaseClient(id, hash_text, client);
    if (!freed.ok()) return StoreError(freed.status());
    StoreOk();
    client_events_.With({"client-disconnected"}).Increment();
    if (*freed) {
      BROKER_LOG(kDispatcher, kInfo,
                 {{"hashed_token", hash_text},
                  {"client_id", client},
                  {"server_id", id}},
                 "broker client disconnected from server {}; slot freed", id);
    }
    return NoContent();
  }
  auto type = query.find("request_type");
  if (type == query.end() ||
      (type->second != "client-connected" && type->second != "client-pinged")) {
    return BadRequest("INVALID_REQUEST_TYPE",
                      "request_type must be client-connected or client-pinged");
  }
  absl::Status refreshed = store_.RefreshClient(id, hash_text, client);
  if (absl::IsResourceExhausted(refreshed)) {
    StoreOk();
    BROKER_LOG(
        kDispatcher, kWarn,
        {{"hashed_token", hash_text}, {"client_id", client}, {"server_id", id}},
        "server {} reported a broker client over the cap: {}", id,
        std::string(refreshed.message()));
    client_events_.With({"refused"}).Increment();
    return TooManyClients(refreshed);
  }
  if (!refreshed.ok()) return StoreError(refreshed);
  StoreOk();
  client_events_.With({type->second}).Increment();
  BROKER_LOG(kDispatcher, kDebug,
             {{"hashed_token", hash_text},
              {"client_id", client},
              {"server_id", id},
              {"request_type", type->second}},
             "lease refreshed");
  return NoContent();
}

ApiResponse Api::Lookup(absl::string_view hash) {
  if (!IsTokenHash(hash)) {
    return BadRequest("INVALID_TOKEN_HASH",
                      "the token hash must be 64 lowercase hex characters");
  }
  absl::StatusOr<std::vector<TokenServer>> servers =
      store_.ServersForToken(std::string(hash));
  if (!servers.ok()) return StoreError(servers.status());
  StoreOk();
  Json data = Json::array();
  for (const TokenServer& server : *servers) {
    data.push_back({{"type", "brokerserver"},
                    {"id", server.id},
                    {"attributes",
                     {{"internal_url", server.internal_url},
                      {"tunnel_url", server.tunnel_url},
                      {"clients", server.clients}}}});
  }
  return JsonApiResponse(
      200, {{"jsonapi", JsonApiVersion()}, {"data", std::move(data)}});
}

ApiResponse Api::StoreError(const absl::Status& status) {
  if (absl::IsFailedPrecondition(status)) {
    return ErrorResponse(503, "NO_BROKER_SERVERS", "No broker server available",
                         status.message());
  }
  if (!absl::IsUnavailable(status)) {
    BROKER_LOG(kDispatcher, kError, {{"error", status.ToString()}},
               "dispatcher store failed");
    return ErrorResponse(500, "INTERNAL", "Internal error",
                         "the dispatcher store failed");
  }
  // Decide under the lock, log after it (no I/O under a lock).
  enum class Log { kNone, kStarted, kContinues } log = Log::kNone;
  std::int64_t failed = 0;
  const absl::Time now = clock_.Now();
  {
    absl::MutexLock lock(&mu_);
    ++failures_since_log_;
    if (!store_down_) {
      store_down_ = true;
      log = Log::kStarted;
    } else if (now - last_outage_log_ >= kOutageLogInterval) {
      log = Log::kContinues;
    }
    if (log != Log::kNone) {
      failed = failures_since_log_;
      last_outage_log_ = now;
      failures_since_log_ = 0;
    }
  }
  if (log == Log::kStarted) {
    BROKER_LOG(kDispatcher, kError, {{"error", status.message()}},
               "dispatcher store unreachable; answering 503 until it is back");
  } else if (log == Log::kContinues) {
    BROKER_LOG(kDispatcher, kError,
               {{"error", status.message()}, {"failed_requests", failed}},
               "dispatcher store still unreachable");
  }
  return ErrorResponse(503, "STORE_UNAVAILABLE", "Dispatcher state unavailable",
                       "the dispatcher cannot reach its store; retry later");
}

void Api::StoreOk() {
  std::int64_t failed = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!store_down_) return;
    store_down_ = false;
    failed = failures_since_log_;
    failures_since_log_ = 0;
  }
  BROKER_LOG(kDispatcher, kInfo, {{"failed_requests", failed}},
             "dispatcher store reachable again");
}

}  // namespace broker::dispatcher
