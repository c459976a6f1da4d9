// The bounded MPSC ring on its own: exact capacity, order, close, wrap, many producers.
#include <buffered/detail/mpsc_ring.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

namespace {

using buffered::detail::kPositionMask;
using buffered::detail::MpscRing;
using buffered::detail::PushResult;

template <class T>
std::vector<T> drain(MpscRing<T>& ring, std::size_t max = SIZE_MAX) {
  std::vector<T> out;
  ring.pop_run(max, [&out](T&& v) { out.push_back(std::move(v)); });
  return out;
}

TEST(MpscRing, CapacityIsExactNotRoundedUp) {
  MpscRing<int> ring(3);  // 4 slots inside, 3 usable
  std::uint64_t pos = 0;
  EXPECT_EQ(ring.try_emplace(pos, 1), PushResult::ok);
  EXPECT_EQ(ring.try_emplace(pos, 2), PushResult::ok);
  EXPECT_EQ(ring.try_emplace(pos, 3), PushResult::ok);
  EXPECT_EQ(pos, 2u);
  EXPECT_EQ(ring.try_emplace(pos, 4), PushResult::full);
  EXPECT_EQ(ring.size(), 3u);
  EXPECT_EQ(drain(ring, 1), std::vector<int>{1});
  EXPECT_EQ(ring.try_emplace(pos, 4), PushResult::ok);
  EXPECT_EQ(ring.try_emplace(pos, 5), PushResult::full);
  EXPECT_EQ(drain(ring), (std::vector<int>{2, 3, 4}));
  EXPECT_EQ(ring.size(), 0u);
}

TEST(MpscRing, PopRunStopsAtMax) {
  MpscRing<int> ring(8);
  std::uint64_t pos = 0;
  for (int i = 0; i < 5; ++i) ASSERT_EQ(ring.try_emplace(pos, i), PushResult::ok);
  EXPECT_EQ(drain(ring, 2), (std::vector<int>{0, 1}));
  EXPECT_EQ(drain(ring, 10), (std::vector<int>{2, 3, 4}));
  EXPECT_TRUE(drain(ring).empty());
}

TEST(MpscRing, CloseRefusesAndReturnsFinalTail) {
  MpscRing<int> ring(4);
  std::uint64_t pos = 0;
  ASSERT_EQ(ring.try_emplace(pos, 7), PushResult::ok);
  EXPECT_FALSE(ring.closed());
  EXPECT_EQ(ring.close(), 1u);
  EXPECT_TRUE(ring.closed());
  EXPECT_EQ(ring.close(), 1u);  // idempotent
  EXPECT_EQ(ring.try_emplace(pos, 8), PushResult::closed);
  EXPECT_EQ(drain(ring), std::vector<int>{7});  // what was accepted still drains
}

TEST(MpscRing, MoveOnlyElementsAndDestructionOfLeftovers) {
  auto counter = std::make_shared<int>(0);
  {
    MpscRing<std::shared_ptr<int>> ring(4);
    std::uint64_t pos = 0;
    ASSERT_EQ(ring.try_emplace(pos, counter), PushResult::ok);
    ASSERT_EQ(ring.try_emplace(pos, counter), PushResult::ok);
    EXPECT_EQ(counter.use_count(), 3);
    EXPECT_EQ(drain(ring, 1).size(), 1u);
    EXPECT_EQ(counter.use_count(), 2);  // popped and destroyed
  }
  EXPECT_EQ(counter.use_count(), 1);  // the ring destroyed what was left
}

// Positions start just below the 63-bit wrap point; several capacities pass through it.
TEST(MpscRing, WrapsAroundThePositionCounter) {
  const std::uint64_t start = kPositionMask - 5;
  MpscRing<std::uint64_t> ring(5, start);
  std::uint64_t next = 0;
  std::uint64_t expected = 0;
  for (int round = 0; round < 20; ++round) {
    std::uint64_t pos = 0;
    for (int i = 0; i < 3; ++i) {
      ASSERT_EQ(ring.try_emplace(pos, next), PushResult::ok);
      EXPECT_EQ(pos, (start + next) & kPositionMask);
      ++next;
    }
    for (std::uint64_t v : drain(ring)) EXPECT_EQ(v, expected++);
  }
  EXPECT_EQ(expected, 60u);
  // Fullness still exact across the wrap.
  std::uint64_t pos = 0;
  for (int i = 0; i < 5; ++i) ASSERT_EQ(ring.try_emplace(pos, std::uint64_t{0}), PushResult::ok);
  EXPECT_EQ(ring.try_emplace(pos, std::uint64_t{0}), PushResult::full);
}

TEST(MpscRing, ManyProducersExactlyOnceInPerProducerOrder) {
  constexpr int kProducers = 4;
  constexpr std::uint64_t kPerProducer = 50000;
  MpscRing<std::uint64_t> ring(64);
  std::atomic<bool> go{false};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      while (!go.load()) std::this_thread::yield();
      for (std::uint64_t i = 0; i < kPerProducer; ++i) {
        std::uint64_t pos = 0;
        while (ring.try_emplace(pos, (std::uint64_t(p) << 32) | i) != PushResult::ok) {
          std::this_thread::yield();
        }
      }
    });
  }
  go = true;
  std::vector<std::uint64_t> next(kProducers, 0);
  std::uint64_t total = 0;
  while (total < kProducers * kPerProducer) {
    const std::size_t n = ring.pop_run(SIZE_MAX, [&](std::uint64_t&& v) {
      const auto p = static_cast<std::size_t>(v >> 32);
      EXPECT_EQ(v & 0xffffffffu, next[p]);
      next[p] = (v & 0xffffffffu) + 1;
    });
    total += n;
    if (n == 0) std::this_thread::yield();
  }
  for (auto& t : producers) t.join();
  for (int p = 0; p < kProducers; ++p) EXPECT_EQ(next[p], kPerProducer);
  EXPECT_EQ(ring.size(), 0u);
}

}  // namespace
