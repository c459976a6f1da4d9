// StopState on its own: a stop request with or without a deadline, the earliest deadline winning,
// what readers see, and sleeps that a request's deadline cuts short (and one that does not).
#include <gtest/gtest.h>
#include <buffered/detail/stop_state.hpp>

#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <thread>
#include <utility>

#include "support.hpp"

namespace {

using buffered::detail::SteadyClock;
using buffered::detail::StopState;
using buffered_test::Gate;
using buffered_test::kPatience;
using buffered_test::kSlack;
using namespace std::chrono_literals;

TEST(StopState, NothingIsRequestedAtFirst) {
  const StopState stop;
  EXPECT_FALSE(stop.stopping());
  EXPECT_EQ(stop.deadline(), std::nullopt);
  EXPECT_FALSE(stop.past_deadline());
  EXPECT_EQ(stop.deadline_rep().load(), StopState::kNoDeadline);
}

TEST(StopState, ARequestWithoutDeadlineStopsButNeverPassesADeadline) {
  StopState stop;
  stop.request(std::nullopt);
  EXPECT_TRUE(stop.stopping());
  EXPECT_EQ(stop.deadline(), std::nullopt);
  EXPECT_FALSE(stop.past_deadline());
  EXPECT_EQ(stop.deadline_rep().load(), StopState::kNoDeadline);
}

TEST(StopState, ARequestWithADeadlineGivesItToEveryReader) {
  StopState stop;
  const auto deadline = SteadyClock::now() + 1h;
  stop.request(deadline);
  EXPECT_TRUE(stop.stopping());
  EXPECT_EQ(stop.deadline(), deadline);
  EXPECT_EQ(stop.deadline_rep().load(), deadline.time_since_epoch().count());
  EXPECT_FALSE(stop.past_deadline());
}

TEST(StopState, TheEarliestDeadlineWinsWhateverTheOrderOfRequests) {
  StopState stop;
  const auto now = SteadyClock::now();
  stop.request(now + 2h);
  stop.request(now + 1h);
  EXPECT_EQ(stop.deadline(), now + 1h) << "an earlier deadline replaces a later one";
  stop.request(now + 3h);
  EXPECT_EQ(stop.deadline(), now + 1h) << "a later deadline is ignored";
  stop.request(std::nullopt);
  EXPECT_EQ(stop.deadline(), now + 1h) << "a request without deadline keeps the one given";
  EXPECT_EQ(stop.deadline_rep().load(), (now + 1h).time_since_epoch().count());
}

TEST(StopState, ADeadlineIsPastOnlyOnceItHasCome) {
  StopState stop;
  const auto deadline = SteadyClock::now() + 50ms;
  stop.request(deadline);
  // Polled, not slept on: past_deadline() is what the worker asks in its loop.
  while (!stop.past_deadline()) {
    ASSERT_LT(SteadyClock::now(), deadline + kSlack) << "the deadline never came";
    std::this_thread::yield();
  }
  EXPECT_GE(SteadyClock::now(), deadline) << "past before it came";
}

TEST(StopState, ADeadlineAlreadyGoneIsPastAtOnce) {
  StopState stop;
  stop.request(SteadyClock::now() - 1s);
  EXPECT_TRUE(stop.past_deadline());
}

TEST(StopState, ASleepWithoutStopLastsUntilItsTimeNotLess) {
  StopState stop;
  const auto until = SteadyClock::now() + 50ms;
  EXPECT_TRUE(stop.sleep_until(until));
  buffered_test::expect_returned_at(until);
}

TEST(StopState, ASleepAfterTheDeadlinePassedReturnsFalseWithoutSleeping) {
  StopState stop;
  stop.request(SteadyClock::now() - 1s);
  const auto until = SteadyClock::now() + 3 * kPatience;
  EXPECT_FALSE(stop.sleep_until(until));
  EXPECT_LT(SteadyClock::now(), until);
}

TEST(StopState, ARequestWithoutDeadlineDoesNotCutASleepShort) {
  StopState stop;
  stop.request(std::nullopt);
  const auto until = SteadyClock::now() + 50ms;
  EXPECT_TRUE(stop.sleep_until(until));
  EXPECT_GE(SteadyClock::now(), until);
}

TEST(StopState, ADeadlineAfterTheSleepsEndDoesNotCutItShort) {
  StopState stop;
  const auto until = SteadyClock::now() + 50ms;
  stop.request(until + 1h);
  EXPECT_TRUE(stop.sleep_until(until));
  EXPECT_GE(SteadyClock::now(), until);
}

TEST(StopState, ARequestMadeDuringASleepEndsItAtTheRequestsDeadlineNotBefore) {
  // A few rounds: the request may come before the sleeper waits, which is fine, but must come
  // while it waits in some round.
  for (int round = 0; round < 3; ++round) {
    StopState stop;
    Gate sleeping;
    const auto until = SteadyClock::now() + 3 * kPatience;
    auto sleeper = std::async(std::launch::async, [&] {
      sleeping.open();
      const bool slept = stop.sleep_until(until);
      return std::make_pair(slept, SteadyClock::now());
    });
    sleeping.wait();
    const auto deadline = SteadyClock::now() + 50ms;
    stop.request(deadline);
    const auto [slept, back] = sleeper.get();
    EXPECT_FALSE(slept) << round;
    EXPECT_GE(back, deadline) << round;
    ASSERT_LT(back, until) << "slept to its own end: the request did not wake it";
  }
}

TEST(StopState, ARequestWithAPassedDeadlineWakesASleepThatHadNoEnd) {
  // Shared with the sleeper, which is left behind (detached) if the request fails to wake it.
  struct Sleeper {
    StopState stop;
    Gate sleeping;
    std::promise<bool> slept;
  };
  const auto s = std::make_shared<Sleeper>();
  auto slept = s->slept.get_future();
  std::thread sleeper([s] {
    s->sleeping.open();
    s->slept.set_value(s->stop.sleep_until(SteadyClock::time_point::max()));  // no end but this
  });
  s->sleeping.wait();
  s->stop.request(SteadyClock::now());
  if (slept.wait_for(3 * kPatience) != std::future_status::ready) {
    sleeper.detach();
    FAIL() << "the request did not wake the sleeper";
  }
  sleeper.join();
  EXPECT_FALSE(slept.get());
}

}  // namespace
