// The buffer: one lane per producer thread, a shared bound on what all lanes hold, one consumer.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "block_pool.hpp"
#include "cache_line.hpp"
#include "close_flag.hpp"
#include "credit_pool.hpp"
#include "deadline.hpp"
#include "lane.hpp"
#include "lane_set.hpp"
#include "queue_head.hpp"
#include "spin_lock.hpp"

namespace buffered::detail {

// What a queue counts besides events (BatchConfig's byte bounds and drop_oldest).
struct QueueOptions {
  std::size_t max_bytes = 0;  // 0: no byte bound; else queued elements' sizes sum to at most this
  bool sized = false;         // elements carry a byte size (push(lane, bytes, ...))
  bool evicting = false;      // evict_oldest() may run beside the consumer
  // Called on the producer's thread each time a thread takes a lane (after active_lanes() has
  // grown): the backend wakes a consumer that armed for fewer lanes. Must not throw.
  void (*on_new_lane)(void* listener) noexcept = nullptr;
  void* listener = nullptr;
};

// The composition: the lanes and which thread writes which (lane_set.hpp, lane.hpp), the blocks
// they are made of (block_pool.hpp), the bounds they take credits from (credit_pool.hpp), the
// close flag every push reads (close_flag.hpp), and the evictions' epochs (eviction.hpp).
//
// The bound. `capacity` slot credits exist; a lane takes them in chunks of up to chunk() and
// spends one per event; the consumer gives them back as it takes events. So the queue never holds
// more than `capacity` events. With one producer thread it refuses exactly when it holds
// `capacity`; with several, a producer may be refused while other lanes hold up to chunk() - 1
// credits each that they have not used yet: only once the queue holds capacity - 8 * (chunk() - 1)
// (chunk() <= capacity / 72, so less than 1/8 of the capacity; exact when chunk() is 1). A lane
// refused for bytes gives its slots back at once, a refused producer takes back the shared lane's
// (reclaim()), and a thread that ends gives its lane and its unused credits back. Bytes
// (QueueOptions::max_bytes) work the same way with a second pool, in chunks of max_bytes / 72 (or
// exactly what an element lacks if that is more).
//
// Order. Each lane is FIFO and a thread always writes to the same lane (see ThreadLanes), so the
// consumer takes each producer thread's events in the order it pushed them. Between lanes it goes
// round-robin: there is no order across producer threads.
//
// Eviction (QueueOptions::evicting). evict_oldest() lets a refused producer take the oldest
// element of its own lane, or of the other lanes in turn when its own is empty, and keep what that
// frees. The consumer and the evictors take elements out under one spin lock (`head_lock_`), so
// an element is either evicted or consumed, never both.
//
// Memory: capacity + (3 * kLanes + 1) * block slots, block <= capacity / 108 + 1, and as many
// sizes when sized. Ordering within a lane and around close(): lane.hpp; registration:
// lane_set.hpp.
template <class T>
class ShardedQueue {
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "ShardedQueue<T>: T must be nothrow move-constructible");
  static_assert(std::is_nothrow_destructible_v<T>,
                "ShardedQueue<T>: T must be nothrow destructible");

 public:
  static constexpr unsigned kExclusiveLanes = LaneSet<T>::kExclusiveLanes;
  static constexpr unsigned kLanes = LaneSet<T>::kLanes;
  using LaneHandle = Lane<T>*;
  using Snapshot = typename LaneSet<T>::Snapshot;

  // Allocates every block and the lane anchor (std::bad_alloc reaches the caller). Not
  // thread-safe (construction). `initial_position` is where consumer positions start (tests
  // start it near the wrap).
  explicit ShardedQueue(std::size_t capacity, std::uint64_t initial_position = 0,
                        QueueOptions options = {})
      : capacity_(checked(capacity)),
        sized_(options.sized || options.max_bytes != 0),
        initial_position_(initial_position),
        max_bytes_(options.max_bytes),
        blocks_((capacity + block_size(capacity) - 1) / block_size(capacity) + 3 * kLanes + 1,
                block_size(capacity), sized_, kLanes),
        slots_(capacity),
        bytes_(options.max_bytes),
        supply_{blocks_,
                slots_,
                bytes_,
                std::clamp<std::size_t>(capacity / (8 * kLanes), 1, 256),
                std::max<std::uint64_t>(options.max_bytes / (8 * kLanes), 1),
                options.max_bytes != 0},
        lanes_(blocks_, slots_, bytes_, initial_position, options.on_new_lane, options.listener,
               !sized_),
        head_(lanes_, supply_, closing_, sized_, options.evicting, initial_position) {}

  ShardedQueue(const ShardedQueue&) = delete;
  ShardedQueue& operator=(const ShardedQueue&) = delete;

  // Destroys the elements still queued. Not thread-safe: no push or pop may be running.
  // Threads still registered keep only the (small) anchor alive.
  ~ShardedQueue() {
    for (Lane<T>& lane : lanes_) lane.destroy_queued(blocks_);
  }

  // ---- producers: thread-safe; never allocate or throw; block only on the shared lane's lock
  // (held for one push by another thread) ----

  // The fast path: this thread's exclusive lane, if its one-entry cache holds it (never for a
  // sized queue, so that the fast path needs no test of its own for sizes). Two loads.
  [[gnu::always_inline]] bool cached_lane(LaneHandle& lane) const noexcept {
    return lanes_.cached(lane);
  }

  // This thread's lane, registering it at its first push (no allocation: see ThreadLanes).
  // nullptr once closed, unless the thread already holds one (its push then refuses).
  LaneHandle lane_of_thread() noexcept { return lanes_.of_thread(closing_); }

  // Constructs T from `args` at the back of `lane`, the thread's exclusive lane (cached_lane()),
  // in a queue that is not sized. Constructing from `args` must not throw: copy first when a copy
  // can throw. Moves from `args` only when it returns ok.
  template <class... Args>
  [[gnu::always_inline]] PushResult push_exclusive(LaneHandle lane, Args&&... args) noexcept {
    static_assert(std::is_nothrow_constructible_v<T, Args&&...>,
                  "ShardedQueue::push: construct the element before pushing it when its "
                  "constructor can throw");
    return lane->template push<false>(closing_, supply_, 0, std::forward<Args>(args)...);
  }

  // As push_exclusive, into any lane of this thread (lane_of_thread()); with kSized (which a
  // sized queue needs) the element counts `bytes`, refused `full` when they do not fit in what
  // max_bytes leaves (the caller refuses an element larger than max_bytes).
  template <bool kSized, class... Args>
  [[gnu::always_inline]] PushResult push(LaneHandle lane, std::uint64_t bytes,
                                         Args&&... args) noexcept {
    static_assert(std::is_nothrow_constructible_v<T, Args&&...>,
                  "ShardedQueue::push: construct the element before pushing it when its "
                  "constructor can throw");
    if (!lanes_.is_shared(*lane)) {
      return lane->template push<kSized>(closing_, supply_, bytes, std::forward<Args>(args)...);
    }
    if (closed()) return PushResult::closed;  // a refusal needs no lock
    lanes_.shared_lock().lock();
    const PushResult result =
        lane->template push<kSized>(closing_, supply_, bytes, std::forward<Args>(args)...);
    lanes_.shared_lock().unlock();
    return result;
  }

  // Producer of `own`, refused for want of space (evicting queues only): see QueueHead.
  template <class Report>
  bool evict_oldest(LaneHandle own, std::uint64_t need_bytes, Report&& report) noexcept {
    return head_.evict_oldest(own, need_bytes, std::forward<Report>(report));
  }
  bool wait_evictions_reported(std::optional<SteadyClock::time_point> deadline) {
    return head_.wait_evictions_reported(deadline);
  }
  bool evictions_reported() const noexcept { return head_.evictions_reported(); }

  // Any thread: whether a refused producer may try again with an element of `bytes`.
  bool has_space(std::uint64_t bytes = 0) const noexcept {
    return slots_.available() > 0 && (!supply_.byte_bound || bytes_.available() >= bytes);
  }

  // Any thread, after a refusal: takes back the slots the shared lane holds in reserve (threads
  // that wrote there may all have ended, and it is nobody's to give back at thread exit), and,
  // with a byte bound, the bytes of every lane (reclaim_bytes). Returns whether a refused push
  // should try again. Blocks only on the shared lane's spin lock.
  bool reclaim(std::uint64_t bytes) noexcept {
    bool again = supply_.byte_bound;
    if (lanes_.shared_used()) {
      lanes_.shared_lock().lock();
      Lane<T>& shared = lanes_[LaneSet<T>::kSharedLane];
      again = again || shared.holds_slots();
      shared.give_back_slots(slots_);
      lanes_.shared_lock().unlock();
    }
    reclaim_bytes(bytes);
    return again;
  }

  // Any thread, when the byte pool lacks `bytes`: takes back the bytes every lane holds in
  // reserve (an idle producer's would otherwise keep a large element out for as long as that
  // thread lives). One exchange per lane; never blocks.
  void reclaim_bytes(std::uint64_t bytes) noexcept {
    if (!supply_.byte_bound || bytes_.available() >= bytes) return;
    for (Lane<T>& lane : lanes_) lane.byte_reserve().reclaim(bytes_);
  }

  // Any thread, idempotent. Refuses every push that starts after it returns; pushes under way
  // may still complete (drained() waits for them).
  void close() noexcept { closing_.close(); }
  bool closed() const noexcept { return closing_.closed(); }

  // A forked child (fork_guard.hpp), with one thread: closes the queue and frees the locks a
  // parent thread may have held at the fork.
  void close_in_child() noexcept {
    close();
    lanes_.reset_locks_in_child();
    blocks_.reset_lock_in_child();
    head_.reset_lock_in_child();
  }

  // ---- the consumer: one thread at a time (callers serialize); see QueueHead ----

  template <class Out>
  std::size_t pop(std::size_t max, Out&& out) noexcept {
    return head_.pop(max, std::forward<Out>(out));
  }
  template <class Vector>
  std::size_t pop_into(std::size_t max, Vector& batch, ByteBudget* budget = nullptr) noexcept {
    return head_.pop_into(max, batch, budget);
  }

  // Consumer: some lane holds at least `n` events (n >= 1), or at least `bytes` bytes.
  bool any_reached(std::uint64_t n, std::uint64_t bytes = ~std::uint64_t{0}) const noexcept {
    return lanes_.any_reached(n, bytes, sized_);
  }

  // Consumer (or after close() from any thread): closed, no push still under way, and nothing
  // left. Once true it stays true.
  bool drained() const noexcept {
    if (!closed()) return false;
    closing_.fence_once_closed();  // after this no push can miss the flag (lane.hpp)
    return lanes_.idle();
  }

  // ---- observers: any thread, lock-free ----

  // Events taken by the consumer so far, counted from initial_position().
  std::uint64_t position() const noexcept { return head_.position(); }
  std::uint64_t initial_position() const noexcept { return initial_position_; }

  // What each lane has published; whether the consumer has taken all that.
  void snapshot(Snapshot& s) const noexcept { lanes_.snapshot(s); }
  bool passed(const Snapshot& s) const noexcept { return lanes_.passed(s); }

  // No lane holds an element the consumer has not taken.
  bool empty() const noexcept { return lanes_.empty(); }

  // Events pushed so far (the `accepted` count), and events not yet taken.
  std::uint64_t pushed() const noexcept { return lanes_.published_since(initial_position_); }
  std::size_t size() const noexcept { return static_cast<std::size_t>(lanes_.queued(capacity_)); }

  // The byte sizes of the queued elements (0 unless sized).
  std::uint64_t queued_bytes() const noexcept {
    if (!sized_) return 0;
    const std::uint64_t n = lanes_.queued_bytes();
    return supply_.byte_bound ? std::min<std::uint64_t>(n, max_bytes_) : n;
  }

  // Lanes that producer threads hold now (the shared lane once it was used).
  unsigned active_lanes() const noexcept { return lanes_.active(); }

  std::size_t chunk() const noexcept { return static_cast<std::size_t>(supply_.slot_chunk); }

 private:
  static std::size_t checked(std::size_t capacity) {
    if (capacity == 0 || capacity > (std::size_t{1} << 40)) {
      throw std::invalid_argument("ShardedQueue: capacity must be in [1, 2^40]");
    }
    return capacity;
  }
  static std::size_t block_size(std::size_t capacity) noexcept {
    return std::clamp<std::size_t>(capacity / (12 * kLanes), 1, 256);
  }

  // Read-only after construction.
  const std::size_t capacity_;
  const bool sized_;
  const std::uint64_t initial_position_;
  const std::uint64_t max_bytes_;
  BlockPool<T> blocks_;
  CreditPool slots_;
  CreditPool bytes_;
  LaneSupply<T> supply_;
  LaneSet<T> lanes_;
  CloseFlag closing_;

  QueueHead<T> head_;
};

}  // namespace buffered::detail
