// OverflowPolicy::block waits for bytes as for slots: a producer whose event would take the
// queued bytes past max_buffer_bytes waits until the worker has taken enough out, gives up with
// buffer_full at block_timeout, or is refused shut_down by a shutdown.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <ostream>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;
using buffered::ErrorKind;

using Sink = RecordingSink<Item>;

// The count is never what binds here (1000 events): only the bytes are.
buffered::BatchConfig blocking(std::size_t max_buffer_bytes, std::size_t max_batch_size = 100,
                               std::chrono::nanoseconds timeout = std::chrono::nanoseconds::max()) {
  buffered::BatchConfig c;
  c.buffer_size = 1000;
  c.max_batch_size = max_batch_size;
  c.max_batch_wait = 5ms;
  c.overflow = buffered::OverflowPolicy::block;
  c.block_timeout = timeout;
  c.max_buffer_bytes = max_buffer_bytes;
  return c;
}

// A delegate that records each batch when its call begins, then returns only once it is given a
// ticket (one per call).
class SteppedSink {
 public:
  void process_events(std::span<Item> items) {
    record_.process_events(items);
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return tickets_ > 0; });
    --tickets_;
  }
  void give(std::size_t n = 1) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tickets_ += n;
    }
    cv_.notify_all();
  }
  // Calls begun so far.
  std::size_t calls() const { return record_.batch_count(); }
  const Sink& record() const { return record_; }

 private:
  Sink record_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t tickets_ = 0;
};

// Lets every call of `sink` return when it goes out of scope: a failed assertion must not leave
// the backend's destructor (or a producer the test waits for) stuck behind the delegate.
struct ReleaseAtExit {
  SteppedSink& sink;
  ~ReleaseAtExit() { sink.give(1000000); }
};

TEST(BlockBytes, ProducerWaitingForBytesIsReleasedWhenTheWorkerTakesEvents) {
  Sink sink;
  ErrorLog<Item> errors;
  buffered::BufferedBackend<Item, Sink&> backend(sink, blocking(100), errors.handler(), item_bytes);
  ASSERT_TRUE(backend.process_event(Item{0, 0, 30}));
  ASSERT_TRUE(backend.process_event(Item{0, 1, 30}));
  // 2 of 1000 events, but 60 + 50 bytes would pass the bound: it waits.
  auto third = std::async(std::launch::async, [&] {
    return backend.process_event(Item{1, 0, 50});
  });
  EXPECT_EQ(third.wait_for(200ms), std::future_status::timeout);
  auto s = backend.stats();
  EXPECT_EQ(s.accepted, 2u);
  EXPECT_EQ(s.rejected_full, 0u);
  EXPECT_EQ(s.queued_bytes, 60u);
  backend.run();  // the worker takes the queued events: the bytes come free
  ASSERT_EQ(third.wait_for(kPatience), std::future_status::ready);
  EXPECT_TRUE(third.get());
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.events(), (std::vector<Item>{{0, 0, 30}, {0, 1, 30}, {1, 0, 50}}));
  EXPECT_EQ(errors.calls(), 0u);
  expect_settled(backend.stats(), 3);
}

// The worker takes one event at a time (max_batch_size 1) and the delegate returns one call per
// ticket: the waiting producer is released exactly when enough bytes have come free.
TEST(BlockBytes, ProducerWaitsUntilItsEventFits) {
  SteppedSink sink;
  ErrorLog<Item> errors;
  buffered::BufferedBackend<Item, SteppedSink&> backend(sink, blocking(100, 1), errors.handler(),
                                                        item_bytes);
  const ReleaseAtExit release_calls{sink};
  backend.run();
  std::vector<Item> mine;
  for (std::uint64_t i = 0; i <= 10; ++i) mine.push_back(Item{0, i, 10});
  ASSERT_TRUE(backend.process_event(mine[0]));
  ASSERT_TRUE(eventually([&] { return sink.calls() == 1; }));  // the delegate holds mine[0]
  for (std::uint64_t i = 1; i <= 10; ++i) ASSERT_TRUE(backend.process_event(mine[i]));
  ASSERT_EQ(backend.stats().queued_bytes, 100u);
  const Item big{1, 0, 50};
  auto waiting = std::async(std::launch::async, [&] { return backend.process_event(big); });
  const ReleaseAtExit release_producer{sink};  // runs before `waiting` waits for the producer
  EXPECT_EQ(waiting.wait_for(200ms), std::future_status::timeout);
  // Each ticket: the delegate returns, the worker takes the next 10-byte event into the next
  // call. After k tickets (100 - 10k) bytes are queued; 50 more fit from k = 5 on.
  for (std::size_t k = 1; k <= 4; ++k) {
    sink.give();
    ASSERT_TRUE(eventually([&] { return sink.calls() == k + 1; })) << k;
    ASSERT_TRUE(eventually([&] { return backend.stats().queued_bytes == 100 - 10 * k; })) << k;
    EXPECT_EQ(waiting.wait_for(50ms), std::future_status::timeout)
        << "released with " << 100 - 10 * k << " bytes queued";
  }
  sink.give();
  ASSERT_EQ(waiting.wait_for(kPatience), std::future_status::ready);
  EXPECT_TRUE(waiting.get());
  EXPECT_LE(backend.stats().queued_bytes, 100u);
  sink.give(1000);
  EXPECT_TRUE(backend.shutdown());
  std::vector<Item> from_main;
  std::size_t bigs = 0;
  for (const Item& item : sink.record().events()) {
    if (item.producer == 0) from_main.push_back(item);
    if (item == big) ++bigs;
  }
  EXPECT_EQ(from_main, mine);
  EXPECT_EQ(bigs, 1u);
  EXPECT_EQ(errors.calls(), 0u);
  expect_settled(backend.stats(), 12);
}

TEST(BlockBytes, GivesUpWithBufferFullAtBlockTimeoutWhileTheDelegateIsStuck) {
  SteppedSink sink;
  ErrorLog<Item> errors;
  buffered::BufferedBackend<Item, SteppedSink&> backend(sink, blocking(100, 1, 300ms),
                                                        errors.handler(), item_bytes);
  const ReleaseAtExit release{sink};
  backend.run();
  ASSERT_TRUE(backend.process_event(Item{0, 0, 10}));
  ASSERT_TRUE(eventually([&] { return sink.calls() == 1; }));  // stuck, holding it
  for (std::uint64_t i = 1; i <= 10; ++i) ASSERT_TRUE(backend.process_event(Item{0, i, 10}));
  const Item late{0, 11, 10};
  const auto t0 = Clock::now();
  EXPECT_FALSE(backend.process_event(late));
  const auto waited = Clock::now() - t0;
  EXPECT_GE(waited, 300ms);  // not before the timeout
  EXPECT_LT(waited, 300ms + kPatience);
  const auto entries = errors.entries();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].first, ErrorKind::buffer_full);
  EXPECT_EQ(entries[0].second, std::vector<Item>{late});
  EXPECT_EQ(backend.stats().rejected_full, 1u);
  EXPECT_EQ(backend.stats().queued_bytes, 100u);
  sink.give(1000);
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.record().event_count(), 11u);
  expect_settled(backend.stats(), 12);
}

TEST(BlockBytes, ShutdownRefusesAProducerWaitingForBytesWithShutDown) {
  Sink sink;
  ErrorLog<Item> errors;
  buffered::BufferedBackend<Item, Sink&> backend(sink, blocking(100), errors.handler(), item_bytes);
  ASSERT_TRUE(backend.process_event(Item{0, 0, 100}));
  const Item late{1, 0, 1};
  auto waiting = std::async(std::launch::async, [&] { return backend.process_event(late); });
  EXPECT_EQ(waiting.wait_for(200ms), std::future_status::timeout);
  EXPECT_FALSE(backend.shutdown());  // never ran: the queued one is abandoned
  ASSERT_EQ(waiting.wait_for(kPatience), std::future_status::ready);
  EXPECT_FALSE(waiting.get());
  EXPECT_EQ(errors.count(ErrorKind::shut_down), 1u);
  EXPECT_EQ(errors.count(ErrorKind::abandoned), 1u);
  EXPECT_EQ(errors.count(ErrorKind::buffer_full), 0u);
  const auto s = backend.stats();
  EXPECT_EQ(s.rejected_shut_down, 1u);
  EXPECT_EQ(s.abandoned, 1u);
  expect_settled(s, 2);
}

// Several producers waiting for bytes, a worker that frees them: nothing is lost or refused.
TEST(BlockBytes, SeveralWaitingProducersLoseNothing) {
  Sink sink;
  ErrorLog<Item> errors;
  buffered::BufferedBackend<Item, Sink&> backend(sink, blocking(200, 8), errors.handler(),
                                                 item_bytes);
  backend.run();
  constexpr std::uint32_t kProducers = 3;
  constexpr std::uint64_t kEach = 1000;
  std::atomic<int> refused{0};
  std::vector<std::thread> producers;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (std::uint64_t i = 0; i < kEach; ++i) {
        if (!backend.process_event(Item{p, i, 1 + (i * 7 + p) % 50})) ++refused;
      }
    });
  }
  for (auto& t : producers) t.join();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(refused.load(), 0);
  EXPECT_EQ(errors.calls(), 0u);
  std::vector<std::vector<std::uint64_t>> seqs(kProducers);
  for (const Item& item : sink.events()) seqs[item.producer].push_back(item.seq);
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    ASSERT_EQ(seqs[p].size(), kEach) << p;
    for (std::uint64_t i = 0; i < kEach; ++i) EXPECT_EQ(seqs[p][i], i);
  }
  expect_settled(backend.stats(), kProducers * kEach);
}

}  // namespace
