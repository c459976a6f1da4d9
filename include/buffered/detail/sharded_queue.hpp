// The buffer: one lane per producer thread, a shared bound on what all lanes hold, one consumer.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <new>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "cache_line.hpp"
#include "deadline.hpp"
#include "lane_registry.hpp"
#include "test_hooks.hpp"

namespace buffered::detail {

enum class PushResult { ok, full, closed };

// A lock held for a few instructions (the free-block list, the shared lane). Never throws:
// it spins briefly, then yields, so a holder that was pre-empted costs little.
class SpinLock {
 public:
  void lock() noexcept {
    for (int i = 0; flag_.test_and_set(std::memory_order_acquire); ++i) {
      if (i < 64) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }
  void unlock() noexcept { flag_.clear(std::memory_order_release); }

 private:
  std::atomic_flag flag_;  // clear (C++20)
};

// Producer threads each get a lane of their own (kExclusiveLanes of them; threads beyond that
// share one more lane under a spin lock). A lane is a single-producer queue of fixed-size blocks
// taken from a pool the constructor allocates, so a producer's push is plain stores to memory no
// other producer writes: no claim counter shared between producers, no locked instruction.
//
// The bound. `capacity` credits exist; a lane takes them from the shared pool in chunks of up to
// `chunk()` (one atomic operation per chunk) and spends one per event; the consumer returns them
// as it takes events. So the queue never holds more than `capacity` events. With one producer
// thread it refuses exactly when it holds `capacity`; with several, a producer may be refused
// while other lanes hold up to chunk() - 1 credits each that they have not used yet
// (chunk() <= capacity / 72, so at most 1/8 of the capacity in all). A thread that ends gives
// its lane and its unused credits back.
//
// Order. Each lane is FIFO and a thread always writes to the same lane (see ThreadLanes), so
// the consumer takes each producer thread's events in the order it pushed them. Between lanes
// it goes round-robin: there is no order across producer threads.
//
// Memory: capacity + (3 * kLanes + 1) * block() slots, block() <= capacity / 108 + 1.
//
// Memory ordering:
// - A push constructs the element, then stores the lane's `published` count with release; the
//   consumer loads it with acquire before moving elements out. A block is linked (`next_`)
//   before the count that reaches into it is published.
// - Blocks and credits go back through the spin lock and the acq_rel pool: the destruction of
//   an element happens-before the construction of the next one in its slot.
// - Closing and parking need the other side's store to be seen without a locked instruction on
//   the producer's path (a full fence per event costs more than the rest of the push). A push
//   marks its lane `busy` before it checks `closed_`, and clears it when done (`busy` is on the
//   producer's own line; only drained() reads it from elsewhere); close() stores `closed_`, and
//   drained() reads the busy marks only once kStoreVisibility has passed since then. A push
//   whose busy mark drained() misses started after the store of `closed_` became visible, so
//   that push sees `closed_` and refuses. The reasoning needs only that a store becomes visible to
//   other threads within kStoreVisibility (1 ms): the C++ memory model asks this of implementations
//   ([atomics.order] "within a reasonable amount of time"); hardware does it in nanoseconds,
//   and a pre-empted thread's stores are flushed when it is switched out. Parker relies on the
//   same bound (the worker re-checks once, kStoreVisibility after it arms).
template <class T>
class ShardedQueue {
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "ShardedQueue<T>: T must be nothrow move-constructible");
  static_assert(std::is_nothrow_destructible_v<T>,
                "ShardedQueue<T>: T must be nothrow destructible");

  struct Lane;

 public:
  static constexpr unsigned kExclusiveLanes = 8;
  static constexpr unsigned kLanes = kExclusiveLanes + 1;
  static constexpr unsigned kSharedLane = kExclusiveLanes;
  static constexpr std::chrono::milliseconds kStoreVisibility{1};
  using LaneHandle = const Lane*;
  using Snapshot = std::array<std::uint64_t, kLanes>;

  // Allocates every block and the lane anchor (std::bad_alloc reaches the caller). Not
  // thread-safe (construction). `initial_position` is where consumer positions start (tests
  // start it near the wrap).
  explicit ShardedQueue(std::size_t capacity, std::uint64_t initial_position = 0)
      : capacity_(capacity),
        block_(std::clamp<std::size_t>(capacity / (12 * kLanes), 1, 256)),
        chunk_(std::clamp<std::size_t>(capacity / (8 * kLanes), 1, 256)),
        blocks_((capacity + block_ - 1) / block_ + 3 * kLanes + 1),
        initial_position_(initial_position),
        position_(initial_position) {
    if (capacity == 0 || capacity > (std::size_t{1} << 40)) {
      throw std::invalid_argument("ShardedQueue: capacity must be in [1, 2^40]");
    }
    slots_.reset(new Slot[blocks_ * block_]);  // not zeroed: pages are touched as lanes fill
    next_ = std::make_unique<std::atomic<std::size_t>[]>(blocks_);
    free_.reserve(blocks_);
    for (std::size_t b = blocks_; b-- > kLanes;) free_.push_back(b);
    for (unsigned i = 0; i < kLanes; ++i) {
      lanes_[i].tail_block = lanes_[i].head_block = i;
      lanes_[i].tail = slot(i, 0);
      // Lane counts start where consumer positions do, so the wrap test covers both.
      lanes_[i].published.store(initial_position, std::memory_order_relaxed);
      lanes_[i].pushed = initial_position;
      lanes_[i].consumed.store(initial_position, std::memory_order_relaxed);
    }
    credits_.store(static_cast<std::int64_t>(capacity), std::memory_order_relaxed);
    anchor_ = new LaneAnchor(this, &ShardedQueue::release_lane);
    anchor_id_ = anchor_->id();
  }

  ShardedQueue(const ShardedQueue&) = delete;
  ShardedQueue& operator=(const ShardedQueue&) = delete;

  // Destroys the elements still queued. Not thread-safe: no push or pop may be running.
  // Threads still registered keep only the (small) anchor alive.
  ~ShardedQueue() {
    anchor_->kill();
    anchor_->unref();
    for (Lane& lane : lanes_) {
      const std::uint64_t end = lane.published.load(std::memory_order_acquire);
      for (std::uint64_t c = lane.consumed.load(std::memory_order_relaxed); c != end; ++c) {
        if (lane.head_index == block_) {
          lane.head_block = next_[lane.head_block].load(std::memory_order_relaxed);
          lane.head_index = 0;
        }
        slot(lane.head_block, lane.head_index++)->~T();
      }
    }
  }

  // Producer. Thread-safe; never blocks (but for the shared lane's spin lock, held for one push
  // by another thread), never allocates, never throws. Constructs T from `args` at the back of
  // this thread's lane; `lane` receives the lane (for queued()). Constructing from `args` must
  // not throw: copy before calling when a copy can throw. The first push of a thread registers
  // it (no allocation: see ThreadLanes).
  template <class... Args>
  [[gnu::always_inline]] PushResult try_emplace(LaneHandle& lane_out, Args&&... args) noexcept {
    static_assert(std::is_nothrow_constructible_v<T, Args&&...>,
                  "ShardedQueue::try_emplace: construct the element before pushing it when its "
                  "constructor can throw");
    const LaneCache& cache = lane_cache;
    if (cache.id == anchor_id_) [[likely]] {  // only exclusive lanes are cached
      Lane* lane = static_cast<Lane*>(cache.lane);
      lane_out = lane;
      return push(*lane, std::forward<Args>(args)...);
    }
    return try_emplace_slow(lane_out, std::forward<Args>(args)...);
  }

  // Any thread: events in `lane` not yet taken by the consumer.
  std::uint64_t queued(LaneHandle lane) const noexcept {
    return lane->published.load(std::memory_order_relaxed) -
           lane->consumed.load(std::memory_order_relaxed);
  }

  // Any thread: whether a refused producer may try again (credits are back, or it is closed).
  bool has_space() const noexcept { return credits_.load(std::memory_order_seq_cst) > 0; }

  // Any thread, idempotent. Refuses every push that starts after it returns; pushes under way
  // may still complete (drained() waits for them).
  void close() noexcept {
    bool expected = false;
    if (closed_.compare_exchange_strong(expected, true, std::memory_order_seq_cst)) {
      closed_at_.store(SteadyClock::now().time_since_epoch().count(), std::memory_order_release);
    }
  }
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }

  // Consumer only (one thread at a time; callers serialize). Moves up to `max` elements into
  // `out(T&&)`, visiting the lanes round-robin, and returns how many. Never blocks or allocates
  // (`out` aside); `out` must not throw.
  template <class Out>
  std::size_t pop(std::size_t max, Out&& out) noexcept {
    return pop_runs(max, [&out](T* first, std::size_t n) {
      for (std::size_t i = 0; i < n; ++i) out(std::move(first[i]));
    });
  }

  // Consumer only, as pop(): appends up to `max` elements to `batch`, each contiguous run at
  // once (one memmove when T is trivially copyable). `batch` must have room for them reserved, so
  // this never allocates.
  template <class Vector>
  std::size_t pop_into(std::size_t max, Vector& batch) noexcept {
    return pop_runs(max, [&batch](T* first, std::size_t n) {
      if constexpr (std::is_trivially_copyable_v<T>) {
        batch.insert(batch.end(), first, first + n);  // one memmove
      } else {
        for (std::size_t i = 0; i < n; ++i) batch.push_back(std::move(first[i]));
      }
    });
  }

  // Consumer only: moves up to `max` elements out as contiguous runs, `take(first, n)`, then
  // destroys them.
  template <class Take>
  std::size_t pop_runs(std::size_t max, Take&& take) noexcept {
    std::size_t total = 0;
    for (unsigned k = 0; k < kLanes && total < max; ++k) {
      total += pop_lane(lanes_[(start_lane_ + k) % kLanes], max - total, take);
    }
    start_lane_ = (start_lane_ + 1) % kLanes;
    if (total != 0) {
      position_.store(position_.load(std::memory_order_relaxed) + total, std::memory_order_release);
      credits_.fetch_add(static_cast<std::int64_t>(total), std::memory_order_seq_cst);
    }
    return total;
  }

  // Any thread: events taken by the consumer so far, counted from initial_position().
  std::uint64_t position() const noexcept { return position_.load(std::memory_order_acquire); }
  std::uint64_t initial_position() const noexcept { return initial_position_; }

  // Consumer: some lane holds at least `n` events (n >= 1).
  bool any_reached(std::uint64_t n) const noexcept {
    for (const Lane& lane : lanes_) {
      if (lane.published.load(std::memory_order_acquire) -
              lane.consumed.load(std::memory_order_relaxed) >=
          n) {
        return true;
      }
    }
    return false;
  }

  // Any thread: lanes that producer threads hold now (the shared lane once it was used).
  unsigned active_lanes() const noexcept {
    return std::max(1u, active_.load(std::memory_order_relaxed));
  }

  // Any thread: what each lane has published, and whether the consumer has taken all that.
  void snapshot(Snapshot& s) const noexcept {
    for (unsigned i = 0; i < kLanes; ++i) {
      s[i] = lanes_[i].published.load(std::memory_order_acquire);
    }
  }
  bool passed(const Snapshot& s) const noexcept {
    for (unsigned i = 0; i < kLanes; ++i) {
      if (lanes_[i].consumed.load(std::memory_order_acquire) - s[i] > (std::uint64_t{1} << 62))
        return false;
    }
    return true;
  }

  // Consumer (or after close() from any thread): closed, no push still under way, and nothing
  // left. Once true it stays true.
  bool drained() const noexcept {
    if (!closed()) return false;
    const auto since =
        SteadyClock::now().time_since_epoch().count() - closed_at_.load(std::memory_order_acquire);
    if (since < std::chrono::duration_cast<SteadyClock::duration>(kStoreVisibility).count()) {
      return false;
    }
    for (const Lane& lane : lanes_) {
      if (lane.busy.load(std::memory_order_acquire)) return false;
      const std::uint64_t p = lane.published.load(std::memory_order_acquire);
      if (p != lane.consumed.load(std::memory_order_acquire)) return false;
    }
    return true;
  }

  // Any thread: events pushed so far (the `accepted` count), and events not yet taken.
  std::uint64_t pushed() const noexcept {
    std::uint64_t n = 0;
    for (const Lane& lane : lanes_) {
      n += lane.published.load(std::memory_order_acquire) - initial_position_;
    }
    return n;
  }
  std::size_t size() const noexcept {
    std::uint64_t n = 0;
    for (const Lane& lane : lanes_) {
      const std::uint64_t p = lane.published.load(std::memory_order_acquire);
      const std::uint64_t c = lane.consumed.load(std::memory_order_acquire);
      if (p - c <= capacity_) n += p - c;  // c read later may be past p: then nothing is queued
    }
    return static_cast<std::size_t>(std::min<std::uint64_t>(n, capacity_));
  }

  std::size_t chunk() const noexcept { return chunk_; }

 private:
  struct Slot {
    alignas(T) unsigned char storage[sizeof(T)];
  };

  struct Lane {
    // The line the consumer polls; the producer only stores to it.
    alignas(kCacheLine) std::atomic<std::uint64_t> published{0};  // events pushed
    // The producer's own line (the owner's, or guarded by shared_ for the shared lane); only
    // drained() looks at `busy` from elsewhere.
    alignas(kCacheLine) std::atomic<bool> busy{false};  // a push is under way
    std::uint64_t pushed = 0;                           // what `published` says
    T* tail = nullptr;     // where the next element goes (in tail_block)
    std::size_t room = 0;  // pushes before the next refill(): credits that fit the block
    std::size_t tail_block = 0;
    std::uint64_t credits = 0;  // reserved from the pool, beyond `room`
    // The consumer's line.
    alignas(kCacheLine) std::atomic<std::uint64_t> consumed{0};
    std::size_t head_block = 0;
    std::size_t head_index = 0;
    // Who holds the lane (exclusive lanes).
    alignas(kCacheLine) std::atomic<bool> owned{false};
  };

  T* slot(std::size_t block, std::size_t index) noexcept {
    return std::launder(reinterpret_cast<T*>(slots_[block * block_ + index].storage));
  }

  template <class... Args>
  [[gnu::always_inline]] PushResult push(Lane& lane, Args&&... args) noexcept {
    lane.busy.store(true, std::memory_order_relaxed);  // see "Memory ordering"
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (closed_.load(std::memory_order_acquire)) [[unlikely]] {
      lane.busy.store(false, std::memory_order_relaxed);
      return PushResult::closed;
    }
    if (lane.room == 0 && !refill(lane)) [[unlikely]] {
      lane.busy.store(false, std::memory_order_relaxed);
      return PushResult::full;
    }
    test_hooks::on_claimed(lane.pushed);
    T* const at = lane.tail;
    ::new (static_cast<void*>(at)) T(std::forward<Args>(args)...);
    lane.tail = at + 1;
    --lane.room;
    lane.published.store(++lane.pushed, std::memory_order_release);
    lane.busy.store(false, std::memory_order_release);
    return PushResult::ok;
  }

  // The first push of a thread, and every push to the shared lane.
  template <class... Args>
  [[gnu::noinline]] PushResult try_emplace_slow(LaneHandle& lane_out, Args&&... args) noexcept {
    Lane* lane = register_thread();
    lane_out = lane;
    if (lane != &lanes_[kSharedLane]) return push(*lane, std::forward<Args>(args)...);
    shared_.lock();
    const PushResult result = push(*lane, std::forward<Args>(args)...);
    shared_.unlock();
    return result;
  }

  // Takes credits (a chunk, or what is left) and a new block, whichever the lane lacks, and
  // sets `room` to the pushes both allow.
  [[gnu::noinline]] bool refill(Lane& lane) noexcept {
    if (lane.credits == 0) {
      std::int64_t available = credits_.load(std::memory_order_relaxed);
      std::int64_t take = 0;
      do {
        if (available <= 0) return false;
        take = std::min<std::int64_t>(available, static_cast<std::int64_t>(chunk_));
      } while (!credits_.compare_exchange_weak(
          available, available - take, std::memory_order_seq_cst, std::memory_order_relaxed));
      lane.credits = static_cast<std::uint64_t>(take);
    }
    if (lane.tail == slot(lane.tail_block, 0) + block_) {
      std::size_t b = 0;
      free_lock_.lock();
      const bool got = !free_.empty();
      if (got) {
        b = free_.back();
        free_.pop_back();
      }
      free_lock_.unlock();
      if (!got) return false;  // not reached: blocks_ covers every lane's worst case
      next_[lane.tail_block].store(b, std::memory_order_relaxed);  // published with `published`
      lane.tail_block = b;
      lane.tail = slot(b, 0);
    }
    const auto space = static_cast<std::uint64_t>(slot(lane.tail_block, 0) + block_ - lane.tail);
    lane.room = static_cast<std::size_t>(std::min(lane.credits, space));
    lane.credits -= lane.room;
    return true;
  }

  template <class Take>
  std::size_t pop_lane(Lane& lane, std::size_t max, Take& take) noexcept {
    const std::uint64_t end = lane.published.load(std::memory_order_acquire);
    const std::uint64_t c = lane.consumed.load(std::memory_order_relaxed);
    const std::uint64_t n = std::min<std::uint64_t>(end - c, max);
    for (std::uint64_t done = 0; done < n;) {
      if (lane.head_index == block_) {
        const std::size_t next = next_[lane.head_block].load(std::memory_order_relaxed);
        free_lock_.lock();
        free_.push_back(lane.head_block);  // reserved for every block: never allocates
        free_lock_.unlock();
        lane.head_block = next;
        lane.head_index = 0;
      }
      const std::size_t run =
          static_cast<std::size_t>(std::min<std::uint64_t>(n - done, block_ - lane.head_index));
      T* first = slot(lane.head_block, lane.head_index);
      take(first, run);
      std::destroy_n(first, run);
      lane.head_index += run;
      done += run;
    }
    if (n != 0) lane.consumed.store(c + n, std::memory_order_release);
    return static_cast<std::size_t>(n);
  }

  [[gnu::noinline]] Lane* register_thread() noexcept {
    ThreadLanes& mine = thread_lanes();
    unsigned index = mine.find(anchor_id_);
    if (index == ThreadLanes::kNotFound) {
      index = kSharedLane;
      if (mine.has_room()) {
        for (unsigned i = 0; i < kExclusiveLanes; ++i) {
          if (!lanes_[i].owned.load(std::memory_order_relaxed) &&
              !lanes_[i].owned.exchange(true, std::memory_order_acquire)) {
            index = i;
            active_.fetch_add(1, std::memory_order_relaxed);
            break;
          }
        }
        mine.add(*anchor_, index);
      }
      if (index == kSharedLane && !shared_used_.exchange(true, std::memory_order_relaxed)) {
        active_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    Lane* lane = &lanes_[index];
    if (index != kSharedLane) lane_cache = LaneCache{anchor_id_, lane};
    return lane;
  }

  // A registered thread ended (called under the anchor's lock, so the queue exists).
  static void release_lane(void* queue, unsigned index) noexcept {
    auto* self = static_cast<ShardedQueue*>(queue);
    if (index == kSharedLane) return;
    Lane& lane = self->lanes_[index];
    if (const std::uint64_t unused = lane.credits + lane.room; unused != 0) {
      self->credits_.fetch_add(static_cast<std::int64_t>(unused), std::memory_order_seq_cst);
      lane.credits = 0;
      lane.room = 0;
    }
    self->active_.fetch_sub(1, std::memory_order_relaxed);
    lane.owned.store(false, std::memory_order_release);
  }

  // Read-only after construction.
  const std::size_t capacity_;
  const std::size_t block_;
  const std::size_t chunk_;
  const std::size_t blocks_;
  const std::uint64_t initial_position_;
  std::unique_ptr<Slot[]> slots_;
  std::unique_ptr<std::atomic<std::size_t>[]> next_;
  LaneAnchor* anchor_ = nullptr;
  std::uint64_t anchor_id_ = 0;  // set in the constructor body, before any push

  std::array<Lane, kLanes> lanes_;

  // Read by every push, written once.
  alignas(kCacheLine) std::atomic<bool> closed_{false};
  std::atomic<SteadyClock::rep> closed_at_{0};

  alignas(kCacheLine) std::atomic<std::int64_t> credits_{0};
  alignas(kCacheLine) std::atomic<unsigned> active_{0};
  std::atomic<bool> shared_used_{false};
  SpinLock shared_;

  alignas(kCacheLine) SpinLock free_lock_;
  std::vector<std::size_t> free_;  // guarded by free_lock_; capacity for every block

  // The consumer's own.
  alignas(kCacheLine) std::atomic<std::uint64_t> position_;
  unsigned start_lane_ = 0;
};

}  // namespace buffered::detail
