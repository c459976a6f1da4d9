// PostgreSQL as the sink, through libpq: each batch is one multi-row
//   INSERT INTO events (id, body) VALUES ($1, $2), ($3, $4), ... ON CONFLICT (id) DO NOTHING
// sent in one round trip (one statement, so one transaction and one commit per batch). The
// table's primary key is the event's id, fixed when the event is made, so a batch that is sent
// again (its commit happened but the reply was lost) inserts nothing twice: with retry, every
// event ends in the table exactly once.
//
// The sink keeps one connection and makes a new one when it is lost; it connects and waits for
// replies without blocking, never past the earlier of its own call timeout and the
// BatchContext's deadline (live: a shutdown(timeout) called meanwhile cuts the wait short). A
// statement still running at that point is cancelled and the connection dropped. How a failed
// attempt is classed (the SQLSTATE of the error, or no connection at all):
//   no connection, connection lost (08...), server shutting down or starting (57P..),
//   cancelled (57014), out of resources (53...), serialization failure or deadlock (40...)
//                                                                          retry
//   anything else (a data or constraint error, bad SQL, no permission)     permanent failure
//
//   buffered_postgres <conninfo> bench <events>
//     events/s with batches of up to 400 versus max_batch_size = 1 (one round trip and one
//     commit per event) on the same server, into a fresh table each.
//   buffered_postgres <conninfo> fault <events> <events-per-second>
//     two producers write at the given total rate, with retry (50 ms doubling to 500 ms, 12
//     attempts); prints "producing" when they start, so a test can restart the server meanwhile.
//     The reply to the third batch is "lost" on purpose (the rows are committed, the sink drops
//     the connection and says retry), so one batch is sent twice. Then checks the table holds
//     ids 0..events-1, each once.
// Both exit 0 only if the table holds every event exactly once and nothing was reported lost.
#include <buffered/buffered_backend.hpp>

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "report.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// One attempt's own limit, when no shutdown deadline is nearer: a server that hangs fails the
// attempt (to be retried) instead of stalling the batch for ever.
constexpr auto kCallTimeout = std::chrono::seconds(5);

struct Row {
  long long id = 0;
  std::string body;
};

// Waits until `fd` is ready for `events`, but never past `end` nor the context's (live)
// deadline, which is read again every 10 ms. False when time ran out or poll failed.
bool wait_ready(int fd, short events, Clock::time_point end,
                const buffered::BatchContext& context) {
  for (;;) {
    const Clock::time_point until = std::min(end, context.deadline());
    const Clock::time_point now = Clock::now();
    if (now >= until) return false;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - now).count();
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<decltype(left)>(left, 10)));
    if (n > 0) return true;  // ready, or an error that libpq reports on its next call
    if (n < 0 && errno != EINTR) return false;
  }
}

// True for the SQLSTATEs worth another attempt (see the table at the top).
bool retryable_sqlstate(std::string_view state) {
  if (state.size() != 5) return true;  // no SQLSTATE: the connection failed, not the statement
  const std::string_view cls = state.substr(0, 2);
  return cls == "08" || cls == "57" || cls == "53" || cls == "40";
}

std::string first_line(const char* text) {
  std::string s = text ? text : "";
  const std::size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

class PostgresSink {
 public:
  explicit PostgresSink(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  ~PostgresSink() { disconnect(); }
  PostgresSink(const PostgresSink&) = delete;
  PostgresSink& operator=(const PostgresSink&) = delete;

  // Called by one thread at a time (the backend is sync): the connection is not shared.
  buffered::Outcome process_events(std::span<Row> batch, const buffered::BatchContext& context) {
    const Clock::time_point end = Clock::now() + kCallTimeout;
    std::string error;
    std::string state;
    if (!conn_ && !connect(end, context, error)) return fail(context, batch, error, "", true);
    build_statement(batch);
    if (PQsendQueryParams(conn_, sql_.c_str(), static_cast<int>(values_.size()), nullptr,
                          values_.data(), nullptr, nullptr, 0) == 0) {
      error = first_line(PQerrorMessage(conn_));
      disconnect();
      return fail(context, batch, "send: " + error, "", true);
    }
    PGresult* result = nullptr;
    if (!await_result(end, context, result, error)) {
      cancel();  // it may still commit: the retry's ON CONFLICT DO NOTHING makes that harmless
      disconnect();
      return fail(context, batch, error, "", true);
    }
    const bool ok = PQresultStatus(result) == PGRES_COMMAND_OK;
    if (ok) {
      committed_ += batch.size();
      inserted_ += std::strtoull(PQcmdTuples(result), nullptr, 10);
    } else {
      const char* s = PQresultErrorField(result, PG_DIAG_SQLSTATE);
      state = s ? s : "";
      error = first_line(PQresultErrorMessage(result));
    }
    PQclear(result);
    if (ok && lose_reply_of_batch_ != 0 && ++batches_ == lose_reply_of_batch_) {
      // The injected fault: the rows are committed, but the reply is "lost" (we drop the
      // connection as if it broke just then), so this batch is sent again in full.
      disconnect();
      return fail(context, batch, "reply lost (injected after the commit)", "", true);
    }
    if (ok) return buffered::Outcome::delivered();
    if (PQstatus(conn_) == CONNECTION_BAD) disconnect();
    return fail(context, batch, error, state, retryable_sqlstate(state));
  }

  // For the fault run: the n-th batch that commits is answered as if its reply were lost.
  void lose_reply_of_batch(unsigned long n) { lose_reply_of_batch_ = n; }

  void shutdown() { disconnect(); }
  std::string name() const { return "postgres"; }

  unsigned long connections() const { return connections_; }
  // Rows in statements that committed, and of those the ones new to the table (the rest were
  // there already: ON CONFLICT DO NOTHING skipped them).
  unsigned long long committed() const { return committed_; }
  unsigned long long inserted() const { return inserted_; }

 private:
  // Connects without blocking: PQconnectStart, then PQconnectPoll until done or out of time.
  bool connect(Clock::time_point end, const buffered::BatchContext& context, std::string& error) {
    conn_ = PQconnectStart(conninfo_.c_str());
    if (!conn_) {
      error = "connect: out of memory";
      return false;
    }
    PostgresPollingStatusType poll_status = PGRES_POLLING_WRITING;
    while (PQstatus(conn_) != CONNECTION_BAD) {
      if (poll_status == PGRES_POLLING_OK) {
        PQsetnonblocking(conn_, 1);
        ++connections_;
        return true;
      }
      if (poll_status == PGRES_POLLING_FAILED) break;
      const short events = poll_status == PGRES_POLLING_READING ? POLLIN : POLLOUT;
      if (!wait_ready(PQsocket(conn_), events, end, context)) {
        error = "connect: timed out";
        disconnect();
        return false;
      }
      poll_status = PQconnectPoll(conn_);
    }
    error = "connect: " + first_line(PQerrorMessage(conn_));
    disconnect();
    return false;
  }

  // Sends what is left of the query and reads until its result is complete. On success `result`
  // is the statement's result (the first one, the rest are consumed).
  bool await_result(Clock::time_point end, const buffered::BatchContext& context, PGresult*& result,
                    std::string& error) {
    for (;;) {
      const int flushed = PQflush(conn_);  // 0: all sent, 1: more to send, -1: failed
      if (flushed < 0) break;
      // PQgetResult blocks unless PQisBusy says the next result is all here: ask each time.
      while (flushed == 0 && !PQisBusy(conn_)) {
        PGresult* r = PQgetResult(conn_);
        if (!r) {  // the query is done
          if (result) return true;
          error = "no result: " + first_line(PQerrorMessage(conn_));
          return false;
        }
        if (result) {
          PQclear(r);
        } else {
          result = r;
        }
      }
      const short events = static_cast<short>(POLLIN | (flushed == 1 ? POLLOUT : 0));
      if (!wait_ready(PQsocket(conn_), events, end, context)) {
        if (result) PQclear(result);
        result = nullptr;
        error = "no reply: timed out";
        return false;
      }
      if (PQconsumeInput(conn_) == 0) break;
    }
    if (result) PQclear(result);
    result = nullptr;
    error = "connection lost: " + first_line(PQerrorMessage(conn_));
    return false;
  }

  void cancel() {
    if (PGcancel* c = PQgetCancel(conn_)) {
      char ignored[256];
      PQcancel(c, ignored, sizeof ignored);
      PQfreeCancel(c);
    }
  }

  void disconnect() {
    if (conn_) PQfinish(conn_);
    conn_ = nullptr;
  }

  // The multi-row INSERT and its parameters (text format), rebuilt for each batch.
  void build_statement(std::span<const Row> batch) {
    sql_ = "INSERT INTO events (id, body) VALUES ";
    ids_.resize(batch.size());
    values_.clear();
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (i > 0) sql_ += ',';
      sql_ += "($" + std::to_string(2 * i + 1) + ",$" + std::to_string(2 * i + 2) + ')';
      ids_[i] = std::to_string(batch[i].id);
      values_.push_back(ids_[i].c_str());
      values_.push_back(batch[i].body.c_str());
    }
    sql_ += " ON CONFLICT (id) DO NOTHING";
  }

  buffered::Outcome fail(const buffered::BatchContext& context, std::span<const Row> batch,
                         const std::string& why, const std::string& state, bool retryable) const {
    const char* verdict = !retryable                           ? "permanent"
                          : Clock::now() >= context.deadline() ? "retryable, but shutting down"
                                                               : "retryable";
    const std::string what = state.empty() ? why : "SQLSTATE " + state + ": " + why;
    std::printf("attempt %zu of ids %lld..%lld: %s (%s)\n", context.attempt(), batch.front().id,
                batch.back().id, what.c_str(), verdict);
    std::fflush(stdout);  // a test reads these lines as they come
    return retryable ? buffered::Outcome::retry() : buffered::Outcome::permanent_failure();
  }

  std::string conninfo_;
  PGconn* conn_ = nullptr;
  std::string sql_;
  std::vector<std::string> ids_;
  std::vector<const char*> values_;
  unsigned long connections_ = 0;
  unsigned long long committed_ = 0;
  unsigned long long inserted_ = 0;
  unsigned long lose_reply_of_batch_ = 0;
  unsigned long batches_ = 0;  // that committed
};

// Blocking helpers for the setup and the final check (not on the backend's path).
class Session {
 public:
  explicit Session(const std::string& conninfo) : conn_(PQconnectdb(conninfo.c_str())) {
    if (PQstatus(conn_) != CONNECTION_OK) {
      const std::string error = first_line(PQerrorMessage(conn_));
      PQfinish(conn_);
      throw std::runtime_error("connect: " + error);
    }
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);  // "does not exist, skipping"
  }
  ~Session() { PQfinish(conn_); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void exec(const char* sql) {
    PGresult* r = PQexec(conn_, sql);
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    const std::string error = first_line(PQresultErrorMessage(r));
    PQclear(r);
    if (!ok) throw std::runtime_error(std::string(sql) + ": " + error);
  }
  // The first row of a query's result, as text.
  std::vector<std::string> row(const char* sql) {
    PGresult* r = PQexec(conn_, sql);
    std::vector<std::string> values;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0) {
      for (int i = 0; i < PQnfields(r); ++i) values.emplace_back(PQgetvalue(r, 0, i));
    }
    PQclear(r);
    if (values.empty()) throw std::runtime_error(std::string(sql) + ": no row");
    return values;
  }

 private:
  PGconn* conn_;
};

void create_table(const std::string& conninfo) {
  Session s(conninfo);
  s.exec("DROP TABLE IF EXISTS events");
  s.exec("CREATE TABLE events (id bigint PRIMARY KEY, body text NOT NULL)");
}

// Checks that the table holds ids 0..events-1, each exactly once; prints what it found.
bool table_holds_each_once(const std::string& conninfo, long long events) {
  Session s(conninfo);
  const auto r = s.row(
      "SELECT count(*), count(DISTINCT id), coalesce(min(id), -1), coalesce(max(id), -1) "
      "FROM events");
  std::printf("table: count(*) %s, count(DISTINCT id) %s, ids %s..%s\n", r[0].c_str(), r[1].c_str(),
              r[2].c_str(), r[3].c_str());
  return std::stoll(r[0]) == events && std::stoll(r[1]) == events && std::stoll(r[2]) == 0 &&
         std::stoll(r[3]) == events - 1;
}

std::string body_of(long long id) {
  return "{\"user\":" + std::to_string(id % 7) + ",\"seq\":" + std::to_string(id) +
         ",\"verb\":\"create\"}";
}

struct LossCounter {
  std::mutex mu;
  unsigned long failed = 0;
  unsigned long abandoned = 0;
  void operator()(buffered::ErrorKind kind, std::span<const Row> lost) {
    const std::lock_guard<std::mutex> lock(mu);
    if (kind == buffered::ErrorKind::delegate_failed) failed += lost.size();
    if (kind == buffered::ErrorKind::abandoned) abandoned += lost.size();
  }
};

// One producer writes `events` rows as fast as the backend takes them; returns events/s, or -1
// if the table does not hold every event once.
double bench(const std::string& conninfo, std::size_t max_batch, long long events) {
  create_table(conninfo);
  PostgresSink sink(conninfo);
  buffered::BatchConfig config;
  config.max_batch_size = max_batch;
  config.max_batch_wait = std::chrono::milliseconds(20);
  config.overflow = buffered::OverflowPolicy::block;
  LossCounter losses;
  const auto t0 = Clock::now();
  {
    buffered::BufferedBackend<Row, PostgresSink&> backend(
        sink, config, [&](buffered::ErrorKind k, std::span<const Row> lost) { losses(k, lost); });
    backend.run();
    for (long long i = 0; i < events; ++i) backend.process_event(Row{i, body_of(i)});
    backend.shutdown();
    std::printf("%s, max_batch_size %zu:\n", backend.name().c_str(), max_batch);
    examples::print_stats(backend.stats());
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const bool exact = table_holds_each_once(conninfo, events);
  return exact && losses.failed == 0 && losses.abandoned == 0
             ? static_cast<double>(events) / seconds
             : -1;
}

int run_bench(const std::string& conninfo, long long events) {
  const double batched = bench(conninfo, 400, events);
  const double single = bench(conninfo, 1, std::max(100LL, events / 10));  // slow: fewer events
  std::printf(
      "batched (400): %.0f events/s; one per statement: %.0f events/s; batching is %.1fx "
      "faster\n",
      batched, single, batched / single);
  if (batched < 0 || single < 0) {
    std::printf("MISMATCH: the table does not hold every event exactly once\n");
    return 1;
  }
  return 0;
}

int run_fault(const std::string& conninfo, long long events, double rate) {
  create_table(conninfo);
  PostgresSink sink(conninfo);
  sink.lose_reply_of_batch(3);  // a retry of rows already committed: ON CONFLICT skips them
  buffered::BatchConfig config;
  config.max_batch_size = 400;
  config.max_batch_wait = std::chrono::milliseconds(50);
  config.overflow = buffered::OverflowPolicy::block;  // the buffer absorbs the outage, then waits
  buffered::Retry retry;
  retry.max_attempts = 12;  // waits of at least 4 s in all: outlasts a restart of a second or two
  retry.initial_backoff = std::chrono::milliseconds(50);
  retry.multiplier = 2.0;
  retry.max_backoff = std::chrono::milliseconds(500);
  config.retry = retry;
  LossCounter losses;
  buffered::BufferedBackend<Row, PostgresSink&> backend(
      sink, config, [&](buffered::ErrorKind k, std::span<const Row> lost) { losses(k, lost); });
  backend.run();

  constexpr int kProducers = 2;
  std::printf("producing %lld events at %.0f/s from %d threads\n", events, rate, kProducers);
  std::fflush(stdout);
  const auto t0 = Clock::now();
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      // Producer p writes ids p, p + kProducers, ...: between them, 0..events-1.
      for (long long i = p; i < events; i += kProducers) {
        backend.process_event(Row{i, body_of(i)});
        std::this_thread::sleep_until(
            t0 + std::chrono::duration<double>(static_cast<double>(i + 1) / rate));
      }
    });
  }
  for (std::thread& t : producers) t.join();
  const double produce_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const bool clean = backend.shutdown(std::chrono::seconds(30));
  const buffered::Stats s = backend.stats();
  std::printf("%s: produced for %.1f s, shutdown %s\n", backend.name().c_str(), produce_s,
              clean ? "clean" : "abandoned events");
  examples::print_stats(s);
  std::printf("retries    %llu\n", static_cast<unsigned long long>(s.retries));
  std::printf("connections made: %lu; rows inserted %llu, duplicates skipped by ON CONFLICT %llu\n",
              sink.connections(), sink.inserted(), sink.committed() - sink.inserted());
  std::printf("reported failed: %lu, abandoned: %lu\n", losses.failed, losses.abandoned);
  const bool exact = table_holds_each_once(conninfo, events);
  const bool counted = s.accepted == static_cast<std::uint64_t>(events) &&
                       s.delivered == s.accepted && s.failed == 0 && s.abandoned == 0 &&
                       s.pending == 0 && losses.failed == 0 && losses.abandoned == 0;
  if (!exact || !counted) {
    std::printf("MISMATCH: %s\n", exact ? "the backend's counts" : "the table's rows");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view mode = argc > 2 ? argv[2] : "";
  if (!((mode == "bench" && argc == 4) || (mode == "fault" && argc == 5))) {
    std::fprintf(stderr,
                 "usage: buffered_postgres <conninfo> bench <events>\n"
                 "       buffered_postgres <conninfo> fault <events> <events-per-second>\n");
    return 2;
  }
  try {
    if (mode == "bench") return run_bench(argv[1], std::stoll(argv[3]));
    return run_fault(argv[1], std::stoll(argv[3]), std::stod(argv[4]));
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
}
