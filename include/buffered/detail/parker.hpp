// How the single consumer sleeps without producers paying a syscall per event.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>

#include "asymmetric_fence.hpp"
#include "cache_line.hpp"
#include "deadline.hpp"
#include "fork_guard.hpp"

namespace buffered::detail {

// The consumer arms a threshold ("wake me once some lane holds T events"), re-checks the
// lanes, and parks. A producer, after publishing into its lane, does one load of the threshold;
// only when its lane holds T or more does it race (CAS) to disarm, and the single winner takes
// the mutex and notifies. So at most one producer wakes the consumer per park, and none make a
// syscall while the consumer is awake or waiting for a larger threshold (but a thread's first
// push into a queue, which wakes an armed consumer: notify_lanes_changed).
//
// Explicit wake-ups (flush, shutdown, a dispatch slot freed) go through signal().
//
// Memory ordering: the producer's publish is a release store and its load of the threshold
// follows it with only asymmetric_fence light() between them (a StoreLoad fence per event would
// cost more than the rest of the push); arm() stores the threshold and then issues the heavy
// fence, before the consumer's last look at the lanes. So either that look sees the producer's
// event, or the producer's load sees the armed threshold (asymmetric_fence.hpp): no wake-up is
// lost, and the consumer parks with no time limit (tests/model/parker.pml). The wake itself sets
// `signaled_` under the mutex the consumer waits with, so it cannot fall between the consumer's
// check and its wait.
//
// Thresholds are per lane, computed from the lanes active when the consumer armed; a thread that
// takes a new lane afterwards calls notify_lanes_changed() (seq_cst on both sides: the consumer
// re-reads the lane count after arm(), the new lane's producer reads the threshold after it
// counted itself), so a batch filled across lanes that registered during a park still wakes it.
class Parker {
 public:
  static constexpr std::uint64_t kDisarmed = ~std::uint64_t{0};
  // What "disarmed" is in AsymmetricFence's fenced mode: not kDisarmed, so that a producer
  // leaves its fast path and runs the fallback fence before it looks again. Never a threshold
  // (those are event counts, at most a batch, so at most 2^40).
  static constexpr std::uint64_t kDisarmedFenced = kDisarmed - 1;

  Parker() noexcept {
    AsymmetricFence::prepare();
    if (AsymmetricFence::fenced()) disarmed_ = kDisarmedFenced;
    wake_at_.store(disarmed_, std::memory_order_relaxed);
  }
  Parker(const Parker&) = delete;
  Parker& operator=(const Parker&) = delete;

  // Consumer. Never blocks (a system call for the fence). `byte_threshold`: also wake once some
  // lane holds that many bytes (sized queues; producers check it with notify_published_sized).
  void arm(std::uint64_t threshold, std::uint64_t byte_threshold = kDisarmed) noexcept {
    wake_bytes_.store(byte_threshold, std::memory_order_relaxed);  // published by wake_at_
    wake_at_.store(threshold, std::memory_order_seq_cst);
    AsymmetricFence::heavy();  // before the caller's last look at the lanes
  }
  void disarm() noexcept { wake_at_.store(disarmed_, std::memory_order_relaxed); }

  // Producer, after publishing. `queued()` tells how many events its lane holds; it is called
  // only while the consumer is armed. One atomic load unless the consumer must be woken; then
  // a CAS, a mutex and a notify. Thread-safe.
  template <class Queued>
  void notify_published(Queued queued) {
    AsymmetricFence::light();  // orders the caller's publish before this load
    std::uint64_t wake_at = wake_at_.load(std::memory_order_acquire);
    if (wake_at == kDisarmed) [[likely]]
      return;
    // Fenced mode (never kDisarmed): whatever this first load saw may be stale, a threshold of
    // an earlier park included, so the value to act on is the one loaded after the fence.
    if (disarmed_ != kDisarmed && (wake_at = load_after_fence()) == kDisarmedFenced) return;
    if (queued() < wake_at) return;
    disarm_and_signal(wake_at);
  }

  // As notify_published, for a sized queue: `queued_bytes()` tells how many bytes the lane holds.
  template <class Queued, class QueuedBytes>
  void notify_published_sized(Queued queued, QueuedBytes queued_bytes) {
    AsymmetricFence::light();
    std::uint64_t wake_at = wake_at_.load(std::memory_order_acquire);
    if (wake_at == kDisarmed) return;
    if (disarmed_ != kDisarmed && (wake_at = load_after_fence()) == kDisarmedFenced) return;
    if (queued() < wake_at && queued_bytes() < wake_bytes_.load(std::memory_order_relaxed)) return;
    disarm_and_signal(wake_at);
  }

  // Producer, refused for want of space: the lanes may each hold less than their share while
  // all of them together fill the buffer, so wake the consumer if it waits for more. One
  // atomic load unless it does.
  void notify_full() {
    const std::uint64_t wake_at = wake_at_.load(std::memory_order_acquire);
    if (wake_at >= kDisarmedFenced) [[likely]]  // disarmed, in either mode
      return;
    disarm_and_signal(wake_at);
  }

  // Producer that took a new lane (after counting it): wakes the consumer if it is armed, so it
  // computes its thresholds again. Rare (a thread's first push into a queue). Never throws.
  void notify_lanes_changed() noexcept {
    const std::uint64_t wake_at = wake_at_.load(std::memory_order_seq_cst);
    if (wake_at == disarmed_) return;
    try {
      disarm_and_signal(wake_at);
    } catch (...) {
      // std::mutex::lock failed: the consumer still wakes at its deadline.
    }
  }

  // In a forked child (fork_guard.hpp): no consumer to wake here, so nothing may try to.
  void disarm_in_child() noexcept { wake_at_.store(disarmed_, std::memory_order_relaxed); }

  // Any thread: wake the consumer now (or make its next park return at once). Blocks briefly
  // on the mutex; never allocates.
  void signal() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      signaled_ = true;
    }
    cv_.notify_one();
  }

  // Consumer. Blocks until signalled (by a producer reaching the armed threshold or by
  // signal()) or until `deadline`; returns whether it was signalled. Spurious returns are
  // possible; callers re-check.
  bool park(std::optional<SteadyClock::time_point> deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    if (deadline) {
      cv_.wait_until(lock, *deadline, [this] { return signaled_; });
    } else {
      cv_.wait(lock, [this] { return signaled_; });
    }
    const bool signaled = signaled_;
    signaled_ = false;
    return signaled;
  }

 private:
  // The producer that disarms `wake_at` (still the value it saw) is the one that wakes.
  void disarm_and_signal(std::uint64_t wake_at) {
    if (wake_at_.compare_exchange_strong(wake_at, disarmed_, std::memory_order_seq_cst)) signal();
  }

  // Fenced mode: the producer's fence, then the threshold again.
  [[gnu::noinline]] std::uint64_t load_after_fence() const noexcept {
    AsymmetricFence::fallback();
    return wake_at_.load(std::memory_order_acquire);
  }

  alignas(kCacheLine) std::atomic<std::uint64_t> wake_at_{kDisarmed};
  std::atomic<std::uint64_t> wake_bytes_{kDisarmed};
  std::uint64_t disarmed_ = kDisarmed;  // kDisarmedFenced in fenced mode; set by the constructor
  alignas(kCacheLine) std::mutex mu_;
  CondVar cv_;
  bool signaled_ = false;
};

// Producers blocked on a full buffer (OverflowPolicy::block) wait here; the consumer notifies
// after freeing space, only when someone waits.
//
// Memory ordering: a producer increments `waiting_` then re-checks the queue's free credits;
// the consumer returns credits (a seq_cst RMW) then loads `waiting_`. All seq_cst: one of them
// sees the other. The
// producer's final check is made under the mutex the consumer takes before notifying.
class SpaceWaiters {
 public:
  // Producer. Blocks until `ready()` or `deadline`; returns ready(). Thread-safe.
  template <class Ready>
  bool wait(Ready ready, std::optional<SteadyClock::time_point> deadline) {
    waiting_.fetch_add(1, std::memory_order_seq_cst);
    bool ok = true;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (deadline) {
        ok = cv_.wait_until(lock, *deadline, ready);
      } else {
        cv_.wait(lock, ready);
      }
    }
    waiting_.fetch_sub(1, std::memory_order_relaxed);
    return ok;
  }

  // Consumer, after publishing a new head. One load when nobody waits.
  void notify_if_waiting() {
    if (waiting_.load(std::memory_order_seq_cst) == 0) return;
    notify_all();
  }

  void notify_all() {
    { std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_all();
  }

 private:
  alignas(kCacheLine) std::atomic<std::size_t> waiting_{0};
  std::mutex mu_;
  CondVar cv_;
};

}  // namespace buffered::detail
