// delegate.run() is called without the lifecycle lock: flush(), shutdown() and stats() from
// other threads, and flush()/shutdown() from inside delegate.run() itself, never wait for it.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "support.hpp"

namespace {

using namespace buffered_test;

// A sink whose run() blocks until released.
struct SlowRunSink {
  Gate entered;
  Gate release;
  std::atomic<int> runs{0};
  std::atomic<int> shutdowns{0};
  std::atomic<int> delivered{0};
  void run() {
    entered.open();
    release.wait();
    ++runs;
  }
  void shutdown() { ++shutdowns; }
  void process_events(std::span<Event> events) { delivered += static_cast<int>(events.size()); }
};

TEST(DelegateRun, FlushAndShutdownFromOtherThreadsDoNotWaitForASlowRun) {
  SlowRunSink sink;
  ErrorLog<> errors;
  buffered::BufferedBackend<Event, SlowRunSink&> backend(sink, {}, errors.handler());
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  std::thread starter([&] { backend.run(); });
  sink.entered.wait();

  auto t0 = Clock::now();
  EXPECT_FALSE(backend.flush(10ms));  // not running yet, and three events wait
  EXPECT_LT(Clock::now() - t0, 1s);
  EXPECT_EQ(backend.stats().queued, 3u);

  t0 = Clock::now();
  EXPECT_FALSE(backend.shutdown(10ms));  // the deadline passes while delegate.run() runs
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, 10ms);
  EXPECT_LT(took, 1500ms);
  EXPECT_EQ(backend.stats().abandoned, 3u);
  EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), 3u);

  sink.release.open();
  starter.join();
  EXPECT_FALSE(backend.shutdown());  // waits for the started worker to finish; 3 were abandoned
  EXPECT_EQ(sink.runs.load(), 1);
  EXPECT_EQ(sink.shutdowns.load(), 1);  // the delegate ran, so it is shut down
  EXPECT_EQ(sink.delivered.load(), 0);
  expect_accounting(backend.stats(), 3);
}

TEST(DelegateRun, UnboundedShutdownDuringASlowRunDeliversOnceRunReturns) {
  SlowRunSink sink;
  buffered::BufferedBackend<Event, SlowRunSink&> backend(sink);
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  std::thread starter([&] { backend.run(); });
  sink.entered.wait();
  std::atomic<bool> shut{false};
  std::thread stopper([&] {
    EXPECT_TRUE(backend.shutdown());
    shut = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(shut.load());  // it waits for the drain, which needs the worker
  sink.release.open();
  starter.join();
  stopper.join();
  EXPECT_EQ(sink.delivered.load(), 3);
  EXPECT_EQ(sink.shutdowns.load(), 1);
  expect_accounting(backend.stats(), 3);
}

// run() calls back into its own backend.
struct ReentrantRunSink {
  buffered::BufferedBackend<Event, ReentrantRunSink&>* backend = nullptr;
  bool flush_result = true;
  std::atomic<int> delivered{0};
  void run() { flush_result = backend->flush(); }
  void process_events(std::span<Event> events) { delivered += static_cast<int>(events.size()); }
};

TEST(DelegateRun, FlushFromInsideDelegateRunReturnsAtOnce) {
  ReentrantRunSink sink;
  buffered::BufferedBackend<Event, ReentrantRunSink&> backend(sink);
  sink.backend = &backend;
  ASSERT_TRUE(backend.process_event(ev(1)));
  backend.run();                    // would deadlock if delegate.run() held the lifecycle lock
  EXPECT_FALSE(sink.flush_result);  // one event was queued and nothing was delivering it yet
  EXPECT_TRUE(backend.flush());
  EXPECT_EQ(sink.delivered.load(), 1);
  EXPECT_TRUE(backend.shutdown());
}

TEST(DelegateRun, ConcurrentRunCallsStartTheDelegateOnce) {
  SlowRunSink sink;
  buffered::BufferedBackend<Event, SlowRunSink&> backend(sink);
  std::thread first([&] { backend.run(); });
  sink.entered.wait();
  std::atomic<bool> second_returned{false};
  std::thread second([&] {
    backend.run();  // waits for the first to finish starting, then is a no-op
    second_returned = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(second_returned.load());
  sink.release.open();
  first.join();
  second.join();
  ASSERT_TRUE(backend.process_event(ev(1)));
  EXPECT_TRUE(backend.flush());
  EXPECT_EQ(sink.runs.load(), 1);
  EXPECT_EQ(sink.delivered.load(), 1);
  EXPECT_TRUE(backend.shutdown());
}

}  // namespace
