// Whether a shutdown was requested, and by when it must be over; interruptible sleeps.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <optional>

#include "deadline.hpp"
#include "fork_guard.hpp"

namespace buffered::detail {

// shutdown() calls request(); the worker, the dispatch threads and flush() ask stopping(),
// past_deadline() and deadline(). Threads that wait for a throttle token or a retry backoff sleep
// in sleep_until(), which a request() with an earlier deadline cuts short, so no wait outlives a
// shutdown deadline.
//
// Memory ordering: request() stores the flag and the deadline (release) under the mutex the
// sleepers wait with, so a sleeper either sees them before it waits or is woken by the notify;
// readers load them with acquire.
//
// Thread-safe; never allocates.
class StopState {
 public:
  static constexpr SteadyClock::rep kNoDeadline = std::numeric_limits<SteadyClock::rep>::max();

  // Asks for a stop; `deadline` (nullopt: none) applies if earlier than one already given.
  void request(std::optional<SteadyClock::time_point> deadline) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (deadline) {
        const SteadyClock::rep rep = deadline->time_since_epoch().count();
        if (rep < deadline_.load(std::memory_order_relaxed)) {
          deadline_.store(rep, std::memory_order_release);
        }
      }
      stopping_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }

  bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

  // The earliest deadline any request() gave, if any.
  std::optional<SteadyClock::time_point> deadline() const noexcept {
    const SteadyClock::rep rep = deadline_.load(std::memory_order_acquire);
    if (rep == kNoDeadline) return std::nullopt;
    return SteadyClock::time_point(SteadyClock::duration(rep));
  }

  // A stop was requested and its deadline has passed: give up on what is not done.
  bool past_deadline() const noexcept {
    const SteadyClock::rep rep = deadline_.load(std::memory_order_acquire);
    return rep != kNoDeadline && stopping() && SteadyClock::now().time_since_epoch().count() >= rep;
  }

  // For BatchContext::deadline(): kNoDeadline or a steady_clock count.
  const std::atomic<SteadyClock::rep>& deadline_rep() const noexcept { return deadline_; }

  // Sleeps until `until`; returns true then, or false as soon as the stop deadline has passed
  // (at once if it already has). Blocks; never allocates.
  bool sleep_until(SteadyClock::time_point until) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (past_deadline()) return false;
      const auto now = SteadyClock::now();
      if (now >= until) return true;
      const auto stop_at = deadline();
      const auto wake = stop_at && *stop_at < until ? *stop_at : until;
      if (wake == SteadyClock::time_point::max()) {
        cv_.wait(lock);  // "forever": until a request() brings a deadline
      } else {
        cv_.wait_until(lock, wake);
      }
    }
  }

 private:
  std::atomic<bool> stopping_{false};
  std::atomic<SteadyClock::rep> deadline_{kNoDeadline};
  std::mutex mu_;
  CondVar cv_;
};

}  // namespace buffered::detail
