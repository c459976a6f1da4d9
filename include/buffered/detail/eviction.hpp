// Knowing when the evictions under way have been reported (drop_oldest and flush()).
#pragma once

#include <atomic>
#include <optional>

#include "deadline.hpp"
#include "spin_lock.hpp"
#include "spin_wait.hpp"

namespace buffered::detail {

// An eviction takes its element out of the queue under the queue's head lock, then reports it
// with no lock held. flush() must not return while an eviction of an event it covers is still
// unreported, but producers that keep evicting must not hold it up either. So evictions count
// in one of two epochs while they report: enter() (under the head lock, when the element is
// taken) and leave() (after the report). wait_reported() flips the epoch and waits for the old
// one to empty: evictions that start meanwhile count in the new one.
//
// Thread-safe: enter() and flip under the caller's head lock; leave() and reported() lock-free;
// wait_reported() callers take turns. Never allocates.
//
// Memory ordering: leave() decrements with release and the waiter loads with acquire, so once
// the count is seen at zero, every report it covered has happened-before.
class EvictionEpochs {
 public:
  // Under the head lock, as an eviction takes its element: returns the epoch to leave.
  unsigned enter() noexcept {
    reporting_[epoch_].fetch_add(1, std::memory_order_relaxed);
    return epoch_;
  }

  // After the eviction's report.
  void leave(unsigned epoch) noexcept { reporting_[epoch].fetch_sub(1, std::memory_order_release); }

  // No eviction is between taking its element and the end of its report.
  bool reported() const noexcept {
    return reporting_[0].load(std::memory_order_acquire) == 0 &&
           reporting_[1].load(std::memory_order_acquire) == 0;
  }

  // Waits until every eviction that entered before the call has left, or until `deadline`
  // (false then). `head_lock` is the lock enter() runs under.
  bool wait_reported(SpinLock& head_lock, std::optional<SteadyClock::time_point> deadline) {
    // A flag rather than std::timed_mutex: ThreadSanitizer does not see libstdc++'s
    // pthread_mutex_clocklock. Callers are few (flushes), so polling is fine.
    SpinWait spin;
    while (busy_.exchange(true, std::memory_order_acquire)) {
      if (deadline && SteadyClock::now() >= *deadline) return false;
      spin.pause(deadline);
    }
    struct Release {
      std::atomic<bool>& busy;
      ~Release() { busy.store(false, std::memory_order_release); }
    } release{busy_};
    spin.reset();
    const auto emptied = [&](unsigned epoch) {
      while (reporting_[epoch].load(std::memory_order_acquire) != 0) {
        if (deadline && SteadyClock::now() >= *deadline) return false;
        spin.pause(deadline);
      }
      return true;
    };
    // First the other epoch must be empty (it is, unless a caller before us gave up at its
    // deadline; none enter it meanwhile), then flip, so that every eviction already under way
    // is in `old`, and wait for that.
    head_lock.lock();
    const unsigned old = epoch_;
    head_lock.unlock();
    if (!emptied(old ^ 1)) return false;
    head_lock.lock();
    epoch_ ^= 1;
    head_lock.unlock();
    return emptied(old);
  }

 private:
  unsigned epoch_ = 0;  // guarded by the head lock: where evictions count while they report
  std::atomic<unsigned> reporting_[2] = {0, 0};
  std::atomic<bool> busy_{false};  // a wait_reported() caller is in
};

}  // namespace buffered::detail
