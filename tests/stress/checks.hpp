// After each round the run checks that
//   - every accepted id ended exactly once: in a batch whose last attempt delivered it, or
//     reported delegate_failed, abandoned or evicted (an evicted id never reached the delegate;
//     only drop_oldest evicts, reporting on the producer's thread); no accepted id is larger than
//     a byte bound; every refused id was reported exactly once, with the right kind: too_large
//     exactly for an id larger than a byte bound (or a refused span's ids from such an id on;
//     such an id may be refused shut_down instead, never buffer_full), and an id whose offer
//     threw was neither;
//   - with drop_oldest and one producer thread: nothing is refused buffer_full (a full buffer
//     evicts instead), and the evictions follow the thread's order;
//   - a delegate call's byte sizes sum to at most max_batch_bytes; Stats::queued_bytes, sampled
//     while the round runs, is at most max_buffer_bytes (and 0 without a byte bound);
//   - each batch's attempts saw the same events in the same order; only a retryable failure is
//     followed by another attempt, at most max_attempts in all (one without retry), never one
//     after an attempt that ended past a shutdown deadline, and not before the backoff floor
//     (initial_backoff * multiplier^k capped at max_backoff, less jitter) or the retry-after;
//     a batch failed for good is reported once, as a whole, after its last attempt started and
//     inside the catch of its exception (none for a returned failure); a retryable failure short
//     of max_attempts ends abandoned, only when a shutdown deadline was given;
//   - with a BatchContext: attempt() is 1, 2, 3... per batch, and deadline() is max() before any
//     shutdown(timeout), never earlier than the earliest deadline given and never later than one
//     given by a shutdown(timeout) that had returned;
//   - the delegate saw each producer's ids in increasing order across first attempts where the
//     contract promises it (sync, or async with max_in_flight == 1), and there it took no further
//     batch while one waited to retry; inside every batch otherwise;
//   - flush() returned true only once every event its thread had accepted before was delivered,
//     failed or evicted (it waits for retries);
//   - Stats agree with what was observed (batches counts every attempt, retries the repeats,
//     evicted and rejected_too_large the reports), and accepted == delivered + failed +
//     abandoned + evicted + pending after every shutdown (pending == 0 after an unbounded one,
//     and after one that returned true), queued_bytes == 0 after the last; flush() on a
//     shut-down backend returns at once;
//   - a failed run() is undone (no threads left, delegate.shutdown() matches delegate.run()), a
//     later run() makes exactly the worker and max_in_flight dispatch threads, delegate.flush()
//     never runs outside delegate.run() .. delegate.shutdown();
//   - no call hung: a watchdog ends the run, printing the seed, if a round stalls; a terminate
//     prints the seed too.
// The checks here run once the backend is gone, with the round's Observed locked; the others
// where the round can see them (lifecycle.hpp, workloads.hpp).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "backend.hpp"
#include "stress.hpp"

namespace buffered_stress {

// How a batch ended, by what the delegate said and what was reported.
enum class End { delivered, failed, abandoned };

// The delegate calls grouped by batch: by their first id (each accepted id is in one batch).
struct Batches {
  std::unordered_map<std::uint64_t, std::vector<std::size_t>> attempts;  // first id -> calls
  std::vector<std::uint64_t> order;                                      // first ids, in order
  std::unordered_map<std::uint64_t, End> end;                            // first id -> its end
  std::unordered_map<std::uint64_t, std::uint64_t> batch_of;  // id -> first id of its batch
  std::uint64_t retries = 0, retry_abandoned = 0, permanent = 0, retry_delivered = 0;

  std::optional<End> ended_as(std::uint64_t id) const {
    const auto b = batch_of.find(id);
    if (b == batch_of.end()) return std::nullopt;
    return end.at(b->second);
  }
};

// What a round's offers came to.
struct IdCounts {
  std::uint64_t accepted = 0, refused = 0, not_offered = 0, delivered = 0, failed = 0;
};

// Attempts, retries, delegate_failed reports and BatchContext (check_batches.cpp).
Batches check_batches(const RoundPlan& plan, const Observed& obs, bool with_context,
                      Violations& violation);

// Every offer ended exactly once (check_ids.cpp).
IdCounts check_ids(const RoundPlan& plan, const Ledger& ledger, const Observed& obs,
                   const Batches& batches, Violations& violation);
// Evictions, flushes, reports on the producers' threads.
void check_evictions(const RoundPlan& plan, const Observed& obs, Violations& violation);
// byte_size: only with a byte bound, once per event offered, on the producer's thread.
void check_byte_size(const RoundPlan& plan, const ByteSizeCalls& calls, const IdCounts& counts,
                     Violations& violation);

// Order, batch sizes and bytes, batches under way, the throttle (check_calls.cpp).
void check_calls(const RoundPlan& plan, const Observed& obs, const Batches& batches,
                 Violations& violation);

// The delegate's lifecycle; Stats against what was observed; offers in bounded time
// (check_stats.cpp).
void check_lifecycle(const RoundPlan& plan, const Observed& obs, Violations& violation);
void check_stats(const RoundPlan& plan, const Observed& obs, const buffered::Stats& stats,
                 const IdCounts& counts, const Batches& batches, Violations& violation);
void check_offer_times(std::uint64_t slow_offers, std::chrono::nanoseconds slowest_reoffer,
                       Violations& violation);

}  // namespace buffered_stress
