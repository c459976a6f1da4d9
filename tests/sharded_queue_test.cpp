// The buffer on its own: the bound (exact with one producer thread, slack bounded with several),
// each producer thread's order, lanes given back when threads end, more threads than lanes,
// closing, and destruction of what is left.
#include <gtest/gtest.h>
#include <buffered/detail/sharded_queue.hpp>

#include "queue_support.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace {

using buffered::detail::PushResult;
using Queue = buffered::detail::ShardedQueue<std::uint64_t>;

PushResult push(Queue& q, std::uint64_t v) {
  Queue::LaneHandle lane = nullptr;
  return buffered_test::try_push(q, lane, v);
}

std::vector<std::uint64_t> pop_all(Queue& q) {
  std::vector<std::uint64_t> out;
  while (q.pop(1000, [&out](std::uint64_t&& v) { out.push_back(v); }) != 0) {
  }
  return out;
}

TEST(ShardedQueue, OneProducerIsRefusedExactlyAtCapacity) {
  for (const std::size_t capacity : {1u, 2u, 7u, 64u, 1000u, 10000u}) {
    Queue q(capacity);
    for (std::size_t i = 0; i < capacity; ++i) ASSERT_EQ(push(q, i), PushResult::ok) << capacity;
    EXPECT_EQ(push(q, 0), PushResult::full) << capacity;
    EXPECT_EQ(q.size(), capacity);
    std::uint64_t got = ~std::uint64_t{0};
    ASSERT_EQ(q.pop(1, [&got](std::uint64_t&& v) { got = v; }), 1u);
    EXPECT_EQ(got, 0u);
    EXPECT_EQ(push(q, capacity), PushResult::ok) << "one slot freed, one accepted";
    EXPECT_EQ(push(q, 0), PushResult::full);
    const auto rest = pop_all(q);
    ASSERT_EQ(rest.size(), capacity);
    for (std::size_t i = 0; i < capacity; ++i) EXPECT_EQ(rest[i], i + 1);
  }
}

TEST(ShardedQueue, BlocksAreRecycledInOrderManyTimesOver) {
  Queue q(100);
  std::uint64_t next_in = 0, next_out = 0;
  for (int round = 0; round < 500; ++round) {
    const std::size_t n = 1 + static_cast<std::size_t>(round * 37 % 100);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(push(q, next_in++), PushResult::ok);
    for (std::uint64_t v : pop_all(q)) ASSERT_EQ(v, next_out++);
  }
  EXPECT_EQ(next_in, next_out);
  EXPECT_EQ(q.pushed(), next_in);
}

TEST(ShardedQueue, CountersWrap) {
  Queue q(64, ~std::uint64_t{0} - 50);  // lane and consumer counts start 51 below the wrap
  std::uint64_t next_in = 0, next_out = 0;
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 40; ++i) ASSERT_EQ(push(q, next_in++), PushResult::ok);
    EXPECT_EQ(q.size(), 40u);
    for (std::uint64_t v : pop_all(q)) ASSERT_EQ(v, next_out++);
  }
  EXPECT_EQ(q.pushed(), 800u);
  EXPECT_EQ(q.position() - q.initial_position(), 800u);
  q.close();
  EXPECT_TRUE(q.drained());
}

// Several producer threads at once: the queue never holds more than its capacity, and each
// thread's events come out in its order.
TEST(ShardedQueue, SeveralProducersKeepTheirOrderAndTheBound) {
  constexpr std::size_t kCapacity = 5000;
  constexpr int kProducers = 4;
  constexpr std::uint64_t kPerProducer = 50000;
  Queue q(kCapacity);
  std::atomic<bool> bound_broken{false};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (std::uint64_t i = 0; i < kPerProducer;) {
        const PushResult r = push(q, (static_cast<std::uint64_t>(p) << 32) | i);
        if (r == PushResult::ok) {
          ++i;
          continue;
        }
        std::this_thread::yield();
      }
    });
  }
  std::vector<std::uint64_t> next(kProducers, 0);
  std::uint64_t taken = 0;
  while (taken < kProducers * kPerProducer) {
    if (q.size() > kCapacity) bound_broken = true;
    taken += q.pop(400, [&](std::uint64_t&& v) {
      const auto p = static_cast<std::size_t>(v >> 32);
      EXPECT_EQ(v & 0xffffffffu, next[p]) << "producer " << p;
      next[p] = (v & 0xffffffffu) + 1;
    });
  }
  for (auto& t : producers) t.join();
  EXPECT_FALSE(bound_broken);
  EXPECT_EQ(q.pushed(), kProducers * kPerProducer);
  EXPECT_EQ(q.size(), 0u);
}

// The slack with several producers is exactly what the other lanes reserved and have not used:
// three threads each push one event (reserving a chunk), then this thread fills the rest.
TEST(ShardedQueue, SlackIsWhatOtherLanesReservedAndComesBackWhenTheyEnd) {
  Queue q(10000);
  const std::size_t chunk = q.chunk();
  ASSERT_GT(chunk, 1u);
  std::atomic<int> pushed{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> others;
  for (int t = 0; t < 3; ++t) {
    others.emplace_back([&] {
      EXPECT_EQ(push(q, 1), PushResult::ok);
      ++pushed;
      while (!done) std::this_thread::yield();  // keep the lane (and its reservation)
    });
  }
  while (pushed < 3) std::this_thread::yield();
  std::size_t accepted = 0;
  while (push(q, 2) == PushResult::ok) ++accepted;
  EXPECT_EQ(accepted, 10000 - 3 * chunk) << "refused early by exactly the others' reservations";
  EXPECT_EQ(q.size(), 10000 - 3 * (chunk - 1));
  done = true;
  for (auto& t : others) t.join();
  while (push(q, 3) == PushResult::ok) ++accepted;  // their unused credits are back
  EXPECT_EQ(accepted + 3, 10000u);
  EXPECT_EQ(q.size(), 10000u);
}

// A thread that ends gives its lane and its unused credits back: many short-lived threads do
// not use up the lanes or the capacity.
TEST(ShardedQueue, ThreadsThatEndGiveTheirLaneAndCreditsBack) {
  Queue q(10000);
  ASSERT_GT(q.chunk(), 1u);
  for (int t = 0; t < 100; ++t) {
    std::thread([&] { EXPECT_EQ(push(q, 1), PushResult::ok); }).join();
  }
  EXPECT_EQ(q.active_lanes(), 1u);  // none held (reported as at least 1)
  EXPECT_EQ(pop_all(q).size(), 100u);
  // All credits are back: one producer fills exactly the capacity.
  std::size_t accepted = 0;
  while (push(q, 2) == PushResult::ok) ++accepted;
  EXPECT_EQ(accepted, 10000u);
}

TEST(ShardedQueue, MoreThreadsThanLanesShareALaneAndKeepTheirOrder) {
  constexpr int kThreads = static_cast<int>(Queue::kExclusiveLanes) + 4;
  constexpr std::uint64_t kEach = 20000;
  Queue q(1000);
  std::atomic<int> registered{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int p = 0; p < kThreads; ++p) {
    threads.emplace_back([&, p] {
      // Register first (all alive at once), then push.
      while (push(q, (static_cast<std::uint64_t>(p) << 32) | 0) != PushResult::ok) {
        std::this_thread::yield();
      }
      ++registered;
      while (!go) std::this_thread::yield();
      for (std::uint64_t i = 1; i < kEach;) {
        if (push(q, (static_cast<std::uint64_t>(p) << 32) | i) == PushResult::ok) {
          ++i;
        } else {
          std::this_thread::yield();
        }
      }
    });
  }
  std::vector<std::uint64_t> next(kThreads, 0);
  std::uint64_t taken = 0;
  const auto take = [&] {
    taken += q.pop(400, [&](std::uint64_t&& v) {
      const auto p = static_cast<std::size_t>(v >> 32);
      EXPECT_EQ(v & 0xffffffffu, next[p]) << "thread " << p;
      next[p] = (v & 0xffffffffu) + 1;
    });
  };
  while (registered < kThreads) take();
  EXPECT_EQ(q.active_lanes(), Queue::kExclusiveLanes + 1) << "every exclusive lane + shared";
  go = true;
  while (taken < kThreads * kEach) take();
  for (auto& t : threads) t.join();
  for (int p = 0; p < kThreads; ++p) EXPECT_EQ(next[p], kEach);
}

// A thread that produces into more queues than it can register with at once still keeps its
// order in each (the extra ones go through their shared lane).
TEST(ShardedQueue, OneThreadManyQueues) {
  std::vector<std::unique_ptr<Queue>> queues;
  for (int i = 0; i < 40; ++i) queues.push_back(std::make_unique<Queue>(100));
  for (std::uint64_t v = 0; v < 50; ++v) {
    for (auto& q : queues) ASSERT_EQ(push(*q, v), PushResult::ok);
  }
  for (auto& q : queues) {
    const auto all = pop_all(*q);
    ASSERT_EQ(all.size(), 50u);
    for (std::uint64_t v = 0; v < 50; ++v) EXPECT_EQ(all[v], v);
  }
  queues.clear();  // this thread's registrations now point at dead queues: forgotten on reuse
  Queue again(10);
  EXPECT_EQ(push(again, 7), PushResult::ok);
  EXPECT_EQ(pop_all(again), std::vector<std::uint64_t>{7});
}

TEST(ShardedQueue, CloseRefusesAndDrainedWaitsForTheVisibilityBound) {
  Queue q(10);
  ASSERT_EQ(push(q, 1), PushResult::ok);
  EXPECT_FALSE(q.drained());
  q.close();
  EXPECT_EQ(push(q, 2), PushResult::closed);
  EXPECT_FALSE(q.drained()) << "one event left";
  EXPECT_EQ(pop_all(q), std::vector<std::uint64_t>{1});
  EXPECT_TRUE(q.drained());
}

struct Counted {
  static inline std::atomic<int> alive{0};
  Counted() noexcept { ++alive; }
  Counted(Counted&&) noexcept { ++alive; }
  Counted(const Counted&) noexcept { ++alive; }
  ~Counted() { --alive; }
};

TEST(ShardedQueue, DestructorDestroysWhatIsLeftInEveryLane) {
  {
    buffered::detail::ShardedQueue<Counted> q(300);
    buffered::detail::ShardedQueue<Counted>::LaneHandle lane = nullptr;
    for (int i = 0; i < 100; ++i) ASSERT_EQ(buffered_test::try_push(q, lane), PushResult::ok);
    std::thread([&] {
      buffered::detail::ShardedQueue<Counted>::LaneHandle other = nullptr;
      for (int i = 0; i < 150; ++i) ASSERT_EQ(buffered_test::try_push(q, other), PushResult::ok);
    }).join();
    EXPECT_EQ(q.pop(30, [](Counted&&) {}), 30u);
    EXPECT_EQ(Counted::alive.load(), 220);
  }
  EXPECT_EQ(Counted::alive.load(), 0);
}

}  // namespace
