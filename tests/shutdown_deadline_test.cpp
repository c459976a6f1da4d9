// shutdown(timeout): what is still queued at the deadline is abandoned and reported; a delegate
// call already running is not interrupted, and the destructor waits for it.
#include <gtest/gtest.h>

#include <atomic>

#include "support.hpp"

namespace {

using namespace buffered_test;

TEST(ShutdownDeadline, StuckDelegateQueuedEventsAreAbandonedAtTheDeadline) {
  for (const bool async : {false, true}) {
    Gate gate;
    std::atomic<int> delivered{0};
    ErrorLog<> errors;
    {
      auto sink = [&](std::span<Event> events) {
        gate.wait();
        delivered += static_cast<int>(events.size());
      };
      buffered::BatchConfig c;
      c.max_batch_size = 1;
      c.async_delegate = async;
      c.max_in_flight = 1;
      buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c, errors.handler());
      backend.run();
      for (std::uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
      ASSERT_TRUE(eventually([&] { return backend.stats().in_flight == 1; }));
      const auto t0 = Clock::now();
      EXPECT_FALSE(backend.shutdown(100ms));
      const auto took = Clock::now() - t0;
      EXPECT_GE(took, 100ms);
      EXPECT_LT(took, 10s);
      // At return: four abandoned and reported, one still in the running call.
      auto s = backend.stats();
      EXPECT_EQ(s.abandoned, 4u) << "async=" << async;
      EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), 4u);
      EXPECT_EQ(s.in_flight, 1u);
      EXPECT_EQ(delivered.load(), 0);
      gate.open();
    }  // the destructor waits for the running call
    EXPECT_EQ(delivered.load(), 1);
  }
}

TEST(ShutdownDeadline, AccountingHoldsOnceTheRunningCallEnds) {
  Gate gate;
  auto sink = [&](std::span<Event>) { gate.wait(); };
  buffered::BatchConfig c;
  c.max_batch_size = 2;
  c.max_batch_wait = 1h;  // only size makes a batch: the stuck one holds exactly two
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c);
  backend.run();
  for (std::uint64_t i = 0; i < 9; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  ASSERT_TRUE(eventually([&] { return backend.stats().in_flight == 1; }));
  EXPECT_FALSE(backend.shutdown(20ms));
  gate.open();
  EXPECT_FALSE(backend.shutdown());  // waits for the call; the answer stays "abandoned some"
  const auto s = backend.stats();
  EXPECT_EQ(s.delivered, 2u);
  EXPECT_EQ(s.abandoned, 7u);
  expect_accounting(s, 9);
}

TEST(ShutdownDeadline, ZeroTimeoutAbandonsEverythingQueued) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  buffered::BatchConfig c;
  c.max_batch_wait = 1h;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c, errors.handler());
  for (std::uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  backend.run();
  backend.shutdown(0ms);
  const auto s = backend.stats();
  EXPECT_EQ(s.delivered + s.abandoned, 8u);
  EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), s.abandoned);
  EXPECT_EQ(sink.event_count(), s.delivered);
  expect_accounting(s, 8);
}

// A deadline that passes while producers still stream: the shutdown caller takes the queue over
// from the worker, and every event still ends up counted exactly once.
TEST(ShutdownDeadline, ExpiredDeadlineWhileEventsStreamHandsTheQueueOverSafely) {
  for (int round = 0; round < 20; ++round) {
    std::atomic<std::uint64_t> delivered{0};
    auto sink = [&](std::span<Event> batch) { delivered += batch.size(); };
    ErrorLog<> errors;
    buffered::BatchConfig c;
    c.buffer_size = 256;
    c.max_batch_size = 8;
    c.max_batch_wait = 50us;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c, errors.handler());
    backend.run();
    std::atomic<std::uint64_t> offered{0};
    std::thread producer([&] {
      for (std::uint64_t i = 0; i < 20000; ++i) {
        offered = i + 1;
        if (!backend.process_event(ev(i)) && backend.stats().rejected_shut_down > 0) return;
      }
    });
    ASSERT_TRUE(eventually([&] { return delivered.load() > 0; }));
    backend.shutdown(0ms);
    producer.join();
    backend.shutdown();
    const auto s = backend.stats();
    EXPECT_EQ(s.delivered, delivered.load());
    EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), s.abandoned);
    expect_accounting(s, offered.load());
  }
}

TEST(ShutdownDeadline, GenerousDeadlineDeliversEverything) {
  RecordingSink<> sink;
  buffered::BatchConfig c;
  c.max_batch_wait = 1h;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c);
  backend.run();
  for (std::uint64_t i = 0; i < 50; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  EXPECT_TRUE(backend.shutdown(kPatience));
  EXPECT_EQ(sink.event_count(), 50u);
}

}  // namespace
