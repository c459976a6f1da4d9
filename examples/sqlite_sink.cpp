// SQLite as the sink: each batch is inserted in one transaction. Prints events/s with batching
// and with max_batch_size = 1 (one transaction, so one journal sync, per event) on the same
// machine: the measured reason to batch.
//
//   buffered_sqlite [database-path] [events]
#include <buffered/buffered_backend.hpp>

#include <sqlite3.h>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "report.hpp"

namespace {

struct Row {
  long long id = 0;
  std::string body;
};

class SqliteSink {
 public:
  explicit SqliteSink(const std::string& path) {
    std::remove(path.c_str());
    if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK)
      throw std::runtime_error("sqlite3_open failed");
    exec("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL)");
    if (sqlite3_prepare_v2(db_, "INSERT INTO events (id, body) VALUES (?, ?)", -1, &insert_,
                           nullptr) != SQLITE_OK) {
      throw std::runtime_error(sqlite3_errmsg(db_));
    }
  }
  ~SqliteSink() {
    sqlite3_finalize(insert_);
    sqlite3_close(db_);
  }
  SqliteSink(const SqliteSink&) = delete;
  SqliteSink& operator=(const SqliteSink&) = delete;

  // One transaction per batch; throws (the batch is reported failed) if any insert fails.
  void process_events(std::span<Row> batch) {
    exec("BEGIN");
    for (const Row& r : batch) {
      sqlite3_bind_int64(insert_, 1, r.id);
      sqlite3_bind_text(insert_, 2, r.body.c_str(), static_cast<int>(r.body.size()), SQLITE_STATIC);
      const int rc = sqlite3_step(insert_);
      sqlite3_reset(insert_);
      if (rc != SQLITE_DONE) {
        exec("ROLLBACK");
        throw std::runtime_error(sqlite3_errmsg(db_));
      }
    }
    exec("COMMIT");
  }
  std::string name() const { return "sqlite"; }

  long long count() {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db_, "SELECT count(DISTINCT id) FROM events", -1, &st, nullptr);
    sqlite3_step(st);
    const long long n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
  }

 private:
  void exec(const char* sql) {
    char* error = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &error) != SQLITE_OK) {
      std::string message = error ? error : "sqlite3_exec failed";
      sqlite3_free(error);
      throw std::runtime_error(message);
    }
  }
  sqlite3* db_ = nullptr;
  sqlite3_stmt* insert_ = nullptr;
};

// Returns events/s, or -1 if the rows in the table do not match.
double run(const std::string& path, std::size_t max_batch, long long events) {
  SqliteSink db(path);
  buffered::BatchConfig config;
  config.max_batch_size = max_batch;
  config.max_batch_wait = std::chrono::milliseconds(20);
  config.overflow = buffered::OverflowPolicy::block;
  const auto t0 = std::chrono::steady_clock::now();
  {
    buffered::BufferedBackend<Row, SqliteSink&> backend(db, config);
    backend.run();
    for (long long i = 0; i < events; ++i)
      backend.process_event(Row{i, "event " + std::to_string(i)});
    backend.shutdown();
    std::printf("%s, max_batch_size %zu:\n", backend.name().c_str(), max_batch);
    examples::print_stats(backend.stats());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return db.count() == events ? static_cast<double>(events) / seconds : -1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "buffered-example.sqlite";
  const long long events = argc > 2 ? std::stoll(argv[2]) : 20000;
  const double batched = run(path, 400, events);
  const double single = run(path, 1, std::max(100LL, events / 20));  // it is slow: fewer events
  std::printf(
      "batched (400): %.0f events/s; one per transaction: %.0f events/s; batching is %.1fx "
      "faster\n",
      batched, single, batched / single);
  if (batched < 0 || single < 0) {
    std::printf("MISMATCH: the table does not hold every event exactly once\n");
    return 1;
  }
  return 0;
}
