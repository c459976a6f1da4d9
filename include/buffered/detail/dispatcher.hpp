// Handing a batch to the delegate: on the worker's thread (sync) or to the pool (async).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "completion.hpp"
#include "counters.hpp"
#include "delivery.hpp"
#include "dispatch_pool.hpp"
#include "ledger.hpp"
#include "owner.hpp"
#include "parker.hpp"
#include "stop_state.hpp"

namespace buffered::detail {

// The worker's batch goes through dispatch(): its throttle token first (a stop deadline that
// comes first abandons it), then
//   sync:  Delivery on this thread; the worker takes nothing else meanwhile;
//   async: wait (parked) for one of the pool's `threads` slots, then the pool runs Delivery, and
//          the worker goes on with a fresh buffer from the pool.
// Completion learns where each batch stands (in the worker's hands, in flight, done, abandoned),
// in the offsets it counts in (0 = the first event the worker ever took), so flush() knows what
// is done. A batch counts in Counters::waiting from before it stops counting as `undispatched`
// until Delivery takes it into a call, so a shutdown never sees it in neither place.
//
// Thread safety: dispatch(), abandon(), start() and stop_and_join() from the worker (one
// thread); the pool's threads run run_job(). Allocates only in the constructor (batch buffers)
// and start() (threads).
template <class Event, class Delegate>
class Dispatcher {
 public:
  using Batch = std::vector<Event>;

  // `threads` 0: sync. `undispatched` is the worker's count of events held outside any call.
  Dispatcher(Delivery<Event, Delegate>& delivery, Completion& completion, StopState& stop,
             Parker& parker, Counters& counters, std::atomic<std::size_t>& undispatched,
             std::size_t max_batch, std::size_t threads)
      : delivery_(delivery),
        completion_(completion),
        stop_(stop),
        parker_(parker),
        counters_(counters),
        undispatched_(undispatched) {
    if (threads != 0) {
      pool_ = std::make_unique<DispatchPool<Batch>>(
          threads, max_batch, [this](Batch& batch, std::uint64_t first) { run_job(batch, first); },
          [this] { parker_.signal(); });
    } else {
      sync_batch_.reserve(max_batch);
    }
  }
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Makes the pool's threads (async), each marked as a call of `owner`. On failure the ones made
  // are joined and the exception propagates.
  void start(const void* owner) {
    if (pool_) pool_->start([owner] { current_owner = owner; });
  }
  // Lets every submitted batch finish, then joins the pool's threads (async).
  void stop_and_join() {
    if (pool_) pool_->stop_and_join();
  }

  // The worker's first batch buffer, with room for a batch reserved.
  Batch take_buffer() { return pool_ ? pool_->take_buffer() : std::move(sync_batch_); }

  // Dispatches `batch`, whose first event is at offset `first`; afterwards `batch` is empty
  // (async: a fresh buffer).
  void dispatch(Batch& batch, std::uint64_t first) {
    const std::uint64_t next = first + batch.size();
    if (!delivery_.take_token()) return abandon(batch, first);
    if (!pool_) {
      counted_waiting();
      completion_.notify();  // flush() waiters re-check
      (void)finished(delivery_.deliver(batch), first);
      batch.clear();
      completion_.worker_done(next);
      return;
    }
    for (;;) {
      // Checked after a slot is free too: one freed at the deadline must not start a call.
      if (stop_.past_deadline()) return abandon(batch, first);
      if (pool_->has_free_slot()) break;
      parker_.park(stop_.stopping() ? stop_.deadline() : std::nullopt);
    }
    counted_waiting();
    completion_.dispatched(first, next);
    pool_->submit(std::move(batch), first);
    batch = pool_->take_buffer();
  }

  // Abandons the worker's own batch (a stop deadline came first).
  void abandon(Batch& batch, std::uint64_t first) {
    if (batch.empty()) return;
    const std::uint64_t next = first + batch.size();
    completion_.abandoning_from(first);
    delivery_.abandon(batch);
    batch.clear();
    undispatched_.store(0, std::memory_order_release);
    completion_.worker_done(next);
  }

 private:
  // The batch counts as waiting before it stops counting as undispatched.
  void counted_waiting() {
    counters_.waiting.fetch_add(1, std::memory_order_relaxed);
    undispatched_.store(0, std::memory_order_release);
  }

  // A pool thread: one batch to its end.
  void run_job(Batch& batch, std::uint64_t first) {
    finished(delivery_.deliver(batch), first);
    completion_.dispatch_done(first);
  }

  // A batch that ended abandoned (its retry was cut short by a deadline) must be known to
  // flush() waiters before the batch counts as done.
  Settled finished(Settled how, std::uint64_t first) {
    if (how == Settled::abandoned) completion_.abandoning_from(first);
    return how;
  }

  Delivery<Event, Delegate>& delivery_;
  Completion& completion_;
  StopState& stop_;
  Parker& parker_;
  Counters& counters_;
  std::atomic<std::size_t>& undispatched_;
  std::unique_ptr<DispatchPool<Batch>> pool_;
  Batch sync_batch_;
};

}  // namespace buffered::detail
