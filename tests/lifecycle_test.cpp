// run(), shutdown() and the destructor in every state.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>

#include "support.hpp"

namespace {

using namespace buffered_test;

// Counts calls to every optional member, and records the order of what happened.
class LifecycleSink {
 public:
  void process_events(std::span<Event> events) {
    std::lock_guard<std::mutex> lock(mu_);
    log_.push_back("batch:" + std::to_string(events.size()));
    events_ += events.size();
  }
  void run() { log("run"); }
  void shutdown() { log("shutdown"); }
  void flush() { log("flush"); }
  std::string name() const { return "lifecycle"; }

  std::vector<std::string> log() const {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }
  std::size_t count(const std::string& what) const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<std::size_t>(std::count(log_.begin(), log_.end(), what));
  }
  std::size_t events() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }

 private:
  void log(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    log_.push_back(what);
  }
  mutable std::mutex mu_;
  std::vector<std::string> log_;
  std::size_t events_ = 0;
};

using Backend = buffered::BufferedBackend<Event, LifecycleSink&>;

TEST(Lifecycle, RunStartsTheDelegateOnceAndSecondRunIsANoOp) {
  LifecycleSink sink;
  Backend backend(sink);
  EXPECT_EQ(sink.count("run"), 0u);  // construction runs nothing
  backend.run();
  backend.run();
  EXPECT_EQ(sink.count("run"), 1u);
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.count("shutdown"), 1u);
}

TEST(Lifecycle, RunAfterShutdownThrowsLogicError) {
  LifecycleSink sink;
  Backend backend(sink);
  backend.run();
  backend.shutdown();
  EXPECT_THROW(backend.run(), std::logic_error);
  LifecycleSink never_sink;
  Backend never_ran(never_sink);
  never_ran.shutdown();
  EXPECT_THROW(never_ran.run(), std::logic_error);
  EXPECT_EQ(never_sink.log().size(), 0u);
}

TEST(Lifecycle, EventsOfferedBeforeRunWaitAndAreDeliveredAfter) {
  LifecycleSink sink;
  buffered::BatchConfig c;
  c.max_batch_wait = 5ms;
  Backend backend(sink, c);
  for (std::uint64_t i = 0; i < 7; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(sink.events(), 0u);
  EXPECT_EQ(backend.stats().queued, 7u);
  backend.run();
  ASSERT_TRUE(eventually([&] { return sink.events() == 7; }));
  EXPECT_TRUE(backend.shutdown());
  const auto log = sink.log();
  EXPECT_EQ(log.front(), "run");
  EXPECT_EQ(log.back(), "shutdown");
}

TEST(Lifecycle, ShutdownOfANeverRunBackendAbandonsAndCallsNoDelegateMember) {
  LifecycleSink sink;
  ErrorLog<> errors;
  Backend backend(sink, {}, errors.handler());
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  const auto t0 = Clock::now();
  EXPECT_FALSE(backend.shutdown());
  EXPECT_LT(Clock::now() - t0, 5s);  // the model hangs here forever
  EXPECT_TRUE(sink.log().empty());
  EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), 4u);
  const auto s = backend.stats();
  EXPECT_EQ(s.abandoned, 4u);
  EXPECT_EQ(s.delivered, 0u);
  expect_accounting(s, 4);
  EXPECT_FALSE(backend.shutdown());  // again: same answer, nothing more reported
  EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), 4u);
}

TEST(Lifecycle, EmptyNeverRunBackendShutsDownAndDestructs) {
  LifecycleSink sink;
  { Backend backend(sink); }
  EXPECT_TRUE(sink.log().empty());
}

TEST(Lifecycle, ShutdownIsIdempotentAndDelegateShutdownRunsOnceAfterTheLastBatch) {
  LifecycleSink sink;
  buffered::BatchConfig c;
  c.max_batch_size = 3;
  c.max_batch_wait = 1h;
  Backend backend(sink, c);
  backend.run();
  for (std::uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  EXPECT_TRUE(backend.shutdown());
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.count("shutdown"), 1u);
  EXPECT_EQ(sink.log().back(), "shutdown");
  EXPECT_EQ(sink.events(), 10u);
}

TEST(Lifecycle, ConcurrentShutdownsAllReturnAfterTheDrain) {
  LifecycleSink sink;
  buffered::BatchConfig c;
  c.max_batch_wait = 1h;
  Backend backend(sink, c);
  backend.run();
  for (std::uint64_t i = 0; i < 100; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  std::vector<std::thread> threads;
  std::atomic<int> true_results{0};
  std::atomic<std::size_t> seen_at_return{1000};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      if (backend.shutdown()) ++true_results;
      seen_at_return = std::min<std::size_t>(seen_at_return, sink.events());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(true_results.load(), 4);
  EXPECT_EQ(seen_at_return.load(), 100u);  // none returned before everything was delivered
  EXPECT_EQ(sink.count("shutdown"), 1u);
}

TEST(Lifecycle, DestructorDrainsEverythingAccepted) {
  LifecycleSink sink;
  {
    buffered::BatchConfig c;
    c.max_batch_wait = 1h;
    Backend backend(sink, c);
    backend.run();
    for (std::uint64_t i = 0; i < 25; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  }
  EXPECT_EQ(sink.events(), 25u);
  EXPECT_EQ(sink.count("shutdown"), 1u);
}

TEST(Lifecycle, EventsAfterShutdownAreRefusedAndReported) {
  LifecycleSink sink;
  ErrorLog<> errors;
  Backend backend(sink, {}, errors.handler());
  backend.run();
  ASSERT_TRUE(backend.process_event(ev(1)));
  EXPECT_TRUE(backend.shutdown());
  EXPECT_FALSE(backend.process_event(ev(2)));
  const std::vector<Event> more{ev(3), ev(4)};
  EXPECT_EQ(backend.process_events(more), 0u);
  const auto entries = errors.entries();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].first, buffered::ErrorKind::shut_down);
  EXPECT_EQ(entries[0].second, std::vector<Event>{ev(2)});
  EXPECT_EQ(entries[1].second, more);
  const auto s = backend.stats();
  EXPECT_EQ(s.rejected_shut_down, 3u);
  expect_accounting(s, 4);
}

}  // namespace
