// Thread creation failure (issue 8): pthread_create made to fail (EAGAIN, as at the system's
// thread limit) at each thread run() makes. A failed run() leaves the backend as it was before
// the call: no thread left behind, the delegate shut down again if its run() succeeded; a later
// run() works and makes exactly the threads it should; a shutdown() instead behaves as on a
// backend that never ran.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <limits>
#include <mutex>
#include <ostream>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "../support.hpp"
#include "fault_injection.hpp"

namespace {

using namespace buffered_test;
using buffered_test::fault::Mode;

constexpr std::size_t kMaxInFlight = 4;
constexpr auto kPointLimit = std::chrono::seconds(30);

// Aborts the binary, naming the case, if one hangs; its thread is made before anything is
// counted, once for the whole binary.
class HangWatch {
 public:
  static HangWatch& instance() {
    static HangWatch watch;
    return watch;
  }
  void start(const char* what, std::uint64_t k) {
    what_.store(what);
    k_.store(k);
    deadline_.store((Clock::now() + kPointLimit).time_since_epoch().count());
  }
  void stop() { deadline_.store(kNone); }
  ~HangWatch() {
    quit_.store(true);
    thread_.join();
  }

 private:
  static constexpr Clock::rep kNone = std::numeric_limits<Clock::rep>::max();
  HangWatch()
      : thread_([this] {
          while (!quit_.load()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            if (Clock::now().time_since_epoch().count() > deadline_.load()) {
              std::fprintf(stderr, "thread_failure_test: hang in %s, k=%" PRIu64 "\n", what_.load(),
                           k_.load());
              std::fflush(stderr);
              std::abort();
            }
          }
        }) {}
  std::atomic<const char*> what_{"none"};
  std::atomic<std::uint64_t> k_{0};
  std::atomic<Clock::rep> deadline_{kNone};
  std::atomic<bool> quit_{false};
  std::thread thread_;
};

// Watches one case: stops watching when it ends, however it ends.
class Watched {
 public:
  Watched(const char* what, std::uint64_t k) { HangWatch::instance().start(what, k); }
  ~Watched() { HangWatch::instance().stop(); }
  Watched(const Watched&) = delete;
  Watched& operator=(const Watched&) = delete;
};

// Threads of this process now. Joined threads leave /proc asynchronously: poll for a count.
std::size_t live_threads() {
  const std::filesystem::directory_iterator tasks("/proc/self/task");
  return static_cast<std::size_t>(std::distance(begin(tasks), end(tasks)));
}

bool threads_back_to(std::size_t baseline) {
  return eventually([&] { return live_threads() <= baseline; }, std::chrono::seconds(5));
}

constexpr std::uint64_t kEvents = 16;

// What the delegate and the handler saw.
struct Record {
  std::vector<std::atomic<int>> delivered = std::vector<std::atomic<int>>(kEvents);
  std::vector<std::atomic<int>> abandoned = std::vector<std::atomic<int>>(kEvents);
  std::atomic<int> other_reports{0};
  std::atomic<int> run_calls{0};
  std::atomic<int> shutdown_calls{0};
  std::atomic<int> fail_next_run{0};          // delegate.run() throws this many more times
  std::vector<std::uint64_t> threads_at_run;  // threads_created() when delegate.run() began
  std::mutex mu;
};

class LifecycleSink {
 public:
  explicit LifecycleSink(Record& record) : record_(&record) {}
  void process_events(std::span<Event> events) {
    for (const Event& e : events) record_->delivered.at(e.seq).fetch_add(1);
  }
  void run() {
    {
      std::lock_guard<std::mutex> lock(record_->mu);
      record_->threads_at_run.push_back(fault::threads_created());
    }
    record_->run_calls.fetch_add(1);
    if (record_->fail_next_run.load() > 0) {
      record_->fail_next_run.fetch_sub(1);
      throw std::runtime_error("delegate.run() fails");
    }
  }
  void shutdown() { record_->shutdown_calls.fetch_add(1); }

 private:
  Record* record_;
};

struct Handler {
  Record* record;
  void operator()(buffered::ErrorKind kind, std::span<const Event> events) const {
    for (const Event& e : events) {
      if (kind == buffered::ErrorKind::abandoned) {
        record->abandoned.at(e.seq).fetch_add(1);
      } else {
        record->other_reports.fetch_add(1);
      }
    }
  }
};

using Backend = buffered::BufferedBackend<Event, LifecycleSink>;

buffered::BatchConfig config(bool async) {
  buffered::BatchConfig c;
  c.buffer_size = kEvents;
  c.max_batch_size = 4;
  c.max_batch_wait = std::chrono::milliseconds(5);
  c.async_delegate = async;
  c.max_in_flight = kMaxInFlight;
  return c;
}

// The threads run() makes: the worker, and the pool when async.
std::uint64_t threads_per_run(bool async) { return async ? kMaxInFlight + 1 : 1; }

void offer(Backend& backend, std::uint64_t from, std::uint64_t to) {
  for (std::uint64_t id = from; id < to; ++id) {
    ASSERT_TRUE(backend.process_event(ev(id))) << "event " << id;
  }
}

// Thread creation `k` of run() fails.
struct Case {
  bool async;
  std::uint64_t k;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << (c.async ? "async" : "sync") << ", thread " << c.k << " fails";
}

std::string case_name(const ::testing::TestParamInfo<Case>& param_info) {
  return std::string(param_info.param.async ? "Async" : "Sync") + "Thread" +
         std::to_string(param_info.param.k);
}

const std::vector<Case> kCases = {{false, 1}, {true, 1}, {true, 2},
                                  {true, 3},  {true, 4}, {true, 5}};

class ThreadFailure : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { HangWatch::instance(); }

  // run() with thread creation k failing: it must throw std::system_error and roll back. The
  // events 0..3 wait in the buffer meanwhile.
  void failed_run(Backend& backend, std::size_t baseline) {
    const Case c = GetParam();
    const std::uint64_t created = fault::threads_created();
    fault::fail_thread_creation(c.k, Mode::once);
    EXPECT_THROW(backend.run(), std::system_error);
    const std::uint64_t attempts = fault::disarm_thread_creation();
    EXPECT_EQ(attempts, c.k) << "run() went on making threads after one failed";
    EXPECT_EQ(fault::threads_created() - created, c.k - 1);
    EXPECT_TRUE(threads_back_to(baseline))
        << live_threads() << " threads now, " << baseline << " before the failed run()";
    EXPECT_EQ(record_.run_calls.load(), 1);
    EXPECT_EQ(record_.shutdown_calls.load(), 1) << "delegate.run() succeeded: it must be shut down";
    {
      std::lock_guard<std::mutex> lock(record_.mu);
      ASSERT_EQ(record_.threads_at_run.size(), 1u);
      EXPECT_EQ(record_.threads_at_run[0], created) << "threads made before delegate.run()";
    }
    const buffered::Stats s = backend.stats();
    EXPECT_EQ(s.accepted, 4u);
    EXPECT_EQ(s.queued, 4u) << "the events offered before run() wait on";
    EXPECT_EQ(s.delivered, 0u);
    EXPECT_EQ(s.batches, 0u);
  }

  Record record_;
};

TEST_P(ThreadFailure, FailedRunRollsBackAndASecondRunWorks) {
  const Case c = GetParam();
  const Watched watched("FailedRunRollsBackAndASecondRunWorks", c.k);
  const std::size_t baseline = live_threads();
  {
    Backend backend(LifecycleSink(record_), config(c.async), Handler{&record_});
    offer(backend, 0, 4);
    failed_run(backend, baseline);

    const std::uint64_t created = fault::threads_created();
    EXPECT_NO_THROW(backend.run());
    EXPECT_EQ(fault::threads_created() - created, threads_per_run(c.async))
        << "the second run() must make exactly the worker and the pool";
    offer(backend, 4, 8);
    EXPECT_TRUE(backend.shutdown());
    EXPECT_EQ(record_.run_calls.load(), 2);
    EXPECT_EQ(record_.shutdown_calls.load(), 2);
    {
      std::lock_guard<std::mutex> lock(record_.mu);
      ASSERT_EQ(record_.threads_at_run.size(), 2u);
      EXPECT_EQ(record_.threads_at_run[1], created) << "threads made before delegate.run()";
    }
    for (std::uint64_t id = 0; id < 8; ++id) {
      EXPECT_EQ(record_.delivered[id].load(), 1) << "event " << id;
      EXPECT_EQ(record_.abandoned[id].load(), 0) << "event " << id;
    }
    EXPECT_EQ(record_.other_reports.load(), 0);
    const buffered::Stats s = backend.stats();
    EXPECT_EQ(s.accepted, 8u);
    EXPECT_EQ(s.delivered, 8u);
    EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.pending);
    EXPECT_EQ(s.pending, 0u);
    EXPECT_EQ(s.queued, 0u);
  }
  EXPECT_TRUE(threads_back_to(baseline)) << "threads left after the backend was destroyed";
}

TEST_P(ThreadFailure, ShutdownAfterAFailedRunIsThatOfANeverRunBackend) {
  const Case c = GetParam();
  const Watched watched("ShutdownAfterAFailedRunIsThatOfANeverRunBackend", c.k);
  const std::size_t baseline = live_threads();
  {
    Backend backend(LifecycleSink(record_), config(c.async), Handler{&record_});
    offer(backend, 0, 4);
    failed_run(backend, baseline);

    const auto t0 = Clock::now();
    EXPECT_FALSE(backend.shutdown()) << "nothing ran: the queued events were abandoned";
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
    for (std::uint64_t id = 0; id < 4; ++id) {
      EXPECT_EQ(record_.abandoned[id].load(), 1) << "event " << id;
      EXPECT_EQ(record_.delivered[id].load(), 0) << "event " << id;
    }
    EXPECT_EQ(record_.other_reports.load(), 0);
    const buffered::Stats s = backend.stats();
    EXPECT_EQ(s.accepted, 4u);
    EXPECT_EQ(s.abandoned, 4u);
    EXPECT_EQ(s.delivered + s.failed + s.pending, 0u);
    EXPECT_EQ(s.queued, 0u);
    EXPECT_EQ(s.batches, 0u);
    EXPECT_FALSE(backend.process_event(ev(4))) << "a shut-down backend refuses";
    EXPECT_THROW(backend.run(), std::logic_error);
    EXPECT_EQ(record_.run_calls.load(), 1);
    EXPECT_EQ(record_.shutdown_calls.load(), 1);
  }
  EXPECT_TRUE(threads_back_to(baseline));
}

INSTANTIATE_TEST_SUITE_P(EachThreadOfRun, ThreadFailure, ::testing::ValuesIn(kCases), case_name);

// delegate.run() that throws: run() rethrows it before making any thread, the delegate is not
// shut down (it never started), and a later run() works.
TEST(DelegateRunFailure, LeavesTheBackendIdleAndALaterRunWorks) {
  HangWatch::instance();
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    const Watched watched("DelegateRunFailure.LeavesTheBackendIdleAndALaterRunWorks", 0);
    Record record;
    record.fail_next_run.store(1);
    const std::size_t baseline = live_threads();
    {
      Backend backend(LifecycleSink(record), config(async), Handler{&record});
      offer(backend, 0, 4);
      const std::uint64_t created = fault::threads_created();
      EXPECT_THROW(backend.run(), std::runtime_error);
      EXPECT_EQ(fault::threads_created(), created) << "threads made for a delegate that failed";
      EXPECT_LE(live_threads(), baseline);
      EXPECT_EQ(record.run_calls.load(), 1);
      EXPECT_EQ(record.shutdown_calls.load(), 0) << "a delegate whose run() failed is shut down";
      EXPECT_EQ(backend.stats().queued, 4u);

      EXPECT_NO_THROW(backend.run());
      EXPECT_EQ(fault::threads_created() - created, threads_per_run(async));
      offer(backend, 4, 8);
      EXPECT_TRUE(backend.shutdown());
      EXPECT_EQ(record.run_calls.load(), 2);
      EXPECT_EQ(record.shutdown_calls.load(), 1);
      for (std::uint64_t id = 0; id < 8; ++id) {
        EXPECT_EQ(record.delivered[id].load(), 1) << "event " << id;
      }
      const buffered::Stats s = backend.stats();
      EXPECT_EQ(s.delivered, 8u);
      EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.pending);
    }
    EXPECT_TRUE(threads_back_to(baseline));
  }
}

TEST(DelegateRunFailure, ShutdownThenAbandonsWhatWasQueued) {
  HangWatch::instance();
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    const Watched watched("DelegateRunFailure.ShutdownThenAbandonsWhatWasQueued", 0);
    Record record;
    record.fail_next_run.store(1);
    const std::size_t baseline = live_threads();
    {
      Backend backend(LifecycleSink(record), config(async), Handler{&record});
      offer(backend, 0, 4);
      EXPECT_THROW(backend.run(), std::runtime_error);
      const auto t0 = Clock::now();
      EXPECT_FALSE(backend.shutdown());
      EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
      for (std::uint64_t id = 0; id < 4; ++id) {
        EXPECT_EQ(record.abandoned[id].load(), 1) << "event " << id;
      }
      const buffered::Stats s = backend.stats();
      EXPECT_EQ(s.abandoned, 4u);
      EXPECT_EQ(s.delivered, 0u);
      EXPECT_EQ(s.queued, 0u);
      EXPECT_EQ(record.run_calls.load(), 1);
      EXPECT_EQ(record.shutdown_calls.load(), 0);
    }
    EXPECT_TRUE(threads_back_to(baseline));
  }
}

}  // namespace
