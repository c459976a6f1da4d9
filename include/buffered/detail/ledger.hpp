// Every outcome of an offered event, counted and reported in one place.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>

#include "../config.hpp"
#include "cache_line.hpp"
#include "owner.hpp"

namespace buffered::detail {

// How a batch of taken events ended.
enum class Settled { delivered, failed, abandoned };

// An offered event ends in exactly one of: refused (buffer_full, shut_down, too_large: on the
// producer's thread), evicted (drop_oldest, on the producer's thread that evicted it), or, once
// taken into a batch (`pending` until then), delivered, failed or abandoned. Each site calls one
// member here, which counts the events and hands them to the error handler, so Stats and the
// handler can never disagree. (Accepted and queued are the buffer's own counts.)
//
// The handler is called marked as a call of `owner` (so it may call back into its backend
// without waiting for itself); what it throws is swallowed. For delegate_failed it runs inside
// the catch block of the last attempt (settle() is called there).
//
// Thread-safe, lock-free; never allocates (the handler aside).
//
// Memory ordering: counts are relaxed (they publish nothing), but settle() decrements `pending`
// with release after counting, and abandoned_any is stored with release: a shutdown() that
// acquires them and sees a batch settled also sees its counts.
template <class Event>
class Ledger {
 public:
  using Handler = std::function<void(ErrorKind, std::span<const Event>)>;

  Ledger(Handler handler, const void* owner) : handler_(std::move(handler)), owner_(owner) {}
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // Producer: offers refused; `why` is buffer_full, shut_down or too_large.
  void refused(ErrorKind why, std::span<const Event> events) noexcept {
    auto& count = why == ErrorKind::buffer_full ? rejected_full_
                  : why == ErrorKind::too_large ? rejected_too_large_
                                                : rejected_shut_down_;
    count.fetch_add(events.size(), std::memory_order_relaxed);
    report(why, events);
  }

  // Producer: an event drop_oldest took out of the buffer.
  void evicted(const Event& victim) noexcept {
    evicted_.fetch_add(1, std::memory_order_relaxed);
    report(ErrorKind::evicted, std::span<const Event>(&victim, 1));
  }

  // Worker: `n` events left the buffer for a batch; they are pending until settled.
  void taken(std::size_t n) noexcept { pending_.fetch_add(n, std::memory_order_relaxed); }

  // A batch of taken events ended.
  void settle(Settled how, std::span<Event> events) noexcept {
    const std::size_t n = events.size();
    switch (how) {
      case Settled::delivered:
        delivered_.fetch_add(n, std::memory_order_relaxed);
        break;
      case Settled::failed:
        failed_.fetch_add(n, std::memory_order_relaxed);
        report(ErrorKind::delegate_failed, events);
        break;
      case Settled::abandoned:
        abandon(events);
        break;
    }
    pending_.fetch_sub(n, std::memory_order_release);
  }

  // Shutdown: events abandoned straight from the buffer, never taken.
  void abandoned_queued(std::span<Event> events) noexcept { abandon(events); }

  // Any accepted event was abandoned; events taken and not yet settled.
  bool abandoned_any() const noexcept { return abandoned_any_.load(std::memory_order_acquire); }
  std::size_t pending() const noexcept { return pending_.load(std::memory_order_acquire); }

  // The outcome counts of `s` (each exact; read one after another).
  void fill(Stats& s) const noexcept {
    s.rejected_full = rejected_full_.load(std::memory_order_relaxed);
    s.rejected_shut_down = rejected_shut_down_.load(std::memory_order_relaxed);
    s.rejected_too_large = rejected_too_large_.load(std::memory_order_relaxed);
    s.evicted = evicted_.load(std::memory_order_relaxed);
    s.delivered = delivered_.load(std::memory_order_relaxed);
    s.failed = failed_.load(std::memory_order_relaxed);
    s.abandoned = abandoned_.load(std::memory_order_relaxed);
    s.pending = pending_.load(std::memory_order_relaxed);
  }

 private:
  void abandon(std::span<Event> events) noexcept {
    abandoned_any_.store(true, std::memory_order_release);
    abandoned_.fetch_add(events.size(), std::memory_order_relaxed);
    report(ErrorKind::abandoned, events);
  }

  void report(ErrorKind kind, std::span<const Event> events) const noexcept {
    if (!handler_ || events.empty()) return;
    const OwnerScope scope(owner_);
    try {
      handler_(kind, events);
    } catch (...) {
      // The contract: an error handler that throws is ignored.
    }
  }

  const Handler handler_;
  const void* const owner_;
  // The producers' line.
  alignas(kCacheLine) std::atomic<std::uint64_t> rejected_full_{0};
  std::atomic<std::uint64_t> rejected_shut_down_{0};
  std::atomic<std::uint64_t> rejected_too_large_{0};
  std::atomic<std::uint64_t> evicted_{0};
  // The worker's and the dispatch threads'.
  alignas(kCacheLine) std::atomic<std::uint64_t> delivered_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::atomic<std::uint64_t> abandoned_{0};
  std::atomic<std::size_t> pending_{0};
  std::atomic<bool> abandoned_any_{false};
};

}  // namespace buffered::detail
