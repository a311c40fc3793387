#include "services/ha-agent/dispatcher_client.h"

#include "common/http/buffered_call.h"
#include "common/http/message.h"
#include "common/token.h"
#include "common/uuid.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"

#include <cmath>
#include <cstdint>
#include <utility>

namespace broker::ha {
namespace {

namespace http = common::http;
using Json = nlohmann::json;

constexpr size_t kMaxSnippet = 200;

// The first character of the token: one UTF-8 sequence (a token is ASCII
// in practice; a lone byte of a longer sequence is not valid JSON text).
std::string FirstChar(absl::string_view token) {
  if (token.empty()) return "";
  const auto c0 = static_cast<unsigned char>(token[0]);
  size_t length = 1;
  if (c0 >= 0xF0) {
    length = 4;
  } else if (c0 >= 0xE0) {
    length = 3;
  } else if (c0 >= 0xC0) {
    length = 2;
  }
  return std::string(token.substr(0, std::min(length, token.size())));
}

// A body as one short line of printable ASCII for messages (they travel
// in proto strings, which must be valid UTF-8).
std::string Snippet(absl::string_view body) {
  std::string out;
  for (char c : body.substr(0, kMaxSnippet)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x80) {
      out.push_back('?');
    } else {
      out.push_back(u < 0x20 || u == 0x7F ? ' ' : c);
    }
  }
  if (body.size() > kMaxSnippet) out += "...";
  return out;
}

// "TOO_MANY_CLIENTS: Too many broker clients for this token (detail)" from
// the first JSON:API error, or "" when there is none.
std::string FirstError(const Json& document, std::string* code) {
  if (!document.is_object()) return "";
  auto errors = document.find("errors");
  if (errors == document.end() || !errors->is_array() || errors->empty() ||
      !(*errors)[0].is_object()) {
    return "";
  }
  const Json& error = (*errors)[0];
  auto text = [&](const char* key) -> std::string {
    auto it = error.find(key);
    return it != error.end() && it->is_string() ? it->get<std::string>() : "";
  };
  *code = text("code");
  std::string out = *code;
  const std::string title = text("title");
  const std::string detail = text("detail");
  if (!title.empty()) absl::StrAppend(&out, out.empty() ? "" : ": ", title);
  if (!detail.empty()) {
    absl::StrAppend(&out, out.empty() ? "" : " ", "(", detail, ")");
  }
  return Snippet(out);
}

class DefaultDispatcherClient final : public DispatcherClient {
 public:
  DefaultDispatcherClient(http::Client& client, DispatcherClientOptions options)
      : client_(client), options_(std::move(options)) {}

  void Allocate(const std::string& client_id, Done done) override {
    AllocationCall call;
    call.base_url = options_.base_url;
    call.prefix = options_.prefix;
    call.token = options_.token;
    call.client_id = client_id;
    call.deployment_location = options_.deployment_location;
    call.version = options_.version;
    call.request_id = common::NewUuid();
    AllocationHttpRequest built = BuildAllocationRequest(call);
    http::BufferedRequest request;
    request.method = "POST";
    request.url = std::move(built.url);
    request.headers = std::move(built.headers);
    request.body = std::move(built.body);
    request.deadline = absl::Now() + options_.timeout;
    http::SendBuffered(
        client_, std::move(request),
        [done = std::move(done)](
            absl::StatusOr<http::BufferedResponse> response) mutable {
          if (!response.ok()) {
            std::move(done)(absl::UnavailableError(absl::StrCat(
                "dispatcher call failed: ", response.status().message())));
            return;
          }
          std::move(done)(
              ParseAllocationResponse(response->status, response->body));
        });
  }

 private:
  http::Client& client_;
  const DispatcherClientOptions options_;
};

}  // namespace

AllocationHttpRequest BuildAllocationRequest(const AllocationCall& call) {
  AllocationHttpRequest request;
  std::string prefix = call.prefix;
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  request.url = absl::StrCat(
      call.base_url, prefix, "/", common::HashToken(call.token),
      "/connections/", common::http::PercentEncode(call.client_id),
      "?version=", absl::StrReplaceAll(kAllocationApiVersion, {{"~", "%7E"}}));
  request.headers = {
      {"Content-type", "application/vnd.api+json"},
      {"snyk-request-id", call.request_id},
      {"user-agent", absl::StrCat("Snyk Broker Client ", call.version)},
      {"x-broker-origin-ua", "not-provided"},
  };
  // Ordered: the same bytes as Snyk's client sends.
  const nlohmann::ordered_json body = {
      {"data",
       {{"attributes",
         {{"deployment_location", call.deployment_location},
          {"broker_token_first_char", FirstChar(call.token)}}}}}};
  // Invalid UTF-8 in the location must not throw: it is replaced.
  request.body = body.dump(-1, ' ', false,
                           nlohmann::ordered_json::error_handler_t::replace);
  return request;
}

absl::StatusOr<Allocation> ParseAllocationResponse(int status,
                                                   absl::string_view body) {
  const Json document = Json::parse(body.begin(), body.end(), nullptr,
                                    /*allow_exceptions=*/false);
  const bool json = !document.is_discarded();
  if (json && document.is_object()) {
    auto data = document.find("data");
    if (data != document.end() && data->is_object()) {
      auto attributes = data->find("attributes");
      if (attributes != data->end() && attributes->is_object()) {
        Allocation allocation;
        auto id = attributes->find("server_id");
        if (id != attributes->end() && id->is_string()) {
          allocation.server_id = id->get<std::string>();
        } else if (id != attributes->end() && id->is_number_unsigned()) {
          allocation.server_id = absl::StrCat(id->get<std::uint64_t>());
        } else if (id != attributes->end() && id->is_number_integer()) {
          allocation.server_id = absl::StrCat(id->get<std::int64_t>());
        } else if (id != attributes->end() && id->is_number_float() &&
                   std::trunc(id->get<double>()) == id->get<double>() &&
                   std::abs(id->get<double>()) < 1e15) {
          allocation.server_id =
              absl::StrCat(static_cast<std::int64_t>(id->get<double>()));
        }
        if (allocation.server_id.empty()) {
          return absl::UnavailableError(absl::StrCat(
              "Unexpected connection allocation server response - ", status,
              ": no server_id in data.attributes: ", Snippet(body)));
        }
        auto url = attributes->find("tunnel_url");
        if (url != attributes->end() && url->is_string()) {
          allocation.tunnel_url = url->get<std::string>();
        }
        return allocation;
      }
    }
  }
  std::string code;
  const std::string error = json ? FirstError(document, &code) : "";
  const std::string what = error.empty() ? Snippet(body) : error;
  if (status == 409 || status == 429 || code == "TOO_MANY_CLIENTS") {
    return absl::ResourceExhaustedError(
        absl::StrCat("refused by the dispatcher - ", status, ": ", what));
  }
  return absl::UnavailableError(
      absl::StrCat("Unexpected connection allocation server response - ",
                   status, ": ", what));
}

std::unique_ptr<DispatcherClient> MakeDefaultDispatcherClient(
    http::Client& client, DispatcherClientOptions options) {
  return std::make_unique<DefaultDispatcherClient>(client, std::move(options));
}

}  // namespace broker::ha
