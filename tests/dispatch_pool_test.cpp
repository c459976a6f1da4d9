// DispatchPool on its own: its threads and their start function, jobs run with their batch and
// first position, free slots (refused while every thread is busy, slot_freed when one frees), the
// recycled batch buffers, stop_and_join, a second start, and the destructor.
#include <gtest/gtest.h>
#include <buffered/detail/dispatch_pool.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "support.hpp"

namespace {

using Batch = std::vector<int>;
using Pool = buffered::detail::DispatchPool<Batch>;
using buffered_test::Gate;
using buffered_test::kPatience;

thread_local bool started_here = false;  // set by the pool's on_thread_start

// A count that can be waited on (slot_freed calls, thread starts).
class Tally {
 public:
  void bump() {
    std::lock_guard<std::mutex> lock(mu_);
    ++n_;
    cv_.notify_all();
  }
  int count() {
    std::lock_guard<std::mutex> lock(mu_);
    return n_;
  }
  bool wait_above(int seen) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return n_ > seen; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_ = 0;
};

// The pool's work: records every job; while held, a job waits for a permit before it ends.
class Jobs {
 public:
  struct Done {
    Batch events;
    const int* buffer;
    std::thread::id thread;
    bool after_start;
  };
  explicit Jobs(bool held = false) : held_(held) {}
  Pool::Work work() {
    return [this](Batch& batch, std::uint64_t first) { run(batch, first); };
  }
  void run(Batch& batch, std::uint64_t first) {
    std::unique_lock<std::mutex> lock(mu_);
    max_running_ = std::max(max_running_, ++running_);
    cv_.notify_all();
    if (held_ && !cv_.wait_for(lock, kPatience, [&] { return permits_ > 0; })) stuck_ = true;
    if (permits_ > 0) --permits_;
    done_.emplace(first, Done{batch, batch.data(), std::this_thread::get_id(), started_here});
    --running_;
    cv_.notify_all();
  }
  void permit(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    permits_ += n;
    cv_.notify_all();
  }
  bool wait_running(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return running_ >= n; });
  }
  bool wait_done(std::size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return done_.size() >= n; });
  }
  std::map<std::uint64_t, Done> done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  int max_running() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_running_;
  }
  bool stuck() {
    std::lock_guard<std::mutex> lock(mu_);
    return stuck_;
  }

 private:
  const bool held_;
  std::mutex mu_;
  std::condition_variable cv_;
  int running_ = 0;
  int max_running_ = 0;
  int permits_ = 0;
  bool stuck_ = false;
  std::map<std::uint64_t, Done> done_;  // by first position
};

// The worker's way of submitting: wait for a free slot (slot_freed says when one frees), submit,
// take the next buffer. False if no slot freed in time.
bool submit(Pool& pool, Tally& freed, Batch& batch, std::uint64_t first) {
  for (;;) {
    const int seen = freed.count();
    if (pool.has_free_slot()) break;
    if (!freed.wait_above(seen)) return false;
  }
  pool.submit(std::move(batch), first);
  batch = pool.take_buffer();
  return true;
}

Batch events(int from, int n) {
  Batch b;
  for (int i = 0; i < n; ++i) b.push_back(from + i);
  return b;
}

TEST(DispatchPool, JobsRunOnThePoolThreadsAfterTheirStartFunctionWithTheirPosition) {
  Jobs jobs;
  Tally freed;
  Pool pool(2, 8, jobs.work(), [&] { freed.bump(); });
  std::mutex mu;
  std::set<std::thread::id> pool_threads;
  pool.start([&] {
    started_here = true;
    std::lock_guard<std::mutex> lock(mu);
    pool_threads.insert(std::this_thread::get_id());
  });
  Batch batch = pool.take_buffer();
  for (int k = 0; k < 10; ++k) {
    for (int v : events(10 * k, 1 + k % 4)) batch.push_back(v);
    ASSERT_TRUE(submit(pool, freed, batch, 1000 + static_cast<std::uint64_t>(k)));
  }
  pool.stop_and_join();  // every job has run when it returns
  const auto done = jobs.done();
  ASSERT_EQ(done.size(), 10u);
  for (int k = 0; k < 10; ++k) {
    const auto it = done.find(1000 + static_cast<std::uint64_t>(k));
    ASSERT_NE(it, done.end()) << k;
    EXPECT_EQ(it->second.events, events(10 * k, 1 + k % 4)) << k;
    EXPECT_TRUE(it->second.after_start) << k;
    EXPECT_EQ(pool_threads.count(it->second.thread), 1u) << k;
  }
  EXPECT_EQ(pool_threads.size(), 2u);
  EXPECT_EQ(pool_threads.count(std::this_thread::get_id()), 0u);
}

TEST(DispatchPool, ASlotIsRefusedWhileEveryThreadIsBusyAndSlotFreedSaysWhenOneFrees) {
  Jobs jobs(/*held=*/true);
  Tally freed;
  Pool pool(2, 8, jobs.work(), [&] { freed.bump(); });
  pool.start([] {});
  Batch batch = pool.take_buffer();
  ASSERT_TRUE(pool.has_free_slot());
  pool.submit(std::move(batch), 0);
  batch = pool.take_buffer();
  ASSERT_TRUE(pool.has_free_slot());
  pool.submit(std::move(batch), 1);
  batch = pool.take_buffer();
  EXPECT_TRUE(jobs.wait_running(2)) << "the two jobs do not run at once";
  EXPECT_FALSE(pool.has_free_slot());
  EXPECT_EQ(freed.count(), 0);
  jobs.permit(1);
  EXPECT_TRUE(freed.wait_above(0)) << "no slot_freed after the refusal";
  EXPECT_TRUE(pool.has_free_slot());
  jobs.permit(1);
  EXPECT_TRUE(jobs.wait_done(2));
  pool.stop_and_join();
  EXPECT_EQ(freed.count(), 1) << "slot_freed only after a refusal";
  EXPECT_EQ(jobs.max_running(), 2);
  EXPECT_FALSE(jobs.stuck());
}

TEST(DispatchPool, BatchBuffersAreTheThreadsPlusOneMadeFirstClearedWithTheirCapacity) {
  constexpr std::size_t kThreads = 2, kCapacity = 64;
  Jobs jobs(/*held=*/true);
  Tally freed;
  Pool pool(kThreads, kCapacity, jobs.work(), [&] { freed.bump(); });
  pool.start([] {});
  std::set<const int*> originals;
  const auto fill = [&](Batch& b) {
    EXPECT_TRUE(b.empty());
    EXPECT_GE(b.capacity(), kCapacity);
    for (int v : events(0, static_cast<int>(kCapacity))) b.push_back(v);  // no reallocation
  };
  // While every job is held, the buffers taken are all different: the threads + 1 there are.
  Batch batch = pool.take_buffer();
  originals.insert(batch.data());
  for (std::uint64_t k = 0; k < kThreads; ++k) {
    fill(batch);
    ASSERT_TRUE(pool.has_free_slot());
    pool.submit(std::move(batch), k);
    batch = pool.take_buffer();
    originals.insert(batch.data());
  }
  ASSERT_EQ(originals.size(), kThreads + 1);
  jobs.permit(1000);
  for (std::uint64_t k = kThreads; k < 40; ++k) {
    fill(batch);
    ASSERT_TRUE(submit(pool, freed, batch, k));
    EXPECT_EQ(originals.count(batch.data()), 1u) << "a buffer made after start, at " << k;
  }
  pool.stop_and_join();
  const auto done = jobs.done();
  ASSERT_EQ(done.size(), 40u);
  for (const auto& [first, job] : done) {
    EXPECT_EQ(originals.count(job.buffer), 1u) << first;
    EXPECT_EQ(job.events.size(), kCapacity) << first;
  }
}

TEST(DispatchPool, StopAndJoinReturnsOnlyOnceTheJobsSubmittedHaveRun) {
  Jobs jobs(/*held=*/true);
  Tally freed;
  Pool pool(2, 8, jobs.work(), [&] { freed.bump(); });
  pool.start([] {});
  Batch batch = pool.take_buffer();
  for (std::uint64_t k = 0; k < 2; ++k) {
    batch.push_back(static_cast<int>(k));
    ASSERT_TRUE(submit(pool, freed, batch, k));
  }
  Gate stopping;
  std::size_t done_when_stopped = 0;
  std::thread stopper([&] {
    stopping.open();
    pool.stop_and_join();
    done_when_stopped = jobs.done().size();
  });
  stopping.wait();
  jobs.permit(2);
  stopper.join();
  EXPECT_EQ(done_when_stopped, 2u);
  EXPECT_FALSE(jobs.stuck());
}

TEST(DispatchPool, StartsAgainAfterStopAndJoinWithNewThreads) {
  Jobs jobs;
  Tally freed, starts;
  Pool pool(2, 8, jobs.work(), [&] { freed.bump(); });
  Batch batch = pool.take_buffer();  // the submitter keeps it from one start to the next
  std::uint64_t next = 0;
  for (int round = 0; round < 3; ++round) {
    pool.start([&] { starts.bump(); });
    for (int k = 0; k < 5; ++k) {
      batch.push_back(round);
      ASSERT_TRUE(submit(pool, freed, batch, next++));
    }
    pool.stop_and_join();
    EXPECT_EQ(jobs.done().size(), next) << round;
    pool.stop_and_join();  // again: nothing to do
    EXPECT_EQ(starts.count(), 2 * (round + 1)) << round;
  }
  const auto done = jobs.done();
  for (std::uint64_t k = 0; k < next; ++k) {
    ASSERT_EQ(done.count(k), 1u) << k;
    EXPECT_EQ(done.at(k).events, Batch{static_cast<int>(k / 5)}) << k;
  }
}

TEST(DispatchPool, TheDestructorRunsTheJobsSubmittedThenJoins) {
  Jobs jobs;
  Tally freed;
  {
    Pool pool(3, 8, jobs.work(), [&] { freed.bump(); });
    pool.start([] {});
    Batch batch = pool.take_buffer();
    for (std::uint64_t k = 0; k < 3; ++k) {
      batch.push_back(static_cast<int>(k));
      ASSERT_TRUE(submit(pool, freed, batch, k));
    }
  }
  const auto done = jobs.done();
  ASSERT_EQ(done.size(), 3u);
  for (std::uint64_t k = 0; k < 3; ++k) EXPECT_EQ(done.at(k).events, Batch{static_cast<int>(k)});
}

}  // namespace
