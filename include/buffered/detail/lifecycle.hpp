// The backend's life: starting the delegate and the threads, flush, shutdown.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>

#include "../config.hpp"
#include "../token_bucket.hpp"
#include "admission.hpp"
#include "completion.hpp"
#include "counters.hpp"
#include "deadline.hpp"
#include "delivery.hpp"
#include "flush_gate.hpp"
#include "fork_guard.hpp"
#include "ledger.hpp"
#include "owner.hpp"
#include "sink.hpp"
#include "stop_state.hpp"
#include "worker.hpp"

namespace buffered::detail {

// Everything behind BufferedBackend's run(), flush() and shutdown(), whose contracts (in
// buffered_backend.hpp) this implements: the start state (idle -> starting -> started, and the
// shut flag), the worker and what it delivers with (Delivery, the throttle, Completion, StopState,
// the flush gate), and the delegate's own run/flush/shutdown calls, each marked as a call of
// `owner` (the backend).
//
// Thread-safe as the facade says; allocates only in the constructor and run() (threads).
template <class Event, class Delegate>
class Lifecycle {
 public:
  Lifecycle(Delegate& delegate, const BatchConfig& config, Admission<Event>& admission,
            Ledger<Event>& ledger, const void* owner)
      : delegate_(delegate),
        admission_(admission),
        queue_(admission.queue()),
        ledger_(ledger),
        owner_(owner),
        completion_(config.async_delegate ? config.max_in_flight : 0),
        bucket_(config.throttle ? std::make_unique<TokenBucket<SteadyClock>>(config.throttle->qps,
                                                                             config.throttle->burst)
                                : nullptr),
        delivery_(delegate, ledger, counters_, stop_, bucket_.get(), config.retry, owner),
        worker_({queue_, admission.parker(), admission.space(), completion_, stop_, counters_,
                 delivery_, ledger},
                std::min(config.max_batch_size, config.buffer_size), config.max_batch_bytes,
                config.max_batch_wait, config.async_delegate ? config.max_in_flight : 0, owner,
                [this] {
                  flush_gate_.close_and_wait();  // no delegate.flush() from here on
                  shutdown_delegate();
                }) {}
  Lifecycle(const Lifecycle&) = delete;
  Lifecycle& operator=(const Lifecycle&) = delete;

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
      if constexpr (HasRun<Delegate>) {
        const OwnerScope scope(owner_);
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

  bool flush(std::chrono::nanoseconds timeout) {
    const auto deadline = deadline_after(SteadyClock::now(), timeout);
    if (!started() || completion_.complete() || stop_.past_deadline()) {
      return queue_.size() == 0 && completion_.flushed(offset(queue_.position())) &&
             queue_.evictions_reported();
    }
    const std::uint64_t request = worker_.request_flush();
    admission_.parker().signal();
    if (on_own_thread()) return false;
    const auto past_deadline = [this] { return stop_.past_deadline(); };
    const auto target = completion_.wait_flush_target(request, deadline, past_deadline);
    if (!target) return false;
    const auto result = completion_.wait_flushed(*target, deadline, past_deadline);
    if (result != Completion::FlushResult::done) return false;
    // An evicted event counts as done once its eviction has been reported.
    if (!queue_.wait_evictions_reported(deadline)) return false;
    if constexpr (HasFlush<Delegate>) {
      const FlushPass pass(flush_gate_);
      if (pass) {
        const OwnerScope scope(owner_);
        delegate_.flush();
      }
    }
    return true;
  }

  bool shutdown(std::chrono::nanoseconds timeout) noexcept {
    const auto deadline = deadline_after(SteadyClock::now(), timeout);
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
    admission_.space().notify_all();  // blocked producers: refused with shut_down
    if (abandon_here) {
      finish_never_run();
      return false;
    }
    admission_.parker().signal();
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
    return worker_.ran() && !ledger_.abandoned_any() && ledger_.pending() == 0;
  }

  // Joins the worker (after shutdown()); in a forked child, forgets it.
  void join() noexcept { worker_.join(); }

  const Counters& counters() const noexcept { return counters_; }

 private:
  enum class Start { idle, starting, started };

  std::uint64_t offset(std::uint64_t position) const noexcept { return worker_.offset(position); }

  bool on_own_thread() const noexcept { return current_owner == owner_; }

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
    if constexpr (HasShutdown<Delegate>) {
      const OwnerScope scope(owner_);
      try {
        delegate_.shutdown();
      } catch (...) {
        // Nothing is left to report it with: every event is already accounted for.
      }
    }
  }

  Delegate& delegate_;
  Admission<Event>& admission_;
  ShardedQueue<Event>& queue_;
  Ledger<Event>& ledger_;
  const void* const owner_;
  Completion completion_;
  StopState stop_;
  Counters counters_;
  const std::unique_ptr<TokenBucket<SteadyClock>> bucket_;
  Delivery<Event, Delegate> delivery_;
  FlushGate flush_gate_;
  Worker<Event, Delegate> worker_;

  mutable std::mutex life_mu_;
  CondVar life_cv_;            // run() callers wait here while another one is starting
  Start start_ = Start::idle;  // guarded by life_mu_
  bool shut_ = false;          // guarded by life_mu_: shutdown() was called
};

}  // namespace buffered::detail
