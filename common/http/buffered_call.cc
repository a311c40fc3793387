#include "common/http/buffered_call.h"

#include "absl/strings/str_cat.h"

#include <memory>
#include <utility>

namespace broker::common::http {
namespace {

// A request body served from one string.
class StringBody final : public BodyReader {
 public:
  explicit StringBody(std::string data) : data_(std::move(data)) {}
  void Read(ReadHandler handler) override {
    BodyChunk chunk;
    chunk.data = std::move(data_);
    chunk.last = true;
    std::move(handler)(absl::OkStatus(), std::move(chunk));
  }

 private:
  std::string data_;
};

// Pulls the body to its end; owns itself through the read handlers.
struct Collector {
  std::unique_ptr<BodyReader> reader;
  BufferedResponse response;
  size_t max_body_bytes = 0;
  BufferedDone done;
};

void ReadNext(std::unique_ptr<Collector> collector) {
  BodyReader& reader = *collector->reader;
  reader.Read([collector = std::move(collector)](
                  absl::Status status, const BodyChunk& chunk) mutable {
    if (!status.ok()) {
      std::move(collector->done)(std::move(status));
      return;
    }
    collector->response.body += chunk.data;
    if (collector->response.body.size() > collector->max_body_bytes) {
      std::move(collector->done)(absl::ResourceExhaustedError(absl::StrCat(
          "answer body over ", collector->max_body_bytes, " bytes")));
      return;
    }
    if (chunk.last) {
      std::move(collector->done)(std::move(collector->response));
      return;
    }
    ReadNext(std::move(collector));
  });
}

}  // namespace

void SendBuffered(Client& client, BufferedRequest request, BufferedDone done) {
  ClientRequest call;
  call.method = std::move(request.method);
  call.url = std::move(request.url);
  call.headers = std::move(request.headers);
  if (!request.body.empty()) {
    call.body_length = request.body.size();
    call.body = std::make_unique<StringBody>(std::move(request.body));
  }
  call.deadline = request.deadline;
  const size_t max_body_bytes = request.max_body_bytes;
  client.Send(std::move(call),
              [done = std::move(done),
               max_body_bytes](absl::StatusOr<ClientResponse> answer) mutable {
                if (!answer.ok()) {
                  std::move(done)(answer.status());
                  return;
                }
                auto collector = std::make_unique<Collector>();
                collector->response.status = answer->head.status;
                collector->response.headers = std::move(answer->head.headers);
                collector->reader = std::move(answer->body);
                collector->max_body_bytes = max_body_bytes;
                collector->done = std::move(done);
                if (collector->reader == nullptr) {
                  std::move(collector->done)(std::move(collector->response));
                  return;
                }
                ReadNext(std::move(collector));
              });
}

}  // namespace broker::common::http
