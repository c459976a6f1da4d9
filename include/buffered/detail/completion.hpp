// Which accepted events are done (delivered, failed or abandoned), for flush and shutdown.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <vector>

#include "deadline.hpp"
#include "fork_guard.hpp"

namespace buffered::detail {

// Tracks event offsets in the order the worker takes events (0 = the first event it ever took;
// they do not wrap in practice).
// Everything below the watermark is done: the watermark is the first event of the worker's
// current batch, or of the oldest batch still in a delegate call, whichever is lower.
//
// Thread-safe: one mutex guards everything; waiters block on its condition variable. Never
// allocates after construction (the in-flight list is reserved).
class Completion {
 public:
  static constexpr std::uint64_t kNone = std::numeric_limits<std::uint64_t>::max();

  enum class FlushResult { done, abandoned, timed_out };

  explicit Completion(std::size_t max_in_flight) { in_flight_.reserve(max_in_flight); }

  // The worker finished a batch itself (sync, or abandoned); its next batch starts at `next`.
  void worker_done(std::uint64_t next) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_hand_ = next;
    }
    cv_.notify_all();
  }

  // The worker handed [first, next) to the pool.
  void dispatched(std::uint64_t first, std::uint64_t next) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_flight_.push_back(first);
      in_hand_ = next;
    }
    cv_.notify_all();
  }

  // A pool thread finished the batch that started at `first`.
  void dispatch_done(std::uint64_t first) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = std::find(in_flight_.begin(), in_flight_.end(), first);
      if (it != in_flight_.end()) in_flight_.erase(it);
    }
    cv_.notify_all();
  }

  // Events from `first` on are being abandoned by shutdown.
  void abandoning_from(std::uint64_t first) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      first_abandoned_ = std::min(first_abandoned_, first);
    }
    cv_.notify_all();
  }

  void mark_complete(std::uint64_t end) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_hand_ = end;
      complete_ = true;
    }
    cv_.notify_all();
  }

  // The worker has taken every event that flush request `request` waits for (and the requests
  // before it); they all lie below `target`.
  void flush_served(std::uint64_t request, std::uint64_t target) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (request > served_) {
        served_ = request;
        served_target_ = target;
      }
    }
    cv_.notify_all();
  }

  // Blocks until flush request `request` is served (or the worker completed: then everything
  // accepted lies below its end), and returns the target to wait for; nullopt if `stop()` holds
  // (checked whenever waiters are woken) or at the deadline.
  template <class Stop>
  std::optional<std::uint64_t> wait_flush_target(std::uint64_t request,
                                                 std::optional<SteadyClock::time_point> deadline,
                                                 Stop stop) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto settled = [&] { return served_ >= request || complete_ || stop(); };
    if (deadline) {
      cv_.wait_until(lock, *deadline, settled);
    } else {
      cv_.wait(lock, settled);
    }
    if (served_ >= request) return served_target_;
    if (complete_) return in_hand_;
    return std::nullopt;
  }

  // Wakes waiters so they re-check a condition kept elsewhere.
  void notify() {
    { std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_all();
  }

  bool complete() const {
    std::lock_guard<std::mutex> lock(mu_);
    return complete_;
  }

  // Every event below `target` is done and none of them was abandoned. Never blocks (the mutex
  // aside).
  bool flushed(std::uint64_t target) const {
    std::lock_guard<std::mutex> lock(mu_);
    return first_abandoned_ >= target && watermark() >= target;
  }

  // Blocks until every event below `target` is done, or one of them was abandoned, or `stop()`
  // holds (checked whenever waiters are woken), or the deadline.
  template <class Stop>
  FlushResult wait_flushed(std::uint64_t target, std::optional<SteadyClock::time_point> deadline,
                           Stop stop) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto settled = [&] {
      return first_abandoned_ < target || watermark() >= target || stop();
    };
    if (deadline) {
      cv_.wait_until(lock, *deadline, settled);
    } else {
      cv_.wait(lock, settled);
    }
    if (first_abandoned_ < target) return FlushResult::abandoned;
    return watermark() >= target ? FlushResult::done : FlushResult::timed_out;
  }

  // Blocks until mark_complete() or `also()` (checked whenever waiters are woken) or deadline.
  template <class Also>
  bool wait_complete(std::optional<SteadyClock::time_point> deadline, Also also) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto settled = [&] { return complete_ || also(); };
    if (deadline) return cv_.wait_until(lock, *deadline, settled);
    cv_.wait(lock, settled);
    return true;
  }

 private:
  std::uint64_t watermark() const {
    std::uint64_t w = in_hand_;
    for (std::uint64_t first : in_flight_) w = std::min(w, first);
    return w;
  }

  mutable std::mutex mu_;
  CondVar cv_;
  std::uint64_t in_hand_ = 0;
  std::vector<std::uint64_t> in_flight_;
  std::uint64_t first_abandoned_ = kNone;
  std::uint64_t served_ = 0;  // the last flush request served
  std::uint64_t served_target_ = 0;
  bool complete_ = false;
};

}  // namespace buffered::detail
