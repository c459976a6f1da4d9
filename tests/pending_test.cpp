// Stats::pending: events taken from the buffer and not yet delivered, failed or abandoned. A
// shutdown(timeout) that returns while a delegate call outlives its deadline returns false and
// leaves that call's events pending; flush() on such a backend returns at once.
#include <gtest/gtest.h>

#include <atomic>

#include "support.hpp"

namespace {

using namespace buffered_test;

TEST(Pending, ShutdownReturnsFalseWhileACallOutlivesItsDeadline) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    Gate gate;
    std::atomic<int> delivered{0};
    auto sink = [&](std::span<Event> events) {
      gate.wait();
      delivered += static_cast<int>(events.size());
    };
    buffered::BatchConfig c;
    c.max_batch_size = 2;
    c.max_batch_wait = 1h;
    c.async_delegate = async;
    buffered::BufferedBackend<Event, decltype(sink)&> backend(sink, c);
    backend.run();
    ASSERT_TRUE(backend.process_event(ev(1)));
    ASSERT_TRUE(backend.process_event(ev(2)));
    ASSERT_TRUE(eventually([&] { return backend.stats().in_flight == 1; }));

    EXPECT_FALSE(backend.shutdown(50ms));  // the call holding both events is still running
    auto s = backend.stats();
    EXPECT_EQ(s.accepted, 2u);
    EXPECT_EQ(s.delivered, 0u);
    EXPECT_EQ(s.abandoned, 0u);
    EXPECT_EQ(s.pending, 2u);
    EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.pending);

    const auto t0 = Clock::now();
    EXPECT_FALSE(backend.flush(5s));  // shut down: it returns at once, the events are not done
    EXPECT_LT(Clock::now() - t0, 2s);

    gate.open();
    EXPECT_TRUE(backend.shutdown());  // waits for the call: both delivered, nothing abandoned
    s = backend.stats();
    EXPECT_EQ(s.delivered, 2u);
    EXPECT_EQ(s.pending, 0u);
    expect_accounting(s, 2);
    EXPECT_EQ(delivered.load(), 2);
  }
}

TEST(Pending, CountsABatchWaitingForAToken) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  buffered::BatchConfig c;
  c.max_batch_size = 1;
  c.throttle = buffered::Throttle{0.01, 1};  // the second token is 100 s away
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c, errors.handler());
  backend.run();
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  ASSERT_TRUE(eventually([&] { return sink.event_count() == 1 && backend.stats().pending == 1; }));
  auto s = backend.stats();
  EXPECT_EQ(s.queued, 1u);
  EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.pending + s.queued);
  EXPECT_FALSE(backend.shutdown(0ms));
  s = backend.stats();
  EXPECT_EQ(s.abandoned, 2u);
  EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), 2u);
  expect_accounting(s, 3);
}

TEST(Pending, IsZeroWhenIdleAndAfterEveryUnboundedShutdown) {
  RecordingSink<> sink;
  buffered::BatchConfig c;
  c.max_batch_size = 8;
  c.max_batch_wait = 1ms;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c);
  EXPECT_EQ(backend.stats().pending, 0u);
  backend.run();
  for (std::uint64_t i = 0; i < 100; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  ASSERT_TRUE(backend.flush());
  EXPECT_EQ(backend.stats().pending, 0u);
  EXPECT_TRUE(backend.shutdown());
  expect_accounting(backend.stats(), 100);
}

}  // namespace
