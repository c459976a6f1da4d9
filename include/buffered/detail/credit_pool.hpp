// A shared bound, handed out in chunks: the queue's event slots and its bytes.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "cache_line.hpp"

namespace buffered::detail {

// `total` credits. A lane takes them in chunks (one atomic operation per chunk, not per
// event) and spends them alone; the consumer gives back what it takes out. So what the lanes
// hold never exceeds `total`, and with one producer a refusal means exactly that the queued
// elements leave no room. With several, up to a chunk less one per other lane may sit reserved
// but unused: the queue keeps chunks at most total / 72 (see ShardedQueue), and takes reserves
// back when a producer is refused.
// The queue uses one pool for event slots and, with a byte bound, one for bytes.
//
// Thread-safe and lock-free; never allocates.
//
// Memory ordering: every change is a seq_cst RMW, and available() a seq_cst load: a producer
// blocked on a full buffer counts itself waiting and then reads the pool, the consumer gives
// credits back and then reads the waiter count (SpaceWaiters), and one of them sees the other.
class CreditPool {
 public:
  explicit CreditPool(std::uint64_t total) noexcept : credits_(total) {}

  // Takes max(need, chunk) credits, or all that is left if that is less but at least `need`;
  // returns how many, 0 when fewer than `need` (need >= 1) are left.
  std::uint64_t take(std::uint64_t need, std::uint64_t chunk) noexcept {
    std::uint64_t available = credits_.load(std::memory_order_relaxed);
    std::uint64_t want = 0;
    do {
      if (available < need) return 0;
      want = std::min(available, std::max(need, chunk));
    } while (!credits_.compare_exchange_weak(available, available - want, std::memory_order_seq_cst,
                                             std::memory_order_relaxed));
    return want;
  }

  void give(std::uint64_t n) noexcept {
    if (n != 0) credits_.fetch_add(n, std::memory_order_seq_cst);
  }

  std::uint64_t available() const noexcept { return credits_.load(std::memory_order_seq_cst); }

 private:
  alignas(kCacheLine) std::atomic<std::uint64_t> credits_;
};

// One lane's credits taken from a pool and not yet spent, where another thread may take them
// back (CreditPool's bytes: an idle producer's reserve must not keep a large element out for as
// long as that producer lives). The owner spends with one uncontended CAS; anyone may reclaim().
// Lock-free; never allocates.
class SharedReserve {
 public:
  // Owner: takes `n` from the reserve, refilling it from `pool` (what it lacks, at least a
  // chunk when the pool has it). If the pool has too little, gives back what the reserve holds
  // and returns false, so that with one producer a refusal means the queue leaves no room (and a
  // blocked producer can wait on the pool alone).
  bool spend(std::uint64_t n, CreditPool& pool, std::uint64_t chunk) noexcept {
    std::uint64_t held = held_.load(std::memory_order_relaxed);
    for (;;) {
      if (held < n) {
        if (!refill(n - held, pool, chunk)) return false;
        held = held_.load(std::memory_order_relaxed);
        continue;
      }
      // A CAS, not a store: reclaim() may have taken the reserve meanwhile.
      if (held_.compare_exchange_weak(held, held - n, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) [[likely]] {
        return true;
      }
    }
  }

  // Any thread: puts `n` into the reserve (what an eviction freed for its evictor).
  void add(std::uint64_t n) noexcept {
    if (n != 0) held_.fetch_add(n, std::memory_order_relaxed);
  }

  std::uint64_t held() const noexcept { return held_.load(std::memory_order_relaxed); }

  // Any thread: gives everything held back to `pool`.
  void reclaim(CreditPool& pool) noexcept {
    if (held_.load(std::memory_order_relaxed) == 0) return;
    pool.give(held_.exchange(0, std::memory_order_acq_rel));
  }

 private:
  [[gnu::noinline]] bool refill(std::uint64_t need, CreditPool& pool,
                                std::uint64_t chunk) noexcept {
    const std::uint64_t got = pool.take(need, chunk);
    if (got == 0) {
      pool.give(held_.exchange(0, std::memory_order_acq_rel));
      return false;
    }
    held_.fetch_add(got, std::memory_order_relaxed);
    return true;
  }

  std::atomic<std::uint64_t> held_{0};
};

}  // namespace buffered::detail
