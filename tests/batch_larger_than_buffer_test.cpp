// max_batch_size larger than buffer_size: a batch holds at most buffer_size events, so a full
// buffer is a full batch and goes at once, instead of stalling until max_batch_wait.
#include <gtest/gtest.h>

#include <atomic>
#include <limits>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;
using Backend = buffered::BufferedBackend<Event, RecordingSink<>&>;

buffered::BatchConfig larger_batch(buffered::OverflowPolicy overflow) {
  buffered::BatchConfig c;
  c.buffer_size = 128;
  c.max_batch_size = 400;
  c.max_batch_wait = 1h;  // only a full batch (or flush/shutdown) may dispatch
  c.overflow = overflow;
  return c;
}

TEST(BatchLargerThanBuffer, BlockedProducersFlowWithoutWaitingForTheLinger) {
  RecordingSink<> sink;
  Backend backend(sink, larger_batch(buffered::OverflowPolicy::block));
  backend.run();
  constexpr std::uint32_t kProducers = 10;
  constexpr std::uint64_t kEach = 100;
  std::vector<std::thread> producers;
  std::atomic<std::uint64_t> accepted{0};
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (std::uint64_t i = 0; i < kEach; ++i) accepted += backend.process_event(ev(i, p));
    });
  }
  for (auto& t : producers) t.join();  // would stall for the hour-long linger
  EXPECT_EQ(accepted.load(), kProducers * kEach);
  // Full batches have gone; what is left is less than one.
  ASSERT_TRUE(eventually([&] { return sink.event_count() + 128 > kProducers * kEach; }));
  for (const auto& batch : sink.batches()) EXPECT_LE(batch.size(), 128u);
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.event_count(), kProducers * kEach);
}

TEST(BatchLargerThanBuffer, AFullBufferIsAFullBatchWithDropNewest) {
  RecordingSink<> sink;
  Backend backend(sink, larger_batch(buffered::OverflowPolicy::drop_newest));
  backend.run();
  std::uint64_t accepted = 0;
  for (std::uint64_t i = 0; i < 128; ++i) accepted += backend.process_event(ev(i));
  ASSERT_EQ(accepted, 128u);
  ASSERT_TRUE(eventually([&] { return sink.event_count() == 128; }));  // not after an hour
  EXPECT_EQ(sink.batches().front().size(), 128u);
  // A trickle keeps flowing: every time the buffer fills, a batch goes.
  for (std::uint64_t i = 128; i < 5000; ++i) {
    while (!backend.process_event(ev(i))) std::this_thread::sleep_for(100us);
  }
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.event_count(), 5000u);
  EXPECT_EQ(backend.config().max_batch_size, 400u);  // the config is kept as given
}

TEST(BatchLargerThanBuffer, HugeMaxBatchSizeLingersWithoutPolling) {
  RecordingSink<> sink;
  buffered::BatchConfig c;
  c.buffer_size = 1000;
  c.max_batch_size = std::numeric_limits<std::size_t>::max();
  c.max_batch_wait = 1s;
  Backend backend(sink, c);
  backend.run();
  for (std::uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  const auto t0 = Clock::now();
  const std::uint64_t switches_before = context_switches();
  std::this_thread::sleep_for(700ms);  // inside the linger: the worker should sleep through it
  const std::uint64_t switches = context_switches() - switches_before;
  EXPECT_LT(switches, 200u) << "the worker polls while the batch lingers";
  ASSERT_TRUE(eventually([&] { return sink.event_count() == 10; }));
  EXPECT_GE(sink.times().front() - t0, 250ms);  // it lingered
  EXPECT_TRUE(backend.shutdown());
}

TEST(BatchLargerThanBuffer, HugeMaxBatchSizeOnATinyBufferInAsyncMode) {
  RecordingSink<> sink;
  buffered::BatchConfig c;
  c.buffer_size = 3;
  c.max_batch_size = std::numeric_limits<std::size_t>::max();
  c.max_batch_wait = 1h;
  c.async_delegate = true;
  c.max_in_flight = 2;
  c.overflow = buffered::OverflowPolicy::block;
  Backend backend(sink, c);
  backend.run();
  for (std::uint64_t i = 0; i < 300; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  for (const auto& batch : sink.batches()) EXPECT_LE(batch.size(), 3u);
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.event_count(), 300u);
}

}  // namespace
