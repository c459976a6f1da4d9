// An HTTP webhook as the sink: each batch is POSTed as one JSON array with libcurl, with the
// Kubernetes audit webhook's defaults (async, batches of 400, 10 batches/s with a burst of 15,
// and its retry: 10 s backoff, x1.5, jitter 0.2, 5 attempts). The delegate tells the backend how
// each attempt went, as an Outcome, mapping HTTP the way the OpenTelemetry Collector's exporters
// do:
//   2xx                                              delivered
//   429, 502, 503, 504                               retry (after Retry-After if the reply has it)
//   no connection, no reply, timed out               retry
//   any other status (400, 404, 500, ...), a bad URL or TLS setup   permanent failure
// It takes the BatchContext too: curl's connect and total timeouts come from the earlier of the
// call's own limit and the context's deadline, and since that deadline is live (a
// shutdown(timeout) called meanwhile moves it nearer) the transfer runs on a curl multi handle
// that checks it again every 10 ms, so a call ends by the deadline of a shutdown(timeout)
// instead of outliving it. Each JSON event carries an id that every attempt repeats, so a
// receiver can drop duplicates: under retry, delivery to the sink is at least once (an attempt
// whose reply was lost is sent again). Events reported lost (failed or abandoned) have their seq
// numbers written to a file, for the test.
//
//   buffered_webhook <port> <events> <events-per-second> <lost-ids-file> [--fast-retry]
//
// --fast-retry scales the backoff down for the test: 50 ms, x2, at most 400 ms, jitter 0.2, 10
// attempts (waits of at least 2.2 s in all, enough to outlast a server that is down a while).
#include <buffered/buffered_backend.hpp>

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
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

// How one POST went: a transport error (`error` set, `retryable` or not), or the reply's status
// and Retry-After.
struct Reply {
  std::string error;
  bool retryable = true;
  long status = 0;
  std::chrono::seconds retry_after{0};
};

// curl errors that no retry can fix: the request or the client is set up wrongly. Every other
// error (no connection, connection reset, no reply, timed out) is a transport failure worth
// another attempt.
bool permanent_curl_error(CURLcode code) {
  switch (code) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_OUT_OF_MEMORY:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_TOO_MANY_REDIRECTS:
      return true;
    default:
      return false;
  }
}

struct EasyDeleter {
  void operator()(CURL* h) const { curl_easy_cleanup(h); }
};
struct MultiDeleter {
  void operator()(CURLM* h) const { curl_multi_cleanup(h); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

std::size_t discard_body(char*, std::size_t size, std::size_t count, void*) { return size * count; }

long millis_until(Clock::time_point end) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(end - Clock::now()).count();
  return static_cast<long>(std::max<decltype(left)>(left, 1));
}

// POSTs `body` to `url`, and reads the reply's status and Retry-After header.
Reply post(const std::string& url, const std::string& body, const buffered::BatchContext& context) {
  const Clock::time_point end = std::min(Clock::now() + kCallTimeout, context.deadline());
  const std::unique_ptr<CURL, EasyDeleter> easy(curl_easy_init());
  const std::unique_ptr<CURLM, MultiDeleter> multi(curl_multi_init());
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Expect:");  // no 100-continue round trip
  const std::unique_ptr<curl_slist, SlistDeleter> header_list(headers);
  if (!easy || !multi || !headers) return {"curl: out of memory", true};
  CURL* h = easy.get();
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);  // several threads: no SIGALRM for timeouts
  // The deadline as it is now; the loop below follows it if it moves nearer.
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, millis_until(end));
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, millis_until(end));
  curl_multi_add_handle(multi.get(), h);
  int running = 1;
  CURLcode code = CURLE_OK;
  bool timed_out = false;
  while (running > 0) {
    if (curl_multi_perform(multi.get(), &running) != CURLM_OK) break;
    if (running == 0) break;
    if (Clock::now() >= std::min(end, context.deadline())) {
      timed_out = true;
      break;
    }
    curl_multi_poll(multi.get(), nullptr, 0, 10, nullptr);
  }
  int queued = 0;
  while (CURLMsg* m = curl_multi_info_read(multi.get(), &queued)) {
    if (m->msg == CURLMSG_DONE) code = m->data.result;
  }
  curl_multi_remove_handle(multi.get(), h);
  if (timed_out) return {"timed out (the call's limit or the shutdown deadline)", true};
  if (code != CURLE_OK) return {curl_easy_strerror(code), !permanent_curl_error(code)};
  Reply reply;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &reply.status);
  curl_off_t retry_after = 0;  // seconds: curl reads both forms, seconds and an HTTP date
  curl_easy_getinfo(h, CURLINFO_RETRY_AFTER, &retry_after);
  // A shutdown deadline cuts any wait short; the cap only keeps the arithmetic sane.
  reply.retry_after = std::chrono::seconds(std::clamp<curl_off_t>(retry_after, 0, 3600));
  return reply;
}

// POSTs each batch to http://127.0.0.1:<port>/audit. Called by up to max_in_flight threads at
// once: it keeps no per-call state.
class Webhook {
 public:
  Webhook(std::uint16_t port, std::string run_id)
      : url_("http://127.0.0.1:" + std::to_string(port) + "/audit"), run_id_(std::move(run_id)) {}

  buffered::Outcome process_events(std::span<examples::AuditEvent> batch,
                                   const buffered::BatchContext& context) {
    if (Clock::now() >= context.deadline()) return buffered::Outcome::retry();  // too late
    const Reply reply = post(url_, make_body(batch), context);
    if (reply.error.empty() && reply.status >= 200 && reply.status < 300) {
      return buffered::Outcome::delivered();
    }
    const bool retryable = reply.error.empty() ? reply.status == 429 || reply.status == 502 ||
                                                     reply.status == 503 || reply.status == 504
                                               : reply.retryable;
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
  std::string name() const { return "webhook:" + url_; }

 private:
  // The JSON array of the batch. An event's id is made of the run's id and its seq, both fixed
  // when the event was made, so every attempt sends the same ids: a receiver that stores each
  // id once (a primary key) turns at-least-once delivery into exactly-once.
  std::string make_body(std::span<const examples::AuditEvent> batch) const {
    std::string body = "[";
    for (const examples::AuditEvent& e : batch) {
      if (body.size() > 1) body += ',';
      body += "{\"id\":\"" + run_id_ + '-' + std::to_string(e.seq) +
              "\",\"user\":" + std::to_string(e.user) + ",\"seq\":" + std::to_string(e.seq) +
              ",\"verb\":\"" + e.verb + "\"}";  // the example's verbs need no escaping
    }
    body += ']';
    return body;
  }

  void log(std::size_t attempt, std::span<const examples::AuditEvent> batch, const std::string& why,
           const char* verdict) const {
    const std::lock_guard<std::mutex> lock(log_mu_);
    std::printf("attempt %zu of events %lu..%lu: %s (%s)\n", attempt, batch.front().seq,
                batch.back().seq, why.c_str(), verdict);
    std::fflush(stdout);  // a test reads these lines as they come
  }

  std::string url_;
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
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {  // once, before any thread uses curl
    std::fprintf(stderr, "curl_global_init failed\n");
    return 1;
  }
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
