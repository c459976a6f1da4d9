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
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/cache_line.hpp"
#include "detail/completion.hpp"
#include "detail/deadline.hpp"
#include "detail/dispatch_pool.hpp"
#include "detail/flush_gate.hpp"
#include "detail/mpsc_ring.hpp"
#include "detail/owner.hpp"
#include "detail/parker.hpp"
#include "detail/position.hpp"
#include "detail/sink.hpp"
#include "detail/test_hooks.hpp"
#include "token_bucket.hpp"
#include "version.hpp"

namespace buffered {

enum class OverflowPolicy {
  drop_newest,  // a full buffer rejects the event at once; never blocks
  block,        // the caller waits for space, up to BatchConfig::block_timeout, then it is rejected
};

enum class ErrorKind {
  buffer_full,      // rejected by process_event(s): the buffer was full
  shut_down,        // rejected by process_event(s): the backend is shut down
  delegate_failed,  // the delegate threw, or returned false, for the batch that held them
  abandoned,        // accepted, but never delivered because shutdown came first
};

struct Throttle {
  double qps;         // batches per second, > 0
  std::size_t burst;  // bucket size, >= 1; the bucket starts full
};

struct BatchConfig {
  std::size_t buffer_size = 10000;   // events the buffer holds, exactly (not rounded up)
  std::size_t max_batch_size = 400;  // events per delegate call, at most; 1 = no batching
  std::chrono::nanoseconds max_batch_wait =
      std::chrono::seconds(30);                     // linger of a batch's oldest event
  std::optional<Throttle> throttle = std::nullopt;  // one token per batch, taken before dispatch
  bool async_delegate = false;                      // false: delegate runs on the worker thread
  std::size_t max_in_flight = 4;  // async only: concurrent delegate calls, at most
  OverflowPolicy overflow = OverflowPolicy::drop_newest;
  std::chrono::nanoseconds block_timeout = std::chrono::nanoseconds::max();  // for block
};

struct Stats {                       // a snapshot; counters only grow
  std::uint64_t accepted;            // events taken into the buffer
  std::uint64_t rejected_full;       // events refused because the buffer was full
  std::uint64_t rejected_shut_down;  // events refused because the backend was shut down
  std::uint64_t delivered;           // events in delegate calls that returned normally
  std::uint64_t failed;              // events in delegate calls that threw or returned false
  std::uint64_t abandoned;           // accepted events dropped because shutdown came first
  std::uint64_t batches;             // delegate calls made
  std::size_t queued;                // events in the buffer now
  std::size_t in_flight;             // delegate calls running now
  std::size_t pending;               // events taken from the buffer, not yet delivered, failed or
                                     // abandoned: in a forming batch, waiting for a token or in a
                                     // delegate call (after shutdown: only a call that outlived
                                     // its deadline; they settle when it returns)
};

// D is a sink for Event if it has d.process_events(std::span<Event>) or is invocable as
// d(std::span<Event>), with a result that is void or convertible to bool (false = the batch
// failed). Optional members, called when present: run(), shutdown(), flush(), name() const.
template <class D, class Event>
concept Sink = (detail::HasProcessEvents<D, Event> &&
                detail::SinkResult<decltype(std::declval<D&>().process_events(
                    std::declval<std::span<Event>>()))>) ||
               (!detail::HasProcessEvents<D, Event> && detail::CallableSink<D, Event> &&
                detail::SinkResult<std::invoke_result_t<D&, std::span<Event>>>);

// Wraps a slow sink (the delegate) with a bounded buffer and a batching worker.
//
// Producers on any thread call process_event(s); events wait in a lock-free ring of exactly
// `buffer_size` slots. One worker thread takes them into batches of at most `max_batch_size`,
// dispatched when full, when the oldest has waited `max_batch_wait`, or on flush/shutdown; an
// optional token bucket paces batches; the delegate runs on the worker (sync) or on a fixed pool
// of `max_in_flight` threads (async). Every event offered is either delivered to the delegate
// exactly once or reported to the error handler exactly once.
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
// copying an Event throws, flush() only what delegate.flush() throws. shutdown(), stats() and
// the destructor never throw, and nothing after construction and run() allocates.
//
// Memory: the ring of buffer_size events, plus batch buffers of min(max_batch_size,
// buffer_size) events: one for the worker (max_in_flight + 1 in async mode) and one to report
// abandoned events in at shutdown.
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
      "or be callable with std::span<Event>, returning void or something convertible to bool");

  using Clock = std::chrono::steady_clock;
  using Batch = std::vector<Event>;

 public:
  using event_type = Event;
  using delegate_type = Delegate;
  // Called with refused, failed or abandoned events. For delegate_failed it is called inside the
  // catch block (std::current_exception() is the cause, or null for a `false` result), and the
  // events are as the delegate left them (it may have moved from them). Exceptions it throws are
  // caught and ignored. It may be called on any thread, including the producer's.
  using error_handler = std::function<void(ErrorKind, std::span<const Event>)>;

  // Validates `config` (throws std::invalid_argument naming the field) and allocates the buffer
  // and the batch buffers (std::bad_alloc reaches the caller). Starts no thread and calls no
  // delegate member. A max_batch_size above buffer_size is accepted: a batch then holds at most
  // buffer_size events (a full buffer is a full batch).
  explicit BufferedBackend(Delegate delegate, BatchConfig config = {}, error_handler on_error = {})
      : delegate_(std::forward<Delegate>(delegate)),
        config_(validated(config)),
        on_error_(std::move(on_error)),
        max_batch_(std::min(config_.max_batch_size, config_.buffer_size)),
        ring_(config_.buffer_size, detail::test_hooks::start_position()),
        completion_(config_.async_delegate ? config_.max_in_flight : 0) {
    if (config_.throttle) bucket_.emplace(config_.throttle->qps, config_.throttle->burst);
    if (config_.async_delegate) {
      pool_ = std::make_unique<detail::DispatchPool<Batch>>(
          config_.max_in_flight, max_batch_,
          [this](Batch& batch, std::uint64_t first) {
            deliver(batch);
            completion_.batch_finished(offset(first));
          },
          [this] { parker_.signal(); });
    } else {
      sync_batch_.reserve(max_batch_);
    }
    abandon_chunk_.reserve(max_batch_);
  }

  BufferedBackend(const BufferedBackend&) = delete;
  BufferedBackend& operator=(const BufferedBackend&) = delete;

  // shutdown() with no deadline, then joins the threads. Blocks until every delegate call ends.
  ~BufferedBackend() {
    shutdown();
    if (worker_.joinable()) worker_.join();
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
      if (pool_) pool_->start([this] { detail::current_owner = this; });
      worker_ = std::thread([this] { worker_main(); });
    } catch (...) {
      if (pool_) pool_->stop_and_join();  // no job was submitted: its threads just end
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
  // buffer_full or shut_down). Thread-safe. Never blocks with drop_newest; with block, waits for
  // space per event. Never allocates (the copies aside). If a copy throws, the events before it
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

  // Moves `event` in if accepted; otherwise leaves it intact and reports it. Never throws.
  // Thread-safe. Never blocks with drop_newest.
  bool process_event(Event&& event) {
    const detail::PushResult result = offer(std::move(event));
    if (result == detail::PushResult::ok) return true;
    refuse(result, std::span<const Event>(&event, 1));
    return false;
  }

  // Blocks until every event accepted before the call has been delivered or failed (the partial
  // batch goes at once), then calls delegate.flush() if present (on this thread) and returns
  // true. Returns false at `timeout`, or if some of those events were abandoned by a shutdown.
  // Returns at once, true only if every one of those events is already delivered or failed, when
  // the backend is not running: before run(), after shutdown() completed, or once a shutdown
  // deadline has passed. delegate.flush() is never called once delegate.shutdown() has started
  // (flush() then returns true without it: the delegate is being shut down, which flushes it).
  // Called from inside the delegate or the error handler it only requests the flush and returns
  // false. Thread-safe; never allocates; exceptions from delegate.flush() propagate.
  bool flush(std::chrono::nanoseconds timeout = std::chrono::nanoseconds::max()) {
    const auto deadline = detail::deadline_after(Clock::now(), timeout);
    const std::uint64_t target = offset(ring_.tail());
    if (!started() || completion_.complete() || (stopping() && past_abandon_deadline())) {
      return completion_.flushed(target);
    }
    std::uint64_t wanted = flush_target_.load(std::memory_order_relaxed);
    while (wanted < target &&
           !flush_target_.compare_exchange_weak(wanted, target, std::memory_order_release)) {
    }
    parker_.signal();
    if (on_own_thread()) return false;
    const auto result = completion_.wait_flushed(
        target, deadline, [this] { return stopping() && past_abandon_deadline(); });
    if (result != detail::Completion::FlushResult::done) return false;
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
  // it, and the destructor waits for that. Returns true when every accepted event was delivered
  // or failed by the time it returns: false if any was abandoned, if a delegate call outlived the
  // deadline, or for a backend that never ran. Called from inside the delegate or the error
  // handler it starts the shutdown and returns false without waiting. Thread-safe; never throws,
  // never allocates (abandoned events are reported in chunks of up to a batch, from a buffer the
  // constructor reserved); blocks as described.
  bool shutdown(std::chrono::nanoseconds timeout = std::chrono::nanoseconds::max()) noexcept {
    const auto deadline = detail::deadline_after(Clock::now(), timeout);
    bool abandon_here = false;
    {
      std::lock_guard<std::mutex> lock(life_mu_);
      if (!shut_) {
        shut_ = true;
        ring_.close();
        abandon_here = start_ == Start::idle;  // while starting, run() finishes the job
        stop_requested_.store(true, std::memory_order_release);
      }
      if (deadline) {
        const Clock::rep requested = deadline->time_since_epoch().count();
        if (requested < abandon_deadline_.load(std::memory_order_relaxed)) {
          abandon_deadline_.store(requested, std::memory_order_release);
        }
      }
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
      // yet): take what is still queued ourselves, then wait (briefly: the worker is not in a
      // delegate call if it holds a batch) until the worker holds no undispatched batch.
      abandon_remaining();
      completion_.wait_complete(
          std::nullopt, [this] { return undispatched_.load(std::memory_order_acquire) == 0; });
    }
    return worker_ran_.load(std::memory_order_acquire) &&
           !abandoned_any_.load(std::memory_order_acquire) &&
           pending_.load(std::memory_order_acquire) == 0;
  }

  // A snapshot of the counters. Each is exact; they are read one after another, so while events
  // flow the snapshot is not atomic as a whole. Thread-safe, lock-free, never blocks.
  Stats stats() const noexcept {
    Stats s{};
    s.accepted = offset(ring_.tail());
    s.rejected_full = rejected_full_.load(std::memory_order_relaxed);
    s.rejected_shut_down = rejected_shut_down_.load(std::memory_order_relaxed);
    s.delivered = delivered_.load(std::memory_order_relaxed);
    s.failed = failed_.load(std::memory_order_relaxed);
    s.abandoned = abandoned_.load(std::memory_order_relaxed);
    s.batches = batches_.load(std::memory_order_relaxed);
    s.queued = ring_.size();
    s.in_flight = in_flight_.load(std::memory_order_relaxed);
    s.pending = pending_.load(std::memory_order_relaxed);
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
      if (c.throttle->burst > TokenBucket<Clock>::kMaxBurst)
        throw invalid_argument("BatchConfig::throttle.burst must be at most 2^53");
    }
    if (c.overflow != OverflowPolicy::drop_newest && c.overflow != OverflowPolicy::block) {
      throw invalid_argument("BatchConfig::overflow is not an OverflowPolicy value");
    }
    return c;
  }

  // Offset of a ring position from the first position ever: what Completion and flush count in.
  std::uint64_t offset(std::uint64_t position) const noexcept {
    return detail::position_distance(ring_.initial_position(), position);
  }

  bool on_own_thread() const noexcept { return detail::current_owner == this; }

  bool started() const {
    std::lock_guard<std::mutex> lock(life_mu_);
    return start_ == Start::started;
  }

  // Shutdown of a backend whose threads never ran: everything queued is abandoned.
  void finish_never_run() noexcept {
    abandon_remaining();
    completion_.mark_complete(offset(ring_.tail()));
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

  template <class... Args>
  detail::PushResult offer(Args&&... args) {
    std::uint64_t position = 0;
    detail::PushResult result = ring_.try_emplace(position, std::forward<Args>(args)...);
    if (result == detail::PushResult::ok) [[likely]] {
      parker_.notify_published(position);
      return result;
    }
    if (result == detail::PushResult::full && config_.overflow == OverflowPolicy::block &&
        !on_own_thread()) {
      return offer_blocking(std::forward<Args>(args)...);
    }
    return result;
  }

  template <class... Args>
  detail::PushResult offer_blocking(Args&&... args) {
    const auto deadline = detail::deadline_after(Clock::now(), config_.block_timeout);
    for (;;) {
      const bool ready =
          space_.wait([this] { return ring_.closed() || !ring_.looks_full(); }, deadline);
      std::uint64_t position = 0;
      // Nothing is moved from `args` unless the claim succeeds, so retrying is safe.
      const detail::PushResult result = ring_.try_emplace(position, std::forward<Args>(args)...);
      if (result == detail::PushResult::ok) {
        parker_.notify_published(position);
        return result;
      }
      if (result == detail::PushResult::closed) return result;
      if (!ready && deadline && Clock::now() >= *deadline) return result;
    }
  }

  detail::PushResult offer_copy(const Event& event) {
    if constexpr (std::is_nothrow_copy_constructible_v<Event>) {
      return offer(event);  // constructed in its slot: nothing can throw after the claim
    } else {
      Event copy(event);  // may throw: before anything is claimed
      return offer(std::move(copy));
    }
  }

  void refuse(detail::PushResult result, std::span<const Event> events) {
    const bool full = result == detail::PushResult::full;
    (full ? rejected_full_ : rejected_shut_down_)
        .fetch_add(events.size(), std::memory_order_relaxed);
    report(full ? ErrorKind::buffer_full : ErrorKind::shut_down, events);
  }

  void report(ErrorKind kind, std::span<const Event> events) noexcept {
    if (!on_error_ || events.empty()) return;
    const detail::OwnerScope scope(this);
    try {
      on_error_(kind, events);
    } catch (...) {
      // The contract: an error handler that throws is ignored.
    }
  }

  // ---- consumer side ----

  std::optional<Clock::time_point> abandon_deadline() const noexcept {
    const Clock::rep rep = abandon_deadline_.load(std::memory_order_acquire);
    if (rep == kNoDeadline) return std::nullopt;
    return Clock::time_point(Clock::duration(rep));
  }

  // Only meaningful once stopping: the earliest deadline any shutdown() caller gave has passed.
  bool past_abandon_deadline() const noexcept {
    const Clock::rep rep = abandon_deadline_.load(std::memory_order_acquire);
    return rep != kNoDeadline && Clock::now().time_since_epoch().count() >= rep;
  }

  bool stopping() const noexcept { return stop_requested_.load(std::memory_order_acquire); }

  void worker_main() {
    worker_ran_.store(true, std::memory_order_release);
    const detail::OwnerScope scope(this);
    Batch batch = pool_ ? pool_->take_buffer() : std::move(sync_batch_);
    const std::size_t max_batch = max_batch_;
    std::uint64_t first = 0;  // ring position of batch.front()
    Clock::time_point linger_deadline{};
    detail::Backoff backoff;
    for (;;) {
      const bool was_empty = batch.empty();
      std::size_t taken = 0;
      std::uint64_t head = 0;  // read under the lock: a shutdown past its deadline may move it
      {
        std::lock_guard<std::mutex> lock(consumer_mu_);
        if (was_empty) first = ring_.consumer_head();
        taken = ring_.pop_run(max_batch - batch.size(),
                              [&batch](Event&& e) { batch.push_back(std::move(e)); });
        head = ring_.consumer_head();
        if (taken != 0) {
          pending_.fetch_add(taken, std::memory_order_relaxed);
          undispatched_.store(batch.size(), std::memory_order_release);
          space_.notify_if_waiting();
        }
      }
      if (taken != 0) backoff.reset();
      if (was_empty && !batch.empty()) {
        linger_deadline = detail::deadline_after(Clock::now(), config_.max_batch_wait)
                              .value_or(Clock::time_point::max());
      }
      const bool stop = stopping();
      if (stop && past_abandon_deadline()) {
        abandon_batch(batch, first);
        abandon_remaining();
        break;
      }
      if (batch.size() >= max_batch ||
          (!batch.empty() && (stop || flush_wanted(first) || Clock::now() >= linger_deadline))) {
        dispatch(batch, first);
        continue;
      }
      const std::uint64_t tail = ring_.tail();
      if (batch.empty() && stop && tail == head) break;  // drained
      std::optional<Clock::time_point> wake_by;
      if (!batch.empty()) wake_by = linger_deadline;
      if (stop) wake_by = detail::earlier(wake_by, abandon_deadline());
      const std::uint64_t threshold =
          detail::position_add(head, batch.empty() ? 1 : max_batch - batch.size());
      if (detail::position_reached(tail, threshold)) {
        // Enough is claimed to go on, but `head` is not published yet: its producer is between
        // claim and publish (or was pre-empted there). Poll politely; chasing producers one
        // event at a time is what this avoids otherwise, by parking until the batch can fill.
        backoff.pause(wake_by);
        continue;
      }
      parker_.arm(threshold);
      if (!detail::position_reached(ring_.tail(), threshold)) parker_.park(wake_by);
      parker_.disarm();
    }
    if (pool_) pool_->stop_and_join();
    flush_gate_.close_and_wait();  // no delegate.flush() from here on
    shutdown_delegate();
    completion_.mark_complete(offset(ring_.tail()));
  }

  bool flush_wanted(std::uint64_t first) const noexcept {
    return flush_target_.load(std::memory_order_acquire) > offset(first);
  }

  // Takes a throttle token, waiting as long as needed, but never past a shutdown deadline.
  bool take_token() {
    for (;;) {
      const auto wait = bucket_->try_accept_or_wait();
      if (wait == Clock::duration::zero()) return true;
      if (stopping() && past_abandon_deadline()) return false;
      std::optional<Clock::time_point> until = Clock::now() + wait;
      if (stopping()) until = detail::earlier(until, abandon_deadline());
      parker_.park(until);  // a shutdown signal ends the nap early, to apply its deadline
    }
  }

  void dispatch(Batch& batch, std::uint64_t first) {
    const std::uint64_t next = offset(first) + batch.size();
    if (bucket_ && !take_token()) {
      abandon_batch(batch, first);
      return;
    }
    if (!pool_) {
      undispatched_.store(0, std::memory_order_release);
      completion_.notify();
      deliver(batch);
      batch.clear();
      completion_.batch_done(next);
      return;
    }
    while (!pool_->has_free_slot()) {
      if (stopping() && past_abandon_deadline()) {
        abandon_batch(batch, first);
        return;
      }
      parker_.park(stopping() ? abandon_deadline() : std::nullopt);
    }
    undispatched_.store(0, std::memory_order_release);
    completion_.batch_submitted(offset(first), next);
    pool_->submit(std::move(batch), first);
    batch = pool_->take_buffer();
  }

  // Runs one delegate call: on the worker (sync) or a dispatch thread (async).
  void deliver(Batch& batch) noexcept {
    const std::size_t n = batch.size();
    const std::span<Event> events(batch.data(), n);
    batches_.fetch_add(1, std::memory_order_relaxed);
    in_flight_.fetch_add(1, std::memory_order_relaxed);
    {
      const detail::OwnerScope scope(this);
      try {
        if (detail::invoke_sink(delegate_, events)) {
          delivered_.fetch_add(n, std::memory_order_relaxed);
        } else {
          failed_.fetch_add(n, std::memory_order_relaxed);
          report(ErrorKind::delegate_failed, events);
        }
      } catch (...) {
        failed_.fetch_add(n, std::memory_order_relaxed);
        report(ErrorKind::delegate_failed, events);
      }
    }
    pending_.fetch_sub(n, std::memory_order_release);
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
  }

  void abandon_batch(Batch& batch, std::uint64_t first) {
    if (batch.empty()) return;
    const std::uint64_t n = batch.size();
    abandoned_any_.store(true, std::memory_order_release);
    completion_.abandoning_from(offset(first));
    abandoned_.fetch_add(n, std::memory_order_relaxed);
    report(ErrorKind::abandoned, batch);
    pending_.fetch_sub(n, std::memory_order_release);
    batch.clear();
    undispatched_.store(0, std::memory_order_release);
    completion_.batch_done(offset(first) + n);
  }

  // Reports everything still in the (closed) ring as abandoned, in chunks of up to a batch. Any
  // thread; serialized with the worker's consumption by consumer_mu_, which also guards the
  // chunk buffer (reserved by the constructor, so this never allocates or throws).
  void abandon_remaining() noexcept {
    {
      std::lock_guard<std::mutex> lock(consumer_mu_);
      const std::uint64_t end = ring_.tail();
      const std::uint64_t head = ring_.consumer_head();
      if (head != end) {
        abandoned_any_.store(true, std::memory_order_release);
        completion_.abandoning_from(offset(head));
        Batch& chunk = abandon_chunk_;
        detail::Backoff backoff;
        while (ring_.consumer_head() != end) {
          const std::size_t n = ring_.pop_run(
              max_batch_ - chunk.size(), [&chunk](Event&& e) { chunk.push_back(std::move(e)); });
          if (!chunk.empty() &&
              (chunk.size() == max_batch_ || n == 0 || ring_.consumer_head() == end)) {
            abandoned_.fetch_add(chunk.size(), std::memory_order_relaxed);
            report(ErrorKind::abandoned, chunk);
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
    completion_.notify();
  }

  static constexpr Clock::rep kNoDeadline = std::numeric_limits<Clock::rep>::max();

  Delegate delegate_;
  const BatchConfig config_;
  const error_handler on_error_;
  const std::size_t max_batch_;  // max_batch_size, at most buffer_size
  detail::MpscRing<Event> ring_;
  detail::Parker parker_;
  detail::SpaceWaiters space_;
  std::optional<TokenBucket<Clock>> bucket_;
  std::unique_ptr<detail::DispatchPool<Batch>> pool_;
  Batch sync_batch_;
  Batch abandon_chunk_;  // guarded by consumer_mu_
  detail::Completion completion_;
  std::mutex
      consumer_mu_;  // who takes events out of the ring: the worker, or shutdown at its deadline

  // Producer-side counters, on their own line.
  alignas(detail::kCacheLine) std::atomic<std::uint64_t> rejected_full_{0};
  std::atomic<std::uint64_t> rejected_shut_down_{0};
  // Consumer-side counters and flags.
  alignas(detail::kCacheLine) std::atomic<std::uint64_t> delivered_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::atomic<std::uint64_t> abandoned_{0};
  std::atomic<std::uint64_t> batches_{0};
  std::atomic<std::size_t> in_flight_{0};
  std::atomic<std::size_t> undispatched_{0};  // events the worker holds outside any delegate call
  std::atomic<std::size_t> pending_{0};       // taken from the ring, not yet settled
  // Memory ordering: shutdown() and flush() store these (release) and then signal the parker,
  // whose mutex orders the store before the worker's next check; the worker loads them (acquire)
  // after every wake-up, so a request is never missed by a parked worker.
  std::atomic<std::uint64_t> flush_target_{0};
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> abandoned_any_{false};
  std::atomic<bool> worker_ran_{false};  // set by the worker itself: run() may still be returning
  std::atomic<Clock::rep> abandon_deadline_{kNoDeadline};

  detail::FlushGate flush_gate_;

  mutable std::mutex life_mu_;
  std::condition_variable life_cv_;  // run() callers wait here while another one is starting
  Start start_ = Start::idle;        // guarded by life_mu_
  bool shut_ = false;                // guarded by life_mu_: shutdown() was called
  std::thread worker_;
};

}  // namespace buffered
