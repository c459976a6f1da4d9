// Parker and SpaceWaiters on their own: which producer wakes the parked consumer (thresholds in
// events and bytes, a refused push, a new lane, an explicit signal), parks that end at their
// deadline, and producers blocked for space woken to look again.
#include <gtest/gtest.h>
#include <buffered/detail/parker.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using buffered::detail::Parker;
using buffered::detail::SpaceWaiters;
using buffered::detail::SteadyClock;
using buffered_test::kPatience;
using namespace std::chrono_literals;

// Whether a wake-up is pending, taking it: a park whose deadline has passed does not block.
bool take_signal(Parker& parker) { return parker.park(SteadyClock::now()); }

// A producer's lane as notify_published sees it: what it holds, and how often it was asked.
struct Lane {
  std::uint64_t events = 0;
  std::uint64_t bytes = 0;
  int asked = 0;
  void publish_into(Parker& parker) {
    parker.notify_published([this] {
      ++asked;
      return events;
    });
  }
  void publish_sized_into(Parker& parker) {
    parker.notify_published_sized([this] { return events; }, [this] { return bytes; });
  }
};

TEST(Parker, AProducerDoesNotLookAtItsLaneWhileTheConsumerIsDisarmed) {
  Parker parker;
  Lane lane{1000, 0};
  lane.publish_into(parker);
  parker.arm(1);
  parker.disarm();
  lane.publish_into(parker);
  EXPECT_EQ(lane.asked, 0);
  EXPECT_FALSE(take_signal(parker));
}

TEST(Parker, AProducerBelowTheThresholdDoesNotWakeTheConsumer) {
  Parker parker;
  parker.arm(4);
  Lane lane{3, 0};
  lane.publish_into(parker);
  EXPECT_EQ(lane.asked, 1);
  EXPECT_FALSE(take_signal(parker));
  lane.events = 4;  // still armed: the next publish reaches the threshold
  lane.publish_into(parker);
  EXPECT_EQ(lane.asked, 2);
  EXPECT_TRUE(take_signal(parker));
}

TEST(Parker, TheProducerThatReachesTheThresholdDisarmsSoLaterOnesDoNotWakeAgain) {
  Parker parker;
  parker.arm(2);
  Lane first{2, 0};
  first.publish_into(parker);
  Lane later{50, 0};
  later.publish_into(parker);
  later.publish_into(parker);
  EXPECT_EQ(first.asked, 1);
  EXPECT_EQ(later.asked, 0) << "the parker was disarmed by the first wake-up";
  EXPECT_TRUE(take_signal(parker));
  EXPECT_FALSE(take_signal(parker)) << "one wake-up per park";
}

TEST(Parker, ASizedLaneWakesTheConsumerOnBytesBeforeItHoldsEnoughEvents) {
  Parker parker;
  parker.arm(100, 64);
  Lane lane{1, 63};
  lane.publish_sized_into(parker);
  EXPECT_FALSE(take_signal(parker));
  lane.bytes = 64;
  lane.publish_sized_into(parker);
  EXPECT_TRUE(take_signal(parker));
}

TEST(Parker, ASizedLaneWakesTheConsumerOnEventsWithoutAByteThreshold) {
  Parker parker;
  parker.arm(100);
  Lane lane{99, std::uint64_t{1} << 40};
  lane.publish_sized_into(parker);
  EXPECT_FALSE(take_signal(parker)) << "no byte threshold was armed";
  lane.events = 100;
  lane.publish_sized_into(parker);
  EXPECT_TRUE(take_signal(parker));
}

TEST(Parker, ARefusedProducerWakesAnArmedConsumerWhateverItsLaneHolds) {
  Parker parker;
  parker.notify_full();
  EXPECT_FALSE(take_signal(parker)) << "disarmed: nobody to wake";
  parker.arm(1000);
  parker.notify_full();
  EXPECT_TRUE(take_signal(parker));
  parker.notify_full();
  EXPECT_FALSE(take_signal(parker)) << "the wake-up disarmed it";
}

TEST(Parker, ANewLaneWakesAnArmedConsumerSoItComputesItsThresholdsAgain) {
  Parker parker;
  parker.notify_lanes_changed();
  EXPECT_FALSE(take_signal(parker)) << "disarmed: nobody to wake";
  parker.arm(1000);
  parker.notify_lanes_changed();
  EXPECT_TRUE(take_signal(parker));
  Lane lane{5000, 0};
  lane.publish_into(parker);
  EXPECT_EQ(lane.asked, 0) << "the wake-up disarmed it";
}

TEST(Parker, ASignalBeforeTheParkMakesItReturnAtOnceAndIsTakenByIt) {
  Parker parker;
  parker.signal();
  EXPECT_TRUE(parker.park(std::nullopt));
  EXPECT_FALSE(take_signal(parker)) << "the park took the signal";
}

TEST(Parker, AParkWithoutSignalReturnsFalseAtItsDeadlineNotBefore) {
  Parker parker;
  const auto deadline = SteadyClock::now() + 50ms;
  EXPECT_FALSE(parker.park(deadline));
  buffered_test::expect_returned_at(deadline);
}

TEST(Parker, ASignalFromAnotherThreadWakesTheParkedConsumer) {
  Parker parker;
  std::atomic<bool> signal_sent{false};
  bool woken = false;
  bool sent_when_woken = false;
  SteadyClock::time_point back{};
  buffered_test::Gate parking;
  const auto deadline = SteadyClock::now() + 3 * kPatience;
  std::thread consumer([&] {
    parking.open();
    woken = parker.park(deadline);
    back = SteadyClock::now();
    sent_when_woken = signal_sent.load();
  });
  parking.wait();
  signal_sent.store(true);
  parker.signal();
  consumer.join();
  EXPECT_TRUE(woken);
  EXPECT_LT(back, deadline) << "the park ran out instead of being woken";
  EXPECT_TRUE(sent_when_woken);
}

// The consumer's side of the protocol (arm, last look, park) against a producer's (publish,
// notify), round after round: a lost wake-up would leave the park to time out.
TEST(Parker, NoWakeUpIsLostBetweenTheConsumersLastLookAndItsPark) {
  constexpr std::uint64_t kRounds = 2000;
  Parker parker;
  std::atomic<std::uint64_t> published{0};
  std::atomic<std::uint64_t> taken{0};
  std::atomic<bool> lost{false};
  std::thread producer([&] {
    for (std::uint64_t i = 0; i < kRounds && !lost.load(); ++i) {
      while (taken.load(std::memory_order_acquire) != i && !lost.load()) std::this_thread::yield();
      published.store(i + 1, std::memory_order_release);
      parker.notify_published([&] { return published.load() - taken.load(); });
    }
  });
  std::uint64_t parks = 0;
  for (std::uint64_t i = 0; i < kRounds && !lost.load(); ++i) {
    while (published.load(std::memory_order_acquire) <= i) {
      parker.arm(1);
      if (published.load(std::memory_order_acquire) <= i) {
        ++parks;
        const auto deadline = SteadyClock::now() + kPatience;
        if (!parker.park(deadline) || SteadyClock::now() >= deadline) lost.store(true);
      }
      parker.disarm();
      if (lost.load()) break;
    }
    taken.store(i + 1, std::memory_order_release);
  }
  producer.join();
  EXPECT_FALSE(lost.load()) << "a park timed out: a wake-up was lost (" << parks << " parks)";
  EXPECT_EQ(taken.load(), kRounds);
}

// Producers' "is there space now?", which the test can watch and make true.
class Space {
 public:
  explicit Space(std::size_t producers = 1) : looks_(producers, 0) {}
  bool look(std::size_t producer = 0) {
    std::lock_guard<std::mutex> lock(mu_);
    ++looks_[producer];
    cv_.notify_all();
    return free_;
  }
  // Every producer has looked once: it did so under the waiters' mutex, which a notify takes,
  // so it waits (or has seen the space).
  bool wait_until_all_looked() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kPatience,
                        [&] { return std::find(looks_.begin(), looks_.end(), 0) == looks_.end(); });
  }
  void free_some() {
    std::lock_guard<std::mutex> lock(mu_);
    free_ = true;
  }
  int looks(std::size_t producer = 0) {
    std::lock_guard<std::mutex> lock(mu_);
    return looks_[producer];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> looks_;
  bool free_ = false;
};

TEST(SpaceWaiters, AWaitForSpaceAlreadyThereLooksOnceAndReturnsTrue) {
  SpaceWaiters waiters;
  Space space;
  space.free_some();
  EXPECT_TRUE(waiters.wait([&] { return space.look(); }, std::nullopt));
  EXPECT_EQ(space.looks(), 1);
}

TEST(SpaceWaiters, AWaitGivesUpAtItsDeadlineNotBeforeAndReturnsFalse) {
  SpaceWaiters waiters;
  Space space;
  const auto deadline = SteadyClock::now() + 50ms;
  EXPECT_FALSE(waiters.wait([&] { return space.look(); }, deadline));
  buffered_test::expect_returned_at(deadline);
}

TEST(SpaceWaiters, NotifyIfWaitingWakesABlockedProducerToLookAgain) {
  SpaceWaiters waiters;
  Space space;
  const auto deadline = SteadyClock::now() + 3 * kPatience;
  bool got = false;
  SteadyClock::time_point back{};
  std::thread producer([&] {
    got = waiters.wait([&] { return space.look(); }, deadline);
    back = SteadyClock::now();
  });
  const bool looked = space.wait_until_all_looked();
  space.free_some();
  waiters.notify_if_waiting();
  producer.join();
  ASSERT_TRUE(looked);
  EXPECT_TRUE(got);
  EXPECT_LT(back, deadline) << "woken by its deadline, not by the notify";
  EXPECT_GE(space.looks(), 2);
}

TEST(SpaceWaiters, NotifyAllWakesEveryBlockedProducer) {
  constexpr std::size_t kProducers = 3;
  SpaceWaiters waiters;
  Space space(kProducers);
  const auto deadline = SteadyClock::now() + 3 * kPatience;
  std::atomic<std::size_t> got{0};
  std::atomic<std::size_t> at_deadline{0};
  std::vector<std::thread> producers;
  for (std::size_t i = 0; i < kProducers; ++i) {
    producers.emplace_back([&, i] {
      if (waiters.wait([&] { return space.look(i); }, deadline)) got.fetch_add(1);
      if (SteadyClock::now() >= deadline) at_deadline.fetch_add(1);
    });
  }
  const bool looked = space.wait_until_all_looked();
  space.free_some();
  waiters.notify_all();
  for (std::thread& t : producers) t.join();
  ASSERT_TRUE(looked);
  EXPECT_EQ(got.load(), kProducers);
  EXPECT_EQ(at_deadline.load(), 0u) << "some were woken by their deadline, not by notify_all";
  for (std::size_t i = 0; i < kProducers; ++i) EXPECT_GE(space.looks(i), 2) << i;
}

}  // namespace
