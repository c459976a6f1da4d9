// The buffer's byte bound and eviction on their own: the byte bound is exact with one producer
// thread and its slack bounded with several, a budget stops a pop before the element that does
// not fit, and evict_oldest takes the evicting thread's own oldest element first, never one the
// consumer took, and gives the freed space to that thread.
#include <gtest/gtest.h>
#include <buffered/detail/sharded_queue.hpp>

#include "queue_support.hpp"

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

using buffered::detail::ByteBudget;
using buffered::detail::PushResult;
using buffered::detail::QueueOptions;
using Queue = buffered::detail::ShardedQueue<std::uint64_t>;

PushResult push(Queue& q, std::uint64_t v, std::uint64_t bytes) {
  Queue::LaneHandle lane = nullptr;
  return buffered_test::try_push_sized(q, lane, bytes, v);
}

TEST(ShardedQueueBytes, ASizedQueueNeverOffersTheUnsizedFastPath) {
  Queue q(10, 0, QueueOptions{100, true, false});
  Queue::LaneHandle lane = nullptr;
  ASSERT_EQ(buffered_test::try_push_sized(q, lane, 1, std::uint64_t{1}), PushResult::ok);
  Queue::LaneHandle cached = nullptr;
  EXPECT_FALSE(q.cached_lane(cached)) << "every push of a sized queue must count its bytes";
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.queued_bytes(), 1u);
}

TEST(ShardedQueueBytes, OneProducerIsRefusedExactlyAtTheByteBound) {
  for (const std::uint64_t bound : {1u, 100u, 1000u, 1u << 20}) {
    Queue q(100000, 0, QueueOptions{bound, true, false});
    std::uint64_t queued = 0;
    for (std::uint64_t i = 0;; ++i) {
      const std::uint64_t bytes = 1 + (i * 7919) % (bound / 3 + 1);
      const PushResult r = push(q, i, bytes);
      if (r == PushResult::full) {
        EXPECT_GT(queued + bytes, bound) << "refused while it fitted";
        break;
      }
      ASSERT_EQ(r, PushResult::ok);
      queued += bytes;
      ASSERT_LE(queued, bound);
      ASSERT_EQ(q.queued_bytes(), queued);
    }
    // What the consumer takes comes back: the refused element then fits.
    EXPECT_NE(q.pop(1000000, [](std::uint64_t&&) {}), 0u);
    EXPECT_EQ(q.queued_bytes(), 0u);
    EXPECT_EQ(push(q, 0, bound), PushResult::ok);
    EXPECT_EQ(push(q, 0, 1), PushResult::full);
  }
}

TEST(ShardedQueueBytes, SeveralProducersNeverExceedTheBoundAndLoseAtMostAnEighth) {
  constexpr std::uint64_t kBound = 72000;
  Queue q(1000000, 0, QueueOptions{kBound, true, false});
  std::atomic<int> refused_threads{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&q, &refused_threads, t] {
      for (std::uint64_t i = 0;; ++i) {
        if (push(q, i, 10 + (i + static_cast<std::uint64_t>(t)) % 90) == PushResult::full) break;
      }
      refused_threads.fetch_add(1);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(refused_threads.load(), 4);
  EXPECT_LE(q.queued_bytes(), kBound);
  // Each of the 9 lanes may hold a chunk (kBound / 72) reserved and unused, plus less than one
  // element that did not fit.
  EXPECT_GE(q.queued_bytes(), kBound - kBound / 8 - 4 * 100);
}

TEST(ShardedQueueBytes, ABudgetStopsBeforeTheElementThatDoesNotFit) {
  Queue q(100, 0, QueueOptions{0, true, false});
  for (std::uint64_t i = 0; i < 10; ++i) ASSERT_EQ(push(q, i, 30), PushResult::ok);
  std::vector<std::uint64_t> batch;
  batch.reserve(100);
  ByteBudget budget{100, false};
  EXPECT_EQ(q.pop_into(100, batch, &budget), 3u);
  EXPECT_TRUE(budget.stopped);
  EXPECT_EQ(budget.left, 10u);
  ByteBudget next{60, false};
  EXPECT_EQ(q.pop_into(100, batch, &next), 2u);
  EXPECT_EQ(next.left, 0u);
  EXPECT_EQ(q.queued_bytes(), 150u);
  ASSERT_EQ(batch.size(), 5u);
  for (std::uint64_t i = 0; i < 5; ++i) EXPECT_EQ(batch[i], i);
}

TEST(ShardedQueueBytes, EvictionTakesTheOldestAndGivesTheSpaceToTheEvictor) {
  Queue q(4, 0, QueueOptions{0, false, true});
  Queue::LaneHandle lane = nullptr;
  for (std::uint64_t i = 0; i < 4; ++i)
    ASSERT_EQ(buffered_test::try_push(q, lane, i), PushResult::ok);
  ASSERT_EQ(buffered_test::try_push(q, lane, std::uint64_t{4}), PushResult::full);
  std::vector<std::uint64_t> evicted;
  for (std::uint64_t i = 4; i < 10; ++i) {
    ASSERT_TRUE(q.evict_oldest(lane, 0, [&evicted](std::uint64_t&& v) { evicted.push_back(v); }));
    ASSERT_EQ(buffered_test::try_push(q, lane, i), PushResult::ok)
        << "the freed slot is the evictor's";
    ASSERT_EQ(buffered_test::try_push(q, lane, i), PushResult::full);
  }
  EXPECT_EQ(evicted, (std::vector<std::uint64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(q.pushed(), 10u);
  std::vector<std::uint64_t> rest;
  q.pop(100, [&rest](std::uint64_t&& v) { rest.push_back(v); });
  EXPECT_EQ(rest, (std::vector<std::uint64_t>{6, 7, 8, 9}));
  EXPECT_FALSE(q.evict_oldest(lane, 0, [](std::uint64_t&&) {})) << "nothing queued";
  ASSERT_EQ(buffered_test::try_push(q, lane, std::uint64_t{10}), PushResult::ok);
  q.close();
  EXPECT_FALSE(q.evict_oldest(lane, 0, [](std::uint64_t&&) {})) << "closed";
  EXPECT_EQ(q.size(), 1u);
}

TEST(ShardedQueueBytes, AnEvictorTakesItsOwnLaneFirstThenTheOthers) {
  Queue q(1000, 0, QueueOptions{0, false, true});
  Queue::LaneHandle mine = nullptr;
  ASSERT_EQ(buffered_test::try_push(q, mine, std::uint64_t{0}),
            PushResult::ok);  // this thread has a lane now
  std::thread other([&q] {
    Queue::LaneHandle lane = nullptr;
    for (std::uint64_t i = 100; i < 103; ++i)
      ASSERT_EQ(buffered_test::try_push(q, lane, i), PushResult::ok);
  });
  other.join();  // its lane is given back, its events stay queued
  ASSERT_EQ(buffered_test::try_push(q, mine, std::uint64_t{1}), PushResult::ok);
  std::vector<std::uint64_t> evicted;
  const auto out = [&evicted](std::uint64_t&& v) { evicted.push_back(v); };
  while (q.evict_oldest(mine, 0, out)) {
  }
  EXPECT_EQ(evicted, (std::vector<std::uint64_t>{0, 1, 100, 101, 102}));
  EXPECT_EQ(q.size(), 0u);
}

TEST(ShardedQueueBytes, EvictionAndConsumptionNeverTakeTheSameElement) {
  Queue q(64, 0, QueueOptions{0, false, true});
  constexpr std::uint64_t kEvents = 200000;
  std::vector<std::uint64_t> evicted, consumed;
  std::atomic<bool> done{false};
  std::thread consumer([&] {
    while (!done.load() || q.size() != 0) {
      q.pop(16, [&consumed](std::uint64_t&& v) { consumed.push_back(v); });
    }
  });
  Queue::LaneHandle lane = nullptr;
  for (std::uint64_t i = 0; i < kEvents; ++i) {
    while (buffered_test::try_push(q, lane, i) != PushResult::ok) {
      q.evict_oldest(lane, 0, [&evicted](std::uint64_t&& v) { evicted.push_back(v); });
    }
  }
  done.store(true);
  consumer.join();
  ASSERT_EQ(evicted.size() + consumed.size(), kEvents);
  std::vector<char> seen(kEvents, 0);
  for (std::uint64_t v : evicted) ++seen[v];
  for (std::uint64_t v : consumed) ++seen[v];
  for (std::uint64_t i = 0; i < kEvents; ++i) ASSERT_EQ(seen[i], 1) << i;
  for (std::size_t i = 1; i < consumed.size(); ++i) ASSERT_LT(consumed[i - 1], consumed[i]);
  for (std::size_t i = 1; i < evicted.size(); ++i) ASSERT_LT(evicted[i - 1], evicted[i]);
}

}  // namespace
