// An HTTP webhook as the sink: each batch is POSTed as one JSON array over a plain POSIX
// socket, with the Kubernetes audit webhook's defaults (async, batches of 400, 10 batches/s with
// a burst of 15, and its retry: 10 s backoff, x1.5, jitter 0.2, 5 attempts). The delegate tells
// the backend how each attempt went, as an Outcome:
//   2xx                                              delivered
//   429, 502, 503, 504, no connection, no reply      retry (after Retry-After seconds if given)
//   anything else (400, 404, 500, ...)               permanent failure, never retried
// (the status codes the OpenTelemetry exporters retry). It takes the BatchContext too, and cuts
// its connect/send/receive waits at the context's deadline, so a call ends by the deadline of a
// shutdown(timeout) instead of outliving it. Each JSON event carries an id that every attempt
// repeats, so a receiver can drop duplicates: under retry, delivery to the sink is at least
// once (an attempt whose reply was lost is sent again). Events reported lost (failed or
// abandoned) have their seq numbers written to a file, for the test.
//
//   buffered_webhook <port> <events> <events-per-second> <lost-ids-file> [--fast-retry]
//
// --fast-retry scales the backoff down for the test: 50 ms, x2, at most 400 ms, jitter 0.2, 10
// attempts (waits of at least 2.2 s in all, enough to outlast a server that is down a while).
#include <buffered/buffered_backend.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>

#include "json_lines_file.hpp"
#include "report.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// The Kubernetes audit webhook's retry (k8s.io/apiserver webhook: initial backoff 10 s, factor
// 1.5, jitter 0.2, 5 steps; it sets no cap: its longest wait is 33.75 s).
buffered::Retry kubernetes_retry() {
  buffered::Retry r;
  r.max_attempts = 5;
  r.initial_backoff = std::chrono::seconds(10);
  r.multiplier = 1.5;
  r.max_backoff = std::chrono::seconds(40);
  r.jitter = 0.2;
  return r;
}

// The same shape scaled down, so that a test outlasts a short outage in a second or two.
buffered::Retry fast_retry() {
  buffered::Retry r;
  r.max_attempts = 10;
  r.initial_backoff = std::chrono::milliseconds(50);
  r.multiplier = 2.0;
  r.max_backoff = std::chrono::milliseconds(400);
  r.jitter = 0.2;
  return r;
}

// One attempt's own timeout, when no shutdown deadline is nearer: a server that hangs fails the
// attempt (to be retried) instead of stalling the batch.
constexpr auto kCallTimeout = std::chrono::seconds(2);

class Socket {
 public:
  Socket() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// How one POST went: a transport error (`error` set), or the reply's status and Retry-After.
struct Reply {
  std::string error;
  int status = 0;
  std::chrono::seconds retry_after{0};
};

// Waits until `fd` is ready for `events`, but never past the attempt's own end nor the
// context's deadline. The deadline is live (a shutdown(timeout) called while we wait moves it
// nearer), so it is read again every 10 ms rather than once. False when time ran out.
bool wait_ready(int fd, short events, Clock::time_point call_end,
                const buffered::BatchContext& context) {
  for (;;) {
    const Clock::time_point end = std::min(call_end, context.deadline());
    const Clock::time_point now = Clock::now();
    if (now >= end) return false;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(end - now).count();
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<decltype(left)>(left, 10)));
    if (n > 0) return true;  // ready, or an error that the next call on the socket reports
    if (n < 0 && errno != EINTR) return false;
  }
}

std::string errno_text(const char* what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

// The value of the Retry-After header in seconds (0 if absent, or an HTTP date: then the
// backoff applies). `head` is the reply's status line and headers.
std::chrono::seconds retry_after(std::string_view head) {
  std::string lower(head);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const std::size_t at = lower.find("\r\nretry-after:");
  if (at == std::string::npos) return std::chrono::seconds(0);
  std::size_t i = at + std::strlen("\r\nretry-after:");
  while (i < lower.size() && (lower[i] == ' ' || lower[i] == '\t')) ++i;
  long long seconds = 0;
  const auto [end, ec] = std::from_chars(lower.data() + i, lower.data() + lower.size(), seconds);
  if (ec != std::errc() || seconds < 0) return std::chrono::seconds(0);
  // A shutdown deadline cuts any wait short; the cap only keeps the arithmetic sane.
  return std::chrono::seconds(std::min(seconds, 3600LL));
}

// POSTs `request` to 127.0.0.1:port and reads the reply's status line and headers.
Reply post(std::uint16_t port, const std::string& request, const buffered::BatchContext& context) {
  const Clock::time_point call_end = Clock::now() + kCallTimeout;
  Socket s;
  if (s.fd() < 0) return {errno_text("socket", errno)};
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EINPROGRESS) return {errno_text("connect", errno)};
    if (!wait_ready(s.fd(), POLLOUT, call_end, context)) return {"connect: timed out"};
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return {errno_text("connect", err)};
  }
  for (std::size_t sent = 0; sent < request.size();) {
    const ssize_t n = ::send(s.fd(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<std::size_t>(n);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(s.fd(), POLLOUT, call_end, context)) return {"send: timed out"};
    } else if (errno != EINTR) {
      return {errno_text("send", errno)};
    }
  }
  std::string head;  // the status line and headers; the body (if any) is not needed
  char chunk[1024];
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < 16384) {
    const ssize_t n = ::recv(s.fd(), chunk, sizeof chunk, 0);
    if (n > 0) {
      head.append(chunk, static_cast<std::size_t>(n));
    } else if (n == 0) {
      break;  // the server closed: a complete head is still a reply
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(s.fd(), POLLIN, call_end, context)) return {"no reply: timed out"};
    } else if (errno != EINTR) {
      return {errno_text("recv", errno)};
    }
  }
  // "HTTP/1.1 200 OK\r\n..."
  int status = 0;
  if (head.size() < 12 || head.compare(0, 5, "HTTP/") != 0 ||
      std::from_chars(head.data() + 9, head.data() + 12, status).ec != std::errc()) {
    return {head.empty() ? "no reply: connection closed" : "malformed reply"};
  }
  const std::size_t end = head.find("\r\n\r\n");
  return {"", status, retry_after(std::string_view(head).substr(0, end))};
}

// POSTs each batch to http://127.0.0.1:<port>/audit. Called by up to max_in_flight threads at
// once: it keeps no per-call state.
class Webhook {
 public:
  Webhook(std::uint16_t port, std::string run_id) : port_(port), run_id_(std::move(run_id)) {}

  buffered::Outcome process_events(std::span<examples::AuditEvent> batch,
                                   const buffered::BatchContext& context) {
    if (Clock::now() >= context.deadline()) return buffered::Outcome::retry();  // too late
    const std::string request = make_request(batch);
    const Reply reply = post(port_, request, context);
    if (reply.error.empty() && reply.status >= 200 && reply.status < 300) {
      return buffered::Outcome::delivered();
    }
    const bool retryable = !reply.error.empty() || reply.status == 429 || reply.status == 502 ||
                           reply.status == 503 || reply.status == 504;
    std::string why = reply.error;
    if (why.empty()) why = "HTTP " + std::to_string(reply.status);
    if (reply.retry_after.count() > 0) {
      why += ", Retry-After " + std::to_string(reply.retry_after.count()) + " s";
    }
    const char* verdict = !retryable                           ? "permanent"
                          : Clock::now() >= context.deadline() ? "retryable, but shutting down"
                                                               : "retryable";
    log(context.attempt(), batch, why, verdict);
    if (!retryable) return buffered::Outcome::permanent_failure();
    return buffered::Outcome::retry(reply.retry_after);  // 0: the configured backoff
  }
  std::string name() const { return "webhook:127.0.0.1:" + std::to_string(port_); }

 private:
  // The JSON array of the batch. An event's id is made of the run's id and its seq, both fixed
  // when the event was made, so every attempt sends the same ids: a receiver that stores each
  // id once (a primary key) turns at-least-once delivery into exactly-once.
  std::string make_request(std::span<const examples::AuditEvent> batch) const {
    std::string body = "[";
    for (const examples::AuditEvent& e : batch) {
      if (body.size() > 1) body += ',';
      body += "{\"id\":\"" + run_id_ + '-' + std::to_string(e.seq) +
              "\",\"user\":" + std::to_string(e.user) + ",\"seq\":" + std::to_string(e.seq) +
              ",\"verb\":\"" + e.verb + "\"}";  // the example's verbs need no escaping
    }
    body += ']';
    return "POST /audit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           "Content-Length: " +
           std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  }

  void log(std::size_t attempt, std::span<const examples::AuditEvent> batch, const std::string& why,
           const char* verdict) const {
    const std::lock_guard<std::mutex> lock(log_mu_);
    std::printf("attempt %zu of events %lu..%lu: %s (%s)\n", attempt, batch.front().seq,
                batch.back().seq, why.c_str(), verdict);
    std::fflush(stdout);  // a test reads these lines as they come
  }

  std::uint16_t port_;
  std::string run_id_;
  mutable std::mutex log_mu_;
};

std::string random_run_id() {
  std::random_device rd;
  char text[17];
  std::snprintf(text, sizeof text, "%08x%08x", rd(), rd());
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  const bool fast = argc == 6 && std::string_view(argv[5]) == "--fast-retry";
  if (argc != 5 && !fast) {
    std::fprintf(stderr,
                 "usage: buffered_webhook <port> <events> <events-per-second> <lost-ids-file> "
                 "[--fast-retry]\n");
    return 2;
  }
  const auto port = static_cast<std::uint16_t>(std::stoi(argv[1]));
  const unsigned long events = std::stoul(argv[2]);
  const double rate = std::stod(argv[3]);
  std::ofstream lost_ids(argv[4]);

  buffered::BatchConfig config;  // the Kubernetes audit webhook's batching defaults
  config.buffer_size = 10000;
  config.max_batch_size = 400;
  config.max_batch_wait = std::chrono::seconds(30);
  config.throttle = buffered::Throttle{10, 15};  // every attempt takes a token, retries too
  config.async_delegate = true;
  config.overflow = buffered::OverflowPolicy::block;
  config.retry = fast ? fast_retry() : kubernetes_retry();
  std::mutex mu;
  unsigned long failed = 0;
  unsigned long abandoned = 0;
  // Called once per batch that is lost for good: after its last attempt (delegate_failed), or
  // when a shutdown deadline came first (abandoned).
  auto on_error = [&](buffered::ErrorKind kind, std::span<const examples::AuditEvent> lost) {
    const std::lock_guard<std::mutex> lock(mu);
    if (kind == buffered::ErrorKind::delegate_failed) failed += lost.size();
    if (kind == buffered::ErrorKind::abandoned) abandoned += lost.size();
    for (const auto& e : lost) lost_ids << e.seq << '\n';
  };
  Webhook hook(port, random_run_id());
  buffered::BufferedBackend<examples::AuditEvent, Webhook&> backend(hook, config, on_error);
  backend.run();

  // Small batches while the rate is low: flush every 200 events so the run shows several POSTs.
  // A flush waits for a batch that is retrying, so the producer falls behind during an outage
  // and then catches up: the buffer absorbs it.
  const auto t0 = Clock::now();
  for (unsigned long i = 0; i < events; ++i) {
    backend.process_event(examples::AuditEvent{1, i, "create"});
    if (i % 200 == 199) backend.flush(std::chrono::seconds(5));
    std::this_thread::sleep_until(t0 +
                                  std::chrono::duration<double>(static_cast<double>(i + 1) / rate));
  }
  const auto s0 = Clock::now();
  const bool clean = backend.shutdown(std::chrono::seconds(20));
  const double shutdown_ms = std::chrono::duration<double, std::milli>(Clock::now() - s0).count();
  std::printf("%s: shutdown took %.0f ms, %s\n", backend.name().c_str(), shutdown_ms,
              clean ? "nothing abandoned" : "some events abandoned");
  const buffered::Stats s = backend.stats();
  examples::print_stats(s);
  std::printf("retries    %llu\n", static_cast<unsigned long long>(s.retries));
  std::printf("reported failed: %lu, abandoned: %lu\n", failed, abandoned);
  return s.accepted == events && s.delivered + s.failed + s.abandoned == events && s.pending == 0
             ? 0
             : 1;
}
