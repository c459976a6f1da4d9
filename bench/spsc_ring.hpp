// Reference: the one-producer ceiling — a bare single-producer/single-consumer ring. No
// batching policy, no wake-ups (the consumer spins), no accounting: just the handoff.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace bench {

template <class T>
class SpscRing {
 public:
  explicit SpscRing(std::size_t capacity_pow2)
      : mask_(capacity_pow2 - 1), slots_(std::make_unique<T[]>(capacity_pow2)) {}

  bool try_push(const T& v) {
    const std::uint64_t t = tail_.load(std::memory_order_relaxed);
    if (t - cached_head_ > mask_) {
      cached_head_ = head_.load(std::memory_order_acquire);
      if (t - cached_head_ > mask_) return false;
    }
    slots_[t & mask_] = v;
    tail_.store(t + 1, std::memory_order_release);
    return true;
  }

  // Consumer: hands every available element to f, publishes head once.
  template <class F>
  std::size_t pop_all(F&& f, std::size_t max) {
    const std::uint64_t h = head_.load(std::memory_order_relaxed);
    if (h == cached_tail_) cached_tail_ = tail_.load(std::memory_order_acquire);
    std::uint64_t n = cached_tail_ - h;
    if (n > max) n = max;
    for (std::uint64_t i = 0; i < n; ++i) f(slots_[(h + i) & mask_]);
    head_.store(h + n, std::memory_order_release);
    return static_cast<std::size_t>(n);
  }

 private:
  alignas(128) std::atomic<std::uint64_t> tail_{0};
  std::uint64_t cached_head_ = 0;
  alignas(128) std::atomic<std::uint64_t> head_{0};
  std::uint64_t cached_tail_ = 0;
  alignas(128) const std::uint64_t mask_;
  std::unique_ptr<T[]> slots_;
};

}  // namespace bench
