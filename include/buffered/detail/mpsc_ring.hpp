// Bounded multi-producer / single-consumer ring (Vyukov / LMAX style) with an exact capacity.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "cache_line.hpp"
#include "position.hpp"
#include "test_hooks.hpp"

namespace buffered::detail {

enum class PushResult { ok, full, closed };

// Producers claim a position with a CAS on `tail_`, construct the element in its slot, then
// publish the slot by storing its sequence. The consumer takes runs of published slots and
// publishes `head_` once per run.
//
// Fullness is exact: a push is refused when `tail - head == capacity()`, where head counts slots
// the consumer has finished with. The slot array is a power of two (>= capacity) only so that a
// position maps to a slot with a mask.
//
// Closing sets bit 63 of `tail_`, so a producer's claim CAS fails once the ring is closed and the
// final tail is known exactly: no producer can claim after close() returns.
//
// Memory ordering:
// - A slot's contents are published by the release store of its sequence (position + 1) and
//   acquired by the consumer's load of it.
// - The consumer moves out and destroys elements, then stores `head_` (seq_cst, which includes
//   release). A producer learns head only through an acquire load of `head_` or of
//   `cached_head_` (itself stored with release after such a load), so the destruction of a
//   slot's previous element happens-before the construction of the next one in it.
// - The claim CAS and `head_` store are seq_cst because callers build Dekker-style wake-up
//   protocols on them (see Parker and SpaceWaiters).
template <class T>
class MpscRing {
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "MpscRing<T>: T must be nothrow move-constructible");
  static_assert(std::is_nothrow_destructible_v<T>, "MpscRing<T>: T must be nothrow destructible");

 public:
  // Allocates the slot array. Not thread-safe (construction). `initial_position` exists for
  // tests that start the counters near the wrap point.
  explicit MpscRing(std::size_t capacity, std::uint64_t initial_position = 0)
      : capacity_(capacity),
        mask_(std::bit_ceil(capacity) - 1),
        initial_position_(initial_position & kPositionMask) {
    if (capacity == 0 || capacity > (std::size_t{1} << 40)) {
      throw std::invalid_argument("MpscRing: capacity must be in [1, 2^40]");
    }
    slots_ = std::make_unique<Slot[]>(mask_ + 1);
    const std::uint64_t slot_count = mask_ + 1;
    for (std::uint64_t i = 0; i < slot_count; ++i) {
      // The position of the previous lap that maps to slot i, marked as published: never equal
      // to "published for the current lap", whatever the initial position.
      const std::uint64_t current =
          position_add(initial_position_, (i - initial_position_) & mask_);
      const std::uint64_t previous = (current - slot_count) & kPositionMask;
      slots_[i].sequence.store(position_add(previous, 1), std::memory_order_relaxed);
    }
    head_.store(initial_position_, std::memory_order_relaxed);
    tail_.store(initial_position_, std::memory_order_relaxed);
    cached_head_.store(initial_position_, std::memory_order_relaxed);
    consumer_head_ = initial_position_;
  }

  MpscRing(const MpscRing&) = delete;
  MpscRing& operator=(const MpscRing&) = delete;

  // Destroys elements still in the ring. Not thread-safe: no producer or consumer may be active.
  ~MpscRing() {
    const std::uint64_t end = tail();
    for (std::uint64_t p = consumer_head_; p != end; p = position_add(p, 1)) {
      Slot& slot = slots_[p & mask_];
      if (slot.sequence.load(std::memory_order_acquire) == position_add(p, 1)) slot.get()->~T();
    }
  }

  // Producer. Thread-safe, lock-free, never blocks, never allocates. Claims a position and
  // constructs T from `args` in it; `position` receives the claimed position. Constructing from
  // `args` must not throw: copy before calling when a copy can throw.
  template <class... Args>
  PushResult try_emplace(std::uint64_t& position, Args&&... args) noexcept {
    static_assert(std::is_nothrow_constructible_v<T, Args&&...>,
                  "MpscRing::try_emplace: construct the element before claiming a slot when its "
                  "constructor can throw");
    std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    for (;;) {
      if (tail & kClosedBit) return PushResult::closed;
      std::uint64_t head = cached_head_.load(std::memory_order_acquire);
      if (position_distance(head, tail) >= capacity_) {
        head = head_.load(std::memory_order_seq_cst);
        cached_head_.store(head, std::memory_order_release);
        if (position_distance(head, tail) >= capacity_) {
          // Full by a fresh head, unless our tail was stale (then head may even be past it).
          const std::uint64_t fresh = tail_.load(std::memory_order_relaxed);
          if (fresh == tail) return PushResult::full;
          tail = fresh;
          continue;
        }
      }
      if (tail_.compare_exchange_weak(tail, position_add(tail, 1), std::memory_order_seq_cst,
                                      std::memory_order_relaxed)) {
        break;
      }
    }
    test_hooks::on_claimed(tail);
    Slot& slot = slots_[tail & mask_];
    // Ask for a slot a few claims ahead in exclusive state now. Its line was last read by the
    // consumer, and the next claim's locked CAS must wait for this claim's stores to finish:
    // without the prefetch each claim would pay a cross-core ownership transfer in series.
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(&slots_[(tail + kPrefetchAhead) & mask_], 1);
#endif
    ::new (static_cast<void*>(slot.storage)) T(std::forward<Args>(args)...);
    slot.sequence.store(position_add(tail, 1), std::memory_order_release);
    position = tail;
    return PushResult::ok;
  }

  // Consumer only (one thread at a time; callers serialize). Moves up to `max` published
  // elements, in position order, into `out(T&&)`, stopping at the first unpublished slot, then
  // publishes the new head once. Returns how many were taken. Never blocks or allocates (`out`
  // aside); `out` must not throw.
  template <class Out>
  std::size_t pop_run(std::size_t max, Out&& out) noexcept {
    std::uint64_t head = consumer_head_;
    std::size_t n = 0;
    while (n < max) {
      Slot& slot = slots_[head & mask_];
      if (slot.sequence.load(std::memory_order_acquire) != position_add(head, 1)) break;
      T* element = slot.get();
      out(std::move(*element));
      element->~T();
      head = position_add(head, 1);
      ++n;
    }
    if (n != 0) {
      consumer_head_ = head;
      head_.store(head, std::memory_order_seq_cst);
    }
    return n;
  }

  // Consumer only: the next position to take.
  std::uint64_t consumer_head() const noexcept { return consumer_head_; }

  // Any thread. Positions claimed so far (the closed flag masked off); seq_cst load.
  std::uint64_t tail() const noexcept {
    return tail_.load(std::memory_order_seq_cst) & kPositionMask;
  }
  // Any thread. Positions the consumer has finished with; seq_cst load.
  std::uint64_t head() const noexcept { return head_.load(std::memory_order_seq_cst); }
  bool closed() const noexcept { return (tail_.load(std::memory_order_acquire) & kClosedBit) != 0; }
  // Any thread: claimed but not yet taken by the consumer (includes claims not yet published).
  // Tail is read first: head can only have moved forward since, so the result is never above
  // capacity(); if head passed that tail meanwhile, the distance wraps and the answer is 0.
  std::size_t size() const noexcept {
    const std::uint64_t t = tail();
    const std::uint64_t d = position_distance(head(), t);
    return d > capacity_ ? 0 : static_cast<std::size_t>(d);
  }
  bool looks_full() const noexcept {
    const std::uint64_t t = tail();
    return position_distance(head(), t) >= capacity_ && t == tail();
  }
  std::size_t capacity() const noexcept { return capacity_; }
  std::uint64_t initial_position() const noexcept { return initial_position_; }

  // Any thread, idempotent. Refuses every later claim and returns the final tail.
  std::uint64_t close() noexcept {
    return tail_.fetch_or(kClosedBit, std::memory_order_seq_cst) & kPositionMask;
  }

 private:
  static constexpr std::uint64_t kPrefetchAhead = 8;

  struct Slot {
    std::atomic<std::uint64_t> sequence{0};
    alignas(T) unsigned char storage[sizeof(T)];
    T* get() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
  };

  // Producers' line: the claim counter and their shared copy of head.
  alignas(kCacheLine) std::atomic<std::uint64_t> tail_{0};
  std::atomic<std::uint64_t> cached_head_{0};
  // Consumer's line.
  alignas(kCacheLine) std::atomic<std::uint64_t> head_{0};
  std::uint64_t consumer_head_ = 0;
  // Read-only after construction.
  alignas(kCacheLine) const std::size_t capacity_;
  const std::uint64_t mask_;
  const std::uint64_t initial_position_;
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace buffered::detail
