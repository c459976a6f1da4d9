// One producer's lane: a single-producer queue of blocks, with its credits and its busy mark.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <utility>

#include "asymmetric_fence.hpp"
#include "block_pool.hpp"
#include "cache_line.hpp"
#include "close_flag.hpp"
#include "credit_pool.hpp"
#include "test_hooks.hpp"

namespace buffered::detail {

// too_large is the caller's own check (an element larger than a byte bound).
enum class PushResult { ok, full, closed, too_large };

// The consumer's byte budget for one pop (max_batch_bytes): elements are taken while their sizes
// fit in `left`; `stopped` says the next one did not.
struct ByteBudget {
  std::uint64_t left = 0;
  bool stopped = false;
};

// What a lane takes from when it runs out: blocks, slot credits and (byte_bound) byte credits.
template <class T>
struct LaneSupply {
  BlockPool<T>& blocks;
  CreditPool& slots;
  CreditPool& bytes;
  std::uint64_t slot_chunk;
  std::uint64_t byte_chunk;
  bool byte_bound;
};

// A lane has one producer at a time (its thread, or whoever holds the shared lane's lock) and
// one consumer (the worker, or an evictor under the queue's head lock). The producer writes only
// its own cache line and publishes a count; the consumer writes only its own line. A push is
// plain stores: no counter shared between producers, no locked instruction (one uncontended CAS
// for the bytes of a sized push).
//
// Memory ordering:
// - A push constructs the element, then stores `published_` with release; the consumer loads
//   it with acquire before it moves elements out. Sizes are stored before `published_`.
// - The busy mark, and why close() needs no fence on this path (a full fence per event would
//   cost more than the rest of the push): a push stores busy_ = true, then runs
//   AsymmetricFence::light(), then loads the close flag, and clears busy_ when it is done. The
//   consumer that saw the flag set issues the heavy fence (CloseFlag::fence_once_closed) before
//   it reads the busy marks. The asymmetric pair is the store-buffering pattern: either the push
//   sees the flag and refuses, or the consumer sees its busy mark (or its published count). So
//   ShardedQueue::drained() never returns true while a push that will succeed is under way; in
//   fenced mode the flag's kFenceBit sends the push through the fallback fence first. Nothing
//   in this rests on time (tests/model/lane.pml).
//
// Thread safety as above; never allocates (blocks come from the pool); never throws.
template <class T>
class Lane {
 public:
  Lane() noexcept {
    static_assert(offsetof(Lane, busy_) - offsetof(Lane, published_) == kCacheLine,
                  "the consumer polls published_ alone on its line");
    static_assert(offsetof(Lane, consumed_) - offsetof(Lane, busy_) == kCacheLine,
                  "the producer's own fields must fit one cache line");
    static_assert(offsetof(Lane, owned_) - offsetof(Lane, consumed_) == kCacheLine,
                  "the consumer's fields must fit one cache line");
    static_assert(sizeof(Lane) == 4 * kCacheLine, "a lane is four lines, no more");
  }
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  // Construction only: the lane's first block, and where its counts start (the consumer's
  // initial position, so the wrap test covers both).
  void init(std::size_t block, T* first, std::uint64_t start) noexcept {
    tail_block_ = head_block_ = block;
    tail_ = first;
    published_.store(start, std::memory_order_relaxed);
    pushed_ = start;
    consumed_.store(start, std::memory_order_relaxed);
  }

  // ---- the producer ----

  // Constructs T from `args` at the back; with kSized it also counts `bytes` against the byte
  // bound. Refused `closed` once the flag is set, `full` when the credits (or bytes) are out.
  template <bool kSized, class... Args>
  [[gnu::always_inline]] PushResult push(const CloseFlag& closing, LaneSupply<T>& supply,
                                         std::uint64_t bytes, Args&&... args) noexcept {
    busy_.store(true, std::memory_order_relaxed);  // see "Memory ordering"
    AsymmetricFence::light();
    if (closing.refuses_push()) [[unlikely]] {
      busy_.store(false, std::memory_order_relaxed);
      return PushResult::closed;
    }
    if (room_ == 0 && !refill(supply)) [[unlikely]] {
      busy_.store(false, std::memory_order_relaxed);
      return PushResult::full;
    }
    if constexpr (kSized) {
      if (supply.byte_bound && !bytes_.spend(bytes, supply.bytes, supply.byte_chunk)) {
        give_back_slots(supply.slots);  // a lane refused for bytes holds no slot either
        busy_.store(false, std::memory_order_relaxed);
        return PushResult::full;
      }
    }
    test_hooks::on_before_publish(pushed_);
    T* const at = tail_;
    ::new (static_cast<void*>(at)) T(std::forward<Args>(args)...);
    tail_ = at + 1;
    --room_;
    if constexpr (kSized) {
      supply.blocks.size_of(at) = bytes;
      pushed_bytes_ += bytes;
      published_bytes_.store(pushed_bytes_, std::memory_order_relaxed);  // see `published_`
    }
    published_.store(++pushed_, std::memory_order_release);
    busy_.store(false, std::memory_order_release);
    return PushResult::ok;
  }

  // The unused slot credits go back to the pool (a refused or ending lane). Producer (or under
  // the shared lane's lock, or after the producer thread ended).
  [[gnu::noinline]] void give_back_slots(CreditPool& slots) noexcept {
    slots.give(credits_ + room_);
    credits_ = 0;
    room_ = 0;
  }
  bool holds_slots() const noexcept { return credits_ + room_ != 0; }

  // The lane's unspent byte credits: any thread may take them back.
  SharedReserve& byte_reserve() noexcept { return bytes_; }

  // An eviction freed a slot for this lane's producer: it keeps one if it has none.
  bool keep_freed_slot() noexcept {
    if (room_ != 0 || credits_ != 0) return false;
    credits_ = 1;
    return true;
  }

  // Registration (exclusive lanes): one thread at a time holds the lane.
  bool try_own() noexcept {
    return !owned_.load(std::memory_order_relaxed) &&
           !owned_.exchange(true, std::memory_order_acquire);
  }
  void disown() noexcept { owned_.store(false, std::memory_order_release); }

  // ---- the consumer ----
  // Moves up to `max` elements out as contiguous runs, `take(first, n)`, destroys them, adds
  // their sizes (sized) to `bytes`, and frees the blocks it leaves. With a `budget` it stops
  // before the first element whose size does not fit in what is left of it.
  template <class Take>
  std::size_t pop(std::size_t max, Take& take, ByteBudget* budget, std::uint64_t& bytes,
                  BlockPool<T>& blocks, bool sized) noexcept {
    const std::uint64_t end = published_.load(std::memory_order_acquire);
    const std::uint64_t c = consumed_.load(std::memory_order_relaxed);
    std::uint64_t n = std::min<std::uint64_t>(end - c, max);
    std::uint64_t lane_bytes = 0;
    const std::size_t block = blocks.block_size();
    for (std::uint64_t done = 0; done < n;) {
      if (head_index_ == block) {
        const std::size_t next = blocks.next(head_block_);
        blocks.release(head_block_);
        head_block_ = next;
        head_index_ = 0;
      }
      std::size_t run =
          static_cast<std::size_t>(std::min<std::uint64_t>(n - done, block - head_index_));
      T* first = blocks.slot(head_block_, head_index_);
      if (sized) {
        run = measure(blocks.size_at(head_block_, head_index_), run, budget, lane_bytes);
        if (run == 0) {
          n = done;
          break;
        }
        if (budget != nullptr && budget->stopped) n = done + run;
      }
      take(first, run);
      std::destroy_n(first, run);
      head_index_ += run;
      done += run;
    }
    if (n != 0) {
      if (sized) {
        consumed_bytes_.store(consumed_bytes_.load(std::memory_order_relaxed) + lane_bytes,
                              std::memory_order_relaxed);
        bytes += lane_bytes;
      }
      consumed_.store(c + n, std::memory_order_release);
    }
    return static_cast<std::size_t>(n);
  }

  // Destroys what is still queued (the queue's destructor; nothing else runs).
  void destroy_queued(BlockPool<T>& blocks) noexcept {
    const std::uint64_t end = published_.load(std::memory_order_acquire);
    for (std::uint64_t c = consumed_.load(std::memory_order_relaxed); c != end; ++c) {
      if (head_index_ == blocks.block_size()) {
        head_block_ = blocks.next(head_block_);
        head_index_ = 0;
      }
      blocks.slot(head_block_, head_index_++)->~T();
    }
  }

  // ---- observers (any thread) ----
  std::uint64_t published() const noexcept { return published_.load(std::memory_order_acquire); }
  std::uint64_t consumed() const noexcept { return consumed_.load(std::memory_order_acquire); }
  std::uint64_t queued() const noexcept {  // relaxed: a hint, for wake-ups
    return published_.load(std::memory_order_relaxed) - consumed_.load(std::memory_order_relaxed);
  }
  std::uint64_t queued_bytes() const noexcept {
    return published_bytes_.load(std::memory_order_relaxed) -
           consumed_bytes_.load(std::memory_order_relaxed);
  }
  // Published read first, so a consumed count equal to it covers every push seen.
  bool empty() const noexcept {
    const std::uint64_t p = published();
    return consumed() == p;
  }
  // Consumer: the lane holds at least `n` events, or (sized) at least `bytes` bytes.
  bool reached(std::uint64_t n, std::uint64_t bytes, bool sized) const noexcept {
    if (published() - consumed_.load(std::memory_order_relaxed) >= n) return true;
    return sized && published_bytes_.load(std::memory_order_acquire) -
                            consumed_bytes_.load(std::memory_order_relaxed) >=
                        bytes;
  }
  std::uint64_t queued_bytes_seen() const noexcept {  // 0 if a later consumed count passed it
    const std::uint64_t p = published_bytes_.load(std::memory_order_acquire);
    const std::uint64_t c = consumed_bytes_.load(std::memory_order_acquire);
    return c <= p ? p - c : 0;
  }
  bool busy() const noexcept { return busy_.load(std::memory_order_acquire); }

 private:
  // Takes slot credits (a chunk, or what is left) and a new block, whichever the lane lacks,
  // and sets `room_` to the pushes both allow.
  [[gnu::noinline]] bool refill(LaneSupply<T>& supply) noexcept {
    if (credits_ == 0) {
      credits_ = supply.slots.take(1, supply.slot_chunk);
      if (credits_ == 0) return false;
    }
    if (tail_ == supply.blocks.end_of(tail_block_)) {
      std::size_t b = 0;
      if (!supply.blocks.acquire(b)) return false;  // not reached: see ShardedQueue's memory
      supply.blocks.link(tail_block_, b);           // published with `published_`
      tail_block_ = b;
      tail_ = supply.blocks.slot(b, 0);
    }
    const auto space = static_cast<std::uint64_t>(supply.blocks.end_of(tail_block_) - tail_);
    room_ = static_cast<std::size_t>(std::min(credits_, space));
    credits_ -= room_;
    return true;
  }

  // How many of the `run` sizes at `size` to take: all, or those before the first that does not
  // fit in the budget (which is then `stopped`). Adds them to `total`.
  static std::size_t measure(const std::uint64_t* size, std::size_t run, ByteBudget* budget,
                             std::uint64_t& total) noexcept {
    for (std::size_t i = 0; i < run; ++i) {
      if (budget != nullptr) {
        if (size[i] > budget->left) {
          budget->stopped = true;
          return i;
        }
        budget->left -= size[i];
      }
      total += size[i];
    }
    return run;
  }

  // The line the consumer polls; the producer only stores to it.
  alignas(kCacheLine) std::atomic<std::uint64_t> published_{0};  // events pushed
  std::atomic<std::uint64_t> published_bytes_{0};  // their sizes (sized), stored before it
  // The producer's own line (only busy_ is read from elsewhere, by drained()).
  alignas(kCacheLine) std::atomic<bool> busy_{false};  // a push is under way
  std::uint64_t pushed_ = 0;                           // what published_ says
  T* tail_ = nullptr;     // where the next element goes (in tail_block_)
  std::size_t room_ = 0;  // pushes before the next refill(): credits that fit the block
  std::size_t tail_block_ = 0;
  std::uint64_t credits_ = 0;       // reserved from the slot pool, beyond room_
  std::uint64_t pushed_bytes_ = 0;  // what published_bytes_ says
  SharedReserve bytes_;             // byte credits reserved, unspent
  // The consumer's line.
  alignas(kCacheLine) std::atomic<std::uint64_t> consumed_{0};
  std::atomic<std::uint64_t> consumed_bytes_{0};
  std::size_t head_block_ = 0;
  std::size_t head_index_ = 0;
  // Who holds the lane (exclusive lanes).
  alignas(kCacheLine) std::atomic<bool> owned_{false};
};

}  // namespace buffered::detail
