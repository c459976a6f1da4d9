// BufferedBackend: a bounded, batching, non-blocking buffer in front of a slow sink.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "config.hpp"
#include "detail/admission.hpp"
#include "detail/config_check.hpp"
#include "detail/fork_guard.hpp"
#include "detail/ledger.hpp"
#include "detail/lifecycle.hpp"
#include "detail/sink.hpp"
#include "outcome.hpp"
#include "token_bucket.hpp"
#include "version.hpp"

namespace buffered {

// D is a sink for Event if it has d.process_events(std::span<Event>) or is invocable as
// d(std::span<Event>), either optionally with a second parameter const BatchContext& (the first of
// process_events(span, context), process_events(span), d(span, context), d(span) that it has is
// used). The result may be void, Outcome, or something convertible to bool (false = the batch
// failed, retryable). Optional members, called when present: run(), shutdown(), flush(),
// name() const.
template <class D, class Event>
concept Sink = detail::SinkCall<D, Event>::kValid &&
    detail::SinkResult<typename detail::SinkCall<D, Event>::Result>;

// Wraps a slow sink (the delegate) with a bounded buffer and a batching worker.
//
// Producers on any thread call process_event(s); events wait in a bounded buffer of at most
// `buffer_size` events, one lock-free lane per producer thread. One worker thread takes them
// into batches of at most `max_batch_size`,
// dispatched when full, when the oldest has waited `max_batch_wait`, or on flush/shutdown; an
// optional token bucket paces delegate calls; the delegate runs on the worker (sync) or on a fixed
// pool of `max_in_flight` threads (async), and with BatchConfig::retry a failed batch is offered
// again after a backoff. Every event offered is either delivered to the delegate or reported to
// the error handler exactly once.
//
// Byte bounds (BatchConfig::max_buffer_bytes, max_batch_bytes; the constructor's byte_size
// function gives each event's size, once, when it is offered): the buffer never holds more queued
// bytes than max_buffer_bytes, a batch never more than max_batch_bytes, and an event larger than
// either bound is refused at once as too_large. With OverflowPolicy::drop_oldest a full buffer
// (count or bytes) evicts queued events, oldest first, reporting each as `evicted` on the
// producer's thread, until the new event fits. See sharded_queue.hpp for what "oldest" and the
// bounds mean with several producer threads.
//
// This class is the facade: the public API and its contracts. The rooms behind it, in the order
// an event passes them (README, "How it works"): detail/config_check.hpp, admission.hpp (the
// producer's path), sharded_queue.hpp (the buffer: lane_set.hpp, lane.hpp, block_pool.hpp,
// credit_pool.hpp, close_flag.hpp, queue_head.hpp, eviction.hpp), parker.hpp (waking the
// worker), worker.hpp, dispatcher.hpp, delivery.hpp (one batch and its retries), ledger.hpp (every
// outcome, counted and reported), and lifecycle.hpp (run, flush, shutdown).
//
// Lifecycle: construct (validates the config, allocates the buffers; nothing runs) -> run()
// (starts the delegate, then the threads; if that fails it is all undone and run() may be called
// again) -> shutdown() (refuses new events, delivers everything queued, waits for delegate
// calls, then calls delegate.shutdown()). Events may be offered before run(); they wait. The
// destructor calls shutdown() with no deadline: it returns only once every accepted event has
// been delivered, failed or abandoned and every delegate call has returned. A backend that never
// ran reports its queued events as abandoned and calls no delegate member.
//
// Exceptions: only the constructor (std::invalid_argument for a bad config, std::bad_alloc) and
// run() (what delegate.run() throws, std::bad_alloc, std::system_error when a thread cannot be
// made, std::logic_error after shutdown) throw on their own; process_event(s) throw only what
// copying an Event or the byte_size function throws, flush() only what delegate.flush() throws.
// shutdown(), stats() and the destructor never throw, and nothing after construction and run()
// allocates.
//
// Memory: the buffer of buffer_size events (plus up to a quarter more slots: blocks that lanes
// hold partly filled; and a size per slot with a byte bound), plus batch buffers of
// min(max_batch_size, buffer_size) events: one for the worker (max_in_flight + 1 in async mode) and
// one to report abandoned events in at shutdown.
//
// `Delegate` may be a reference type: the backend then does not own the sink.
template <class Event, class Delegate>
class BufferedBackend {
  using DelegateType = std::remove_reference_t<Delegate>;
  static_assert(std::is_nothrow_move_constructible_v<Event>,
                "BufferedBackend<Event, ...>: Event must be nothrow move-constructible; declare "
                "its move constructor noexcept");
  static_assert(std::is_nothrow_destructible_v<Event>,
                "BufferedBackend<Event, ...>: Event must be nothrow destructible");
  static_assert(
      Sink<DelegateType, Event>,
      "BufferedBackend<Event, Delegate>: Delegate must have process_events(std::span<Event>) "
      "or be callable with std::span<Event> (either optionally with a const BatchContext& "
      "second parameter), returning void, buffered::Outcome or something convertible to bool");

 public:
  using event_type = Event;
  using delegate_type = Delegate;
  // Called with refused, failed or abandoned events. For delegate_failed it is called inside the
  // catch block (std::current_exception() is the cause, or null for a `false` result), and the
  // events are as the delegate left them (it may have moved from them). Exceptions it throws are
  // caught and ignored. It may be called on any thread, including the producer's.
  using error_handler = std::function<void(ErrorKind, std::span<const Event>)>;
  // An event's size for the byte bounds (BatchConfig::max_buffer_bytes, max_batch_bytes), called
  // once per event when it is offered, on the producer's thread, only when a byte bound is set.
  // It must not throw (an exception reaches the caller of process_event(s), nothing claimed).
  using byte_size_function = std::function<std::size_t(const Event&)>;

  // Validates `config` (throws std::invalid_argument naming the field) and allocates the buffer
  // and the batch buffers (std::bad_alloc reaches the caller). Starts no thread and calls no
  // delegate member. A max_batch_size above buffer_size is accepted: a batch then holds at most
  // buffer_size events (a full buffer is a full batch).
  // `byte_size` empty: every event counts sizeof(Event) bytes.
  explicit BufferedBackend(Delegate sink, BatchConfig config = {}, error_handler on_error = {},
                           byte_size_function byte_size = {})
      : delegate_(std::forward<Delegate>(sink)),
        config_(detail::checked_config(config)),
        ledger_(std::move(on_error), this),
        admission_(config_, std::move(byte_size), ledger_, this),
        life_(delegate_, config_, admission_, ledger_, this) {
    fork_node_.on_child = [](void* self) noexcept {
      auto* backend = static_cast<BufferedBackend*>(self);
      backend->admission_.queue().close_in_child();  // refuses offers made in the child
      backend->admission_.parker().disarm_in_child();
    };
    fork_node_.self = this;
    detail::ForkRegistry::add(fork_node_);
  }

  BufferedBackend(const BufferedBackend&) = delete;
  BufferedBackend& operator=(const BufferedBackend&) = delete;

  // shutdown() with no deadline, then joins the threads. Blocks until every delegate call ends.
  // In a process forked from the one that made the backend it returns at once, delivering and
  // reporting nothing: those events are the parent's (see detail/fork_guard.hpp).
  ~BufferedBackend() {
    detail::ForkRegistry::remove(fork_node_);
    if (inherited()) return;
    shutdown();
    life_.join();
  }

  // Calls delegate.run() if present, then starts the worker (and the async dispatch threads).
  // A second call is a no-op; one made while another is starting waits for it. After shutdown()
  // it throws std::logic_error. Thread-safe. delegate.run() is called without any lock held, so
  // flush(), shutdown() and stats() from other threads (or from delegate.run() itself) do not
  // wait for it. Allocates the threads.
  // If anything fails (delegate.run() throws, std::bad_alloc, std::system_error when a thread
  // cannot be made) the exception reaches the caller and the backend is as before the call: the
  // threads already made are joined, delegate.shutdown() is called if delegate.run() had
  // returned, and run() may be called again. If shutdown() was called meanwhile, the queued
  // events are then abandoned as for a backend that never ran.
  void run() {
    if (inherited()) {
      throw std::logic_error("BufferedBackend::run: the backend was inherited through fork()");
    }
    life_.run();
  }

  // Offers copies of `events`, in order. Returns how many were accepted; stops at the first
  // refusal and reports that event and all after it to the error handler in one call (kind
  // buffer_full, shut_down or too_large). Thread-safe. Never blocks with drop_newest; with
  // drop_oldest only on a spin lock shared with the worker, while it evicts (each evicted event
  // is reported on this thread); with block, waits for space per event. Never allocates (the
  // copies aside). If a copy throws, the events before it
  // stay accepted, nothing else is claimed or counted, and the exception propagates.
  std::size_t process_events(std::span<const Event> events) {
    static_assert(std::is_copy_constructible_v<Event>,
                  "BufferedBackend::process_events copies the events: Event must be "
                  "copy-constructible; offer move-only events one by one with "
                  "process_event(std::move(event))");
    for (std::size_t i = 0; i < events.size(); ++i) {
      const detail::PushResult result = admission_.offer_copy(events[i]);
      if (result != detail::PushResult::ok) {
        admission_.refuse(result, events.subspan(i));
        return i;
      }
    }
    return events.size();
  }

  // Offers a copy of `event`; true if accepted, otherwise it is reported and counted. Same
  // blocking, allocation and exception rules as process_events. Thread-safe.
  bool process_event(const Event& event) {
    static_assert(std::is_copy_constructible_v<Event>,
                  "BufferedBackend::process_event(const Event&) copies the event: Event must be "
                  "copy-constructible; pass it as an rvalue, process_event(std::move(event))");
    const detail::PushResult result = admission_.offer_copy(event);
    if (result == detail::PushResult::ok) return true;
    admission_.refuse(result, std::span<const Event>(&event, 1));
    return false;
  }

  // Moves `event` in if accepted; otherwise leaves it intact and reports it. Never throws (but
  // for what byte_size throws). Thread-safe. Blocks as process_events does.
  bool process_event(Event&& event) {
    const detail::PushResult result = admission_.offer(std::move(event));
    if (result == detail::PushResult::ok) return true;
    admission_.refuse(result, std::span<const Event>(&event, 1));
    return false;
  }

  // Blocks until every event accepted before the call has been delivered or failed, or evicted
  // and reported (the partial batch goes at once; batches waiting to retry are waited for), then
  // calls delegate.flush() if present (on this thread) and returns true. Returns false at
  // `timeout`, or if some of those events were abandoned by a shutdown. Returns at once, true only
  // if every one of those events is already delivered, failed or evicted and reported, when the
  // backend is not running: before run(), after shutdown() completed, or once a shutdown deadline
  // has passed. delegate.flush() is never called once delegate.shutdown() has started (flush() then
  // returns true without it: the delegate is being shut down, which flushes it). Called from inside
  // the delegate or the error handler it only requests the flush and returns false. Thread-safe;
  // never allocates; exceptions from delegate.flush() propagate.
  bool flush(std::chrono::nanoseconds timeout = std::chrono::nanoseconds::max()) {
    return !inherited() && life_.flush(timeout);
  }

  // Refuses new events, dispatches everything queued, waits for every delegate call in flight,
  // then calls delegate.shutdown() once. Idempotent; any number of threads may call it at once
  // (the earliest deadline applies to all). At a finite deadline, events still queued are
  // reported as abandoned and the call returns; a delegate call still running then cannot be
  // interrupted: its events stay `pending` until it returns, delegate.shutdown() is called after
  // it, and the destructor waits for that. A batch waiting to retry at the deadline is abandoned,
  // and no new attempt starts after it. Returns true when every accepted event was delivered
  // or failed by the time it returns: false if any was abandoned, if a delegate call outlived the
  // deadline, or for a backend that never ran. Called from inside the delegate or the error
  // handler it starts the shutdown and returns false without waiting. Thread-safe; never throws,
  // never allocates (abandoned events are reported in chunks of up to a batch, from a buffer the
  // constructor reserved); blocks as described.
  bool shutdown(std::chrono::nanoseconds timeout = std::chrono::nanoseconds::max()) noexcept {
    return !inherited() && life_.shutdown(timeout);  // a forked child: nothing of ours runs here
  }

  // A snapshot of the counters. Each is exact; they are read one after another, so while events
  // flow the snapshot is not atomic as a whole. Thread-safe, lock-free, never blocks.
  Stats stats() const noexcept {
    Stats s{};
    ledger_.fill(s);
    const detail::ShardedQueue<Event>& queue = admission_.queue();
    s.accepted = queue.pushed();
    s.queued = queue.size();
    s.queued_bytes = static_cast<std::size_t>(queue.queued_bytes());
    const detail::Counters& calls = life_.counters();
    s.batches = calls.batches.load(std::memory_order_relaxed);
    s.in_flight = calls.in_flight.load(std::memory_order_relaxed);
    s.retries = calls.retries.load(std::memory_order_relaxed);
    return s;
  }

  // "buffered<" + delegate.name() + ">", or "buffered" when the delegate has no name().
  // Allocates the string; thread-safe if the delegate's name() is.
  std::string name() const {
    if constexpr (detail::HasName<DelegateType>) {
      return "buffered<" + std::string(delegate_.name()) + ">";
    } else {
      return "buffered";
    }
  }

  // The wrapped sink. Using it while the backend runs is the caller's business.
  Delegate& delegate() noexcept { return delegate_; }
  const BatchConfig& config() const noexcept { return config_; }

 private:
  // This process is a fork of the one that made the backend: its threads are not here.
  bool inherited() const noexcept { return detail::forked_since(generation_); }

  Delegate delegate_;
  const BatchConfig config_;
  detail::Ledger<Event> ledger_;
  detail::Admission<Event> admission_;  // owns the buffer and how producers wake the worker
  detail::Lifecycle<Event, DelegateType> life_;

  const unsigned generation_ = detail::ForkRegistry::generation();
  detail::ForkRegistry::Node fork_node_;  // linked by the constructor, last
};

}  // namespace buffered
