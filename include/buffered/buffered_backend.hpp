// BufferedBackend: a bounded, batching, non-blocking buffer in front of a slow sink.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "config.hpp"
#include "detail/completion.hpp"
#include "detail/counters.hpp"
#include "detail/deadline.hpp"
#include "detail/delivery.hpp"
#include "detail/flush_gate.hpp"
#include "detail/fork_guard.hpp"
#include "detail/owner.hpp"
#include "detail/parker.hpp"
#include "detail/reporter.hpp"
#include "detail/sharded_queue.hpp"
#include "detail/sink.hpp"
#include "detail/stop_state.hpp"
#include "detail/test_hooks.hpp"
#include "detail/worker.hpp"
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
// This class is the facade: config validation, the lifecycle, the producer API and stats. The
// parts are in detail/: the buffer (sharded_queue.hpp, lane_registry.hpp), the worker loop
// (worker.hpp), the delivery of one batch with its retries (delivery.hpp), the dispatch pool
// (dispatch_pool.hpp), the throttle (token_bucket.hpp), and how they wait (parker.hpp,
// stop_state.hpp, completion.hpp).
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
        config_(validated(config)),
        byte_size_(std::move(byte_size)),
        report_(std::move(on_error), this),
        sized_(config_.max_buffer_bytes != 0 || config_.max_batch_bytes != 0),
        max_event_bytes_(max_event_bytes(config_)),
        queue_(config_.buffer_size, detail::test_hooks::start_position(),
               detail::QueueOptions{config_.max_buffer_bytes, sized_,
                                    config_.overflow == OverflowPolicy::drop_oldest,
                                    &BufferedBackend::lane_added, this}),
        completion_(config_.async_delegate ? config_.max_in_flight : 0),
        bucket_(make_bucket(config_)),
        delivery_(delegate_, report_, counters_, stop_, bucket_.get(), config_.retry, this),
        worker_({queue_, parker_, space_, completion_, stop_, counters_, delivery_, report_},
                std::min(config_.max_batch_size, config_.buffer_size), config_.max_batch_bytes,
                config_.max_batch_wait, config_.async_delegate ? config_.max_in_flight : 0, this,
                [this] {
                  flush_gate_.close_and_wait();  // no delegate.flush() from here on
                  shutdown_delegate();
                }) {
    fork_node_.on_child = [](void* self) noexcept {
      auto* backend = static_cast<BufferedBackend*>(self);
      backend->queue_.close_in_child();  // refuses offers made in the child
      backend->parker_.disarm_in_child();
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
    worker_.join();
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
    {
      std::unique_lock<std::mutex> lock(life_mu_);
      if (start_ == Start::starting && on_own_thread()) return;  // from inside delegate.run()
      life_cv_.wait(lock, [this] { return start_ != Start::starting; });
      if (shut_) throw std::logic_error("BufferedBackend::run: the backend has been shut down");
      if (start_ == Start::started) return;
      start_ = Start::starting;
    }
    bool delegate_ran = false;
    try {
      if constexpr (detail::HasRun<DelegateType>) {
        const detail::OwnerScope scope(this);
        delegate_.run();
      }
      delegate_ran = true;
      worker_.start();  // on failure it has joined the threads it made
    } catch (...) {
      if (delegate_ran) shutdown_delegate();
      bool shut = false;
      {
        std::lock_guard<std::mutex> lock(life_mu_);
        start_ = Start::idle;
        shut = shut_;
      }
      life_cv_.notify_all();
      if (shut) finish_never_run();  // a shutdown() waits for this
      throw;
    }
    {
      std::lock_guard<std::mutex> lock(life_mu_);
      start_ = Start::started;
    }
    life_cv_.notify_all();
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
      const detail::PushResult result = offer_copy(events[i]);
      if (result != detail::PushResult::ok) {
        refuse(result, events.subspan(i));
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
    const detail::PushResult result = offer_copy(event);
    if (result == detail::PushResult::ok) return true;
    refuse(result, std::span<const Event>(&event, 1));
    return false;
  }

  // Moves `event` in if accepted; otherwise leaves it intact and reports it. Never throws (but
  // for what byte_size throws). Thread-safe. Blocks as process_events does.
  bool process_event(Event&& event) {
    const detail::PushResult result = offer(std::move(event));
    if (result == detail::PushResult::ok) return true;
    refuse(result, std::span<const Event>(&event, 1));
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
    if (inherited()) return false;
    const auto deadline = detail::deadline_after(detail::SteadyClock::now(), timeout);
    if (!started() || completion_.complete() || stop_.past_deadline()) {
      return queue_.size() == 0 && completion_.flushed(offset(queue_.position())) &&
             queue_.evictions_reported();
    }
    const std::uint64_t request = worker_.request_flush();
    parker_.signal();
    if (on_own_thread()) return false;
    const auto past_deadline = [this] { return stop_.past_deadline(); };
    const auto target = completion_.wait_flush_target(request, deadline, past_deadline);
    if (!target) return false;
    const auto result = completion_.wait_flushed(*target, deadline, past_deadline);
    if (result != detail::Completion::FlushResult::done) return false;
    // An evicted event counts as done once its eviction has been reported.
    if (!queue_.wait_evictions_reported(deadline)) return false;
    if constexpr (detail::HasFlush<DelegateType>) {
      const detail::FlushPass pass(flush_gate_);
      if (pass) {
        const detail::OwnerScope scope(this);
        delegate_.flush();
      }
    }
    return true;
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
    if (inherited()) return false;  // a forked child: nothing of this backend runs here
    const auto deadline = detail::deadline_after(detail::SteadyClock::now(), timeout);
    bool abandon_here = false;
    {
      std::lock_guard<std::mutex> lock(life_mu_);
      if (!shut_) {
        shut_ = true;
        queue_.close();
        abandon_here = start_ == Start::idle;  // while starting, run() finishes the job
      }
      stop_.request(deadline);  // wakes token and retry waits, to apply the deadline
    }
    space_.notify_all();  // blocked producers: refused with shut_down
    if (abandon_here) {
      finish_never_run();
      return false;
    }
    parker_.signal();
    completion_.notify();  // flush() callers: a deadline may have come
    if (on_own_thread()) return false;
    if (!completion_.wait_complete(deadline, [] { return false; })) {
      // The worker may be inside a delegate call that outlives the deadline (or not started
      // yet): take what is still queued ourselves, then wait (briefly: neither is in a delegate
      // call, and the deadline has cut their waits short) until the worker holds no undispatched
      // batch and no batch waits for a dispatch thread or a retry.
      worker_.abandon_remaining();
      completion_.wait_complete(std::nullopt, [this] {
        return worker_.undispatched() == 0 &&
               counters_.waiting.load(std::memory_order_acquire) == 0;
      });
    }
    return worker_.ran() && !counters_.abandoned_any.load(std::memory_order_acquire) &&
           counters_.pending.load(std::memory_order_acquire) == 0;
  }

  // A snapshot of the counters. Each is exact; they are read one after another, so while events
  // flow the snapshot is not atomic as a whole. Thread-safe, lock-free, never blocks.
  Stats stats() const noexcept {
    Stats s{};
    s.accepted = queue_.pushed();
    s.rejected_full = rejected_full_.load(std::memory_order_relaxed);
    s.rejected_shut_down = rejected_shut_down_.load(std::memory_order_relaxed);
    s.delivered = counters_.delivered.load(std::memory_order_relaxed);
    s.failed = counters_.failed.load(std::memory_order_relaxed);
    s.abandoned = counters_.abandoned.load(std::memory_order_relaxed);
    s.batches = counters_.batches.load(std::memory_order_relaxed);
    s.queued = queue_.size();
    s.in_flight = counters_.in_flight.load(std::memory_order_relaxed);
    s.retries = counters_.retries.load(std::memory_order_relaxed);
    s.pending = counters_.pending.load(std::memory_order_relaxed);
    s.evicted = queue_.evicted();
    s.rejected_too_large = rejected_too_large_.load(std::memory_order_relaxed);
    s.queued_bytes = static_cast<std::size_t>(queue_.queued_bytes());
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
  enum class Start { idle, starting, started };

  // The largest thread pool a config may ask for.
  static constexpr std::size_t kMaxInFlight = 4096;

  static BatchConfig validated(BatchConfig c) {
    using std::invalid_argument;
    if (c.buffer_size == 0) throw invalid_argument("BatchConfig::buffer_size must be at least 1");
    if (c.buffer_size > (std::size_t{1} << 40)) {
      throw invalid_argument("BatchConfig::buffer_size must be at most 2^40");
    }
    if (c.max_batch_size == 0)
      throw invalid_argument("BatchConfig::max_batch_size must be at least 1");
    if (c.max_batch_size > 1 && c.max_batch_wait <= std::chrono::nanoseconds::zero()) {
      throw invalid_argument(
          "BatchConfig::max_batch_wait must be positive when max_batch_size > 1");
    }
    if (c.max_in_flight == 0)
      throw invalid_argument("BatchConfig::max_in_flight must be at least 1");
    if (c.max_in_flight > kMaxInFlight) {
      throw invalid_argument("BatchConfig::max_in_flight must be at most 4096 (threads)");
    }
    if (c.throttle) {
      if (!(c.throttle->qps > 0) || !std::isfinite(c.throttle->qps)) {
        throw invalid_argument("BatchConfig::throttle.qps must be a positive, finite number");
      }
      if (c.throttle->burst == 0)
        throw invalid_argument("BatchConfig::throttle.burst must be at least 1");
      if (c.throttle->burst > TokenBucket<detail::SteadyClock>::kMaxBurst)
        throw invalid_argument("BatchConfig::throttle.burst must be at most 2^53");
    }
    if (c.retry) {
      const Retry& r = *c.retry;
      if (r.max_attempts == 0)
        throw invalid_argument("BatchConfig::retry.max_attempts must be at least 1");
      if (r.initial_backoff <= std::chrono::nanoseconds::zero()) {
        throw invalid_argument("BatchConfig::retry.initial_backoff must be positive");
      }
      if (!(r.multiplier >= 1.0) || !std::isfinite(r.multiplier)) {
        throw invalid_argument("BatchConfig::retry.multiplier must be a finite number >= 1");
      }
      if (r.max_backoff < r.initial_backoff) {
        throw invalid_argument("BatchConfig::retry.max_backoff must be at least initial_backoff");
      }
      if (!(r.jitter >= 0.0 && r.jitter <= 1.0)) {
        throw invalid_argument("BatchConfig::retry.jitter must be in [0, 1]");
      }
    }
    if (c.overflow != OverflowPolicy::drop_newest && c.overflow != OverflowPolicy::block &&
        c.overflow != OverflowPolicy::drop_oldest) {
      throw invalid_argument("BatchConfig::overflow is not an OverflowPolicy value");
    }
    if (c.max_buffer_bytes != 0 && c.max_batch_bytes > c.max_buffer_bytes) {
      throw invalid_argument(
          "BatchConfig::max_batch_bytes must be at most max_buffer_bytes when both are set");
    }
    return c;
  }

  // The largest event a config admits: above either byte bound it is too_large.
  static std::uint64_t max_event_bytes(const BatchConfig& c) {
    std::uint64_t m = ~std::uint64_t{0};
    if (c.max_buffer_bytes != 0) m = std::min<std::uint64_t>(m, c.max_buffer_bytes);
    if (c.max_batch_bytes != 0) m = std::min<std::uint64_t>(m, c.max_batch_bytes);
    return m;
  }

  static std::unique_ptr<TokenBucket<detail::SteadyClock>> make_bucket(const BatchConfig& c) {
    if (!c.throttle) return nullptr;
    return std::make_unique<TokenBucket<detail::SteadyClock>>(c.throttle->qps, c.throttle->burst);
  }

  std::uint64_t offset(std::uint64_t position) const noexcept { return worker_.offset(position); }

  bool on_own_thread() const noexcept { return detail::current_owner == this; }

  // This process is a fork of the one that made the backend: its threads are not here.
  bool inherited() const noexcept { return detail::forked_since(generation_); }

  bool started() const {
    std::lock_guard<std::mutex> lock(life_mu_);
    return start_ == Start::started;
  }

  // Shutdown of a backend whose threads never ran: everything queued is abandoned.
  void finish_never_run() noexcept {
    worker_.abandon_remaining();
    completion_.mark_complete(offset(queue_.position()));
  }

  void shutdown_delegate() noexcept {
    if constexpr (detail::HasShutdown<DelegateType>) {
      const detail::OwnerScope scope(this);
      try {
        delegate_.shutdown();
      } catch (...) {
        // Nothing is left to report it with: every event is already accounted for.
      }
    }
  }

  // ---- producer side ----

  // A producer thread took a new lane: a parked worker computes its thresholds again.
  static void lane_added(void* self) noexcept {
    static_cast<BufferedBackend*>(self)->parker_.notify_lanes_changed();
  }

  using LaneHandle = typename detail::ShardedQueue<Event>::LaneHandle;

  // Without byte bounds the queue's fast path takes the event; with them, try_emplace answers
  // `sized` (taking nothing) and offer() goes the sized way (offer_sized), so the common path pays
  // no test for the feature.
  template <class... Args>
  [[gnu::always_inline]] detail::PushResult offer(Args&&... args) {
    LaneHandle lane = nullptr;
    const detail::PushResult result = push_plain(lane, std::forward<Args>(args)...);
    if (result == detail::PushResult::ok) [[likely]]
      return result;
    if (result == detail::PushResult::sized) return offer_sized(std::forward<Args>(args)...);
    return offer_refused(result, lane, 0, std::forward<Args>(args)...);  // nothing was moved
  }

  // With a byte bound: the event's size is taken once, here.
  template <class E>
  [[gnu::noinline]] detail::PushResult offer_sized(E&& event) {
    const std::uint64_t bytes = byte_size_ ? byte_size_(std::as_const(event)) : sizeof(Event);
    if (bytes > max_event_bytes_) return detail::PushResult::too_large;
    LaneHandle lane = nullptr;
    const detail::PushResult result = push_once(lane, bytes, std::forward<E>(event));
    if (result == detail::PushResult::ok) return result;
    return offer_refused(result, lane, bytes, std::forward<E>(event));
  }

  // The queue's push without byte sizes and, if it succeeded, the wake-up check. Moves from
  // `args` only when it succeeds.
  template <class... Args>
  [[gnu::always_inline]] detail::PushResult push_plain(LaneHandle& lane, Args&&... args) {
    const detail::PushResult result = queue_.try_emplace(lane, std::forward<Args>(args)...);
    if (result == detail::PushResult::ok) [[likely]]
      parker_.notify_published([&] { return queue_.queued(lane); });
    return result;
  }

  // One push (sized or not) and, if it succeeded, the wake-up check. Moves from `args` only
  // when it succeeds.
  template <class... Args>
  [[gnu::always_inline]] detail::PushResult push_once(LaneHandle& lane, std::uint64_t bytes,
                                                      Args&&... args) {
    if (!sized_) return push_plain(lane, std::forward<Args>(args)...);
    const detail::PushResult result =
        queue_.try_emplace_sized(lane, bytes, std::forward<Args>(args)...);
    if (result == detail::PushResult::ok) {
      parker_.notify_published_sized([&] { return queue_.queued(lane); },
                                     [&] { return queue_.queued_bytes(lane); });
    }
    return result;
  }

  template <class... Args>
  [[gnu::noinline]] detail::PushResult offer_refused(detail::PushResult result, LaneHandle lane,
                                                     std::uint64_t bytes, Args&&... args) {
    if (result != detail::PushResult::full) return result;
    parker_.notify_full();
    // The shared lane's reserve, or other threads' byte reserves, may be what is missing: take
    // them back, once.
    if (queue_.reclaim(bytes)) {
      result = push_once(lane, bytes, std::forward<Args>(args)...);
      if (result != detail::PushResult::full) return result;
    }
    if (config_.overflow == OverflowPolicy::drop_oldest && detail::current_evictor != this) {
      return offer_evicting(lane, bytes, std::forward<Args>(args)...);
    }
    if (config_.overflow == OverflowPolicy::block && !on_own_thread()) {
      return offer_blocking(bytes, std::forward<Args>(args)...);
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
  template <class... Args>
  detail::PushResult offer_evicting(LaneHandle lane, std::uint64_t bytes, Args&&... args) {
    const detail::EvictorScope scope(this);
    std::size_t budget = queue_.size() + 1;
    for (bool evicted_last = true;;) {
      detail::PushResult result = detail::PushResult::full;
      const bool evicted = queue_.evict_oldest(lane, bytes, [&, this](Event&& victim) noexcept {
        // Nothing is moved from `args` unless the push succeeds, so retrying is safe.
        try {
          result = push_once(lane, bytes, std::forward<Args>(args)...);
        } catch (...) {
          result = detail::PushResult::ok;  // only the wake-up after a push can throw
        }
        report_(ErrorKind::evicted, std::span<const Event>(&victim, 1));
      });
      if (evicted) {
        if (result != detail::PushResult::full || --budget == 0) return result;
        evicted_last = true;
        continue;
      }
      if (!evicted_last || queue_.closed()) {
        return queue_.closed() ? detail::PushResult::closed : detail::PushResult::full;
      }
      evicted_last = false;
      result = push_once(lane, bytes, std::forward<Args>(args)...);
      if (result != detail::PushResult::full) return result;
    }
  }

  template <class... Args>
  detail::PushResult offer_blocking(std::uint64_t bytes, Args&&... args) {
    const auto deadline = detail::deadline_after(detail::SteadyClock::now(), config_.block_timeout);
    for (;;) {
      // Every byte reserve comes with a push, so the worker notifies after it; reclaiming on
      // each check means an idle thread's reserve never keeps this event out.
      const bool ready = space_.wait(
          [this, bytes] {
            queue_.reclaim_bytes(bytes);
            return queue_.closed() || queue_.has_space(bytes);
          },
          deadline);
      LaneHandle lane = nullptr;
      // Nothing is moved from `args` unless the push succeeds, so retrying is safe.
      const detail::PushResult result = push_once(lane, bytes, std::forward<Args>(args)...);
      if (result == detail::PushResult::ok) return result;
      if (result == detail::PushResult::closed) return result;
      parker_.notify_full();
      if (!ready && deadline && detail::SteadyClock::now() >= *deadline) return result;
    }
  }

  [[gnu::always_inline]] detail::PushResult offer_copy(const Event& event) {
    if constexpr (std::is_nothrow_copy_constructible_v<Event>) {
      return offer(event);  // constructed in its slot: nothing can throw after the claim
    } else {
      Event copy(event);  // may throw: before anything is claimed
      return offer(std::move(copy));
    }
  }

  void refuse(detail::PushResult result, std::span<const Event> events) {
    switch (result) {
      case detail::PushResult::full:
        rejected_full_.fetch_add(events.size(), std::memory_order_relaxed);
        report_(ErrorKind::buffer_full, events);
        break;
      case detail::PushResult::too_large:
        rejected_too_large_.fetch_add(events.size(), std::memory_order_relaxed);
        report_(ErrorKind::too_large, events);
        break;
      default:
        rejected_shut_down_.fetch_add(events.size(), std::memory_order_relaxed);
        report_(ErrorKind::shut_down, events);
        break;
    }
  }

  Delegate delegate_;
  const BatchConfig config_;
  const byte_size_function byte_size_;
  const detail::Reporter<Event> report_;
  const bool sized_;                     // a byte bound is set: events carry their size
  const std::uint64_t max_event_bytes_;  // larger events are too_large
  detail::ShardedQueue<Event> queue_;
  detail::Parker parker_;
  detail::SpaceWaiters space_;
  detail::Completion completion_;
  detail::StopState stop_;
  detail::Counters counters_;
  const std::unique_ptr<TokenBucket<detail::SteadyClock>> bucket_;
  detail::Delivery<Event, DelegateType> delivery_;
  detail::FlushGate flush_gate_;
  detail::Worker<Event, DelegateType> worker_;

  // Producer-side counters, on their own line.
  alignas(detail::kCacheLine) std::atomic<std::uint64_t> rejected_full_{0};
  std::atomic<std::uint64_t> rejected_shut_down_{0};
  std::atomic<std::uint64_t> rejected_too_large_{0};

  mutable std::mutex life_mu_;
  detail::CondVar life_cv_;    // run() callers wait here while another one is starting
  Start start_ = Start::idle;  // guarded by life_mu_
  bool shut_ = false;          // guarded by life_mu_: shutdown() was called

  const unsigned generation_ = detail::ForkRegistry::generation();
  detail::ForkRegistry::Node fork_node_;  // linked by the constructor, last
};

}  // namespace buffered
