// The token bucket paces batches, in both modes and during the drain, within shutdown deadlines.
#include <gtest/gtest.h>

#include "support.hpp"

namespace {

using namespace buffered_test;
using Backend = buffered::BufferedBackend<Event, RecordingSink<>&>;

buffered::BatchConfig throttled(double qps, std::size_t burst, bool async) {
  buffered::BatchConfig c;
  c.max_batch_size = 1;
  c.max_batch_wait = 1ms;
  c.throttle = buffered::Throttle{qps, burst};
  c.async_delegate = async;
  c.max_in_flight = 4;
  return c;
}

TEST(Throttle, OneTokenPerBatchInBothModes) {
  for (const bool async : {false, true}) {
    RecordingSink<> sink;
    Backend backend(sink, throttled(20.0, 1, async));  // one batch per 50 ms
    backend.run();
    for (std::uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    ASSERT_TRUE(eventually([&] { return sink.batch_count() == 5; }));
    const auto times = sink.times();
    // Four refills separate the first batch from the last.
    EXPECT_GE(times.back() - times.front(), 190ms) << "async=" << async;
    EXPECT_TRUE(backend.shutdown());
  }
}

TEST(Throttle, BurstLetsTheFirstBatchesGoAtOnce) {
  RecordingSink<> sink;
  Backend backend(sink, throttled(0.5, 3, false));  // 3 now, then one per 2 s
  backend.run();
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  ASSERT_TRUE(eventually([&] { return sink.batch_count() == 3; }, 1900ms));
  backend.shutdown(0ms);
}

TEST(Throttle, TheDrainIsThrottledToo) {
  RecordingSink<> sink;
  Backend backend(sink, throttled(10.0, 1, false));
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  backend.run();
  const auto t0 = Clock::now();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_GE(Clock::now() - t0, 290ms);  // 3 refills of 100 ms after the first token
  EXPECT_EQ(sink.event_count(), 4u);
}

TEST(Throttle, WaitingForATokenNeverOutlivesTheShutdownDeadline) {
  for (const bool async : {false, true}) {
    RecordingSink<> sink;
    ErrorLog<> errors;
    Backend backend(sink, throttled(1.0, 1, async), errors.handler());  // one batch per second
    backend.run();
    for (std::uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    const auto t0 = Clock::now();
    EXPECT_FALSE(backend.shutdown(200ms));
    const auto took = Clock::now() - t0;
    EXPECT_GE(took, 150ms);
    EXPECT_LT(took, 3s) << "async=" << async;  // draining at 1 qps would take 5 s
    const auto s = backend.stats();
    EXPECT_GE(s.abandoned, 4u);
    EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), s.abandoned);
    EXPECT_EQ(s.delivered + s.abandoned, 6u);
  }
}

TEST(Throttle, ATinyRateParksTheWorkerInsteadOfSpinning) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  Backend backend(sink, throttled(1e-12, 1, false), errors.handler());
  backend.run();
  ASSERT_TRUE(backend.process_event(ev(1)));
  ASSERT_TRUE(backend.process_event(ev(2)));
  ASSERT_TRUE(eventually([&] { return sink.event_count() == 1; }));
  const std::uint64_t before = context_switches();
  std::this_thread::sleep_for(500ms);  // the worker waits for a token due in 31,700 years
  EXPECT_LT(context_switches() - before, 200u) << "the worker re-parks in a loop";
  EXPECT_EQ(sink.event_count(), 1u);
  const auto t0 = Clock::now();
  EXPECT_FALSE(backend.shutdown(50ms));
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), 1u);
  expect_accounting(backend.stats(), 2);
}

}  // namespace
