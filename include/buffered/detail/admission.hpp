// The producer's path: an offer from process_event into its lane, and what a refusal does next.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>

#include "../config.hpp"
#include "config_check.hpp"
#include "deadline.hpp"
#include "ledger.hpp"
#include "owner.hpp"
#include "parker.hpp"
#include "sharded_queue.hpp"
#include "test_hooks.hpp"

namespace buffered::detail {

// offer() is the whole path of an accepted event:
//   the thread's cached exclusive lane (no byte bound) -> push -> the parker's one-load wake
//   check; otherwise (first push of a thread, the shared lane, byte bounds: out of line) the
//   event's size, too_large, the thread's lane, push, wake check.
// A push refused `full` wakes a consumer waiting for more, takes back reserves that idle lanes
// hold (once), and then, by OverflowPolicy: drop_newest gives up; drop_oldest evicts queued
// events one at a time (each reported through the Ledger on this thread) until it fits; block
// waits for space until BatchConfig::block_timeout. The caller reports what is still refused
// with refuse().
//
// It owns what producers write to and wake: the buffer, the consumer's parker and the waiters
// for space (the worker and the facade use them through queue(), parker() and space()), held
// here so that the producer's fast path reaches them at fixed offsets, with no pointer to load.
//
// Thread-safe: any number of producers. Never allocates (byte_size aside); blocks only as the
// policy says; throws only what byte_size throws. Nothing is moved from an event unless it was
// accepted, so the caller may report (or retry) it.
template <class Event>
class Admission {
 public:
  using ByteSize = std::function<std::size_t(const Event&)>;
  using LaneHandle = typename ShardedQueue<Event>::LaneHandle;

  // `config` checked (config_check.hpp); `owner` is the backend (see owner.hpp). Allocates the
  // buffer (std::bad_alloc reaches the caller).
  Admission(const BatchConfig& config, ByteSize byte_size, Ledger<Event>& ledger, const void* owner)
      : queue_(config.buffer_size, test_hooks::start_position(),
               QueueOptions{config.max_buffer_bytes, has_byte_bound(config),
                            config.overflow == OverflowPolicy::drop_oldest, &Admission::lane_added,
                            this}),
        ledger_(ledger),
        byte_size_(std::move(byte_size)),
        sized_(has_byte_bound(config)),
        max_event_bytes_(max_event_bytes(config)),
        overflow_(config.overflow),
        block_timeout_(config.block_timeout),
        owner_(owner) {}
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;

  ShardedQueue<Event>& queue() noexcept { return queue_; }
  const ShardedQueue<Event>& queue() const noexcept { return queue_; }
  Parker& parker() noexcept { return parker_; }
  SpaceWaiters& space() noexcept { return space_; }

  template <class E>
  [[gnu::always_inline]] PushResult offer(E&& event) {
    LaneHandle lane = nullptr;
    if (queue_.cached_lane(lane)) [[likely]] {
      const PushResult result = queue_.push_exclusive(lane, std::forward<E>(event));
      if (result == PushResult::ok) [[likely]] {
        parker_.notify_published([lane] { return lane->queued(); });
        return result;
      }
      return refused<false>(result, lane, 0, std::forward<E>(event));
    }
    return offer_slow(std::forward<E>(event));
  }

  // As offer(), from a copy made where a copy can throw (before anything is taken).
  [[gnu::always_inline]] PushResult offer_copy(const Event& event) {
    if constexpr (std::is_nothrow_copy_constructible_v<Event>) {
      return offer(event);  // constructed in its slot: nothing can throw after the claim
    } else {
      Event copy(event);
      return offer(std::move(copy));
    }
  }

  // Counts and reports events that offer() refused (`result` not ok), all with its kind.
  void refuse(PushResult result, std::span<const Event> events) {
    ledger_.refused(result == PushResult::full        ? ErrorKind::buffer_full
                    : result == PushResult::too_large ? ErrorKind::too_large
                                                      : ErrorKind::shut_down,
                    events);
  }

 private:
  // A producer thread took a new lane: a parked worker computes its thresholds again.
  static void lane_added(void* self) noexcept {
    static_cast<Admission*>(self)->parker_.notify_lanes_changed();
  }

  // Not the cached lane: a thread's first push, the shared lane, or byte bounds.
  template <class E>
  [[gnu::noinline]] PushResult offer_slow(E&& event) {
    return sized_ ? offer_into_lane<true>(std::forward<E>(event))
                  : offer_into_lane<false>(std::forward<E>(event));
  }

  template <bool kSized, class E>
  [[gnu::always_inline]] PushResult offer_into_lane(E&& event) {
    std::uint64_t bytes = 0;
    if constexpr (kSized) {
      bytes = byte_size_ ? byte_size_(std::as_const(event)) : sizeof(Event);
      if (bytes > max_event_bytes_) return PushResult::too_large;
    }
    const LaneHandle lane = queue_.lane_of_thread();
    if (lane == nullptr) return PushResult::closed;
    const PushResult result = push_once<kSized>(lane, bytes, std::forward<E>(event));
    if (result == PushResult::ok) return result;
    return refused<kSized>(result, lane, bytes, std::forward<E>(event));
  }

  // One push into `lane` and, if it succeeded, the wake-up check.
  template <bool kSized, class E>
  [[gnu::always_inline]] PushResult push_once(LaneHandle lane, std::uint64_t bytes, E&& event) {
    const PushResult result = queue_.template push<kSized>(lane, bytes, std::forward<E>(event));
    if (result != PushResult::ok) return result;
    if constexpr (kSized) {
      parker_.notify_published_sized([lane] { return lane->queued(); },
                                     [lane] { return lane->queued_bytes(); });
    } else {
      parker_.notify_published([lane] { return lane->queued(); });
    }
    return result;
  }

  template <bool kSized, class E>
  [[gnu::noinline]] PushResult refused(PushResult result, LaneHandle lane, std::uint64_t bytes,
                                       E&& event) {
    if (result != PushResult::full) return result;
    parker_.notify_full();
    // The shared lane's reserve, or other threads' byte reserves, may be what is missing: take
    // them back, once.
    if (queue_.reclaim(bytes)) {
      result = push_once<kSized>(lane, bytes, std::forward<E>(event));
      if (result != PushResult::full) return result;
    }
    if (overflow_ == OverflowPolicy::drop_oldest && current_evictor != owner_) {
      return offer_evicting<kSized>(lane, bytes, std::forward<E>(event));
    }
    if (overflow_ == OverflowPolicy::block && current_owner != owner_) {
      return offer_blocking<kSized>(lane, bytes, std::forward<E>(event));
    }
    return result;
  }

  // drop_oldest: evict one queued event at a time until the new one fits. Each eviction keeps
  // what it frees on this thread's lane, and the push that uses it runs before the victim is
  // reported (on this thread, with no lock held), so a handler that offers cannot take it; offers
  // from inside that report do not evict (they are refused when the buffer is full). Bounded: at
  // most one eviction more than the events queued when it started. When nothing is left to
  // evict, the consumer may just have taken it all (its credits are then back): one more try.
  // Full only if that fails too, which takes several producers (credits they reserved) or a
  // concurrent one that took the space.
  template <bool kSized, class E>
  PushResult offer_evicting(LaneHandle lane, std::uint64_t bytes, E&& event) {
    const EvictorScope scope(owner_);
    std::size_t budget = queue_.size() + 1;
    for (bool evicted_last = true;;) {
      PushResult result = PushResult::full;
      const bool evicted = queue_.evict_oldest(lane, bytes, [&, this](Event&& victim) noexcept {
        try {
          result = push_once<kSized>(lane, bytes, std::forward<E>(event));
        } catch (...) {
          result = PushResult::ok;  // only the wake-up after a push can throw
        }
        ledger_.evicted(victim);
      });
      if (evicted) {
        if (result != PushResult::full || --budget == 0) return result;
        evicted_last = true;
        continue;
      }
      if (!evicted_last || queue_.closed()) {
        return queue_.closed() ? PushResult::closed : PushResult::full;
      }
      evicted_last = false;
      result = push_once<kSized>(lane, bytes, std::forward<E>(event));
      if (result != PushResult::full) return result;
    }
  }

  template <bool kSized, class E>
  PushResult offer_blocking(LaneHandle lane, std::uint64_t bytes, E&& event) {
    const auto deadline = deadline_after(SteadyClock::now(), block_timeout_);
    for (;;) {
      // Every byte reserve comes with a push, so the worker notifies after it; reclaiming on
      // each check means an idle thread's reserve never keeps this event out.
      const bool ready = space_.wait(
          [this, bytes] {
            queue_.reclaim_bytes(bytes);
            return queue_.closed() || queue_.has_space(bytes);
          },
          deadline);
      const PushResult result = push_once<kSized>(lane, bytes, std::forward<E>(event));
      if (result == PushResult::ok || result == PushResult::closed) return result;
      parker_.notify_full();
      if (!ready && deadline && SteadyClock::now() >= *deadline) return result;
    }
  }

  ShardedQueue<Event> queue_;
  Parker parker_;
  SpaceWaiters space_;
  Ledger<Event>& ledger_;
  const ByteSize byte_size_;
  const bool sized_;                     // a byte bound is set: events carry their size
  const std::uint64_t max_event_bytes_;  // larger events are too_large
  const OverflowPolicy overflow_;
  const std::chrono::nanoseconds block_timeout_;
  const void* const owner_;
};

}  // namespace buffered::detail
