// Delivering one batch: the delegate call, its retries with backoff, and settling how it ended.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "../config.hpp"
#include "../outcome.hpp"
#include "../token_bucket.hpp"
#include "counters.hpp"
#include "deadline.hpp"
#include "ledger.hpp"
#include "owner.hpp"
#include "sink.hpp"
#include "stop_state.hpp"

namespace buffered::detail {

// deliver() takes a batch whose events are `pending` (Ledger) and whose first attempt already has
// its throttle token, and sees it to its end on the calling thread (the worker in sync mode, a
// dispatch thread in async mode), settling it in the Ledger:
//   attempt -> delivered: settled delivered, done.
//           -> permanent_error / Outcome::permanent_failure(), or the last attempt failed:
//              settled failed (inside the catch block of the last exception).
//           -> retryable (another exception, false, Outcome::retry): wait the backoff (or the
//              Outcome's retry-after), take a token, attempt again with the same events.
//   A stop deadline that passes while it waits ends it: settled abandoned.
// Without BatchConfig::retry every failure is final. The caller keeps the batch's place while
// this runs (sync: the worker takes no further batch; async: the dispatch slot stays taken), so
// order and memory bounds hold.
//
// Thread-safe: any number of threads may deliver at once (the delegate must allow that in async
// mode). Never allocates; never throws.
template <class Event, class Delegate>
class Delivery {
 public:
  Delivery(Delegate& delegate, Ledger<Event>& ledger, Counters& counters, StopState& stop,
           TokenBucket<SteadyClock>* bucket, std::optional<Retry> retry, const void* owner)
      : delegate_(delegate),
        ledger_(ledger),
        counters_(counters),
        stop_(stop),
        bucket_(bucket),
        retry_(retry),
        owner_(owner),
        rng_(reinterpret_cast<std::uintptr_t>(this) ^
             static_cast<std::uint64_t>(SteadyClock::now().time_since_epoch().count())) {}

  // Takes a throttle token (at once without a throttle), sleeping until one is due, but never
  // past the stop deadline: false then.
  bool take_token() {
    if (bucket_ == nullptr) return true;
    for (;;) {
      const auto wait = bucket_->try_accept_or_wait();
      if (wait == SteadyClock::duration::zero()) return true;
      if (!stop_.sleep_until(SteadyClock::now() + wait)) return false;
    }
  }

  // The batch comes counted in Counters::waiting (the caller counts it before it lets go of it,
  // so a shutdown never sees it in neither place); it stays counted there whenever it is not in
  // a delegate call.
  Settled deliver(std::span<Event> events) noexcept {
    for (std::size_t attempt = 1;; ++attempt) {
      if (stop_.past_deadline()) return give_up(events);  // no call starts past the deadline
      const BatchContext context = BatchContextAccess::live(attempt, &stop_.deadline_rep());
      std::chrono::nanoseconds wait{};
      counters_.batches.fetch_add(1, std::memory_order_relaxed);
      if (attempt > 1) counters_.retries.fetch_add(1, std::memory_order_relaxed);
      counters_.in_flight.fetch_add(1, std::memory_order_relaxed);
      counters_.waiting.fetch_sub(1, std::memory_order_release);
      {
        const OwnerScope scope(owner_);
        // Back to `waiting` before the call stops counting as in flight, so that a shutdown
        // never sees a batch in neither place.
        const auto call_ended = [this] {
          counters_.waiting.fetch_add(1, std::memory_order_relaxed);
          counters_.in_flight.fetch_sub(1, std::memory_order_relaxed);
        };
        try {
          const Outcome outcome = invoke_sink(delegate_, events, context);
          call_ended();
          if (outcome.kind() == Outcome::Kind::delivered) return finish(Settled::delivered, events);
          if (outcome.kind() == Outcome::Kind::permanent_failure || last(attempt)) {
            return finish(Settled::failed, events);
          }
          wait = outcome.retry_after() > std::chrono::nanoseconds::zero() ? outcome.retry_after()
                                                                          : backoff(attempt);
        } catch (const permanent_error&) {
          call_ended();
          return finish(Settled::failed, events);  // reported inside the catch
        } catch (...) {
          call_ended();
          if (last(attempt)) return finish(Settled::failed, events);
          wait = backoff(attempt);
        }
      }
      // Still counted in `waiting`, so a shutdown past its deadline waits for this batch to be
      // settled (it is, promptly: the deadline cuts the wait short) before it returns.
      const auto until =
          deadline_after(SteadyClock::now(), wait).value_or(SteadyClock::time_point::max());
      if (!stop_.sleep_until(until) || !take_token()) return give_up(events);
    }
  }

  // Settles a batch that will not reach the delegate (a stop deadline came first) and that is not
  // counted in Counters::waiting (the worker's own batch).
  void abandon(std::span<Event> events) noexcept { ledger_.settle(Settled::abandoned, events); }

  // The wait before retry number `retry` (1 = the first): initial_backoff * multiplier^(retry-1),
  // at most max_backoff, then spread uniformly by +-jitter.
  std::chrono::nanoseconds backoff(std::size_t retry) noexcept {
    const double initial = static_cast<double>(retry_->initial_backoff.count());
    const double cap = static_cast<double>(retry_->max_backoff.count());
    double wait =
        std::min(cap, initial * std::pow(retry_->multiplier, static_cast<double>(retry - 1)));
    if (retry_->jitter > 0) wait *= 1.0 - retry_->jitter + 2.0 * retry_->jitter * uniform();
    // Beyond ~292 years a nanosecond count overflows; such a wait is "until the deadline".
    if (!(wait < 9.0e18)) return std::chrono::nanoseconds::max();
    return std::chrono::nanoseconds(static_cast<std::int64_t>(std::max(1.0, wait)));
  }

 private:
  bool last(std::size_t attempt) const noexcept {
    return !retry_ || attempt >= retry_->max_attempts;
  }

  // Settles a batch counted in `waiting`, then stops counting it there.
  Settled finish(Settled how, std::span<Event> events) noexcept {
    ledger_.settle(how, events);
    counters_.waiting.fetch_sub(1, std::memory_order_release);
    return how;
  }

  // A waiting batch that the stop deadline ends.
  Settled give_up(std::span<Event> events) noexcept { return finish(Settled::abandoned, events); }

  // Uniform in [0, 1), from a splitmix64 sequence: lock-free and thread-safe.
  double uniform() noexcept {
    std::uint64_t z = rng_.fetch_add(0x9e3779b97f4a7c15ULL, std::memory_order_relaxed);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-53;
  }

  Delegate& delegate_;
  Ledger<Event>& ledger_;
  Counters& counters_;
  StopState& stop_;
  TokenBucket<SteadyClock>* const bucket_;
  const std::optional<Retry> retry_;
  const void* const owner_;
  std::atomic<std::uint64_t> rng_;
};

}  // namespace buffered::detail
