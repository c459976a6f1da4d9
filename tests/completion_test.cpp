// Completion on its own: the watermark below which events are done (batches the worker finished,
// batches still in delegate calls, in whatever order those end), abandoned events, flush
// requests served, completion, and the waits on each, woken or timed out.
#include <gtest/gtest.h>
#include <buffered/detail/completion.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <mutex>
#include <optional>
#include <utility>

#include "support.hpp"

namespace {

using buffered::detail::Completion;
using buffered::detail::SteadyClock;
using buffered_test::kPatience;
using Result = Completion::FlushResult;
using namespace std::chrono_literals;

const auto never = [] { return false; };
// A deadline that has passed: the waits look once and return.
SteadyClock::time_point passed() { return SteadyClock::now(); }
// Far enough that a waiter returning before it was woken by something else.
SteadyClock::time_point far() { return SteadyClock::now() + 3 * kPatience; }

// A condition kept elsewhere (stop(), also()). The waits call it under the Completion's mutex
// before they block, so once it has been called the waiter waits (or is about to look again):
// whatever the test does to the Completion next wakes it.
class Probe {
 public:
  bool operator()() {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_;
    cv_.notify_all();
    return holds_;
  }
  bool wait_for_a_look() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return calls_ > 0; });
  }
  void make_true() {
    std::lock_guard<std::mutex> lock(mu_);
    holds_ = true;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int calls_ = 0;
  bool holds_ = false;
};

// What a wait on another thread returned, and when.
template <class T>
struct Timed {
  T value;
  SteadyClock::time_point at;
};
template <class F>
auto on_thread(F f) {
  return std::async(std::launch::async, [f = std::move(f)] {
    auto value = f();
    return Timed<decltype(value)>{std::move(value), SteadyClock::now()};
  });
}

TEST(Completion, NothingIsDoneBeforeTheWorkerFinishesABatch) {
  const Completion c(2);
  EXPECT_TRUE(c.flushed(0));
  EXPECT_FALSE(c.flushed(1));
  EXPECT_FALSE(c.complete());
}

TEST(Completion, ABatchTheWorkerFinishedItselfIsDone) {
  Completion c(2);
  c.worker_done(5);
  EXPECT_TRUE(c.flushed(5));
  EXPECT_FALSE(c.flushed(6));
  EXPECT_EQ(c.wait_flushed(5, passed(), never), Result::done);
  EXPECT_EQ(c.wait_flushed(6, passed(), never), Result::timed_out);
}

TEST(Completion, ADispatchedBatchIsNotDoneUntilItsDelegateCallEnds) {
  Completion c(2);
  c.dispatched(0, 5);
  EXPECT_FALSE(c.flushed(1));
  c.dispatch_done(0);
  EXPECT_TRUE(c.flushed(5));
  EXPECT_FALSE(c.flushed(6));
}

TEST(Completion, TheOldestBatchStillInACallHoldsTheWatermarkWhicheverCallEndsFirst) {
  Completion c(2);
  c.dispatched(0, 5);
  c.dispatched(5, 9);
  c.dispatch_done(5);
  EXPECT_FALSE(c.flushed(1)) << "[0, 5) is still in its call";
  c.dispatch_done(0);
  EXPECT_TRUE(c.flushed(9));

  c.dispatched(9, 12);
  c.dispatched(12, 20);
  c.dispatch_done(9);
  EXPECT_TRUE(c.flushed(12));
  EXPECT_FALSE(c.flushed(13)) << "[12, 20) is still in its call";
  c.dispatch_done(12);
  EXPECT_TRUE(c.flushed(20));
  EXPECT_FALSE(c.flushed(21));
}

TEST(Completion, TheEndOfABatchNeverDispatchedChangesNothing) {
  Completion c(2);
  c.dispatched(0, 5);
  c.dispatch_done(3);
  EXPECT_FALSE(c.flushed(1));
  c.dispatch_done(0);
  EXPECT_TRUE(c.flushed(5));
}

TEST(Completion, EventsFromTheFirstAbandonedOnAreNeverFlushedButThoseBeforeThemAre) {
  Completion c(2);
  c.worker_done(10);
  c.abandoning_from(6);
  EXPECT_TRUE(c.flushed(6));
  EXPECT_FALSE(c.flushed(7));
  EXPECT_EQ(c.wait_flushed(6, passed(), never), Result::done);
  EXPECT_EQ(c.wait_flushed(7, far(), never), Result::abandoned);  // at once: nothing to wait for
  c.abandoning_from(8);
  EXPECT_FALSE(c.flushed(7)) << "a later abandoning does not undo an earlier one";
  c.abandoning_from(3);
  EXPECT_TRUE(c.flushed(3));
  EXPECT_FALSE(c.flushed(4));
}

TEST(Completion, WaitFlushedTimesOutAtItsDeadlineNotBefore) {
  Completion c(2);
  c.dispatched(0, 5);
  const auto deadline = SteadyClock::now() + 50ms;
  EXPECT_EQ(c.wait_flushed(5, deadline, never), Result::timed_out);
  buffered_test::expect_returned_at(deadline);
}

TEST(Completion, WaitFlushedReturnsDoneWhenTheLastCallBelowTheTargetEnds) {
  Completion c(2);
  c.dispatched(0, 5);
  Probe looked;
  const auto deadline = far();
  auto waiter = on_thread([&] { return c.wait_flushed(5, deadline, [&] { return looked(); }); });
  ASSERT_TRUE(looked.wait_for_a_look());
  c.dispatch_done(0);
  const auto got = waiter.get();
  EXPECT_EQ(got.value, Result::done);
  EXPECT_LT(got.at, deadline) << "woken by its deadline, not by dispatch_done";
}

TEST(Completion, WaitFlushedReturnsAbandonedWhenShutdownAbandonsEventsBelowTheTarget) {
  Completion c(2);
  c.dispatched(0, 5);
  Probe looked;
  const auto deadline = far();
  auto waiter = on_thread([&] { return c.wait_flushed(5, deadline, [&] { return looked(); }); });
  ASSERT_TRUE(looked.wait_for_a_look());
  c.abandoning_from(2);
  const auto got = waiter.get();
  EXPECT_EQ(got.value, Result::abandoned);
  EXPECT_LT(got.at, deadline);
}

TEST(Completion, NotifyMakesWaitFlushedLookAtItsStopConditionAgain) {
  Completion c(2);
  c.dispatched(0, 5);
  Probe stop;
  const auto deadline = far();
  auto waiter = on_thread([&] { return c.wait_flushed(5, deadline, [&] { return stop(); }); });
  ASSERT_TRUE(stop.wait_for_a_look());
  stop.make_true();
  c.notify();
  const auto got = waiter.get();
  EXPECT_EQ(got.value, Result::timed_out) << "stopped: not done, not abandoned";
  EXPECT_LT(got.at, deadline) << "woken by its deadline, not by notify";
}

TEST(Completion, WaitFlushTargetReturnsTheTargetTheRequestWasServedWith) {
  Completion c(2);
  Probe looked;
  const auto deadline = far();
  auto waiter =
      on_thread([&] { return c.wait_flush_target(1, deadline, [&] { return looked(); }); });
  ASSERT_TRUE(looked.wait_for_a_look());
  c.flush_served(1, 42);
  const auto got = waiter.get();
  EXPECT_EQ(got.value, std::optional<std::uint64_t>(42));
  EXPECT_LT(got.at, deadline);
}

TEST(Completion, ARequestServedServesEveryEarlierOneAndAnEarlierOneLateChangesNothing) {
  Completion c(2);
  c.flush_served(3, 30);
  EXPECT_EQ(c.wait_flush_target(1, passed(), never), std::optional<std::uint64_t>(30));
  EXPECT_EQ(c.wait_flush_target(3, passed(), never), std::optional<std::uint64_t>(30));
  c.flush_served(2, 20);
  EXPECT_EQ(c.wait_flush_target(3, passed(), never), std::optional<std::uint64_t>(30));
  EXPECT_EQ(c.wait_flush_target(4, passed(), never), std::nullopt);
}

TEST(Completion, WaitFlushTargetGivesUpAtItsDeadlineNotBefore) {
  Completion c(2);
  c.flush_served(1, 10);
  const auto deadline = SteadyClock::now() + 50ms;
  EXPECT_EQ(c.wait_flush_target(2, deadline, never), std::nullopt);
  buffered_test::expect_returned_at(deadline);
}

TEST(Completion, NotifyMakesWaitFlushTargetLookAtItsStopConditionAgain) {
  Completion c(2);
  Probe stop;
  const auto deadline = far();
  auto waiter = on_thread([&] { return c.wait_flush_target(1, deadline, [&] { return stop(); }); });
  ASSERT_TRUE(stop.wait_for_a_look());
  stop.make_true();
  c.notify();
  const auto got = waiter.get();
  EXPECT_EQ(got.value, std::nullopt);
  EXPECT_LT(got.at, deadline);
}

TEST(Completion, OnceCompleteAnUnservedRequestWaitsForTheEndAndAServedOneForItsTarget) {
  Completion c(2);
  c.flush_served(1, 10);
  Probe looked;
  const auto deadline = far();
  auto waiter =
      on_thread([&] { return c.wait_flush_target(2, deadline, [&] { return looked(); }); });
  ASSERT_TRUE(looked.wait_for_a_look());
  c.mark_complete(17);
  const auto got = waiter.get();
  EXPECT_EQ(got.value, std::optional<std::uint64_t>(17));
  EXPECT_LT(got.at, deadline);
  EXPECT_TRUE(c.complete());
  EXPECT_TRUE(c.flushed(17));
  EXPECT_EQ(c.wait_flush_target(1, passed(), never), std::optional<std::uint64_t>(10));
}

TEST(Completion, WaitCompleteReturnsTrueWhenTheWorkerMarksItComplete) {
  Completion c(2);
  Probe looked;
  const auto deadline = far();
  auto waiter = on_thread([&] { return c.wait_complete(deadline, [&] { return looked(); }); });
  ASSERT_TRUE(looked.wait_for_a_look());
  c.mark_complete(0);
  const auto got = waiter.get();
  EXPECT_TRUE(got.value);
  EXPECT_LT(got.at, deadline);
}

TEST(Completion, WaitCompleteReturnsFalseAtItsDeadlineNotBefore) {
  Completion c(2);
  const auto deadline = SteadyClock::now() + 50ms;
  EXPECT_FALSE(c.wait_complete(deadline, never));
  buffered_test::expect_returned_at(deadline);
}

TEST(Completion, NotifyMakesWaitCompleteLookAtItsOtherConditionAgain) {
  Completion c(2);
  Probe also;
  const auto deadline = far();
  auto waiter = on_thread([&] { return c.wait_complete(deadline, [&] { return also(); }); });
  ASSERT_TRUE(also.wait_for_a_look());
  also.make_true();
  c.notify();
  const auto got = waiter.get();
  EXPECT_TRUE(got.value);
  EXPECT_LT(got.at, deadline);
  EXPECT_FALSE(c.complete());
}

}  // namespace
