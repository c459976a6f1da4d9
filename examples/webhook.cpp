// An HTTP webhook as the sink: each batch is POSTed as one JSON array over a plain POSIX
// socket, with the Kubernetes audit webhook's defaults (async, batches of 400, 10 batches/s with
// a burst of 15). A batch the server does not take (connection refused, non-2xx) is reported
// as failed; the example writes those event ids to a file so a test can check that every event
// was either received by the server or reported, exactly once.
//
//   buffered_webhook <port> <events> <events-per-second> <failed-ids-file>
#include <buffered/buffered_backend.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

#include "json_lines_file.hpp"
#include "report.hpp"

namespace {

class Socket {
 public:
  Socket() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "socket");
    const timeval timeout{2, 0};  // a server that hangs fails the batch instead of stalling us
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  }
  ~Socket() { ::close(fd_); }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// POSTs each batch to http://127.0.0.1:<port>/audit; throws on any failure.
class Webhook {
 public:
  explicit Webhook(std::uint16_t port) : port_(port) {}

  void process_events(std::span<examples::AuditEvent> batch) {
    std::string body = "[";
    for (const examples::AuditEvent& e : batch) {
      if (body.size() > 1) body += ',';
      examples::append_json(body, e);
    }
    body += ']';
    const std::string request =
        "POST /audit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    Socket s;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port_);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(s.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::system_error(errno, std::generic_category(), "connect");
    }
    for (std::size_t sent = 0; sent < request.size();) {
      const ssize_t n = ::send(s.fd(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw std::system_error(errno, std::generic_category(), "send");
      sent += static_cast<std::size_t>(n);
    }
    char reply[64] = {};
    ssize_t got = 0;
    while (got < 12) {  // "HTTP/1.x 200"
      const ssize_t n =
          ::recv(s.fd(), reply + got, sizeof reply - 1 - static_cast<std::size_t>(got), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw std::runtime_error("no reply from the webhook");
      got += n;
    }
    if (reply[9] != '2')
      throw std::runtime_error(std::string("webhook answered ") + std::string(reply, 12));
  }
  std::string name() const { return "webhook:127.0.0.1:" + std::to_string(port_); }

 private:
  std::uint16_t port_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr,
                 "usage: buffered_webhook <port> <events> <events-per-second> <failed-ids-file>\n");
    return 2;
  }
  const auto port = static_cast<std::uint16_t>(std::stoi(argv[1]));
  const unsigned long events = std::stoul(argv[2]);
  const double rate = std::stod(argv[3]);
  std::ofstream failed_ids(argv[4]);

  buffered::BatchConfig config;  // the Kubernetes audit webhook's batching defaults
  config.buffer_size = 10000;
  config.max_batch_size = 400;
  config.max_batch_wait = std::chrono::seconds(30);
  config.throttle = buffered::Throttle{10, 15};
  config.async_delegate = true;
  config.overflow = buffered::OverflowPolicy::block;
  std::mutex mu;
  unsigned long failed = 0;
  auto on_error = [&](buffered::ErrorKind kind, std::span<const examples::AuditEvent> lost) {
    std::lock_guard<std::mutex> lock(mu);
    if (kind == buffered::ErrorKind::delegate_failed && failed == 0) {
      try {
        std::rethrow_exception(std::current_exception());
      } catch (const std::exception& e) {
        std::printf("first failed batch: %s\n", e.what());
      }
    }
    for (const auto& e : lost) failed_ids << e.seq << '\n';
    failed += lost.size();
  };
  Webhook hook(port);
  buffered::BufferedBackend<examples::AuditEvent, Webhook&> backend(hook, config, on_error);
  backend.run();

  // Small batches while the rate is low: flush every 200 events so the run shows several POSTs.
  const auto t0 = std::chrono::steady_clock::now();
  for (unsigned long i = 0; i < events; ++i) {
    backend.process_event(examples::AuditEvent{1, i, "create"});
    if (i % 200 == 199) backend.flush(std::chrono::seconds(5));
    std::this_thread::sleep_until(t0 +
                                  std::chrono::duration<double>(static_cast<double>(i + 1) / rate));
  }
  const auto s0 = std::chrono::steady_clock::now();
  const bool clean = backend.shutdown(std::chrono::seconds(20));
  const double shutdown_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s0).count();
  std::printf("%s: shutdown took %.0f ms, %s\n", backend.name().c_str(), shutdown_ms,
              clean ? "nothing abandoned" : "some events abandoned");
  examples::print_stats(backend.stats());
  std::printf("reported failed: %lu\n", failed);
  const buffered::Stats s = backend.stats();
  return s.accepted == events && s.delivered + s.failed + s.abandoned == events ? 0 : 1;
}
