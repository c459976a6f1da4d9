// delegate.flush() never runs once delegate.shutdown() has started, however flush() and
// shutdown() race.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "support.hpp"

namespace {

using namespace buffered_test;

struct OrderSink {
  std::atomic<bool> shutdown_started{false};
  std::atomic<int> flushes{0};
  std::atomic<int> flushes_after_shutdown{0};
  void process_events(std::span<Event>) {}
  void flush() {
    if (shutdown_started.load()) ++flushes_after_shutdown;
    ++flushes;
  }
  void shutdown() {
    shutdown_started = true;
    std::this_thread::sleep_for(200us);
  }
};

TEST(DelegateFlushOrder, NeverAfterDelegateShutdownHasStarted) {
  int violations = 0;
  int flushes = 0;
  for (int round = 0; round < 200; ++round) {
    OrderSink sink;
    buffered::BatchConfig c;
    c.max_batch_size = 4;
    c.max_batch_wait = 1ms;
    c.async_delegate = round % 2 == 1;
    {
      buffered::BufferedBackend<Event, OrderSink&> backend(sink, c);
      backend.run();
      for (std::uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
      std::thread flusher([&] {
        for (int i = 0; i < 20; ++i) backend.flush();
      });
      if (round % 3 == 0) std::this_thread::yield();
      EXPECT_TRUE(backend.shutdown());
      flusher.join();
    }
    violations += sink.flushes_after_shutdown.load();
    flushes += sink.flushes.load();
  }
  EXPECT_EQ(violations, 0);
  EXPECT_GT(flushes, 0);  // the race was really run
}

TEST(DelegateFlushOrder, FlushAfterShutdownReturnsAtOnceWithoutCallingTheDelegate) {
  OrderSink sink;
  buffered::BufferedBackend<Event, OrderSink&> backend(sink);
  backend.run();
  ASSERT_TRUE(backend.process_event(ev(1)));
  EXPECT_TRUE(backend.flush());
  EXPECT_EQ(sink.flushes.load(), 1);
  EXPECT_TRUE(backend.shutdown());
  EXPECT_TRUE(backend.flush());  // everything it waits for was delivered
  EXPECT_EQ(sink.flushes.load(), 1);
  EXPECT_EQ(sink.flushes_after_shutdown.load(), 0);
}

}  // namespace
