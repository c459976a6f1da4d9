// The queue's lanes: which thread writes which, and what they hold together.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "block_pool.hpp"
#include "cache_line.hpp"
#include "close_flag.hpp"
#include "credit_pool.hpp"
#include "lane.hpp"
#include "lane_registry.hpp"
#include "spin_lock.hpp"

namespace buffered::detail {

// kExclusiveLanes lanes that producer threads each take for their own, one more (the shared
// lane) that threads beyond them write under a spin lock. A thread keeps its lane for as long as
// it lives (ThreadLanes gives it back at thread exit, with its unused credits), so each thread's
// events stay in one FIFO.
//
// Registration: a thread that takes a lane increments `active_` (seq_cst) and then calls the
// lane listener, which wakes a consumer that armed for fewer lanes (it re-reads active() after
// it arms: see Worker and tests/model/parker.pml).
//
// Thread-safe: registration and the observers from any thread; never allocates after
// construction (the anchor), never throws after it.
template <class T>
class LaneSet {
 public:
  static constexpr unsigned kExclusiveLanes = 8;
  static constexpr unsigned kLanes = kExclusiveLanes + 1;
  static constexpr unsigned kSharedLane = kExclusiveLanes;
  using Snapshot = std::array<std::uint64_t, kLanes>;
  using Listener = void (*)(void* listener) noexcept;

  // Lane i starts in block i of `blocks`, its counts at `start`. Allocates the anchor.
  LaneSet(BlockPool<T>& blocks, CreditPool& slots, CreditPool& bytes, std::uint64_t start,
          Listener on_new_lane, void* listener, bool cacheable)
      : slots_(slots), bytes_(bytes), on_new_lane_(on_new_lane), listener_(listener) {
    for (unsigned i = 0; i < kLanes; ++i) lanes_[i].init(i, blocks.slot(i, 0), start);
    anchor_ = new LaneAnchor(this, &LaneSet::release);
    anchor_id_ = anchor_->id();
    fast_id_ = cacheable ? anchor_id_ : ~std::uint64_t{0};  // no thread's cache has id ~0
  }
  LaneSet(const LaneSet&) = delete;
  LaneSet& operator=(const LaneSet&) = delete;

  // Threads still registered keep only the (small) anchor alive. Destroys nothing queued.
  ~LaneSet() {
    anchor_->kill();
    anchor_->unref();
  }

  Lane<T>& operator[](unsigned i) noexcept { return lanes_[i]; }
  const Lane<T>& operator[](unsigned i) const noexcept { return lanes_[i]; }
  Lane<T>* begin() noexcept { return lanes_.data(); }
  Lane<T>* end() noexcept { return lanes_.data() + kLanes; }
  const Lane<T>* begin() const noexcept { return lanes_.data(); }
  const Lane<T>* end() const noexcept { return lanes_.data() + kLanes; }
  bool is_shared(const Lane<T>& lane) const noexcept { return &lane == &lanes_[kSharedLane]; }
  SpinLock& shared_lock() noexcept { return shared_lock_; }

  // ---- producers ----

  // The fast path: this thread's exclusive lane, if its one-entry cache holds it and the set
  // is cacheable. Two loads.
  [[gnu::always_inline]] bool cached(Lane<T>*& lane) const noexcept {
    const LaneCache& cache = lane_cache;
    lane = static_cast<Lane<T>*>(cache.lane);
    return cache.id == fast_id_;
  }

  // This thread's lane, registering it at its first push; nullptr once `closing` is closed,
  // unless the thread holds one already (its push then refuses).
  Lane<T>* of_thread(const CloseFlag& closing) noexcept {
    const LaneCache& cache = lane_cache;
    if (cache.id == anchor_id_) return static_cast<Lane<T>*>(cache.lane);
    if (closing.closed()) return nullptr;  // no lane is taken (or woken for) once closed
    return register_thread();
  }

  // Any thread: the shared lane has been written to (its reserve may need taking back).
  bool shared_used() const noexcept { return shared_used_.load(std::memory_order_relaxed); }

  // Lanes that producer threads hold now (the shared lane once it was used), at least 1.
  unsigned active() const noexcept { return std::max(1u, active_.load(std::memory_order_seq_cst)); }

  // In a forked child: new, free locks (a parent thread may have held them at the fork).
  void reset_locks_in_child() noexcept {
    shared_lock_.reset_in_child();
    anchor_->reset_lock_in_child();
  }

  // ---- what the lanes hold (any thread, lock-free) ----

  bool empty() const noexcept {
    return std::all_of(begin(), end(), [](const Lane<T>& l) { return l.empty(); });
  }
  // Consumer: some lane holds at least `n` events (n >= 1), or at least `bytes` bytes.
  bool any_reached(std::uint64_t n, std::uint64_t bytes, bool sized) const noexcept {
    return std::any_of(begin(), end(),
                       [&](const Lane<T>& l) { return l.reached(n, bytes, sized); });
  }
  // No push under way and nothing left (after the close flag's fence: see lane.hpp).
  bool idle() const noexcept {
    return std::none_of(begin(), end(), [](const Lane<T>& l) { return l.busy() || !l.empty(); });
  }
  // What each lane has published; whether the consumer has taken all that.
  void snapshot(Snapshot& s) const noexcept {
    for (unsigned i = 0; i < kLanes; ++i) s[i] = lanes_[i].published();
  }
  bool passed(const Snapshot& s) const noexcept {
    for (unsigned i = 0; i < kLanes; ++i) {
      if (lanes_[i].consumed() - s[i] > (std::uint64_t{1} << 62)) return false;
    }
    return true;
  }
  // Events published since `start`, and events not yet taken (at most `capacity`).
  std::uint64_t published_since(std::uint64_t start) const noexcept {
    std::uint64_t n = 0;
    for (const Lane<T>& lane : *this) n += lane.published() - start;
    return n;
  }
  std::uint64_t queued(std::uint64_t capacity) const noexcept {
    std::uint64_t n = 0;
    for (const Lane<T>& lane : *this) {
      const std::uint64_t p = lane.published();
      const std::uint64_t c = lane.consumed();
      if (p - c <= capacity) n += p - c;  // c read later may be past p: then nothing is queued
    }
    return std::min(n, capacity);
  }
  std::uint64_t queued_bytes() const noexcept {
    std::uint64_t n = 0;
    for (const Lane<T>& lane : *this) n += lane.queued_bytes_seen();
    return n;
  }

 private:
  // The thread's lane: the one it holds, else a free exclusive lane, else the shared lane. A
  // thread that may have events in the shared lane without a record of it (it wrote here while
  // it held records for kMaxEntries other live queues) takes a lane of its own only once the
  // shared lane is empty, so its later events cannot overtake them.
  [[gnu::noinline]] Lane<T>* register_thread() noexcept {
    ThreadLanes& mine = thread_lanes;
    unsigned index = mine.find(anchor_id_);
    if (index == ThreadLanes::kNotFound) {
      index = kSharedLane;
      if (!mine.has_room()) {
        mine.spill();
      } else if (!mine.spilled() || lanes_[kSharedLane].empty()) {
        for (unsigned i = 0; i < kExclusiveLanes && index == kSharedLane; ++i) {
          if (lanes_[i].try_own()) index = i;
        }
        mine.add(*anchor_, index);
      }
      const bool grew =
          index != kSharedLane || (!shared_used_.load(std::memory_order_relaxed) &&
                                   !shared_used_.exchange(true, std::memory_order_relaxed));
      if (grew) {
        active_.fetch_add(1, std::memory_order_seq_cst);
        if (on_new_lane_ != nullptr) on_new_lane_(listener_);
      }
    }
    Lane<T>* lane = &lanes_[index];
    if (index != kSharedLane) lane_cache = LaneCache{anchor_id_, lane};
    return lane;
  }

  // A registered thread ended (called under the anchor's lock, so the set exists).
  static void release(void* self_ptr, unsigned index) noexcept {
    auto* self = static_cast<LaneSet*>(self_ptr);
    if (index == kSharedLane) return;
    Lane<T>& lane = self->lanes_[index];
    lane.give_back_slots(self->slots_);
    lane.byte_reserve().reclaim(self->bytes_);
    self->active_.fetch_sub(1, std::memory_order_relaxed);
    lane.disown();
  }

  CreditPool& slots_;
  CreditPool& bytes_;
  const Listener on_new_lane_;
  void* const listener_;
  LaneAnchor* anchor_ = nullptr;
  std::uint64_t anchor_id_ = 0;
  std::uint64_t fast_id_ = 0;  // what cached() matches: never, unless cacheable
  std::array<Lane<T>, kLanes> lanes_;
  alignas(kCacheLine) std::atomic<unsigned> active_{0};
  std::atomic<bool> shared_used_{false};
  SpinLock shared_lock_;
};

}  // namespace buffered::detail
