// Async dispatch: a fixed pool, at most max_in_flight calls, bounded memory, waited for.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <set>

#include "support.hpp"

namespace {

using namespace buffered_test;

// Sleeps in each call and records how many calls overlapped and on which threads.
class ConcurrencySink {
 public:
  explicit ConcurrencySink(Clock::duration nap) : nap_(nap) {}
  void process_events(std::span<Event> events) {
    const int now = ++running_;
    int seen = max_running_.load();
    while (now > seen && !max_running_.compare_exchange_weak(seen, now)) {
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads_.insert(std::this_thread::get_id());
    }
    std::this_thread::sleep_for(nap_);
    events_ += events.size();
    --running_;
  }
  int max_running() const { return max_running_.load(); }
  std::size_t thread_count() {
    std::lock_guard<std::mutex> lock(mu_);
    return threads_.size();
  }
  std::size_t events() const { return events_.load(); }

 private:
  Clock::duration nap_;
  std::atomic<int> running_{0};
  std::atomic<int> max_running_{0};
  std::atomic<std::size_t> events_{0};
  std::mutex mu_;
  std::set<std::thread::id> threads_;
};

buffered::BatchConfig async_config(std::size_t max_in_flight, std::size_t max_batch = 1) {
  buffered::BatchConfig c;
  c.async_delegate = true;
  c.max_in_flight = max_in_flight;
  c.max_batch_size = max_batch;
  c.max_batch_wait = 1ms;
  return c;
}

TEST(AsyncDispatch, AtMostMaxInFlightCallsOnAFixedPool) {
  ConcurrencySink sink(20ms);
  buffered::BufferedBackend<Event, ConcurrencySink&> backend(sink, async_config(3));
  backend.run();
  for (std::uint64_t i = 0; i < 40; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.events(), 40u);
  EXPECT_LE(sink.max_running(), 3);
  EXPECT_GE(sink.max_running(), 2);    // it really does run calls side by side
  EXPECT_LE(sink.thread_count(), 3u);  // never a thread per batch
  EXPECT_EQ(backend.stats().batches, 40u);
}

TEST(AsyncDispatch, ShutdownWaitsForACallInProgress) {
  Gate gate;
  std::atomic<int> delivered{0};
  auto sink = [&](std::span<Event> events) {
    gate.wait();
    delivered += static_cast<int>(events.size());
  };
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, async_config(2));
  backend.run();
  ASSERT_TRUE(backend.process_event(ev(1)));
  ASSERT_TRUE(eventually([&] { return backend.stats().in_flight == 1; }));
  auto done = std::async(std::launch::async, [&] { return backend.shutdown(); });
  EXPECT_EQ(done.wait_for(200ms), std::future_status::timeout);
  EXPECT_EQ(delivered.load(), 0);
  gate.open();
  ASSERT_EQ(done.wait_for(kPatience), std::future_status::ready);
  EXPECT_TRUE(done.get());
  EXPECT_EQ(delivered.load(), 1);
  expect_accounting(backend.stats(), 1);
}

TEST(AsyncDispatch, WhenAllCallsAreBusyTheBufferFillsAndMemoryStaysBounded) {
  Gate gate;
  auto sink = [&](std::span<Event>) { gate.wait(); };
  buffered::BatchConfig c = async_config(1);
  c.buffer_size = 4;
  ErrorLog<> errors;
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c, errors.handler());
  backend.run();
  std::uint64_t offered = 0;
  for (; offered < 1000; ++offered) {
    backend.process_event(ev(offered));
    if (offered % 50 == 0) std::this_thread::sleep_for(1ms);
  }
  const auto s = backend.stats();
  // One event in the running call, one batch held by the waiting worker, four in the buffer.
  EXPECT_LE(s.accepted, 6u);
  EXPECT_GE(s.rejected_full, 994u);
  EXPECT_EQ(errors.count(buffered::ErrorKind::buffer_full), s.rejected_full);
  gate.open();
  EXPECT_TRUE(backend.shutdown());
  expect_accounting(backend.stats(), offered);
}

TEST(AsyncDispatch, OneInFlightKeepsAcceptanceOrder) {
  RecordingSink<> sink;
  buffered::BatchConfig c = async_config(1, 7);
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c);
  backend.run();
  for (std::uint64_t i = 0; i < 500; ++i) {
    while (!backend.process_event(ev(i))) std::this_thread::yield();
  }
  EXPECT_TRUE(backend.shutdown());
  const auto all = sink.events();
  ASSERT_EQ(all.size(), 500u);
  for (std::uint64_t i = 0; i < 500; ++i) EXPECT_EQ(all[i].seq, i);
}

}  // namespace
