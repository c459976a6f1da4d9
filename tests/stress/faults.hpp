// Allocation failures injected into the library (a replaced global operator new, tests/fault).
// About one round in five: while constructing (every allocation in turn, then retried), in run()
// (likewise, or the first allocation when producers already run; then run() again), in the copy
// an offer makes (a long payload's copy throws: the event is then not offered, counted nowhere),
// in flush(), shutdown() and the destructor (which must neither throw nor allocate), and on the
// library's own threads after a delegate call (which must never allocate).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <random>

#include "../fault/fault_injection.hpp"

namespace buffered_stress {

namespace fault = buffered_test::fault;

// Allocation failures that fired on the library's own threads after a delegate call (where the
// library must not allocate). Global: a thread may outlive its round's bookkeeping.
std::uint64_t library_thread_faults_fired();

// A failure armed on a library thread (the worker or a dispatch thread) by the delegate, after
// its call: settled when the tool next runs on that thread, or when the thread ends.
void arm_library_thread_fault();
void settle_library_thread_fault();

// The tool's own bookkeeping in the delegate and the error handler must not take a failure meant
// for the library: this holds back a failure armed on this thread and re-arms it afterwards.
class HoldFault {
 public:
  HoldFault() : held_(fault::cancel_next_allocation_failure_on_this_thread()) {}
  ~HoldFault() {
    if (held_) fault::fail_next_allocation_on_this_thread();
  }
  HoldFault(const HoldFault&) = delete;
  HoldFault& operator=(const HoldFault&) = delete;

 private:
  const bool held_;
};

// A round's injected failures: armed, and fired.
struct FaultCounters {
  std::atomic<std::uint64_t> armed{0}, failed{0};
};

// Arms a one-shot failure of this thread's next allocation, if `on`; disarm() says whether it
// fired. Call disarm() right after the library call, before the tool allocates.
class ThreadFault {
 public:
  ThreadFault(FaultCounters& counters, bool on) : counters_(counters), on_(on) {
    if (on_) fault::fail_next_allocation_on_this_thread();
  }
  ~ThreadFault() { disarm(); }
  ThreadFault(const ThreadFault&) = delete;
  ThreadFault& operator=(const ThreadFault&) = delete;

  bool disarm() {
    if (!on_) return false;
    on_ = false;
    const bool fired = !fault::cancel_next_allocation_failure_on_this_thread();
    counters_.armed.fetch_add(1);
    if (fired) counters_.failed.fetch_add(1);
    return fired;
  }

 private:
  FaultCounters& counters_;
  bool on_;
};

// For injection choices, from any thread: a generator of their own, so that how many
// allocations the library makes does not change the rest of the round.
class FaultDice {
 public:
  explicit FaultDice(std::uint64_t seed) : rng_(seed ^ 0x9e3779b97f4a7c15ull) {}

  bool chance(double p) {
    std::lock_guard<std::mutex> lock(mu_);
    return std::uniform_real_distribution<double>(0, 1)(rng_) < p;
  }
  fault::Mode mode() { return chance(0.25) ? fault::Mode::from_then_on : fault::Mode::once; }

 private:
  std::mutex mu_;
  std::mt19937_64 rng_;  // guarded by mu_
};

}  // namespace buffered_stress
