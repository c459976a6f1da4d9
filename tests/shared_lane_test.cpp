// The shared lane is for a thread that writes into more than 16 backends AT ONCE (and for the
// threads beyond 8 alive at once): once the backends it wrote into are gone, a thread's first
// push into a new one gets a lane of its own again. And a thread that writes into a queue's
// shared lane keeps writing there for as long as that queue lives, so its events keep their
// order.
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

constexpr std::size_t kAtOnce = 17;  // one more than a thread registers with at once
constexpr std::uint64_t kEach = 2000;

Queue::LaneHandle push(Queue& q, std::uint64_t v) {
  Queue::LaneHandle lane = nullptr;
  EXPECT_EQ(buffered_test::try_push(q, lane, v), PushResult::ok);
  return lane;
}

std::vector<std::uint64_t> pop_all(Queue& q) {
  std::vector<std::uint64_t> out;
  while (q.pop(1000, [&out](std::uint64_t&& v) { out.push_back(v); }) != 0) {
  }
  return out;
}

// Whether `lane` is `q`'s shared lane: two threads alive at once can write to the same lane only
// if it is the shared one. With every exclusive lane but the caller's taken by 8 helper threads
// (the ninth goes to the shared lane), `lane` is shared iff some helper got the same handle.
// Call it from the thread that got `lane`, while it still holds it.
bool is_shared_lane(Queue& q, Queue::LaneHandle lane) {
  constexpr int kHelpers = static_cast<int>(Queue::kExclusiveLanes) + 1;
  std::vector<Queue::LaneHandle> got(kHelpers, nullptr);
  std::atomic<int> pushed{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> helpers;
  for (int h = 0; h < kHelpers; ++h) {
    helpers.emplace_back([&, h] {
      got[static_cast<std::size_t>(h)] = push(q, 0);
      ++pushed;
      while (!done) std::this_thread::yield();  // all alive at once
    });
  }
  while (pushed < kHelpers) std::this_thread::yield();
  done = true;
  for (auto& t : helpers) t.join();
  return std::find(got.begin(), got.end(), lane) != got.end();
}

// Runs `body` on a new thread (so the test's own thread registers with nothing), and waits.
template <class Body>
void on_fresh_thread(Body body) {
  std::thread(body).join();
}

// A thread pushes into 17 queues alive at once (the 17th through its shared lane, as
// documented), then all 17 are destroyed. Its first push into a new queue must get an
// exclusive lane, not the new queue's shared lane.
TEST(SharedLane, AThreadGetsAnExclusiveLaneAgainOnceTheBackendsItWroteIntoAreGone) {
  on_fresh_thread([] {
    {
      std::vector<std::unique_ptr<Queue>> queues;
      for (std::size_t i = 0; i < kAtOnce; ++i) {
        queues.push_back(std::make_unique<Queue>(100));
        push(*queues.back(), i);
      }
      // The 17th is where the documented case applies: the thread writes into its shared lane.
      EXPECT_TRUE(is_shared_lane(*queues.back(), push(*queues.back(), 1)))
          << "the 17th queue at once goes through its shared lane";
      EXPECT_FALSE(is_shared_lane(*queues.front(), push(*queues.front(), 1)));
    }
    Queue fresh(100);
    const Queue::LaneHandle lane = push(fresh, 7);
    EXPECT_FALSE(is_shared_lane(fresh, lane))
        << "after the 17 queues are gone, a new queue's first push lands in its shared lane";
    EXPECT_EQ(lane->queued(), 1u) << "a helper thread's event is in this thread's lane";
  });
}

// The same after many rounds: a thread that writes into 17 queues at once, again and again,
// each set destroyed before the next, is not pushed into the shared lane for good.
TEST(SharedLane, RoundsOfSeventeenQueuesDoNotLeaveAThreadInTheSharedLane) {
  on_fresh_thread([] {
    for (int round = 0; round < 3; ++round) {
      std::vector<std::unique_ptr<Queue>> queues;
      for (std::size_t i = 0; i < kAtOnce; ++i) {
        queues.push_back(std::make_unique<Queue>(100));
        push(*queues.back(), i);
      }
      EXPECT_FALSE(is_shared_lane(*queues.front(), push(*queues.front(), 1)))
          << "round " << round << ": the first of 17 new queues";
    }
  });
}

// Order. A thread that wrote into a queue's shared lane (it had 16 others at once) keeps its
// order there when the other 16 go away and it goes on writing: it must not move to an
// exclusive lane of that queue while its earlier events may still be queued in the shared one.
TEST(SharedLane, AThreadThatUsedASharedLaneKeepsItsOrderWhenItCouldHaveALaneOfItsOwn) {
  on_fresh_thread([] {
    std::vector<std::unique_ptr<Queue>> others;
    for (std::size_t i = 0; i + 1 < kAtOnce; ++i) {
      others.push_back(std::make_unique<Queue>(100));
      push(*others.back(), i);
    }
    Queue q(1000);
    for (std::uint64_t i = 0; i < 10; ++i) push(q, i);  // through q's shared lane
    others.clear();
    for (std::uint64_t i = 10; i < 20; ++i) push(q, i);
    // And once more after the first ones were taken, with a new queue in between.
    std::vector<std::uint64_t> got = pop_all(q);
    for (std::uint64_t i = 20; i < 30; ++i) push(q, i);
    Queue another(100);
    push(another, 0);
    for (std::uint64_t i = 30; i < 40; ++i) push(q, i);
    const auto rest = pop_all(q);
    got.insert(got.end(), rest.begin(), rest.end());
    std::vector<std::uint64_t> want(40);
    for (std::uint64_t i = 0; i < 40; ++i) want[i] = i;
    EXPECT_EQ(got, want);
  });
}

// Order across the move the first test asks for: a thread whose events went through a queue's
// shared lane, then (the other queues gone) into a new queue's exclusive lane, keeps its order
// in each, while other threads write into the same queues.
TEST(SharedLane, PerThreadOrderHoldsInEachQueueAcrossTheReturnToAnExclusiveLane) {
  on_fresh_thread([] {
    std::vector<std::unique_ptr<Queue>> others;
    for (std::size_t i = 0; i + 1 < kAtOnce; ++i) {
      others.push_back(std::make_unique<Queue>(100));
      push(*others.back(), i);
    }
    Queue shared_one(100000);
    const auto tag = [](std::uint64_t producer, std::uint64_t i) { return (producer << 32) | i; };
    for (std::uint64_t i = 0; i < kEach; ++i) push(shared_one, tag(0, i));
    others.clear();
    Queue exclusive_one(100000);
    std::thread other([&] {
      for (std::uint64_t i = 0; i < kEach; ++i) {
        push(shared_one, tag(1, i));
        push(exclusive_one, tag(1, i));
      }
    });
    for (std::uint64_t i = kEach; i < 2 * kEach; ++i) {
      push(shared_one, tag(0, i));
      push(exclusive_one, tag(0, i));
    }
    other.join();
    for (Queue* q : {&shared_one, &exclusive_one}) {
      std::uint64_t next[2] = {0, 0};
      if (q == &exclusive_one) next[0] = kEach;
      for (const std::uint64_t v : pop_all(*q)) {
        const auto p = static_cast<std::size_t>(v >> 32);
        ASSERT_LT(p, 2u);
        EXPECT_EQ(v & 0xffffffffu, next[p]) << "producer " << p;
        next[p] = (v & 0xffffffffu) + 1;
      }
      EXPECT_EQ(next[0], 2 * kEach);
      EXPECT_EQ(next[1], kEach);
    }
  });
}

}  // namespace
