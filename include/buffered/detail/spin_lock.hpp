// A lock held for a few instructions.
#pragma once

#include <atomic>
#include <thread>

#include "spin_wait.hpp"

namespace buffered::detail {

// Guards a few instructions (the free-block list, the shared lane, the consumer's head when
// evictors share it). Never throws: it spins briefly, then yields, so a holder that was
// pre-empted costs little. Not recursive. `reset_in_child()` makes a new, free lock in a forked
// child, where the thread that held it at the fork is not there.
//
// Memory ordering: lock() acquires and unlock() releases, so what one holder wrote is seen by
// the next.
class SpinLock {
 public:
  void lock() noexcept {
    for (int i = 0; flag_.test_and_set(std::memory_order_acquire); ++i) {
      if (i < kSpins) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }
  void unlock() noexcept { flag_.clear(std::memory_order_release); }
  void reset_in_child() noexcept { flag_.clear(std::memory_order_relaxed); }

 private:
  static constexpr int kSpins = 64;
  std::atomic_flag flag_;  // clear (C++20)
};

}  // namespace buffered::detail
