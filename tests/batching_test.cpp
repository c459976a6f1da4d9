// When batches go: on size, on max wait measured from the first event, on shutdown.
#include <gtest/gtest.h>

#include "support.hpp"

namespace {

using namespace buffered_test;

buffered::BatchConfig batching(std::size_t max_batch, Clock::duration wait, bool async = false) {
  buffered::BatchConfig c;
  c.buffer_size = 100;
  c.max_batch_size = max_batch;
  c.max_batch_wait = wait;
  c.async_delegate = async;
  return c;
}

void expect_no_empty_batch(const RecordingSink<>& sink) {
  for (const auto& b : sink.batches()) EXPECT_FALSE(b.empty());
}

TEST(Batching, FullBatchGoesAtOnceRemainderWaitsForMaxWait) {
  RecordingSink<> sink;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, batching(10, 800ms));
  backend.run();
  const auto t0 = Clock::now();
  for (std::uint64_t i = 0; i < 15; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  ASSERT_TRUE(eventually([&] { return sink.batch_count() >= 1; }));
  EXPECT_EQ(sink.batches()[0].size(), 10u);
  ASSERT_TRUE(eventually([&] { return sink.batch_count() >= 2; }));
  const auto batches = sink.batches();
  EXPECT_EQ(batches[1].size(), 5u);
  EXPECT_GE(sink.times()[1] - t0, 800ms);  // not before the remainder's max wait
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.batch_count(), 2u);
  expect_no_empty_batch(sink);
}

TEST(Batching, PartialBatchIsHeldUntilMaxWait) {
  RecordingSink<> sink;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, batching(10, 1s));
  backend.run();
  const auto t0 = Clock::now();
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(sink.batch_count(), 0u);
  ASSERT_TRUE(eventually([&] { return sink.batch_count() == 1; }));
  EXPECT_GE(sink.times()[0] - t0, 1s);
  EXPECT_EQ(sink.batches()[0], (std::vector<Event>{ev(0), ev(1), ev(2)}));
}

TEST(Batching, LingerIsMeasuredFromTheFirstEventOfTheBatch) {
  RecordingSink<> sink;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, batching(10, 1s));
  backend.run();
  const auto t0 = Clock::now();
  ASSERT_TRUE(backend.process_event(ev(0)));
  std::this_thread::sleep_for(700ms);
  const auto t1 = Clock::now();
  ASSERT_TRUE(backend.process_event(ev(1)));
  ASSERT_TRUE(eventually([&] { return sink.batch_count() >= 1; }));
  const auto arrived = sink.times()[0];
  EXPECT_GE(arrived - t0, 1s);
  // Timed from the last event it would come at t1 + 1 s or later.
  EXPECT_LT(arrived - t1, 1s);
  EXPECT_EQ(sink.batches()[0].size(), 2u);
}

TEST(Batching, ShutdownDeliversWhatWasCollected) {
  RecordingSink<> sink;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, batching(10, 1h));
  backend.run();
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  const auto t0 = Clock::now();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_LT(Clock::now() - t0, 10s);
  EXPECT_EQ(sink.events(), (std::vector<Event>{ev(0), ev(1), ev(2)}));
  expect_accounting(backend.stats(), 3);
}

TEST(Batching, MaxBatchOneDeliversOneByOneAndNoEmptyBatchAtStop) {
  for (const bool async : {false, true}) {
    RecordingSink<> sink;
    buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, batching(1, 1h, async));
    backend.run();
    for (std::uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    // Each goes at once: no waiting for the (hour-long) max wait.
    ASSERT_TRUE(eventually([&] { return sink.event_count() == 5; }));
    EXPECT_TRUE(backend.shutdown());
    EXPECT_EQ(sink.batch_count(), 5u) << "async=" << async;
    for (const auto& b : sink.batches()) EXPECT_EQ(b.size(), 1u);
    EXPECT_EQ(backend.stats().batches, 5u);
  }
}

TEST(Batching, FiftyEventsArriveAsFiveWholeBatchesInBothModes) {
  for (const bool async : {false, true}) {
    RecordingSink<> sink;
    buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, batching(10, 1h, async));
    for (std::uint64_t i = 0; i < 50; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    backend.run();
    ASSERT_TRUE(eventually([&] { return sink.event_count() == 50; }));
    EXPECT_TRUE(backend.shutdown());
    const auto batches = sink.batches();
    ASSERT_EQ(batches.size(), 5u) << "async=" << async;
    for (const auto& b : batches) EXPECT_EQ(b.size(), 10u);
    auto all = sink.events();
    std::sort(all.begin(), all.end(), [](const Event& a, const Event& b) { return a.seq < b.seq; });
    for (std::uint64_t i = 0; i < 50; ++i) EXPECT_EQ(all[i].seq, i);
  }
}

TEST(Batching, IdleBackendDeliversNothingAndShutsDownClean) {
  RecordingSink<> sink;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, batching(10, 5ms));
  backend.run();
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.batch_count(), 0u);
  EXPECT_EQ(backend.stats().batches, 0u);
}

}  // namespace
