// The slack of buffer_size with several producer threads, when byte bounds refuse some of them.
// Each lane reserves slots in chunks of chunk = clamp(buffer_size / 72, 1, 256); the promise:
// a producer is refused (for want of a slot) only when the buffer holds at least
// buffer_size - 8 * (chunk - 1) events, whatever the other threads did before they went idle.
// Below 72 the chunk is 1, so the bound is exact. A thread refused for BYTES must not keep the
// slot it reserved for that event: idle threads that were refused so would otherwise hold a
// slot each, forever.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <latch>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;
using buffered::ErrorKind;

using Sink = RecordingSink<Item>;
using Backend = buffered::BufferedBackend<Item, Sink&>;

// The documented bound: with several producers, a producer is refused only when the buffer
// holds at least this many events.
std::size_t refusal_floor(std::size_t buffer_size) {
  const std::size_t chunk = std::clamp<std::size_t>(buffer_size / 72, 1, 256);
  return buffer_size - 8 * (chunk - 1);
}

buffered::BatchConfig bytes_bound(std::size_t buffer_size, std::size_t max_buffer_bytes) {
  buffered::BatchConfig c;
  c.buffer_size = buffer_size;
  c.max_batch_size = 100;
  c.max_batch_wait = 5ms;
  c.max_buffer_bytes = max_buffer_bytes;
  return c;
}

// Threads that each run `offers` once, then stay alive (idle, holding their lanes) until
// release(); joined by the destructor.
class IdleThreads {
 public:
  template <class Offers>
  IdleThreads(int n, Offers offers) : release_(1) {
    for (int t = 0; t < n; ++t) {
      // One after the other: the order of their offers is fixed.
      threads_.emplace_back([&, t] {
        offers(t);
        offered_.fetch_add(1);
        release_.wait();
      });
      while (offered_.load() != t + 1) std::this_thread::yield();
    }
  }
  IdleThreads(const IdleThreads&) = delete;
  IdleThreads& operator=(const IdleThreads&) = delete;
  ~IdleThreads() {
    release();
    for (auto& t : threads_) t.join();
  }
  void release() {
    if (!released_) release_.count_down();
    released_ = true;
  }

 private:
  std::latch release_;
  std::atomic<int> offered_{0};
  bool released_ = false;
  std::vector<std::thread> threads_;
};

// buffer_size 8, 100 bytes; 90 bytes queued by this thread. Seven threads each offer 20 bytes,
// refused for bytes (10 are left), and stay alive. The buffer holds one event: seven one-byte
// events must fit, and the eighth is refused, exactly at buffer_size.
TEST(SmallBufferSlack, ThreadsRefusedForBytesKeepNoSlotsSoTheBufferFillsToItsSize) {
  Sink sink;
  ErrorLog<Item> errors;
  Backend backend(sink, bytes_bound(8, 100), errors.handler(), item_bytes);
  ASSERT_TRUE(backend.process_event(Item{0, 0, 90}));
  std::atomic<int> accepted_by_idle{0};
  IdleThreads idle(7, [&](int t) {
    if (backend.process_event(Item{static_cast<std::uint32_t>(t + 1), 0, 20})) ++accepted_by_idle;
  });
  EXPECT_EQ(accepted_by_idle.load(), 0) << "20 bytes do not fit in the 10 left";
  EXPECT_EQ(errors.count(ErrorKind::buffer_full), 7u);
  EXPECT_EQ(backend.stats().rejected_full, 7u);
  ASSERT_EQ(backend.stats().queued, 1u);
  std::size_t accepted = 0;
  for (std::uint64_t i = 1; i <= 7; ++i) accepted += backend.process_event(Item{0, i, 1}) ? 1 : 0;
  EXPECT_EQ(accepted, 7u) << "one-byte events accepted with 1 of 8 slots and 90 of 100 bytes used";
  EXPECT_EQ(backend.stats().queued, 1 + accepted);
  EXPECT_FALSE(backend.process_event(Item{0, 8, 1})) << "refused exactly at buffer_size";
  const std::size_t offered = 1 + 7 + 7 + 1;
  EXPECT_EQ(backend.stats().rejected_full, offered - 1 - accepted);
  idle.release();
  backend.run();
  EXPECT_TRUE(backend.shutdown());
  const auto s = backend.stats();
  EXPECT_EQ(s.delivered, 1 + accepted);
  EXPECT_EQ(sink.event_count(), 1 + accepted);
  expect_settled(s, offered);
}

// The bound, over buffer sizes around the chunk's steps. Seven idle threads each had one small
// event accepted and then one refused for bytes; this thread then fills the buffer by count
// until refused: by then the buffer holds at least refusal_floor(buffer_size) events (exactly
// buffer_size below 72), and never more than buffer_size.
TEST(SmallBufferSlack, IdleThreadsNeverHoldMoreThanTheDocumentedSlack) {
  constexpr std::size_t kBytes = 1'000'000;
  constexpr std::size_t kLeft = 20'000;  // what the first event leaves of kBytes
  for (const std::size_t buffer_size : {16u, 40u, 71u, 72u, 144u, 300u, 575u, 1000u, 10000u}) {
    SCOPED_TRACE(buffer_size);
    Sink sink;
    Backend backend(sink, bytes_bound(buffer_size, kBytes), {}, item_bytes);
    ASSERT_TRUE(backend.process_event(Item{0, 0, kBytes - kLeft}));
    std::atomic<int> small_accepted{0};
    std::atomic<int> large_accepted{0};
    IdleThreads idle(7, [&](int t) {
      const auto p = static_cast<std::uint32_t>(t + 1);
      if (backend.process_event(Item{p, 0, 1})) ++small_accepted;
      // Fits max_buffer_bytes, not what is left of it.
      if (backend.process_event(Item{p, 1, kLeft + 1})) ++large_accepted;
    });
    ASSERT_EQ(small_accepted.load(), 7);
    ASSERT_EQ(large_accepted.load(), 0);
    std::size_t filled = 0;
    while (filled <= buffer_size && backend.process_event(Item{0, 1 + filled, 1})) ++filled;
    const auto s = backend.stats();
    EXPECT_GE(s.queued, refusal_floor(buffer_size))
        << "refused with " << s.queued << " of " << buffer_size << " events queued";
    EXPECT_LE(s.queued, buffer_size);
    EXPECT_EQ(s.queued, 1 + 7 + filled);
    idle.release();
    backend.run();
    EXPECT_TRUE(backend.shutdown());
    EXPECT_EQ(backend.stats().delivered, 1 + 7 + filled);
  }
}

}  // namespace
