#include "services/server/buffered_body.h"

#include "boost/asio/io_context.hpp"
#include "boost/asio/post.hpp"

#include <algorithm>
#include <utility>

namespace broker::server {
namespace {

namespace http = common::http;

// Hands out a held body. State lives in a shared block so that a handler
// posted to `io` stays valid if the exchange goes first.
class ReplayReader final : public http::BodyReader {
 public:
  ReplayReader(boost::asio::io_context& io, std::string body)
      : io_(io), state_(std::make_shared<State>()) {
    state_->body = std::move(body);
  }

  void Read(ReadHandler handler) override {
    // Reads are sequential (one outstanding), so the posted step owns the
    // offset until its handler ran.
    boost::asio::post(
        io_, [state = state_, handler = std::move(handler)]() mutable {
          const std::size_t n =
              std::min(kReplayChunkBytes, state->body.size() - state->offset);
          http::BodyChunk chunk;
          chunk.data = state->body.substr(state->offset, n);
          state->offset += n;
          chunk.last = state->offset == state->body.size();
          std::move(handler)(absl::OkStatus(), std::move(chunk));
        });
  }

 private:
  struct State {
    std::string body;
    std::size_t offset = 0;
  };
  boost::asio::io_context& io_;
  const std::shared_ptr<State> state_;
};

class BufferedExchange final : public http::Exchange {
 public:
  BufferedExchange(boost::asio::io_context& io,
                   std::shared_ptr<http::Exchange> inner, std::string body)
      : inner_(std::move(inner)), head_(inner_->request()) {
    head_.content_length = body.size();
    head_.chunked = false;
    reader_ = std::make_unique<ReplayReader>(io, std::move(body));
  }

  const http::RequestHead& request() const override { return head_; }
  std::string remote_address() const override {
    return inner_->remote_address();
  }
  http::BodyReader& body() override { return *reader_; }
  http::BodyWriter& Respond(http::ResponseHead head,
                            http::BodyWriter::DoneHandler done) override {
    return inner_->Respond(std::move(head), std::move(done));
  }
  void RespondWhole(http::ResponseHead head, std::string body,
                    http::BodyWriter::DoneHandler done) override {
    inner_->RespondWhole(std::move(head), std::move(body), std::move(done));
  }
  void RespondSimple(int status, http::Headers headers,
                     std::string body) override {
    inner_->RespondSimple(status, std::move(headers), std::move(body));
  }
  void OnCancel(absl::AnyInvocable<void() &&> callback) override {
    inner_->OnCancel(std::move(callback));
  }

 private:
  const std::shared_ptr<http::Exchange> inner_;
  http::RequestHead head_;
  std::unique_ptr<ReplayReader> reader_;
};

}  // namespace

std::shared_ptr<http::Exchange> WithBufferedBody(
    boost::asio::io_context& io, std::shared_ptr<http::Exchange> inner,
    std::string body) {
  return std::make_shared<BufferedExchange>(io, std::move(inner),
                                            std::move(body));
}

}  // namespace broker::server
