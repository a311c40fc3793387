#include "tests/integration/service_proxy.h"

#include "absl/strings/str_cat.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/write.hpp"

#include <array>
#include <atomic>
#include <cstddef>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

namespace broker::testing {
namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;

// One client connection and its backend, relayed both ways. Closing one
// side closes the other.
class Pipe : public std::enable_shared_from_this<Pipe> {
 public:
  Pipe(tcp::socket client, std::vector<int> backends, std::size_t first)
      : client_(std::move(client)),
        backend_(client_.get_executor()),
        backends_(std::move(backends)),
        next_(first) {}

  void Start() { TryBackend(0); }

 private:
  void TryBackend(std::size_t tried) {
    if (tried == backends_.size()) {
      Close();  // no backend takes it: the client sees the connection end
      return;
    }
    const int port = backends_[(next_ + tried) % backends_.size()];
    backend_.async_connect(
        tcp::endpoint(net::ip::make_address("127.0.0.1"),
                      static_cast<unsigned short>(port)),
        [self = shared_from_this(),
         tried](const boost::system::error_code& ec) {
          if (ec) {
            boost::system::error_code ignored;
            self->backend_.close(ignored);
            self->TryBackend(tried + 1);
            return;
          }
          self->Relay(self->client_, self->backend_, self->up_);
          self->Relay(self->backend_, self->client_, self->down_);
        });
  }

  void Relay(tcp::socket& from, tcp::socket& to,
             std::array<char, 16384>& buffer) {
    from.async_read_some(
        net::buffer(buffer),
        [self = shared_from_this(), &from, &to, &buffer](
            const boost::system::error_code& ec, std::size_t n) {
          if (ec) {
            self->Close();
            return;
          }
          net::async_write(
              to, net::buffer(buffer.data(), n),
              [self, &from, &to, &buffer](
                  const boost::system::error_code& write_ec, std::size_t) {
                if (write_ec) {
                  self->Close();
                  return;
                }
                self->Relay(from, to, buffer);
              });
        });
  }

  void Close() {
    boost::system::error_code ignored;
    client_.close(ignored);
    backend_.close(ignored);
  }

  tcp::socket client_;
  tcp::socket backend_;
  const std::vector<int> backends_;
  const std::size_t next_;
  std::array<char, 16384> up_{};
  std::array<char, 16384> down_{};
};

}  // namespace

class ServiceProxy::Impl {
 public:
  explicit Impl(std::vector<int> backends)
      : backends_(std::move(backends)),
        acceptor_(io_, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0)) {
    Accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Impl() {
    io_.stop();
    thread_.join();
  }
  int port() const { return acceptor_.local_endpoint().port(); }

 private:
  void Accept() {
    acceptor_.async_accept(
        [this](const boost::system::error_code& ec, tcp::socket socket) {
          if (ec) return;
          std::make_shared<Pipe>(std::move(socket), backends_,
                                 turn_++ % backends_.size())
              ->Start();
          Accept();
        });
  }

  const std::vector<int> backends_;
  std::size_t turn_ = 0;  // the io thread's only
  net::io_context io_;
  tcp::acceptor acceptor_;
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<ServiceProxy>> ServiceProxy::Start(
    std::vector<int> backend_ports) {
  if (backend_ports.empty()) {
    return absl::InvalidArgumentError("a service needs a backend");
  }
  try {
    return std::unique_ptr<ServiceProxy>(
        new ServiceProxy(std::make_unique<Impl>(std::move(backend_ports))));
  } catch (const boost::system::system_error& e) {
    return absl::InternalError(absl::StrCat("service proxy: ", e.what()));
  }
}

ServiceProxy::ServiceProxy(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
ServiceProxy::~ServiceProxy() = default;
int ServiceProxy::port() const { return impl_->port(); }

}  // namespace broker::testing
