// Where elements leave the queue: taken by the consumer, or evicted by a refused producer.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>

#include "cache_line.hpp"
#include "close_flag.hpp"
#include "deadline.hpp"
#include "eviction.hpp"
#include "lane.hpp"
#include "lane_set.hpp"
#include "spin_lock.hpp"

namespace buffered::detail {

// The consumer visits the lanes round-robin, one lane further each pop, and gives the credits of
// what it takes back to the pools (under the head lock when evicting, so an evictor that finds
// every lane empty finds their credits back). With drop_oldest, evictors take elements out under
// the same lock, so an element is either evicted or consumed, never both.
//
// Thread safety: the consumer side is one thread at a time (callers serialize); evict_oldest()
// any producer; position() and evictions_reported() any thread. Never allocates; blocks only on
// the head lock, held per pop or per eviction.
template <class T>
class QueueHead {
 public:
  using LaneHandle = Lane<T>*;

  QueueHead(LaneSet<T>& lanes, LaneSupply<T>& supply, const CloseFlag& closing, bool sized,
            bool evicting, std::uint64_t initial_position) noexcept
      : lanes_(lanes),
        supply_(supply),
        closing_(closing),
        sized_(sized),
        evicting_(evicting),
        position_(initial_position) {}
  QueueHead(const QueueHead&) = delete;
  QueueHead& operator=(const QueueHead&) = delete;

  // Moves up to `max` elements into `out(T&&)`, visiting the lanes round-robin; returns how
  // many. `out` must not throw.
  template <class Out>
  std::size_t pop(std::size_t max, Out&& out) noexcept {
    return pop_runs(max, nullptr, [&out](T* first, std::size_t n) {
      for (std::size_t i = 0; i < n; ++i) out(std::move(first[i]));
    });
  }

  // As pop(): appends up to `max` elements to `batch`, each contiguous run at once (one memmove
  // when T is trivially copyable). `batch` must have room for them reserved. With a `budget`
  // (sized queues) it stops before the first element whose size does not fit in it.
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

  // Moves up to `max` elements out as contiguous runs, `take(first, n)`, then destroys them.
  template <class Take>
  std::size_t pop_runs(std::size_t max, ByteBudget* budget, Take&& take) noexcept {
    if (evicting_) head_lock_.lock();
    std::size_t total = 0;
    std::uint64_t bytes = 0;
    for (unsigned k = 0; k < kLanes && total < max && !(budget && budget->stopped); ++k) {
      Lane<T>& lane = lanes_[(start_lane_ + k) % kLanes];
      total += lane.pop(max - total, take, budget, bytes, supply_.blocks, sized_);
    }
    start_lane_ = (start_lane_ + 1) % kLanes;
    if (total != 0) {
      position_.store(position_.load(std::memory_order_relaxed) + total, std::memory_order_release);
      // Under the lock: an evictor that finds every lane empty finds their credits back.
      if (supply_.byte_bound) supply_.bytes.give(bytes);
      supply_.slots.give(total);
    }
    if (evicting_) head_lock_.unlock();
    return total;
  }

  // Events taken by the consumer so far (evictions are not counted), from the initial position.
  std::uint64_t position() const noexcept { return position_.load(std::memory_order_acquire); }

  // Producer of `own`, refused for want of space (evicting queues only): removes the oldest
  // element of its own lane, or if that is empty of the other lanes in turn (starting where the
  // consumer goes next), keeps for `own` what its push lacks of what that frees (the rest goes
  // back to the pools), then calls `report(T&&)` with it, holding no lock. Returns false, taking
  // nothing, when nothing is queued or the queue is closed. Blocks only on the head lock.
  // `report` must not throw. wait_evictions_reported() waits for the reports under way.
  template <class Report>
  bool evict_oldest(LaneHandle own, std::uint64_t need_bytes, Report&& report) noexcept {
    std::optional<T> victim;
    const auto out = [&victim](T* first, std::size_t) { victim.emplace(std::move(*first)); };
    std::uint64_t bytes = 0;
    unsigned epoch = 0;
    head_lock_.lock();
    if (!closing_.closed()) {
      for (unsigned k = 0; k <= kLanes && !victim; ++k) {
        Lane<T>& lane = k == 0 ? *own : lanes_[(start_lane_ + k - 1) % kLanes];
        if (lane.published() == lane.consumed()) continue;
        epoch = epochs_.enter();  // before the element is seen gone
        lane.pop(1, out, nullptr, bytes, supply_.blocks, sized_);
      }
    }
    head_lock_.unlock();
    if (!victim) return false;
    keep_for(*own, bytes, need_bytes);
    report(std::move(*victim));
    victim.reset();
    epochs_.leave(epoch);
    return true;
  }

  // Any thread: waits until every eviction whose element left the queue before the call has
  // been reported, or until `deadline` (false then); later evictions are not waited for.
  bool wait_evictions_reported(std::optional<SteadyClock::time_point> deadline) {
    return !evicting_ || epochs_.wait_reported(head_lock_, deadline);
  }
  bool evictions_reported() const noexcept { return epochs_.reported(); }

  void reset_lock_in_child() noexcept { head_lock_.reset_in_child(); }

 private:
  static constexpr unsigned kLanes = LaneSet<T>::kLanes;

  // After an eviction of `bytes`: only what `own` lacks for its push stays with it (a slot if it
  // has none, the bytes it needs); the rest goes back to the pools, so an evicting lane holds no
  // more in reserve than any other.
  void keep_for(Lane<T>& own, std::uint64_t bytes, std::uint64_t need_bytes) noexcept {
    const bool shared = lanes_.is_shared(own);
    if (shared) lanes_.shared_lock().lock();
    const bool kept_slot = own.keep_freed_slot();
    std::uint64_t kept_bytes = 0;
    if (supply_.byte_bound) {
      const std::uint64_t has = own.byte_reserve().held();
      kept_bytes = std::min(bytes, need_bytes > has ? need_bytes - has : 0);
      own.byte_reserve().add(kept_bytes);
    }
    if (shared) lanes_.shared_lock().unlock();
    if (!kept_slot) supply_.slots.give(1);
    if (supply_.byte_bound) supply_.bytes.give(bytes - kept_bytes);
  }

  LaneSet<T>& lanes_;
  LaneSupply<T>& supply_;
  const CloseFlag& closing_;
  const bool sized_;
  const bool evicting_;
  alignas(kCacheLine) std::atomic<std::uint64_t> position_;
  unsigned start_lane_ = 0;
  SpinLock head_lock_;
  EvictionEpochs epochs_;
};

}  // namespace buffered::detail
