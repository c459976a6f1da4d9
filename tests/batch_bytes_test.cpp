// max_batch_bytes: a batch's byte sizes sum to at most the bound, it holds at least one event,
// and it goes as soon as the next event would not fit -- without waiting for max_batch_wait.
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;

using Sink = RecordingSink<Item>;
using Backend = buffered::BufferedBackend<Item, Sink&>;
using Batches = std::vector<std::vector<Item>>;

constexpr std::size_t kBatchBytes = 100;

// Events 0..n-1 with sizes in [1, max] from a fixed linear congruential sequence.
std::vector<Item> items(std::size_t n, std::size_t max, std::uint32_t seed = 1) {
  std::vector<Item> out;
  std::uint32_t x = seed;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    out.push_back(Item{0, i, 1 + (x >> 8) % max});
  }
  return out;
}

std::size_t bytes_of(const std::vector<Item>& batch) {
  std::size_t sum = 0;
  for (const Item& item : batch) sum += item.bytes;
  return sum;
}

// The batches `all`, queued in order, must make: each as long as the next event fits.
Batches greedy(const std::vector<Item>& all, std::size_t max_bytes, std::size_t max_count) {
  Batches out;
  std::size_t bytes = 0;
  for (const Item& item : all) {
    if (out.empty() || bytes + item.bytes > max_bytes || out.back().size() == max_count) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(item);
    bytes += item.bytes;
  }
  return out;
}

std::vector<Item> flatten(const Batches& batches) {
  std::vector<Item> out;
  for (const auto& b : batches) out.insert(out.end(), b.begin(), b.end());
  return out;
}

void expect_within_bound(const Batches& batches) {
  for (std::size_t i = 0; i < batches.size(); ++i) {
    EXPECT_FALSE(batches[i].empty()) << "batch " << i;
    EXPECT_LE(bytes_of(batches[i]), kBatchBytes) << "batch " << i;
  }
}

struct Bounds {
  const char* name;
  std::size_t buffer_bytes;
};
constexpr Bounds kBounds[] = {{"max_batch_bytes alone", 0}, {"with max_buffer_bytes", 100000}};

// A batch waits for max_batch_wait (an hour here) only while the next event may still fit: the
// batch count is no limit (1000 events), only the bytes are.
buffered::BatchConfig byte_batches(std::size_t buffer_bytes, bool async = false) {
  buffered::BatchConfig c;
  c.buffer_size = 10000;
  c.max_batch_size = 1000;
  c.max_batch_wait = 1h;
  c.max_batch_bytes = kBatchBytes;
  c.max_buffer_bytes = buffer_bytes;
  c.async_delegate = async;
  c.max_in_flight = 1;  // batches in order
  return c;
}

TEST(BatchBytes, QueuedEventsGoInByteFullBatchesWithoutWaiting) {
  for (const bool async : {false, true}) {
    for (const Bounds& b : kBounds) {
      SCOPED_TRACE(std::string(async ? "async, " : "sync, ") + b.name);
      Sink sink;
      Backend backend(sink, byte_batches(b.buffer_bytes, async), {}, item_bytes);
      const auto all = items(200, 50);
      for (const Item& item : all) ASSERT_TRUE(backend.process_event(item));
      const Batches expected = greedy(all, kBatchBytes, 1000);
      ASSERT_GE(expected.size(), 50u);
      backend.run();
      // All but the last are byte-full: they come long before the hour of max_batch_wait.
      const std::size_t byte_full = all.size() - expected.back().size();
      ASSERT_TRUE(eventually([&] { return sink.event_count() >= byte_full; }))
          << sink.event_count() << " of " << byte_full << " events delivered";
      Batches got = sink.batches();
      ASSERT_GE(got.size(), expected.size() - 1);
      ASSERT_LE(got.size(), expected.size());
      for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], expected[i]) << "batch " << i;
      EXPECT_TRUE(backend.shutdown());
      got = sink.batches();
      EXPECT_EQ(got, expected);
      expect_within_bound(got);
      EXPECT_EQ(flatten(got), all);
      const auto s = backend.stats();
      EXPECT_EQ(s.delivered, all.size());
      EXPECT_EQ(s.batches, expected.size());
      EXPECT_EQ(s.queued_bytes, 0u);
    }
  }
}

// Events arrive while the worker runs: every batch the worker sends before shutdown went because
// the next event would not fit (max_batch_wait is an hour, the count is no limit).
TEST(BatchBytes, LiveEventsGoInByteFullBatchesInOrder) {
  for (const Bounds& b : kBounds) {
    SCOPED_TRACE(b.name);
    Sink sink;
    buffered::BatchConfig c = byte_batches(b.buffer_bytes);
    c.overflow = buffered::OverflowPolicy::block;  // nothing refused, whatever the speed
    Backend backend(sink, c, {}, item_bytes);
    backend.run();
    const auto all = items(3000, 50, 5);
    for (const Item& item : all) ASSERT_TRUE(backend.process_event(item));
    // Every event is taken: delivered, or in the last batch, which waits for more.
    ASSERT_TRUE(eventually([&] {
      const auto s = backend.stats();
      return s.queued == 0 && s.in_flight == 0 && s.delivered + s.pending == all.size();
    })) << "delivered "
        << backend.stats().delivered << " of " << all.size();
    const Batches sent = sink.batches();
    ASSERT_FALSE(sent.empty());
    const std::vector<Item> so_far = flatten(sent);
    ASSERT_LE(so_far.size(), all.size());
    EXPECT_EQ(so_far, std::vector<Item>(all.begin(), all.begin() + so_far.size()));
    std::size_t next = 0;
    for (std::size_t i = 0; i < sent.size(); ++i) {
      next += sent[i].size();
      if (next < all.size()) {
        EXPECT_GT(bytes_of(sent[i]) + all[next].bytes, kBatchBytes)
            << "batch " << i << " went before it was full: " << all[next] << " would fit";
      }
    }
    EXPECT_TRUE(backend.shutdown());
    const Batches got = sink.batches();
    expect_within_bound(got);
    EXPECT_EQ(flatten(got), all);
    EXPECT_EQ(backend.stats().delivered, all.size());
  }
}

TEST(BatchBytes, MaxBatchSizeStillApplies) {
  Sink sink;
  buffered::BatchConfig c = byte_batches(0);
  c.max_batch_size = 10;
  Backend backend(sink, c, {}, item_bytes);
  std::vector<Item> all;
  for (std::uint64_t i = 0; i < 35; ++i) all.push_back(Item{0, i, 1});  // 35 bytes in all
  for (const Item& item : all) ASSERT_TRUE(backend.process_event(item));
  backend.run();
  ASSERT_TRUE(eventually([&] { return sink.event_count() >= 30; }));
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.batches(), greedy(all, kBatchBytes, 10));
  ASSERT_EQ(sink.batch_count(), 4u);
}

// An event of exactly max_batch_bytes is a batch on its own, and the events around it go in
// batches of their own too.
TEST(BatchBytes, AnEventOfTheWholeBoundGoesAlone) {
  Sink sink;
  Backend backend(sink, byte_batches(0), {}, item_bytes);
  const std::vector<Item> all{{0, 0, 1}, {0, 1, kBatchBytes}, {0, 2, 1}};
  for (const Item& item : all) ASSERT_TRUE(backend.process_event(item));
  backend.run();
  ASSERT_TRUE(eventually([&] { return sink.event_count() >= 2; }));
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.batches(), (Batches{{all[0]}, {all[1]}, {all[2]}}));
}

}  // namespace
