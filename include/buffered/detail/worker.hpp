// The batching worker: takes events out of the ring into batches and dispatches them.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "completion.hpp"
#include "counters.hpp"
#include "deadline.hpp"
#include "delivery.hpp"
#include "dispatch_pool.hpp"
#include "mpsc_ring.hpp"
#include "owner.hpp"
#include "parker.hpp"
#include "position.hpp"
#include "reporter.hpp"
#include "stop_state.hpp"

namespace buffered::detail {

// One thread (made by start()) loops:
//   take a run of published events into the batch (at most `max_batch`), then
//   - past a stop deadline: abandon the batch and everything queued, and finish;
//   - batch full, or its first event has waited `max_batch_wait`, or a flush wants it, or a
//     stop was requested: dispatch it (sync: Delivery on this thread; async: to the pool, waiting
//     for a free slot) and go on;
//   - stopping and nothing is left: finish;
//   - otherwise park until the batch can fill (Parker threshold) or its linger deadline.
// Finishing joins the pool, then calls `on_finish` (the backend shuts its delegate down there),
// then marks the Completion complete. An idle worker sleeps without a timeout.
//
// Thread safety: start()/join() from the lifecycle (one thread at a time); request_flush(),
// abandon_remaining(), undispatched() and ran() from any thread. Nothing allocates after
// construction but start() (the threads).
template <class Event, class Delegate>
class Worker {
 public:
  using Clock = std::chrono::steady_clock;
  using Batch = std::vector<Event>;

  // What the worker works with; all owned by the backend and outliving the worker.
  struct Parts {
    MpscRing<Event>& ring;
    Parker& parker;
    SpaceWaiters& space;
    Completion& completion;
    StopState& stop;
    Counters& counters;
    Delivery<Event, Delegate>& delivery;
    const Reporter<Event>& report;
  };

  // Allocates the batch buffers (and, async, the pool's). `on_finish` runs on the worker thread
  // after the last delegate call has returned.
  Worker(Parts parts, std::size_t max_batch, std::chrono::nanoseconds max_batch_wait,
         std::size_t async_threads, const void* owner, std::function<void()> on_finish)
      : p_(parts),
        max_batch_(max_batch),
        max_batch_wait_(max_batch_wait),
        owner_(owner),
        on_finish_(std::move(on_finish)) {
    if (async_threads != 0) {
      pool_ = std::make_unique<DispatchPool<Batch>>(
          async_threads, max_batch_,
          [this](Batch& batch, std::uint64_t first) {
            settle(p_.delivery.deliver(batch), first);
            p_.completion.batch_finished(offset(first));
          },
          [this] { p_.parker.signal(); });
    } else {
      sync_batch_.reserve(max_batch_);
    }
    abandon_chunk_.reserve(max_batch_);
  }

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() { join(); }

  // Makes the dispatch threads (async), then the worker thread. If any cannot be made, the ones
  // made are joined and the exception (std::system_error, std::bad_alloc) propagates: the
  // worker is then as before, and start() may be called again.
  void start() {
    if (pool_) pool_->start([this] { current_owner = owner_; });
    try {
      thread_ = std::thread([this] { main(); });
    } catch (...) {
      if (pool_) pool_->stop_and_join();  // no job was submitted: its threads just end
      throw;
    }
  }

  void join() {
    if (thread_.joinable()) thread_.join();
  }

  // The worker thread has started (it may already have finished).
  bool ran() const noexcept { return ran_.load(std::memory_order_acquire); }

  // Asks for the batch holding event offset `target - 1` and all before it to go at once.
  // Any thread; the caller then signals the parker.
  void request_flush(std::uint64_t target) noexcept {
    std::uint64_t wanted = flush_target_.load(std::memory_order_relaxed);
    while (wanted < target &&
           !flush_target_.compare_exchange_weak(wanted, target, std::memory_order_release)) {
    }
  }

  // Events the worker holds outside any delegate call (its forming batch).
  std::size_t undispatched() const noexcept {
    return undispatched_.load(std::memory_order_acquire);
  }

  // Reports everything still in the (closed) ring as abandoned, in chunks of up to a batch. Any
  // thread; serialized with the worker's consumption by consumer_mu_, which also guards the
  // chunk buffer (reserved by the constructor, so this never allocates or throws).
  void abandon_remaining() noexcept {
    {
      std::lock_guard<std::mutex> lock(consumer_mu_);
      const std::uint64_t end = p_.ring.tail();
      const std::uint64_t head = p_.ring.consumer_head();
      if (head != end) {
        p_.counters.abandoned_any.store(true, std::memory_order_release);
        p_.completion.abandoning_from(offset(head));
        Batch& chunk = abandon_chunk_;
        Backoff backoff;
        while (p_.ring.consumer_head() != end) {
          const std::size_t n = p_.ring.pop_run(
              max_batch_ - chunk.size(), [&chunk](Event&& e) { chunk.push_back(std::move(e)); });
          if (!chunk.empty() &&
              (chunk.size() == max_batch_ || n == 0 || p_.ring.consumer_head() == end)) {
            p_.counters.abandoned.fetch_add(chunk.size(), std::memory_order_relaxed);
            p_.report(ErrorKind::abandoned, chunk);
            chunk.clear();
          }
          if (n == 0) {
            backoff.pause(std::nullopt);  // a producer between claim and publish
          } else {
            backoff.reset();
          }
        }
      }
    }
    p_.completion.notify();
  }

  // Offset of a ring position from the first position ever: what Completion and flush count in.
  std::uint64_t offset(std::uint64_t position) const noexcept {
    return position_distance(p_.ring.initial_position(), position);
  }

 private:
  void main() {
    ran_.store(true, std::memory_order_release);
    const OwnerScope scope(owner_);
    Batch batch = pool_ ? pool_->take_buffer() : std::move(sync_batch_);
    std::uint64_t first = 0;  // ring position of batch.front()
    Clock::time_point linger_deadline{};
    Backoff backoff;
    for (;;) {
      const bool was_empty = batch.empty();
      std::size_t taken = 0;
      std::uint64_t head = 0;  // read under the lock: a shutdown past its deadline may move it
      {
        std::lock_guard<std::mutex> lock(consumer_mu_);
        if (was_empty) first = p_.ring.consumer_head();
        taken = p_.ring.pop_run(max_batch_ - batch.size(),
                                [&batch](Event&& e) { batch.push_back(std::move(e)); });
        head = p_.ring.consumer_head();
        if (taken != 0) {
          p_.counters.pending.fetch_add(taken, std::memory_order_relaxed);
          undispatched_.store(batch.size(), std::memory_order_release);
          p_.space.notify_if_waiting();
        }
      }
      if (taken != 0) backoff.reset();
      if (was_empty && !batch.empty()) {
        linger_deadline =
            deadline_after(Clock::now(), max_batch_wait_).value_or(Clock::time_point::max());
      }
      const bool stop = p_.stop.stopping();
      if (stop && p_.stop.past_deadline()) {
        abandon_batch(batch, first);
        abandon_remaining();
        break;
      }
      if (batch.size() >= max_batch_ ||
          (!batch.empty() && (stop || flush_wanted(first) || Clock::now() >= linger_deadline))) {
        dispatch(batch, first);
        continue;
      }
      const std::uint64_t tail = p_.ring.tail();
      if (batch.empty() && stop && tail == head) break;  // drained
      std::optional<Clock::time_point> wake_by;
      if (!batch.empty()) wake_by = linger_deadline;
      if (stop) wake_by = earlier(wake_by, p_.stop.deadline());
      const std::uint64_t threshold =
          position_add(head, batch.empty() ? 1 : max_batch_ - batch.size());
      if (position_reached(tail, threshold)) {
        // Enough is claimed to go on, but `head` is not published yet: its producer is between
        // claim and publish (or was pre-empted there). Poll politely; chasing producers one
        // event at a time is what this avoids otherwise, by parking until the batch can fill.
        backoff.pause(wake_by);
        continue;
      }
      p_.parker.arm(threshold);
      if (!position_reached(p_.ring.tail(), threshold)) p_.parker.park(wake_by);
      p_.parker.disarm();
    }
    if (pool_) pool_->stop_and_join();
    on_finish_();
    p_.completion.mark_complete(offset(p_.ring.tail()));
  }

  bool flush_wanted(std::uint64_t first) const noexcept {
    return flush_target_.load(std::memory_order_acquire) > offset(first);
  }

  void dispatch(Batch& batch, std::uint64_t first) {
    const std::uint64_t next = offset(first) + batch.size();
    if (!p_.delivery.take_token()) {
      abandon_batch(batch, first);
      return;
    }
    if (!pool_) {
      p_.counters.waiting.fetch_add(1, std::memory_order_relaxed);  // before it stops counting
      undispatched_.store(0, std::memory_order_release);            // as undispatched
      p_.completion.notify();
      settle(p_.delivery.deliver(batch), first);
      batch.clear();
      p_.completion.batch_done(next);
      return;
    }
    for (;;) {
      // Checked after a slot is free too: one freed at the deadline must not start a call.
      if (p_.stop.past_deadline()) {
        abandon_batch(batch, first);
        return;
      }
      if (pool_->has_free_slot()) break;
      p_.parker.park(p_.stop.stopping() ? p_.stop.deadline() : std::nullopt);
    }
    p_.counters.waiting.fetch_add(1, std::memory_order_relaxed);  // as in the sync case
    undispatched_.store(0, std::memory_order_release);
    p_.completion.batch_submitted(offset(first), next);
    pool_->submit(std::move(batch), first);
    batch = pool_->take_buffer();
  }

  // A batch that ended abandoned (its retry was cut short by a deadline) must be known to
  // flush() waiters before the batch counts as done.
  void settle(typename Delivery<Event, Delegate>::Settled how, std::uint64_t first) noexcept {
    if (how == Delivery<Event, Delegate>::Settled::abandoned) {
      p_.completion.abandoning_from(offset(first));
    }
  }

  void abandon_batch(Batch& batch, std::uint64_t first) {
    if (batch.empty()) return;
    const std::uint64_t n = batch.size();
    p_.completion.abandoning_from(offset(first));
    p_.delivery.abandon(batch);
    batch.clear();
    undispatched_.store(0, std::memory_order_release);
    p_.completion.batch_done(offset(first) + n);
  }

  Parts p_;
  const std::size_t max_batch_;
  const std::chrono::nanoseconds max_batch_wait_;
  const void* const owner_;
  const std::function<void()> on_finish_;
  std::unique_ptr<DispatchPool<Batch>> pool_;
  Batch sync_batch_;
  Batch abandon_chunk_;     // guarded by consumer_mu_
  std::mutex consumer_mu_;  // who takes events out of the ring: the worker, or shutdown at its
                            // deadline
  std::atomic<std::size_t> undispatched_{0};
  // Memory ordering: flush() stores the target (release) and then signals the parker, whose
  // mutex orders the store before the worker's next check; the worker loads it (acquire) after
  // every wake-up, so a request is never missed by a parked worker.
  std::atomic<std::uint64_t> flush_target_{0};
  std::atomic<bool> ran_{false};
  std::thread thread_;
};

}  // namespace buffered::detail
