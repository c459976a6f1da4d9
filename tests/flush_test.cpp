// flush(): the partial batch goes at once; deadlines; not running; producers that never stop.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;

buffered::BatchConfig lingering(bool async = false) {
  buffered::BatchConfig c;
  c.max_batch_size = 100;
  c.max_batch_wait = 1h;
  c.async_delegate = async;
  return c;
}

// A sink whose flush() is recorded, after the events it was given.
class FlushingSink : public RecordingSink<> {
 public:
  void flush() { flushed_at_events_.push_back(event_count()); }
  std::vector<std::size_t> flushed_at_events_;
};

TEST(Flush, PartialBatchGoesAtOnceThenDelegateFlush) {
  for (const bool async : {false, true}) {
    FlushingSink sink;
    buffered::BufferedBackend<Event, FlushingSink&> backend(sink, lingering(async));
    backend.run();
    for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    const auto t0 = Clock::now();
    EXPECT_TRUE(backend.flush());
    EXPECT_LT(Clock::now() - t0, 10s);  // not the hour of max_batch_wait
    EXPECT_EQ(sink.event_count(), 3u);
    EXPECT_EQ(sink.flushed_at_events_, std::vector<std::size_t>{3});
    EXPECT_TRUE(backend.flush());  // nothing new: returns at once, still flushes the delegate
    EXPECT_EQ(sink.flushed_at_events_.size(), 2u);
    EXPECT_TRUE(backend.shutdown());
  }
}

TEST(Flush, TimesOutWhileTheDelegateIsStuck) {
  Gate gate;
  auto sink = [&](std::span<Event>) { gate.wait(); };
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, lingering());
  backend.run();
  ASSERT_TRUE(backend.process_event(ev(1)));
  const auto t0 = Clock::now();
  EXPECT_FALSE(backend.flush(150ms));
  EXPECT_GE(Clock::now() - t0, 150ms);
  gate.open();
  EXPECT_TRUE(backend.flush());
  EXPECT_TRUE(backend.shutdown());
}

TEST(Flush, NotRunningReturnsAtOnce) {
  FlushingSink sink;
  buffered::BufferedBackend<Event, FlushingSink&> backend(sink, lingering());
  EXPECT_TRUE(backend.flush());  // nothing queued
  ASSERT_TRUE(backend.process_event(ev(1)));
  const auto t0 = Clock::now();
  EXPECT_FALSE(backend.flush());  // queued, and nothing will deliver it
  EXPECT_LT(Clock::now() - t0, 5s);
  backend.run();
  EXPECT_TRUE(backend.flush());
  EXPECT_TRUE(backend.shutdown());
  EXPECT_TRUE(backend.flush());                   // after shutdown: nothing queued
  EXPECT_EQ(sink.flushed_at_events_.size(), 1u);  // only the running flush reached the delegate
}

TEST(Flush, ProducersThatNeverStopCannotMakeItHang) {
  RecordingSink<> sink;
  buffered::BatchConfig c = lingering();
  c.max_batch_size = 50;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c);
  backend.run();
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> offered{0};
  std::thread producer([&] {
    for (std::uint64_t i = 0; !stop.load(); ++i) {
      backend.process_event(ev(i));
      offered = i + 1;
    }
  });
  ASSERT_TRUE(eventually([&] { return offered.load() > 1000; }));
  for (int round = 0; round < 5; ++round) {
    const std::uint64_t before = backend.stats().accepted;
    EXPECT_TRUE(backend.flush(kPatience));
    EXPECT_GE(sink.event_count(), before);  // everything accepted before the call is delivered
  }
  stop = true;
  producer.join();
  EXPECT_TRUE(backend.shutdown());
  expect_accounting(backend.stats(), offered.load());
}

TEST(Flush, ReturnsFalseWhenShutdownAbandonsWhatItWaitsFor) {
  Gate gate;
  auto sink = [&](std::span<Event>) { gate.wait(); };
  buffered::BatchConfig c = lingering();
  c.max_batch_size = 1;
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c);
  backend.run();
  for (std::uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  ASSERT_TRUE(eventually([&] { return backend.stats().in_flight == 1; }));
  auto flushed = std::async(std::launch::async, [&] { return backend.flush(); });
  EXPECT_FALSE(backend.shutdown(50ms));
  ASSERT_EQ(flushed.wait_for(kPatience), std::future_status::ready);
  EXPECT_FALSE(flushed.get());
  gate.open();
}

}  // namespace

// Events from other threads (other lanes), accepted before flush() was called, are done when it
// returns true, whichever lane they are in.
TEST(Flush, WaitsForWhatEveryProducerThreadOfferedBefore) {
  RecordingSink<> sink;
  buffered::BatchConfig c;
  c.buffer_size = 10000;
  c.max_batch_size = 1000;
  c.max_batch_wait = 1h;  // nothing goes out on its own
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c);
  backend.run();
  for (int round = 0; round < 20; ++round) {
    std::vector<std::thread> producers;
    for (std::uint32_t p = 0; p < 4; ++p) {
      producers.emplace_back([&backend, p, round] {
        for (std::uint64_t i = 0; i < 25; ++i) {
          EXPECT_TRUE(backend.process_event(ev(static_cast<std::uint64_t>(round) * 25 + i, p)));
        }
      });
    }
    for (auto& t : producers) t.join();
    ASSERT_TRUE(backend.flush(kPatience));
    EXPECT_EQ(sink.event_count(), static_cast<std::size_t>(round + 1) * 100) << round;
  }
  EXPECT_TRUE(backend.shutdown());
}
