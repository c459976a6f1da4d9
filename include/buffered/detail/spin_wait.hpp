// Waiting politely for a condition another thread is about to make true (not the retry backoff:
// that is Delivery::backoff).
#pragma once

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>

#include "deadline.hpp"

namespace buffered::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Waiting for another thread that is a few instructions from done: a producer between taking a
// slot and publishing it (it may also have been pre-empted), an eviction being reported. Spins
// briefly, then yields, then sleeps with a growing interval (capped at 1 ms), never past
// `deadline`. So a stalled producer costs the waiting thread almost no CPU.
class SpinWait {
 public:
  void pause(std::optional<SteadyClock::time_point> deadline) {
    if (spins_ < kSpins) {
      ++spins_;
      cpu_relax();
      return;
    }
    if (yields_ < kYields) {
      ++yields_;
      std::this_thread::yield();
      return;
    }
    auto nap = sleep_;
    if (deadline) {
      const auto now = SteadyClock::now();
      if (now >= *deadline) return;
      nap = std::min<SteadyClock::duration>(nap, *deadline - now);
    }
    std::this_thread::sleep_for(nap);
    sleep_ = std::min<SteadyClock::duration>(sleep_ * 2, std::chrono::milliseconds(1));
  }

  void reset() noexcept {
    spins_ = 0;
    yields_ = 0;
    sleep_ = std::chrono::microseconds(20);
  }

 private:
  static constexpr int kSpins = 128;
  static constexpr int kYields = 16;
  int spins_ = 0;
  int yields_ = 0;
  SteadyClock::duration sleep_ = std::chrono::microseconds(20);
};

}  // namespace buffered::detail
