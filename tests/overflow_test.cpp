// A full buffer: drop_newest refuses at once; block waits for space, a timeout, or shutdown.
#include <gtest/gtest.h>

#include <atomic>
#include <future>

#include "support.hpp"

namespace {

using namespace buffered_test;
using Backend = buffered::BufferedBackend<Event, RecordingSink<>&>;

buffered::BatchConfig overflow(
    std::size_t buffer, buffered::OverflowPolicy policy,
    std::chrono::nanoseconds block_timeout = std::chrono::nanoseconds::max()) {
  buffered::BatchConfig c;
  c.buffer_size = buffer;
  c.max_batch_size = 10;
  c.max_batch_wait = 5ms;
  c.overflow = policy;
  c.block_timeout = block_timeout;
  return c;
}

TEST(Overflow, FullBufferOfOneTakesOneOfTwo) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  Backend backend(sink, overflow(1, buffered::OverflowPolicy::drop_newest), errors.handler());
  EXPECT_TRUE(backend.process_event(ev(1)));
  EXPECT_FALSE(backend.process_event(ev(2)));
  const auto entries = errors.entries();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].first, buffered::ErrorKind::buffer_full);
  EXPECT_EQ(entries[0].second, std::vector<Event>{ev(2)});
  backend.run();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.events(), std::vector<Event>{ev(1)});
  const auto s = backend.stats();
  EXPECT_EQ(s.rejected_full, 1u);
  expect_accounting(s, 2);
}

TEST(Overflow, SpanStopsAtFirstRefusalAndReportsTheRestInOneCall) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  Backend backend(sink, overflow(3, buffered::OverflowPolicy::drop_newest), errors.handler());
  const std::vector<Event> five{ev(0), ev(1), ev(2), ev(3), ev(4)};
  EXPECT_EQ(backend.process_events(five), 3u);
  ASSERT_EQ(errors.calls(), 1u);
  EXPECT_EQ(errors.entries()[0].second, (std::vector<Event>{ev(3), ev(4)}));
  EXPECT_EQ(backend.stats().rejected_full, 2u);
  backend.run();
  backend.shutdown();
  EXPECT_EQ(sink.events(), (std::vector<Event>{ev(0), ev(1), ev(2)}));
}

TEST(Overflow, DropNewestNeverBlocks) {
  RecordingSink<> sink;
  Backend backend(sink, overflow(2, buffered::OverflowPolicy::drop_newest));
  const auto t0 = Clock::now();
  int accepted = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) accepted += backend.process_event(ev(i)) ? 1 : 0;
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_EQ(accepted, 2);
}

TEST(Overflow, BlockGivesUpAtBlockTimeout) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  Backend backend(sink, overflow(1, buffered::OverflowPolicy::block, 200ms), errors.handler());
  ASSERT_TRUE(backend.process_event(ev(1)));
  const auto t0 = Clock::now();
  EXPECT_FALSE(backend.process_event(ev(2)));
  const auto waited = Clock::now() - t0;
  EXPECT_GE(waited, 200ms);
  EXPECT_LT(waited, 10s);
  EXPECT_EQ(errors.count(buffered::ErrorKind::buffer_full), 1u);
  EXPECT_EQ(backend.stats().rejected_full, 1u);
}

TEST(Overflow, BlockWaitsForSpace) {
  RecordingSink<> sink;
  Backend backend(sink, overflow(1, buffered::OverflowPolicy::block));
  ASSERT_TRUE(backend.process_event(ev(1)));
  auto second = std::async(std::launch::async, [&] { return backend.process_event(ev(2)); });
  EXPECT_EQ(second.wait_for(200ms), std::future_status::timeout);  // blocked: buffer full
  backend.run();                                                   // the worker frees space
  EXPECT_TRUE(second.get());
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.events(), (std::vector<Event>{ev(1), ev(2)}));
  expect_accounting(backend.stats(), 2);
}

TEST(Overflow, BlockedCallerIsReleasedByShutdownWithShutDown) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  Backend backend(sink, overflow(1, buffered::OverflowPolicy::block), errors.handler());
  ASSERT_TRUE(backend.process_event(ev(1)));
  auto second = std::async(std::launch::async, [&] { return backend.process_event(ev(2)); });
  EXPECT_EQ(second.wait_for(100ms), std::future_status::timeout);
  backend.shutdown();  // never ran: ev(1) is abandoned
  ASSERT_EQ(second.wait_for(kPatience), std::future_status::ready);
  EXPECT_FALSE(second.get());
  EXPECT_EQ(errors.count(buffered::ErrorKind::shut_down), 1u);
  EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), 1u);
  const auto s = backend.stats();
  EXPECT_EQ(s.rejected_shut_down, 1u);
  expect_accounting(s, 2);
}

TEST(Overflow, BlockingProducersLoseNothing) {
  RecordingSink<> sink;
  Backend backend(sink, overflow(4, buffered::OverflowPolicy::block));
  backend.run();
  std::vector<std::thread> producers;
  std::atomic<int> refused{0};
  for (std::uint32_t p = 0; p < 3; ++p) {
    producers.emplace_back([&, p] {
      for (std::uint64_t i = 0; i < 2000; ++i) {
        if (!backend.process_event(ev(i, p))) ++refused;
      }
    });
  }
  for (auto& t : producers) t.join();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(refused.load(), 0);
  EXPECT_EQ(sink.event_count(), 6000u);
  expect_accounting(backend.stats(), 6000);
}

}  // namespace
