// The queue's closed state, as every push reads it and as the consumer waits for it.
#pragma once

#include <atomic>
#include <cstdint>

#include "asymmetric_fence.hpp"
#include "cache_line.hpp"

namespace buffered::detail {

// One byte that every push loads. kClosedBit once close() ran; kFenceBit for the flag's whole
// life when AsymmetricFence runs in fenced mode (no membarrier), so that the push's single test
// `word != 0` sends every push in that mode to refuses_after_fence(), where the fence the light
// side needs runs. Off the fast path, whatever the mode.
//
// The busy-mark protocol that makes close() safe without a fence per push is in lane.hpp.
//
// Thread-safe; never blocks (fence_once_closed() makes a system call, once).
class CloseFlag {
 public:
  CloseFlag() noexcept {
    AsymmetricFence::prepare();  // decided before any producer of this queue pushes
    if (AsymmetricFence::fenced()) word_.store(kFenceBit, std::memory_order_relaxed);
  }
  CloseFlag(const CloseFlag&) = delete;
  CloseFlag& operator=(const CloseFlag&) = delete;

  // Idempotent. Pushes that start after it returns are refused.
  void close() noexcept { word_.fetch_or(kClosedBit, std::memory_order_seq_cst); }
  bool closed() const noexcept { return (word_.load(std::memory_order_acquire) & kClosedBit) != 0; }

  // The push's test, after its busy mark and AsymmetricFence::light(). One load while open.
  [[gnu::always_inline]] bool refuses_push() const noexcept {
    return word_.load(std::memory_order_acquire) != 0 && refuses_after_fence();
  }

  // The consumer's side, once closed() was seen: the heavy fence, issued by the first caller
  // only. After it returns, every push either saw closed() or has its busy mark visible.
  void fence_once_closed() const noexcept {
    if (fenced_.load(std::memory_order_acquire)) return;
    AsymmetricFence::heavy();
    fenced_.store(true, std::memory_order_release);
  }

 private:
  static constexpr std::uint8_t kClosedBit = 1;
  static constexpr std::uint8_t kFenceBit = 2;

  [[gnu::noinline]] bool refuses_after_fence() const noexcept {
    AsymmetricFence::fallback();
    return (word_.load(std::memory_order_acquire) & kClosedBit) != 0;
  }

  alignas(kCacheLine) std::atomic<std::uint8_t> word_{0};  // read by every push, written once
  mutable std::atomic<bool> fenced_{false};                // a consumer fenced since close()
};

}  // namespace buffered::detail
