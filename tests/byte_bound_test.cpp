// max_buffer_bytes: the queued events' byte sizes never sum past it. With one producer thread an
// event is refused exactly when it would take them past it; Stats::queued_bytes is their sum;
// buffer_size still applies; without a byte_size function an event counts sizeof(Event).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <ostream>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;
using buffered::ErrorKind;

using Sink = RecordingSink<Item>;
using Backend = buffered::BufferedBackend<Item, Sink&>;

buffered::BatchConfig byte_bound(std::size_t max_buffer_bytes, std::size_t buffer_size = 1000) {
  buffered::BatchConfig c;
  c.buffer_size = buffer_size;
  c.max_batch_size = 100;
  c.max_batch_wait = 5ms;
  c.max_buffer_bytes = max_buffer_bytes;
  return c;
}

// Sizes in [1, max] from a fixed linear congruential sequence: varied, the same on every run.
std::vector<std::size_t> sizes(std::size_t n, std::size_t max, std::uint32_t seed = 1) {
  std::vector<std::size_t> out;
  std::uint32_t x = seed;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    out.push_back(1 + (x >> 8) % max);
  }
  return out;
}

// The events of the entries of `kind`, in the order they were reported.
std::vector<Item> reported(const ErrorLog<Item>& log, ErrorKind kind) {
  std::vector<Item> out;
  for (const auto& [k, items] : log.entries()) {
    if (k == kind) out.insert(out.end(), items.begin(), items.end());
  }
  return out;
}

TEST(ByteBound, OneProducerIsRefusedExactlyWhenTheBytesWouldPassTheBound) {
  constexpr std::size_t kBound = 200;
  Sink sink;
  ErrorLog<Item> errors;
  Backend backend(sink, byte_bound(kBound), errors.handler(), item_bytes);
  std::size_t queued = 0;  // the model: bytes queued (nothing is consumed before run())
  std::vector<Item> accepted;
  std::vector<Item> refused;
  std::uint64_t seq = 0;
  const auto offer = [&](std::size_t bytes) {
    const Item item{0, seq++, bytes};
    const bool fits = queued + bytes <= kBound;
    ASSERT_EQ(backend.process_event(item), fits)
        << item << " with " << queued << " of " << kBound << " bytes queued";
    (fits ? accepted : refused).push_back(item);
    if (fits) queued += bytes;
    ASSERT_EQ(backend.stats().queued_bytes, queued) << "after " << item;
  };
  for (const std::size_t bytes : sizes(300, 60)) {
    offer(bytes);
    if (HasFatalFailure()) return;
  }
  // The edge itself (unless the sequence reached it): one byte too many is refused, exactly the
  // rest is taken; then nothing fits.
  if (const std::size_t rest = kBound - queued; rest > 0) {
    offer(rest + 1);
    offer(rest);
  }
  offer(1);
  if (HasFatalFailure()) return;
  ASSERT_EQ(queued, kBound);

  EXPECT_EQ(reported(errors, ErrorKind::buffer_full), refused);
  EXPECT_EQ(errors.calls(), refused.size());  // nothing else reported
  auto s = backend.stats();
  EXPECT_EQ(s.accepted, accepted.size());
  EXPECT_EQ(s.rejected_full, refused.size());
  EXPECT_EQ(s.queued, accepted.size());
  EXPECT_EQ(s.queued_bytes, kBound);

  backend.run();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.events(), accepted);
  expect_settled(backend.stats(), seq);
}

TEST(ByteBound, SpanStopsAtTheFirstEventThatDoesNotFit) {
  Sink sink;
  ErrorLog<Item> errors;
  Backend backend(sink, byte_bound(100), errors.handler(), item_bytes);
  const std::vector<Item> four{{0, 0, 30}, {0, 1, 30}, {0, 2, 50}, {0, 3, 10}};
  EXPECT_EQ(backend.process_events(four), 2u);  // 10 would fit, but the span stops at 50
  const auto entries = errors.entries();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].first, ErrorKind::buffer_full);
  EXPECT_EQ(entries[0].second, (std::vector<Item>{four[2], four[3]}));
  EXPECT_EQ(backend.stats().rejected_full, 2u);
  EXPECT_EQ(backend.stats().queued_bytes, 60u);
  const std::vector<Item> last{{0, 4, 40}};
  EXPECT_EQ(backend.process_events(last), 1u);  // exactly up to the bound
  EXPECT_EQ(backend.stats().queued_bytes, 100u);
  backend.run();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.events(), (std::vector<Item>{four[0], four[1], last[0]}));
  expect_settled(backend.stats(), 5);
}

TEST(ByteBound, TheCountBoundStillApplies) {
  {
    SCOPED_TRACE("the count is reached first");
    Sink sink;
    ErrorLog<Item> errors;
    Backend backend(sink, byte_bound(1000, 3), errors.handler(), item_bytes);
    for (std::uint64_t i = 0; i < 3; ++i) EXPECT_TRUE(backend.process_event(Item{0, i, 10}));
    EXPECT_FALSE(backend.process_event(Item{0, 3, 10}));  // 40 bytes would fit, a 4th would not
    EXPECT_EQ(reported(errors, ErrorKind::buffer_full), (std::vector<Item>{{0, 3, 10}}));
    const auto s = backend.stats();
    EXPECT_EQ(s.queued, 3u);
    EXPECT_EQ(s.queued_bytes, 30u);
    EXPECT_EQ(s.rejected_full, 1u);
    backend.run();
    EXPECT_TRUE(backend.shutdown());
    EXPECT_EQ(sink.event_count(), 3u);
    expect_settled(backend.stats(), 4);
  }
  {
    SCOPED_TRACE("the bytes are reached first");
    Sink sink;
    ErrorLog<Item> errors;
    Backend backend(sink, byte_bound(100, 10), errors.handler(), item_bytes);
    EXPECT_TRUE(backend.process_event(Item{0, 0, 40}));
    EXPECT_TRUE(backend.process_event(Item{0, 1, 40}));
    EXPECT_FALSE(backend.process_event(Item{0, 2, 21}));  // 3 of 10 events, but 101 bytes
    EXPECT_TRUE(backend.process_event(Item{0, 3, 20}));   // exactly 100
    EXPECT_EQ(reported(errors, ErrorKind::buffer_full), (std::vector<Item>{{0, 2, 21}}));
    const auto s = backend.stats();
    EXPECT_EQ(s.queued, 3u);
    EXPECT_EQ(s.queued_bytes, 100u);
    backend.run();
    EXPECT_TRUE(backend.shutdown());
    EXPECT_EQ(sink.events(), (std::vector<Item>{{0, 0, 40}, {0, 1, 40}, {0, 3, 20}}));
    expect_settled(backend.stats(), 4);
  }
}

TEST(ByteBound, WithoutAByteSizeFunctionAnEventIsSizeofEvent) {
  // Slack below one more event changes nothing: ten fit, the eleventh does not.
  for (const std::size_t slack : {std::size_t{0}, sizeof(Event) - 1}) {
    SCOPED_TRACE(slack);
    RecordingSink<> sink;
    ErrorLog<> errors;
    buffered::BatchConfig c;
    c.buffer_size = 1000;
    c.max_batch_size = 100;
    c.max_batch_wait = 5ms;
    c.max_buffer_bytes = 10 * sizeof(Event) + slack;
    buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c, errors.handler());
    for (std::uint64_t i = 0; i < 10; ++i) EXPECT_TRUE(backend.process_event(ev(i)));
    EXPECT_FALSE(backend.process_event(ev(10)));
    EXPECT_EQ(errors.count(buffered::ErrorKind::buffer_full), 1u);
    const auto s = backend.stats();
    EXPECT_EQ(s.queued, 10u);
    EXPECT_EQ(s.queued_bytes, 10 * sizeof(Event));
    EXPECT_EQ(s.rejected_full, 1u);
    backend.run();
    EXPECT_TRUE(backend.shutdown());
    EXPECT_EQ(sink.events(), seqs(0, 10));
    expect_settled(backend.stats(), 11);
  }
}

TEST(ByteBound, QueuedBytesIsZeroAndByteSizeIsNotCalledWithoutAByteBound) {
  Sink sink;
  std::atomic<int> calls{0};
  Backend backend(sink, byte_bound(0), {}, [&](const Item& item) {
    ++calls;
    return item.bytes;
  });
  for (std::uint64_t i = 0; i < 5; ++i) EXPECT_TRUE(backend.process_event(Item{0, i, 1000}));
  const auto s = backend.stats();
  EXPECT_EQ(s.queued, 5u);
  EXPECT_EQ(s.queued_bytes, 0u);
  EXPECT_EQ(calls.load(), 0);
  backend.run();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.event_count(), 5u);
  EXPECT_EQ(calls.load(), 0);
}

TEST(ByteBound, ByteSizeIsCalledOncePerOfferedEventOnTheProducersThread) {
  Sink sink;
  std::mutex mu;
  std::map<std::uint64_t, int> calls;  // seq -> calls
  bool other_thread = false;
  const auto me = std::this_thread::get_id();
  Backend backend(sink, byte_bound(100), {}, [&](const Item& item) {
    std::lock_guard<std::mutex> lock(mu);
    ++calls[item.seq];
    if (std::this_thread::get_id() != me) other_thread = true;
    return item.bytes;
  });
  for (std::uint64_t i = 0; i < 20; ++i) backend.process_event(Item{0, i, 10});  // 10 refused
  backend.run();
  EXPECT_TRUE(backend.shutdown());
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(calls.size(), 20u);
  for (const auto& [seq, n] : calls) EXPECT_EQ(n, 1) << "event " << seq;
  EXPECT_FALSE(other_thread);
  EXPECT_EQ(backend.stats().accepted, 10u);
}

TEST(ByteBound, RunningBackendGivesTheBytesBackAsItDelivers) {
  Sink sink;
  ErrorLog<Item> errors;
  Backend backend(sink, byte_bound(200), errors.handler(), item_bytes);
  backend.run();
  std::vector<Item> accepted;
  std::uint64_t seq = 0;
  for (const std::size_t bytes : sizes(2000, 60, 7)) {
    const Item item{0, seq++, bytes};
    if (backend.process_event(item)) accepted.push_back(item);
    EXPECT_LE(backend.stats().queued_bytes, 200u);
  }
  ASSERT_TRUE(backend.flush(kPatience));
  EXPECT_EQ(backend.stats().queued_bytes, 0u);
  EXPECT_EQ(sink.events(), accepted);  // every accepted one, in order
  EXPECT_TRUE(backend.shutdown());
  const auto s = backend.stats();
  EXPECT_EQ(s.rejected_full, 2000 - accepted.size());
  EXPECT_EQ(reported(errors, ErrorKind::buffer_full).size(), 2000 - accepted.size());
  expect_settled(s, 2000);
}

// A delegate that holds the first batch until the gate opens, recording every batch.
class HeldSink {
 public:
  explicit HeldSink(Gate& gate) : gate_(gate) {}
  void process_events(std::span<Item> items) {
    std::size_t bytes = 0;
    for (const Item& item : items) bytes += item.bytes;
    held_bytes_ += bytes;
    ++calls_;
    gate_.wait();
    record_.process_events(items);
  }
  std::size_t held_bytes() const { return held_bytes_.load(); }
  int calls() const { return calls_.load(); }
  const Sink& record() const { return record_; }

 private:
  Gate& gate_;
  std::atomic<std::size_t> held_bytes_{0};
  std::atomic<int> calls_{0};
  Sink record_;
};

// Several producer threads: each lane may keep unused byte credits, at most 1/8 of the bound in
// all, so a producer may be refused a little early -- but never before 7/8 of the bound is
// queued, and the queued bytes never pass the bound.
TEST(ByteBound, SeveralProducersNeverPassTheBoundAndAreRefusedOnlyWhenNearlyFull) {
  constexpr std::size_t kBound = 8192;
  constexpr std::size_t kMaxSize = 64;
  constexpr std::uint32_t kProducers = 4;
  constexpr int kRefusalsEach = 200;
  Gate gate;
  HeldSink sink(gate);
  ErrorLog<Item> errors;
  buffered::BatchConfig c = byte_bound(kBound, 100000);
  c.max_batch_size = 1;  // the worker holds one event in the delegate, then takes nothing more
  buffered::BufferedBackend<Item, HeldSink&> backend(sink, c, errors.handler(), item_bytes);
  backend.run();

  std::atomic<bool> done{false};
  std::size_t max_seen = 0;
  std::thread sampler([&] {
    while (!done.load()) max_seen = std::max(max_seen, backend.stats().queued_bytes);
  });
  std::vector<std::vector<Item>> accepted(kProducers);
  std::atomic<std::size_t> early{0};  // refusals while clearly less than 7/8 was queued
  std::atomic<std::size_t> lowest_at_refusal{kBound};
  std::atomic<std::size_t> refusals{0};
  std::vector<std::thread> producers;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      const auto sz = sizes(100000, kMaxSize, p + 11);
      int refused = 0;
      for (std::uint64_t i = 0; i < sz.size() && refused < kRefusalsEach; ++i) {
        const Item item{p, i, sz[i]};
        if (backend.process_event(item)) {
          accepted[p].push_back(item);
          continue;
        }
        ++refused;
        ++refusals;
        // Nothing is taken out meanwhile, so what is queued now is at least what was queued at
        // the refusal: this is an upper bound on it.
        const std::size_t now = backend.stats().queued_bytes;
        std::size_t low = lowest_at_refusal.load();
        while (now < low && !lowest_at_refusal.compare_exchange_weak(low, now)) {
        }
        if (now + item.bytes < kBound - kBound / 8) ++early;
      }
    });
  }
  for (auto& t : producers) t.join();
  done = true;
  sampler.join();

  EXPECT_LE(max_seen, kBound);
  EXPECT_EQ(early.load(), 0u) << "lowest queued_bytes after a refusal: " << lowest_at_refusal;
  EXPECT_EQ(refusals.load(), kProducers * static_cast<std::size_t>(kRefusalsEach));
  ASSERT_TRUE(eventually([&] { return sink.calls() == 1; }));
  std::size_t accepted_bytes = 0;
  std::size_t accepted_count = 0;
  for (const auto& items : accepted) {
    for (const Item& item : items) accepted_bytes += item.bytes;
    accepted_count += items.size();
  }
  auto s = backend.stats();
  EXPECT_EQ(s.queued_bytes, accepted_bytes - sink.held_bytes());
  EXPECT_LE(s.queued_bytes, kBound);
  EXPECT_GE(s.queued_bytes + kMaxSize + kBound / 8, kBound);
  EXPECT_EQ(s.queued, accepted_count - 1);
  EXPECT_EQ(s.accepted, accepted_count);
  EXPECT_EQ(s.rejected_full, refusals.load());
  EXPECT_EQ(reported(errors, ErrorKind::buffer_full).size(), refusals.load());

  gate.open();
  EXPECT_TRUE(backend.shutdown());
  // Every accepted event delivered once, each producer's in its order.
  std::vector<std::vector<Item>> delivered(kProducers);
  for (const Item& item : sink.record().events()) delivered[item.producer].push_back(item);
  for (std::uint32_t p = 0; p < kProducers; ++p) EXPECT_EQ(delivered[p], accepted[p]) << p;
  expect_settled(backend.stats(), accepted_count + refusals.load());
}

}  // namespace
