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
#include <optional>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "asymmetric_fence.hpp"
#include "cache_line.hpp"
#include "deadline.hpp"
#include "lane_registry.hpp"
#include "spin_wait.hpp"
#include "test_hooks.hpp"

namespace buffered::detail {

// too_large: the caller's own check. sized: a sized queue's try_emplace, which takes nothing:
// use try_emplace_sized.
enum class PushResult { ok, full, closed, too_large, sized };

// What a queue counts besides events (BatchConfig's byte bounds and drop_oldest).
struct QueueOptions {
  std::size_t max_bytes =
      0;                  // 0: no byte bound; else the queued elements' sizes sum to at most this
  bool sized = false;     // elements carry a byte size (push_sized; needed by max_bytes)
  bool evicting = false;  // evict_oldest() may run beside the consumer
  // Called on the producer's thread each time a thread takes a lane (after active_lanes() has
  // grown): the backend wakes a consumer that armed for fewer lanes. Must not throw.
  void (*on_new_lane)(void* listener) noexcept = nullptr;
  void* listener = nullptr;
};

// The consumer's byte budget for one pop (max_batch_bytes): elements are taken while their sizes
// fit in `left`; `stopped` says the next one did not.
struct ByteBudget {
  std::uint64_t left = 0;
  bool stopped = false;
};

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
// while other lanes hold up to chunk() - 1 credits each that they have not used yet: it is
// refused only once the queue holds capacity - 8 * (chunk() - 1) (chunk() <= capacity / 72, so
// less than 1/8 of the capacity; exact when chunk() is 1). A lane refused for bytes gives its
// slots back at once, a refused producer takes back the shared lane's (reclaim()), and a thread
// that ends gives its lane and its unused credits back.
//
// Order. Each lane is FIFO and a thread always writes to the same lane (see ThreadLanes), so
// the consumer takes each producer thread's events in the order it pushed them. Between lanes
// it goes round-robin: there is no order across producer threads.
//
// Bytes (QueueOptions::max_bytes). Elements pushed with push_sized() carry a size; a second pool
// of `max_bytes` byte credits works like the first, in chunks of up to max_bytes / 72 (a chunk,
// or exactly what the element lacks if that is more), so the same bounds hold for bytes: exact
// with one producer thread (a refused lane gives its unused bytes back at once), and with several
// at most 1/8 of max_bytes reserved but unused in other lanes.
//
// Eviction (QueueOptions::evicting). evict_oldest() lets a refused producer take the oldest
// element of its own lane, or of the other lanes in turn when its own is empty, and keep the
// credits that frees. The consumer and the evictors then take elements out under one spin lock
// (`head_lock_`), held per pop or per eviction, so an element is either evicted or consumed,
// never both, and never once the consumer has taken it.
//
// Memory: capacity + (3 * kLanes + 1) * block() slots, block() <= capacity / 108 + 1, and as
// many sizes when sized.
//
// Memory ordering:
// - A push constructs the element, then stores the lane's `published` count with release; the
//   consumer loads it with acquire before moving elements out. A block is linked (`next_`)
//   before the count that reaches into it is published.
// - Blocks and credits go back through the spin lock and the acq_rel pool: the destruction of
//   an element happens-before the construction of the next one in its slot.
// - Closing needs the other side's store to be seen without a fence on the producer's path (a
//   full fence per event costs more than the rest of the push). A push marks its lane `busy`
//   before it checks `closed_`, with AsymmetricFence::light() between the two (and, in fenced
//   mode, the fallback fence: the kFenceBit in closed_ sends every push there), and clears it when
//   done (`busy` is on the producer's own line; only drained() reads it from elsewhere). close()
//   stores `closed_`; the first drained() that sees it issues the heavy fence before it reads
//   the busy marks. So (asymmetric_fence.hpp) a push either sees `closed_` and refuses, or its
//   busy mark is seen by every drained() after that fence: drained() never returns true while a
//   push that will succeed is under way. Nothing in this rests on time (tests/model/lane.pml).
// - Registration: a thread that takes a lane increments `active_` (seq_cst) and then calls the
//   queue's lane listener, which wakes a consumer that armed its threshold for fewer lanes (the
//   consumer re-reads active_lanes() after it arms: see Worker and tests/model/parker.pml).
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
  using LaneHandle = const Lane*;
  using Snapshot = std::array<std::uint64_t, kLanes>;

  // Allocates every block and the lane anchor (std::bad_alloc reaches the caller). Not
  // thread-safe (construction). `initial_position` is where consumer positions start (tests
  // start it near the wrap).
  explicit ShardedQueue(std::size_t capacity, std::uint64_t initial_position = 0,
                        QueueOptions options = {})
      : capacity_(capacity),
        block_(std::clamp<std::size_t>(capacity / (12 * kLanes), 1, 256)),
        chunk_(std::clamp<std::size_t>(capacity / (8 * kLanes), 1, 256)),
        blocks_((capacity + block_ - 1) / block_ + 3 * kLanes + 1),
        initial_position_(initial_position),
        max_bytes_(options.max_bytes),
        byte_chunk_(std::max<std::uint64_t>(options.max_bytes / (8 * kLanes), 1)),
        sized_(options.sized || options.max_bytes != 0),
        evicting_(options.evicting),
        on_new_lane_(options.on_new_lane),
        listener_(options.listener),
        position_(initial_position) {
    AsymmetricFence::prepare();  // decided before any producer of this queue pushes
    if (AsymmetricFence::fenced()) closed_.store(kFenceBit, std::memory_order_relaxed);
    if (capacity == 0 || capacity > (std::size_t{1} << 40)) {
      throw std::invalid_argument("ShardedQueue: capacity must be in [1, 2^40]");
    }
    slots_.reset(new Slot[blocks_ * block_]);  // not zeroed: pages are touched as lanes fill
    next_ = std::make_unique<std::atomic<std::size_t>[]>(blocks_);
    if (sized_) sizes_.reset(new std::uint64_t[blocks_ * block_]);
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
    byte_credits_.store(max_bytes_, std::memory_order_relaxed);
    anchor_ = new LaneAnchor(this, &ShardedQueue::release_lane);
    anchor_id_ = anchor_->id();
    fast_id_ = sized_ ? ~std::uint64_t{0} : anchor_id_;  // no thread's cache has id ~0
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
    if (cache.id == fast_id_) [[likely]] {  // only exclusive lanes are cached
      Lane* lane = static_cast<Lane*>(cache.lane);
      lane_out = lane;
      return push(*lane, 0, std::forward<Args>(args)...);
    }
    return try_emplace_slow(lane_out, std::forward<Args>(args)...);
  }

  // As try_emplace, for a sized queue: the element counts `bytes` (refused, `full`, when they do
  // not fit in what max_bytes leaves; the caller refuses an element larger than max_bytes).
  template <class... Args>
  [[gnu::always_inline]] PushResult try_emplace_sized(LaneHandle& lane_out, std::uint64_t bytes,
                                                      Args&&... args) noexcept {
    Lane* lane = nullptr;
    const LaneCache& cache = lane_cache;
    if (cache.id == anchor_id_) {
      lane = static_cast<Lane*>(cache.lane);
    } else {
      if (closed()) return PushResult::closed;
      lane = register_thread();
    }
    lane_out = lane;
    return push_any<true>(*lane, bytes, std::forward<Args>(args)...);
  }

  // Producer of `own`, refused for want of space (evicting queues only): removes the oldest
  // element of its own lane, or if that is empty of the other lanes in turn (starting where the
  // consumer goes next), gives the count and bytes it frees to `own` (so the producer's next push
  // can use them), then calls `report(T&&)` with it, holding no lock. Returns false, taking
  // nothing, when nothing is queued or the queue is closed. Blocks only on the spin lock it
  // shares with the consumer. `report` must not throw. wait_evictions_reported() waits for the
  // reports of evictions that have taken their element.
  template <class Report>
  bool evict_oldest(LaneHandle own, std::uint64_t need_bytes, Report&& report) noexcept {
    Lane& mine = const_cast<Lane&>(*own);
    std::optional<T> victim;
    const auto out = [&victim](T* first, std::size_t) { victim.emplace(std::move(*first)); };
    std::uint64_t bytes = 0;
    unsigned epoch = 0;
    head_lock_.lock();
    if (!closed()) {
      for (unsigned k = 0; k <= kLanes && !victim; ++k) {
        Lane& lane = k == 0 ? mine : lanes_[(start_lane_ + k - 1) % kLanes];
        if (lane.published.load(std::memory_order_acquire) ==
            lane.consumed.load(std::memory_order_relaxed)) {
          continue;
        }
        // Both before `consumed` is published: whoever sees the element gone sees them.
        evicted_.fetch_add(1, std::memory_order_relaxed);
        epoch = epoch_;
        reporting_[epoch].fetch_add(1, std::memory_order_relaxed);
        pop_lane(lane, 1, out, nullptr, bytes);
      }
    }
    head_lock_.unlock();
    if (!victim) return false;
    // Only what the lane lacks for its push stays with it; the rest goes back to the pools, so
    // an evicting lane holds no more in reserve than any other.
    const bool shared = &mine == &lanes_[kSharedLane];
    if (shared) shared_.lock();
    const bool keep_slot = mine.room == 0 && mine.credits == 0;
    if (keep_slot) mine.credits = 1;
    std::uint64_t kept_bytes = 0;
    if (max_bytes_ != 0) {
      const std::uint64_t has = mine.byte_room.load(std::memory_order_relaxed);
      kept_bytes = std::min(bytes, need_bytes > has ? need_bytes - has : 0);
      if (kept_bytes != 0) mine.byte_room.fetch_add(kept_bytes, std::memory_order_relaxed);
    }
    if (shared) shared_.unlock();
    if (!keep_slot) credits_.fetch_add(1, std::memory_order_seq_cst);
    if (bytes != kept_bytes && max_bytes_ != 0) {
      byte_credits_.fetch_add(bytes - kept_bytes, std::memory_order_seq_cst);
    }
    report(std::move(*victim));
    victim.reset();
    reporting_[epoch].fetch_sub(1, std::memory_order_release);
    return true;
  }

  // Any thread: waits until every eviction whose element has left the queue before the call
  // has been reported, or until `deadline` (false then). Evictions that start meanwhile are not
  // waited for (they count in the other epoch), so producers that keep evicting cannot hold it
  // up. Callers take turns (each until its deadline). Never allocates.
  bool wait_evictions_reported(std::optional<SteadyClock::time_point> deadline) {
    if (!evicting_) return true;
    // A flag rather than std::timed_mutex: ThreadSanitizer does not see libstdc++'s
    // pthread_mutex_clocklock. Callers are few (flushes), so polling is fine.
    SpinWait spin;
    while (epoch_busy_.exchange(true, std::memory_order_acquire)) {
      if (deadline && SteadyClock::now() >= *deadline) return false;
      spin.pause(deadline);
    }
    struct Release {
      std::atomic<bool>& busy;
      ~Release() { busy.store(false, std::memory_order_release); }
    } release{epoch_busy_};
    spin.reset();
    // Evictions count in epoch_ while they report. First the other epoch must be empty (it
    // is, unless a caller before us gave up at its deadline; none enter it meanwhile), then
    // flip, so that every eviction already under way is in `old`, and wait for that.
    const auto drained = [&](unsigned epoch) {
      while (reporting_[epoch].load(std::memory_order_acquire) != 0) {
        if (deadline && SteadyClock::now() >= *deadline) return false;
        spin.pause(deadline);
      }
      return true;
    };
    head_lock_.lock();
    const unsigned old = epoch_;
    head_lock_.unlock();
    if (!drained(old ^ 1)) return false;
    head_lock_.lock();
    epoch_ ^= 1;
    head_lock_.unlock();
    return drained(old);
  }

  // Any thread: no eviction is between taking its element and the end of its report.
  bool evictions_reported() const noexcept {
    return reporting_[0].load(std::memory_order_acquire) == 0 &&
           reporting_[1].load(std::memory_order_acquire) == 0;
  }

  // Any thread: elements removed by evict_oldest() so far.
  std::uint64_t evicted() const noexcept { return evicted_.load(std::memory_order_relaxed); }

  // Any thread: the byte sizes of the queued elements (0 unless sized).
  std::uint64_t queued_bytes() const noexcept {
    if (!sized_) return 0;
    std::uint64_t n = 0;
    for (const Lane& lane : lanes_) {
      const std::uint64_t p = lane.published_bytes.load(std::memory_order_acquire);
      const std::uint64_t c = lane.consumed_bytes.load(std::memory_order_acquire);
      if (c <= p) n += p - c;  // c read later may be past p: then nothing is queued
    }
    return max_bytes_ != 0 ? std::min<std::uint64_t>(n, max_bytes_) : n;
  }

  // Any thread: events in `lane` not yet taken by the consumer.
  std::uint64_t queued(LaneHandle lane) const noexcept {
    return lane->published.load(std::memory_order_relaxed) -
           lane->consumed.load(std::memory_order_relaxed);
  }

  // Any thread: bytes queued in `lane` (sized queues).
  std::uint64_t queued_bytes(LaneHandle lane) const noexcept {
    return lane->published_bytes.load(std::memory_order_relaxed) -
           lane->consumed_bytes.load(std::memory_order_relaxed);
  }

  // Any thread: whether a refused producer may try again with an element of `bytes`.
  bool has_space(std::uint64_t bytes = 0) const noexcept {
    return credits_.load(std::memory_order_seq_cst) > 0 &&
           (max_bytes_ == 0 || byte_credits_.load(std::memory_order_seq_cst) >= bytes);
  }

  // Any thread, after a refusal: takes back the slots the shared lane holds in reserve (threads
  // that wrote there may all have ended, and it is nobody's to give back at thread exit), and,
  // with a byte bound, the bytes of every lane (reclaim_bytes). Returns whether a refused push
  // should try again. Blocks only on the shared lane's spin lock.
  bool reclaim(std::uint64_t bytes) noexcept {
    bool again = max_bytes_ != 0;
    if (shared_used_.load(std::memory_order_relaxed)) {
      shared_.lock();
      Lane& shared = lanes_[kSharedLane];
      again = again || shared.credits + shared.room != 0;
      give_back_slots(shared);
      shared_.unlock();
    }
    reclaim_bytes(bytes);
    return again;
  }

  // Any thread, after a refusal for bytes: takes back the bytes every lane holds in reserve
  // (an idle producer thread's reserve would otherwise keep a large element out for as long as
  // that thread lives). One exchange per lane; never blocks.
  // Only when the pool lacks `bytes`: a refusal for want of a slot needs no bytes back.
  void reclaim_bytes(std::uint64_t bytes) noexcept {
    if (max_bytes_ == 0 || byte_credits_.load(std::memory_order_seq_cst) >= bytes) return;
    for (Lane& lane : lanes_) {
      if (lane.byte_room.load(std::memory_order_relaxed) == 0) continue;
      const std::uint64_t room = lane.byte_room.exchange(0, std::memory_order_acq_rel);
      if (room != 0) byte_credits_.fetch_add(room, std::memory_order_seq_cst);
    }
  }

  // A forked child (fork_guard.hpp), with one thread: closes the queue and frees the locks a
  // parent thread may have held at the fork, so that refusing an offer and destroying the
  // queue never wait for a thread that is not there.
  void close_in_child() noexcept {
    close();
    ::new (&shared_) SpinLock;
    ::new (&free_lock_) SpinLock;
    ::new (&head_lock_) SpinLock;
    anchor_->reset_lock_in_child();
  }

  // Any thread, idempotent. Refuses every push that starts after it returns; pushes under way
  // may still complete (drained() waits for them).
  void close() noexcept { closed_.fetch_or(kClosedBit, std::memory_order_seq_cst); }
  bool closed() const noexcept {
    return (closed_.load(std::memory_order_acquire) & kClosedBit) != 0;
  }

  // Consumer only (one thread at a time; callers serialize). Moves up to `max` elements into
  // `out(T&&)`, visiting the lanes round-robin, and returns how many. Never blocks or allocates
  // (`out` aside); `out` must not throw.
  template <class Out>
  std::size_t pop(std::size_t max, Out&& out) noexcept {
    return pop_runs(max, nullptr, [&out](T* first, std::size_t n) {
      for (std::size_t i = 0; i < n; ++i) out(std::move(first[i]));
    });
  }

  // Consumer only, as pop(): appends up to `max` elements to `batch`, each contiguous run at
  // once (one memmove when T is trivially copyable). `batch` must have room for them reserved, so
  // this never allocates.
  template <class Vector>
  std::size_t pop_into(std::size_t max, Vector& batch, ByteBudget* budget = nullptr) noexcept {
    return pop_runs(max, budget, [&batch](T* first, std::size_t n) {
      if constexpr (std::is_trivially_copyable_v<T>) {
        batch.insert(batch.end(), first, first + n);  // one memmove
      } else {
        for (std::size_t i = 0; i < n; ++i) batch.push_back(std::move(first[i]));
      }
    });
  }

  // Consumer only: moves up to `max` elements out as contiguous runs, `take(first, n)`, then
  // destroys them. With a `budget` (sized queues) it stops before the first element whose size
  // does not fit in what is left of it.
  template <class Take>
  std::size_t pop_runs(std::size_t max, ByteBudget* budget, Take&& take) noexcept {
    if (evicting_) head_lock_.lock();
    std::size_t total = 0;
    std::uint64_t bytes = 0;
    for (unsigned k = 0; k < kLanes && total < max && !(budget && budget->stopped); ++k) {
      total += pop_lane(lanes_[(start_lane_ + k) % kLanes], max - total, take, budget, bytes);
    }
    start_lane_ = (start_lane_ + 1) % kLanes;
    if (total != 0) {
      position_.store(position_.load(std::memory_order_relaxed) + total, std::memory_order_release);
      // Under the lock: an evictor that finds every lane empty finds their credits back.
      if (max_bytes_ != 0) {
        byte_credits_.fetch_add(bytes, std::memory_order_seq_cst);
      }
      credits_.fetch_add(static_cast<std::int64_t>(total), std::memory_order_seq_cst);
    }
    if (evicting_) head_lock_.unlock();
    return total;
  }

  // Any thread: events taken by the consumer so far, counted from initial_position().
  std::uint64_t position() const noexcept { return position_.load(std::memory_order_acquire); }
  std::uint64_t initial_position() const noexcept { return initial_position_; }

  // Consumer: some lane holds at least `n` events (n >= 1), or at least `bytes` bytes.
  bool any_reached(std::uint64_t n, std::uint64_t bytes = ~std::uint64_t{0}) const noexcept {
    for (const Lane& lane : lanes_) {
      if (lane.published.load(std::memory_order_acquire) -
              lane.consumed.load(std::memory_order_relaxed) >=
          n) {
        return true;
      }
      if (sized_ && lane.published_bytes.load(std::memory_order_acquire) -
                            lane.consumed_bytes.load(std::memory_order_relaxed) >=
                        bytes) {
        return true;
      }
    }
    return false;
  }

  // Any thread: lanes that producer threads hold now (the shared lane once it was used).
  unsigned active_lanes() const noexcept {
    return std::max(1u, active_.load(std::memory_order_seq_cst));
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
    if (!close_fenced_.load(std::memory_order_acquire)) {
      AsymmetricFence::heavy();  // see "Memory ordering": after this, no push can miss closed_
      close_fenced_.store(true, std::memory_order_release);
    }
    for (const Lane& lane : lanes_) {
      if (lane.busy.load(std::memory_order_acquire)) return false;
      const std::uint64_t p = lane.published.load(std::memory_order_acquire);
      if (p != lane.consumed.load(std::memory_order_acquire)) return false;
    }
    return true;
  }

  // Any thread: no lane holds an element the consumer has not taken.
  bool empty() const noexcept {
    for (const Lane& lane : lanes_) {
      if (lane.published.load(std::memory_order_acquire) !=
          lane.consumed.load(std::memory_order_acquire)) {
        return false;
      }
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
    std::atomic<std::uint64_t> published_bytes{
        0};  // their sizes (sized), stored before `published`
    // The producer's own line (the owner's, or guarded by shared_ for the shared lane); only
    // drained() looks at `busy` from elsewhere.
    alignas(kCacheLine) std::atomic<bool> busy{false};  // a push is under way
    std::uint64_t pushed = 0;                           // what `published` says
    T* tail = nullptr;     // where the next element goes (in tail_block)
    std::size_t room = 0;  // pushes before the next refill(): credits that fit the block
    std::size_t tail_block = 0;
    std::uint64_t credits = 0;       // reserved from the pool, beyond `room`
    std::uint64_t pushed_bytes = 0;  // what `published_bytes` says
    // Bytes reserved from the byte pool, unused. Atomic (one uncontended CAS per sized push) so
    // that reclaim_bytes() can take an idle lane's reserve back.
    std::atomic<std::uint64_t> byte_room{0};
    // The consumer's line.
    alignas(kCacheLine) std::atomic<std::uint64_t> consumed{0};
    std::atomic<std::uint64_t> consumed_bytes{0};
    std::size_t head_block = 0;
    std::size_t head_index = 0;
    // Who holds the lane (exclusive lanes).
    alignas(kCacheLine) std::atomic<bool> owned{false};
  };

  T* slot(std::size_t block, std::size_t index) noexcept {
    return std::launder(reinterpret_cast<T*>(slots_[block * block_ + index].storage));
  }

  template <bool kSized = false, class... Args>
  [[gnu::always_inline]] PushResult push(Lane& lane, std::uint64_t bytes, Args&&... args) noexcept {
    lane.busy.store(true, std::memory_order_relaxed);  // see "Memory ordering"
    AsymmetricFence::light();
    if (closed_.load(std::memory_order_acquire) != 0 && closed_after_fence()) [[unlikely]] {
      lane.busy.store(false, std::memory_order_relaxed);
      return PushResult::closed;
    }
    if (lane.room == 0 && !refill(lane)) [[unlikely]] {
      lane.busy.store(false, std::memory_order_relaxed);
      return PushResult::full;
    }
    if constexpr (kSized) {
      if (max_bytes_ != 0 && !reserve_bytes(lane, bytes)) {
        give_back_slots(lane);  // a lane refused for bytes holds no slot either
        lane.busy.store(false, std::memory_order_relaxed);
        return PushResult::full;
      }
    }
    test_hooks::on_before_publish(lane.pushed);
    T* const at = lane.tail;
    ::new (static_cast<void*>(at)) T(std::forward<Args>(args)...);
    lane.tail = at + 1;
    --lane.room;
    if constexpr (kSized) {
      sizes_[static_cast<std::size_t>(at - slot(0, 0))] = bytes;
      lane.pushed_bytes += bytes;
      lane.published_bytes.store(lane.pushed_bytes, std::memory_order_relaxed);  // see `published`
    }
    lane.published.store(++lane.pushed, std::memory_order_release);
    lane.busy.store(false, std::memory_order_release);
    return PushResult::ok;
  }

  // The push's look at closed_, when the word is not plain "open": in fenced mode (kFenceBit,
  // set for the queue's life) the light side's fence comes first.
  [[gnu::noinline]] bool closed_after_fence() const noexcept {
    AsymmetricFence::fallback();
    return (closed_.load(std::memory_order_acquire) & kClosedBit) != 0;
  }

  // The first push of a thread, and every push to the shared lane.
  template <class... Args>
  [[gnu::noinline]] PushResult try_emplace_slow(LaneHandle& lane_out, Args&&... args) noexcept {
    if (sized_) return PushResult::sized;     // so the fast path needs no test of its own
    if (closed()) return PushResult::closed;  // no lane is taken (or woken for) once closed
    Lane* lane = register_thread();
    lane_out = lane;
    return push_any(*lane, 0, std::forward<Args>(args)...);
  }

  // push() into any lane: the shared lane's under its spin lock.
  template <bool kSized = false, class... Args>
  [[gnu::always_inline]] PushResult push_any(Lane& lane, std::uint64_t bytes,
                                             Args&&... args) noexcept {
    if (&lane != &lanes_[kSharedLane])
      return push<kSized>(lane, bytes, std::forward<Args>(args)...);
    if (closed()) return PushResult::closed;  // a refusal needs no lock
    shared_.lock();
    const PushResult result = push<kSized>(lane, bytes, std::forward<Args>(args)...);
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

  // The lane's unused slot credits go back to the pool (a refused or ending lane).
  [[gnu::noinline]] void give_back_slots(Lane& lane) noexcept {
    if (const std::uint64_t unused = lane.credits + lane.room; unused != 0) {
      credits_.fetch_add(static_cast<std::int64_t>(unused), std::memory_order_seq_cst);
      lane.credits = 0;
      lane.room = 0;
    }
  }

  // Takes `bytes` out of the lane's reserve, refilling it from the byte pool (what the lane
  // lacks, at least a chunk when there is one). If the pool has too little, the lane gives back
  // what it holds and the push is refused, so that with one producer a refusal means the queued
  // bytes leave no room (and a blocked producer can wait on the pool alone).
  [[gnu::always_inline]] bool reserve_bytes(Lane& lane, std::uint64_t bytes) noexcept {
    std::uint64_t room = lane.byte_room.load(std::memory_order_relaxed);
    for (;;) {
      if (room < bytes) {
        if (!refill_bytes(lane, bytes)) return false;
        room = lane.byte_room.load(std::memory_order_relaxed);
        continue;
      }
      // A CAS, not a store: reclaim_bytes() may have taken the reserve meanwhile.
      if (lane.byte_room.compare_exchange_weak(room, room - bytes, std::memory_order_acq_rel,
                                               std::memory_order_relaxed)) [[likely]] {
        return true;
      }
    }
  }

  [[gnu::noinline]] bool refill_bytes(Lane& lane, std::uint64_t bytes) noexcept {
    const std::uint64_t room = lane.byte_room.load(std::memory_order_relaxed);
    const std::uint64_t need = bytes > room ? bytes - room : 0;
    std::uint64_t available = byte_credits_.load(std::memory_order_relaxed);
    std::uint64_t take = 0;
    do {
      if (available < need) {
        const std::uint64_t back = lane.byte_room.exchange(0, std::memory_order_acq_rel);
        if (back != 0) byte_credits_.fetch_add(back, std::memory_order_seq_cst);
        return false;
      }
      take = std::min(available, std::max(need, byte_chunk_));
    } while (!byte_credits_.compare_exchange_weak(
        available, available - take, std::memory_order_seq_cst, std::memory_order_relaxed));
    lane.byte_room.fetch_add(take, std::memory_order_relaxed);
    return true;
  }

  // Moves up to `max` elements of `lane` out (see pop_runs) and adds their sizes to `bytes`.
  template <class Take>
  std::size_t pop_lane(Lane& lane, std::size_t max, Take& take, ByteBudget* budget,
                       std::uint64_t& bytes) noexcept {
    const std::uint64_t end = lane.published.load(std::memory_order_acquire);
    const std::uint64_t c = lane.consumed.load(std::memory_order_relaxed);
    std::uint64_t n = std::min<std::uint64_t>(end - c, max);
    std::uint64_t lane_bytes = 0;
    for (std::uint64_t done = 0; done < n;) {
      if (lane.head_index == block_) {
        const std::size_t next = next_[lane.head_block].load(std::memory_order_relaxed);
        free_lock_.lock();
        free_.push_back(lane.head_block);  // reserved for every block: never allocates
        free_lock_.unlock();
        lane.head_block = next;
        lane.head_index = 0;
      }
      std::size_t run =
          static_cast<std::size_t>(std::min<std::uint64_t>(n - done, block_ - lane.head_index));
      T* first = slot(lane.head_block, lane.head_index);
      if (sized_) {
        const std::uint64_t* size = &sizes_[lane.head_block * block_ + lane.head_index];
        for (std::size_t i = 0; i < run; ++i) {
          if (budget != nullptr) {
            if (size[i] > budget->left) {
              budget->stopped = true;
              run = i;
              n = done + i;
              break;
            }
            budget->left -= size[i];
          }
          lane_bytes += size[i];
        }
        if (run == 0) break;
      }
      take(first, run);
      std::destroy_n(first, run);
      lane.head_index += run;
      done += run;
    }
    if (n != 0) {
      if (sized_) {
        lane.consumed_bytes.store(lane.consumed_bytes.load(std::memory_order_relaxed) + lane_bytes,
                                  std::memory_order_relaxed);
        bytes += lane_bytes;
      }
      lane.consumed.store(c + n, std::memory_order_release);
    }
    return static_cast<std::size_t>(n);
  }

  // The thread's lane for this queue: the one it holds, else a free exclusive lane, else the
  // shared lane. A thread that may have events in this queue's shared lane without a record of
  // it (it wrote here while it held records for kMaxEntries other live queues) takes a lane of
  // its own only once the shared lane is empty, so its later events cannot overtake them.
  [[gnu::noinline]] Lane* register_thread() noexcept {
    ThreadLanes& mine = thread_lanes;
    unsigned index = mine.find(anchor_id_);
    if (index == ThreadLanes::kNotFound) {
      index = kSharedLane;
      bool grew = false;
      if (!mine.has_room()) {
        mine.spill();
      } else if (!mine.spilled() || shared_lane_empty()) {
        for (unsigned i = 0; i < kExclusiveLanes; ++i) {
          if (!lanes_[i].owned.load(std::memory_order_relaxed) &&
              !lanes_[i].owned.exchange(true, std::memory_order_acquire)) {
            index = i;
            active_.fetch_add(1, std::memory_order_seq_cst);
            grew = true;
            break;
          }
        }
        mine.add(*anchor_, index);
      }
      if (index == kSharedLane && !shared_used_.load(std::memory_order_relaxed) &&
          !shared_used_.exchange(true, std::memory_order_relaxed)) {
        active_.fetch_add(1, std::memory_order_seq_cst);
        grew = true;
      }
      if (grew && on_new_lane_ != nullptr) on_new_lane_(listener_);
    }
    Lane* lane = &lanes_[index];
    if (index != kSharedLane) lane_cache = LaneCache{anchor_id_, lane};
    return lane;
  }

  // Everything pushed into the shared lane so far has been taken (published read first, so a
  // consumed count equal to it covers every push this thread made).
  bool shared_lane_empty() const noexcept {
    const Lane& shared = lanes_[kSharedLane];
    const std::uint64_t p = shared.published.load(std::memory_order_acquire);
    return shared.consumed.load(std::memory_order_acquire) == p;
  }

  // A registered thread ended (called under the anchor's lock, so the queue exists).
  static void release_lane(void* queue, unsigned index) noexcept {
    auto* self = static_cast<ShardedQueue*>(queue);
    if (index == kSharedLane) return;
    Lane& lane = self->lanes_[index];
    self->give_back_slots(lane);
    if (const std::uint64_t room = lane.byte_room.exchange(0, std::memory_order_acq_rel);
        room != 0) {
      self->byte_credits_.fetch_add(room, std::memory_order_seq_cst);
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
  const std::uint64_t max_bytes_;
  const std::uint64_t byte_chunk_;
  const bool sized_;
  const bool evicting_;
  void (*const on_new_lane_)(void*) noexcept;
  void* const listener_;
  std::unique_ptr<Slot[]> slots_;
  std::unique_ptr<std::uint64_t[]> sizes_;  // per slot, when sized_
  std::unique_ptr<std::atomic<std::size_t>[]> next_;
  LaneAnchor* anchor_ = nullptr;
  std::uint64_t anchor_id_ = 0;  // set in the constructor body, before any push
  std::uint64_t fast_id_ = 0;    // what try_emplace's fast path matches: never, when sized

  std::array<Lane, kLanes> lanes_;

  // Read by every push, written once.
  // kClosedBit once closed; kFenceBit for the queue's life when AsymmetricFence::fenced(), so
  // that every push takes closed_after_fence() and runs the fence the light side needs.
  static constexpr std::uint8_t kClosedBit = 1;
  static constexpr std::uint8_t kFenceBit = 2;
  alignas(kCacheLine) std::atomic<std::uint8_t> closed_{0};
  mutable std::atomic<bool> close_fenced_{false};  // a drained() has fenced since closed_

  alignas(kCacheLine) std::atomic<std::int64_t> credits_{0};
  alignas(kCacheLine) std::atomic<std::uint64_t> byte_credits_{0};
  alignas(kCacheLine) std::atomic<unsigned> active_{0};
  std::atomic<bool> shared_used_{false};
  SpinLock shared_;

  alignas(kCacheLine) SpinLock free_lock_;
  std::vector<std::size_t> free_;  // guarded by free_lock_; capacity for every block

  // The consumer's own (and the evictors', under head_lock_ when evicting_).
  alignas(kCacheLine) std::atomic<std::uint64_t> position_;
  unsigned start_lane_ = 0;
  std::atomic<std::uint64_t> evicted_{0};
  SpinLock head_lock_;
  unsigned epoch_ = 0;  // guarded by head_lock_: where evictions count while they report
  std::atomic<std::uint64_t> reporting_[2] = {0, 0};
  std::atomic<bool> epoch_busy_{false};  // a wait_evictions_reported() caller is in
};

}  // namespace buffered::detail
