// The batching worker: takes events out of the queue into batches and dispatches them.
#pragma once

#include <algorithm>
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
#include "deadline.hpp"
#include "dispatcher.hpp"
#include "fork_guard.hpp"
#include "ledger.hpp"
#include "owner.hpp"
#include "parker.hpp"
#include "sharded_queue.hpp"
#include "spin_wait.hpp"
#include "stop_state.hpp"

namespace buffered::detail {

// One thread (made by start()) loops:
//   take the published events into the batch (at most `max_batch`, round-robin over lanes), then
//   - past a stop deadline: abandon the batch and everything queued, and finish;
//   - a flush request whose events are all taken: dispatch the batch and tell the flushers
//     which offset to wait for;
//   - batch full (max_batch events, or the next event would take it past max_batch_bytes), or
//     its first event has waited `max_batch_wait`, or a stop was requested: dispatch it
//     (dispatcher.hpp) and go on;
//   - stopping, and the queue is drained (no push under way either): finish;
//   - otherwise park until some lane holds its share of what the batch lacks, in events or in
//     bytes (Parker thresholds), or the linger deadline.
// Flush: a request is a number; the worker notes what every lane has published when it sees
// the request (those are the events accepted before flush() was called), and serves the request
// once it has taken them all.
// Finishing joins the pool, then calls `on_finish` (the backend shuts its delegate down there),
// then marks the Completion complete. An idle worker sleeps without a timeout.
//
// Thread safety: start()/join() from the lifecycle (one thread at a time); request_flush(),
// abandon_remaining(), undispatched() and ran() from any thread. Nothing allocates after
// construction but start() (the threads).
template <class Event, class Delegate>
class Worker {
 public:
  using Batch = std::vector<Event>;

  // What the worker works with; all owned by the backend and outliving the worker.
  struct Parts {
    ShardedQueue<Event>& queue;
    Parker& parker;
    SpaceWaiters& space;
    Completion& completion;
    StopState& stop;
    Counters& counters;
    Delivery<Event, Delegate>& delivery;
    Ledger<Event>& ledger;
  };

  // Allocates the batch buffers (and, async, the pool's). `on_finish` runs on the worker thread
  // after the last delegate call has returned.
  // `max_batch_bytes` 0: no byte bound on a batch (else the queue must be sized).
  Worker(Parts parts, std::size_t max_batch, std::size_t max_batch_bytes,
         std::chrono::nanoseconds max_batch_wait, std::size_t async_threads, const void* owner,
         std::function<void()> on_finish)
      : p_(parts),
        max_batch_(max_batch),
        max_batch_bytes_(max_batch_bytes),
        max_batch_wait_(max_batch_wait),
        owner_(owner),
        on_finish_(std::move(on_finish)),
        dispatcher_(parts.delivery, parts.completion, parts.stop, parts.parker, parts.counters,
                    undispatched_, max_batch, async_threads) {
    abandon_chunk_.reserve(max_batch_);
  }

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() { join(); }

  // Makes the dispatch threads (async), then the worker thread. If any cannot be made, the ones
  // made are joined and the exception (std::system_error, std::bad_alloc) propagates: the
  // worker is then as before, and start() may be called again.
  void start() {
    dispatcher_.start(owner_);
    try {
      thread_ = std::thread([this] { main(); });
    } catch (...) {
      dispatcher_.stop_and_join();  // no job was submitted: its threads just end
      throw;
    }
  }

  // Joins the worker thread; in a forked child, where it does not exist, forgets it.
  void join() noexcept { join_or_forget(thread_, generation_); }

  bool ran() const noexcept { return ran_.load(std::memory_order_acquire); }  // it started

  // Asks for every event published so far to be taken and the batch holding them to go at
  // once; returns the request's number (Completion::wait_flush_target). Any thread; the caller
  // then signals the parker.
  std::uint64_t request_flush() noexcept {
    return flush_requested_.fetch_add(1, std::memory_order_acq_rel) + 1;
  }

  // Events the worker holds outside any delegate call (its forming batch).
  std::size_t undispatched() const noexcept {
    return undispatched_.load(std::memory_order_acquire);
  }

  // Reports everything still in the (closed) queue as abandoned, in chunks of up to a batch,
  // waiting for pushes still under way. Any thread; serialized with the worker's consumption by
  // consumer_mu_, which also guards the chunk buffer (reserved by the constructor, so this never
  // allocates or throws).
  void abandon_remaining() noexcept {
    {
      std::lock_guard<std::mutex> lock(consumer_mu_);
      Batch& chunk = abandon_chunk_;
      SpinWait spin;
      bool marked = false;
      for (;;) {
        const std::uint64_t first = p_.queue.position();
        const std::size_t n = p_.queue.pop_into(max_batch_ - chunk.size(), chunk);
        if (n != 0 && !marked) {
          p_.completion.abandoning_from(offset(first));
          marked = true;
        }
        if (!chunk.empty() && (chunk.size() == max_batch_ || n == 0)) {
          p_.ledger.abandoned_queued(chunk);
          chunk.clear();
        }
        if (n != 0) {
          spin.reset();
          continue;
        }
        if (p_.queue.drained()) break;
        spin.pause(std::nullopt);  // a push under way
      }
    }
    p_.completion.notify();
  }

  // Offset of a consumer position from the first position ever: what Completion and flush
  // count in.
  std::uint64_t offset(std::uint64_t position) const noexcept {
    return position - p_.queue.initial_position();
  }

 private:
  void main() {
    ran_.store(true, std::memory_order_release);
    const OwnerScope scope(owner_);
    Batch batch = dispatcher_.take_buffer();
    std::uint64_t first = 0;  // consumer position of batch.front()
    SteadyClock::time_point linger_deadline{};
    SpinWait spin;
    typename ShardedQueue<Event>::Snapshot sweep{};  // what a flush waits for, per lane
    std::uint64_t sweeping = 0;                      // the flush request being served, or 0
    std::uint64_t served = 0;
    ByteBudget budget{max_batch_bytes_, false};  // what is left of max_batch_bytes
    for (;;) {
      const std::uint64_t requested = flush_requested_.load(std::memory_order_acquire);
      if (sweeping == 0 && requested != served) {
        p_.queue.snapshot(sweep);
        sweeping = requested;
      }
      const bool was_empty = batch.empty();
      if (was_empty) budget = ByteBudget{max_batch_bytes_, false};
      const std::size_t taken = take(batch, first, budget);
      if (taken != 0) spin.reset();
      if (was_empty && !batch.empty()) {
        linger_deadline = deadline_after(SteadyClock::now(), max_batch_wait_)
                              .value_or(SteadyClock::time_point::max());
      }
      const bool stop = p_.stop.stopping();
      if (stop && p_.stop.past_deadline()) {
        dispatcher_.abandon(batch, offset(first));
        abandon_remaining();
        break;
      }
      if (sweeping != 0 && p_.queue.passed(sweep)) {
        // Everything the flush waits for is taken: in earlier batches or in this one.
        const std::uint64_t target = offset(p_.queue.position());
        if (!batch.empty()) dispatcher_.dispatch(batch, offset(first));
        p_.completion.flush_served(sweeping, target);
        served = sweeping;
        sweeping = 0;
        continue;
      }
      const bool bytes_full = budget.stopped || (max_batch_bytes_ != 0 && budget.left == 0);
      if (batch.size() >= max_batch_ || (bytes_full && !batch.empty()) ||
          (!batch.empty() && (stop || SteadyClock::now() >= linger_deadline))) {
        dispatcher_.dispatch(batch, offset(first));
        continue;
      }
      if (batch.empty() && stop) {
        if (p_.queue.drained()) break;
        spin.pause(p_.stop.deadline());  // a push under way
        continue;
      }
      wait_for_more(batch, budget, taken != 0, served, linger_deadline);
    }
    dispatcher_.stop_and_join();
    on_finish_();
    p_.completion.mark_complete(offset(p_.queue.position()));
  }

  // One look at the lanes: appends what they published to `batch` (within what is left of
  // the batch and of `budget`), setting `first` when the batch was empty. Serialized with a
  // shutdown's abandon_remaining() by consumer_mu_.
  std::size_t take(Batch& batch, std::uint64_t& first, ByteBudget& budget) {
    std::lock_guard<std::mutex> lock(consumer_mu_);
    if (batch.empty()) first = p_.queue.position();
    const std::size_t taken = p_.queue.pop_into(max_batch_ - batch.size(), batch,
                                                max_batch_bytes_ != 0 ? &budget : nullptr);
    if (taken != 0) {
      p_.ledger.taken(taken);
      undispatched_.store(batch.size(), std::memory_order_release);
      p_.space.notify_if_waiting();
    }
    return taken;
  }

  // Nothing to dispatch yet: spin briefly (only right after a round that took events), else
  // park until some lane holds its share of what the batch lacks (in events, or in bytes),
  // until `linger_deadline` when the batch holds events, or until signalled.
  void wait_for_more(const Batch& batch, const ByteBudget& budget, bool took, std::uint64_t served,
                     SteadyClock::time_point linger_deadline) {
    std::optional<SteadyClock::time_point> wake_by;
    if (!batch.empty()) wake_by = linger_deadline;
    // Each lane's share of what the batch lacks: whichever lane gets there first wakes us.
    const std::uint64_t lacking = batch.empty() ? 1 : max_batch_ - batch.size();
    const unsigned lanes = p_.queue.active_lanes();
    const std::uint64_t threshold = (lacking + lanes - 1) / lanes;
    std::uint64_t byte_threshold = Parker::kDisarmed;
    if (max_batch_bytes_ != 0 && !batch.empty()) {
      byte_threshold = std::max<std::uint64_t>((budget.left + lanes - 1) / lanes, 1);
    }
    if (took && spin_until_reached(threshold, byte_threshold, served)) return;
    // The last look, after arm()'s fence: anything published since the pop (the per-lane
    // thresholds count only what comes after it), a lane that registered since `lanes` was
    // read (its events would not reach them), or a flush: go round again instead.
    p_.parker.arm(threshold, byte_threshold);
    if (p_.queue.empty() && p_.queue.active_lanes() == lanes &&
        flush_requested_.load(std::memory_order_acquire) == served) {
      p_.parker.park(wake_by);
    }
    p_.parker.disarm();
  }

  // While events flow, the threshold is usually reached within microseconds: poll for up to
  // kSpin instead of parking, which would cost the producer that wakes us a syscall and us a
  // context switch. Only right after a round that took events, so an idle worker never spins.
  bool spin_until_reached(std::uint64_t threshold, std::uint64_t byte_threshold,
                          std::uint64_t served) {
    const auto until = SteadyClock::now() + kSpin;
    for (int i = 1;; ++i) {
      if (p_.queue.any_reached(threshold, byte_threshold)) return true;
      if ((i & 15) == 0 && (SteadyClock::now() >= until || p_.stop.stopping() ||
                            flush_requested_.load(std::memory_order_relaxed) != served)) {
        return false;
      }
      // Look at the lanes only now and then: each look takes the producer's line away from it.
      for (int k = 0; k < kSpinPauses; ++k) cpu_relax();
    }
  }

  static constexpr std::chrono::microseconds kSpin{50};
  static constexpr int kSpinPauses = 8;

  Parts p_;
  const std::size_t max_batch_;
  const std::uint64_t max_batch_bytes_;
  const std::chrono::nanoseconds max_batch_wait_;
  const void* const owner_;
  const std::function<void()> on_finish_;
  std::atomic<std::size_t> undispatched_{0};
  Dispatcher<Event, Delegate> dispatcher_;
  Batch abandon_chunk_;     // guarded by consumer_mu_
  std::mutex consumer_mu_;  // who takes events out of the queue: the worker, or shutdown at its
                            // deadline
  // Memory ordering: flush() increments it and then signals the parker, whose mutex orders the
  // increment before the worker's next check; the worker loads it (acquire) at the top of every
  // round and before it parks, so a request is never missed by a parked worker.
  std::atomic<std::uint64_t> flush_requested_{0};
  std::atomic<bool> ran_{false};
  std::thread thread_;
  const unsigned generation_ = ForkRegistry::generation();
};

}  // namespace buffered::detail
