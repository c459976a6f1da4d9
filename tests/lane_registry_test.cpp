// LaneAnchor and ThreadLanes on their own: anchors' ids and their lifetime, lanes given back only
// while the queue exists, a thread's record of its lanes (room, spilling, forgetting queues that
// are gone), and lanes given back when a thread ends, after its thread_local destructors.
#include <gtest/gtest.h>
#include <buffered/detail/lane_registry.hpp>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "support.hpp"

namespace {

using buffered::detail::LaneAnchor;
using buffered::detail::thread_lanes;
using buffered::detail::ThreadLanes;
using buffered_test::Gate;

// Every lane given back, to which queue, in order; outlives the queues.
class GiveBacks {
 public:
  void add(const void* queue, unsigned lane) {
    std::lock_guard<std::mutex> lock(mu_);
    all_.emplace_back(queue, lane);
  }
  std::vector<std::pair<const void*, unsigned>> all() const {
    std::lock_guard<std::mutex> lock(mu_);
    return all_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<const void*, unsigned>> all_;
};

// Holds its anchor as ShardedQueue does: made by the constructor, killed by the destructor.
class FakeQueue {
 public:
  explicit FakeQueue(GiveBacks& log) : log_(log), anchor_(new LaneAnchor(this, &give_back)) {}
  FakeQueue(const FakeQueue&) = delete;
  FakeQueue& operator=(const FakeQueue&) = delete;
  ~FakeQueue() {
    anchor_->kill();
    anchor_->unref();
  }
  LaneAnchor& anchor() { return *anchor_; }
  std::uint64_t id() const { return anchor_->id(); }

 private:
  static void give_back(void* queue, unsigned lane) noexcept {
    auto* self = static_cast<FakeQueue*>(queue);
    self->log_.add(self, lane);
  }
  GiveBacks& log_;
  LaneAnchor* anchor_;
};

// Runs `f` on a new thread, whose thread_lanes starts empty, and waits for the thread to end.
template <class F>
void on_new_thread(F f) {
  std::thread(std::move(f)).join();
}

TEST(LaneAnchor, IdsAreNeverZeroNorReusedAfterAnAnchorIsFreed) {
  std::set<std::uint64_t> ids;
  for (int i = 0; i < 100; ++i) {
    auto* anchor = new LaneAnchor(nullptr, nullptr);
    ids.insert(anchor->id());
    anchor->unref();  // freed: the next may take its memory, never its id
  }
  EXPECT_EQ(ids.size(), 100u);
  EXPECT_EQ(ids.count(0), 0u) << "0 is the id of an empty LaneCache";
}

TEST(LaneAnchor, ReleaseGivesTheLaneBackToItsQueueWhileTheQueueExists) {
  GiveBacks log;
  FakeQueue queue(log);
  EXPECT_TRUE(queue.anchor().alive());
  queue.anchor().release(3);
  queue.anchor().release(7);
  const std::vector<std::pair<const void*, unsigned>> expected{{&queue, 3}, {&queue, 7}};
  EXPECT_EQ(log.all(), expected);
}

TEST(LaneAnchor, AThreadsRefKeepsItUsableAfterTheQueueIsGoneButNothingIsGivenBack) {
  GiveBacks log;
  LaneAnchor* anchor = nullptr;
  std::uint64_t id = 0;
  {
    FakeQueue queue(log);
    anchor = &queue.anchor();
    id = queue.id();
    anchor->ref();  // a registered thread's hold
  }
  EXPECT_FALSE(anchor->alive());
  EXPECT_EQ(anchor->id(), id);
  anchor->release(3);
  EXPECT_TRUE(log.all().empty());
  anchor->unref();  // the last: frees it (leak and use-after-free checks under ASan)
}

TEST(LaneAnchor, KillWaitsForAReleaseUnderWayToReturn) {
  struct Queue {
    Gate releasing;
    Gate let_go;
    std::atomic<bool> released{false};
  } q;
  auto* anchor = new LaneAnchor(&q, [](void* p, unsigned) noexcept {
    auto* self = static_cast<Queue*>(p);
    self->releasing.open();
    self->let_go.wait();
    self->released.store(true);
  });
  std::thread ending([&] { anchor->release(1); });
  q.releasing.wait();
  Gate killing;
  bool released_when_killed = false;
  std::thread destroying([&] {
    killing.open();
    anchor->kill();
    released_when_killed = q.released.load();
  });
  killing.wait();
  q.let_go.open();
  destroying.join();
  ending.join();
  EXPECT_TRUE(released_when_killed) << "kill returned while the release was under way";
  EXPECT_FALSE(anchor->alive());
  anchor->unref();
}

TEST(ThreadLanes, ALaneIsFoundOnlyForTheQueueItWasAddedFor) {
  GiveBacks log;
  FakeQueue a(log), b(log);
  on_new_thread([&] {
    EXPECT_EQ(thread_lanes.find(a.id()), ThreadLanes::kNotFound);
    ASSERT_TRUE(thread_lanes.has_room());
    thread_lanes.add(a.anchor(), 3);
    EXPECT_EQ(thread_lanes.find(a.id()), 3u);
    EXPECT_EQ(thread_lanes.find(b.id()), ThreadLanes::kNotFound);
    ASSERT_TRUE(thread_lanes.has_room());
    thread_lanes.add(b.anchor(), 0);
    EXPECT_EQ(thread_lanes.find(b.id()), 0u);
    EXPECT_EQ(thread_lanes.find(a.id()), 3u);
    thread_lanes.release_all();
    EXPECT_EQ(thread_lanes.find(a.id()), ThreadLanes::kNotFound);
    EXPECT_EQ(thread_lanes.find(b.id()), ThreadLanes::kNotFound);
  });
}

TEST(ThreadLanes, ReleaseAllGivesLanesBackLastAddedFirstOnceAndClearsTheLaneCache) {
  GiveBacks log;
  FakeQueue q1(log), q2(log), q3(log);
  int lane_object = 0;
  on_new_thread([&] {
    for (auto [queue, lane] : {std::pair{&q1, 1u}, std::pair{&q2, 2u}, std::pair{&q3, 3u}}) {
      ASSERT_TRUE(thread_lanes.has_room());
      thread_lanes.add(queue->anchor(), lane);
    }
    buffered::detail::lane_cache = {q3.id(), &lane_object};
    thread_lanes.release_all();
    EXPECT_EQ(buffered::detail::lane_cache.id, 0u);
    EXPECT_EQ(buffered::detail::lane_cache.lane, nullptr);
    thread_lanes.release_all();  // and at thread exit once more: nothing left to give
  });
  const std::vector<std::pair<const void*, unsigned>> expected{{&q3, 3}, {&q2, 2}, {&q1, 1}};
  EXPECT_EQ(log.all(), expected);
}

TEST(ThreadLanes, HoldsLanesOfKMaxEntriesQueuesAndThenSpills) {
  GiveBacks log;
  std::vector<std::unique_ptr<FakeQueue>> queues;
  for (std::size_t i = 0; i <= ThreadLanes::kMaxEntries; ++i) {
    queues.push_back(std::make_unique<FakeQueue>(log));
  }
  on_new_thread([&] {
    for (std::size_t i = 0; i < ThreadLanes::kMaxEntries; ++i) {
      ASSERT_TRUE(thread_lanes.has_room()) << i;
      thread_lanes.add(queues[i]->anchor(), static_cast<unsigned>(i));
    }
    EXPECT_FALSE(thread_lanes.has_room());
    EXPECT_FALSE(thread_lanes.spilled());
    thread_lanes.spill();  // wrote into the last queue's shared lane
    EXPECT_TRUE(thread_lanes.spilled());
    EXPECT_EQ(thread_lanes.find(queues.back()->id()), ThreadLanes::kNotFound);
    EXPECT_EQ(thread_lanes.find(queues[5]->id()), 5u);
  });
  EXPECT_EQ(log.all().size(), ThreadLanes::kMaxEntries) << "given back at thread exit";
}

TEST(ThreadLanes, AQueueThatIsGoneIsForgottenToMakeRoomAndGetsNothingBack) {
  GiveBacks log;
  std::vector<std::unique_ptr<FakeQueue>> queues;
  for (std::size_t i = 0; i < ThreadLanes::kMaxEntries; ++i) {
    queues.push_back(std::make_unique<FakeQueue>(log));
  }
  const std::uint64_t gone_id = queues[5]->id();
  on_new_thread([&] {
    for (std::size_t i = 0; i < ThreadLanes::kMaxEntries; ++i) {
      ASSERT_TRUE(thread_lanes.has_room());
      thread_lanes.add(queues[i]->anchor(), static_cast<unsigned>(100 + i));
    }
    ASSERT_FALSE(thread_lanes.has_room());
    queues[5].reset();
    EXPECT_TRUE(thread_lanes.has_room());
    EXPECT_EQ(thread_lanes.find(gone_id), ThreadLanes::kNotFound);
    EXPECT_EQ(thread_lanes.find(queues[4]->id()), 104u);
    EXPECT_EQ(thread_lanes.find(queues[15]->id()), 115u);
  });
  const auto given = log.all();
  EXPECT_EQ(given.size(), ThreadLanes::kMaxEntries - 1);
  for (const auto& [queue, lane] : given) EXPECT_NE(lane, 105u);
}

TEST(ThreadLanes, AThreadThatEndsGivesItsLanesBackWithoutBeingAsked) {
  GiveBacks log;
  FakeQueue queue(log);
  on_new_thread([&] {
    ASSERT_TRUE(thread_lanes.has_room());
    thread_lanes.add(queue.anchor(), 6);
  });
  const std::vector<std::pair<const void*, unsigned>> expected{{&queue, 6}};
  EXPECT_EQ(log.all(), expected);
}

// What a thread_local object's destructor saw of the thread's lanes.
struct Seen {
  const FakeQueue* queue = nullptr;
  const GiveBacks* log = nullptr;
  unsigned lane = ThreadLanes::kNotFound;
  std::size_t given_back = 0;
  bool ran = false;
};
struct LooksAtExit {
  Seen* seen = nullptr;
  ~LooksAtExit() {
    if (seen == nullptr) return;
    seen->lane = thread_lanes.find(seen->queue->id());
    seen->given_back = seen->log->all().size();
    seen->ran = true;
  }
};

TEST(ThreadLanes, LanesAreStillHeldWhileTheThreadsThreadLocalsAreDestroyed) {
  GiveBacks log;
  FakeQueue queue(log);
  Seen before_add{&queue, &log}, after_add{&queue, &log};
  on_new_thread([&] {
    thread_local LooksAtExit made_first;  // destroyed last of the two
    made_first.seen = &before_add;
    ASSERT_TRUE(thread_lanes.has_room());
    thread_lanes.add(queue.anchor(), 2);
    thread_local LooksAtExit made_after;
    made_after.seen = &after_add;
  });
  for (const Seen* seen : {&before_add, &after_add}) {
    EXPECT_TRUE(seen->ran);
    EXPECT_EQ(seen->lane, 2u);
    EXPECT_EQ(seen->given_back, 0u) << "the lane was given back before a thread_local's end";
  }
  const std::vector<std::pair<const void*, unsigned>> expected{{&queue, 2}};
  EXPECT_EQ(log.all(), expected);
}

// A thread's key destructor (some other library's) that produces into a queue after the lanes
// were given back: the thread registers again and that lane, too, is given back.
TEST(ThreadLanes, ALaneTakenByAnotherKeysDestructorIsGivenBackToo) {
  GiveBacks log;
  FakeQueue early(log), late(log);
  pthread_key_t key{};
  ASSERT_EQ(pthread_key_create(&key,
                               [](void* p) noexcept {
                                 auto* queue = static_cast<FakeQueue*>(p);
                                 if (thread_lanes.has_room()) thread_lanes.add(queue->anchor(), 9);
                               }),
            0);
  on_new_thread([&] {
    ASSERT_TRUE(thread_lanes.has_room());
    thread_lanes.add(early.anchor(), 1);
    pthread_setspecific(key, &late);
  });
  pthread_key_delete(key);
  const auto given = log.all();
  EXPECT_EQ(std::count(given.begin(), given.end(), std::pair<const void*, unsigned>{&early, 1}), 1);
  EXPECT_EQ(std::count(given.begin(), given.end(), std::pair<const void*, unsigned>{&late, 9}), 1);
  EXPECT_EQ(given.size(), 2u);
}

}  // namespace
