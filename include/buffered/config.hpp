// The configuration, policies and counters of a BufferedBackend (included by buffered_backend.hpp).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace buffered {

enum class OverflowPolicy {
  drop_newest,  // a full buffer rejects the event at once; never blocks
  block,        // the caller waits for space, up to BatchConfig::block_timeout, then it is rejected
  drop_oldest,  // a full buffer evicts the oldest queued events (reported `evicted`) to make room
                // for the new one, which is accepted; never blocks (beyond a short lock)
};

enum class ErrorKind {
  buffer_full,      // rejected by process_event(s): the buffer was full
  shut_down,        // rejected by process_event(s): the backend is shut down
  delegate_failed,  // the delegate threw, returned false or failed the batch, for the last time
  abandoned,        // accepted, but never delivered because shutdown came first
  evicted,          // accepted, then removed by OverflowPolicy::drop_oldest to make room
  too_large,        // refused by process_event(s): the event alone exceeds a byte bound
};

struct Throttle {
  double qps;         // batches per second, > 0
  std::size_t burst;  // bucket size, >= 1; the bucket starts full
};

// A failed batch is offered to the delegate again, after a backoff (see BatchConfig::retry).
struct Retry {
  std::size_t max_attempts = 5;  // delegate calls per batch, the first included; >= 1
  std::chrono::nanoseconds initial_backoff = std::chrono::milliseconds(100);  // > 0
  double multiplier = 2.0;  // >= 1: each wait is the previous one times this
  std::chrono::nanoseconds max_backoff = std::chrono::seconds(30);  // >= initial_backoff
  double jitter = 0.2;  // in [0, 1]: a wait w becomes uniform in w * [1 - jitter, 1 + jitter]
};

struct BatchConfig {
  std::size_t buffer_size = 10000;   // events the buffer holds, exactly (not rounded up)
  std::size_t max_batch_size = 400;  // events per delegate call, at most; 1 = no batching
  std::chrono::nanoseconds max_batch_wait =
      std::chrono::seconds(30);                     // linger of a batch's oldest event
  std::optional<Throttle> throttle = std::nullopt;  // one token per delegate call, taken before it
  bool async_delegate = false;                      // false: delegate runs on the worker thread
  std::size_t max_in_flight = 4;  // async only: concurrent delegate calls, at most
  OverflowPolicy overflow = OverflowPolicy::drop_newest;
  std::chrono::nanoseconds block_timeout = std::chrono::nanoseconds::max();  // for block
  std::optional<Retry> retry = std::nullopt;  // none: a failed batch is reported at once
  std::size_t max_buffer_bytes = 0;  // 0: no byte bound; else the queued events' byte sizes sum
                                     // to at most this (buffer_size still applies too)
  std::size_t max_batch_bytes = 0;   // 0: none; else a batch's byte sizes sum to at most this
};

struct Stats {                       // a snapshot; counters only grow
  std::uint64_t accepted;            // events taken into the buffer
  std::uint64_t rejected_full;       // events refused because the buffer was full
  std::uint64_t rejected_shut_down;  // events refused because the backend was shut down
  std::uint64_t delivered;           // events in delegate calls that returned normally
  std::uint64_t failed;              // events of batches that failed for good (last attempt)
  std::uint64_t abandoned;           // accepted events dropped because shutdown came first
  std::uint64_t batches;             // delegate calls made (every attempt counts)
  std::size_t queued;                // events in the buffer now
  std::size_t in_flight;             // delegate calls running now
  std::uint64_t retries;             // delegate calls that repeated a failed attempt
  std::uint64_t evicted;             // accepted events removed by drop_oldest
  std::uint64_t rejected_too_large;  // events refused because one alone exceeds a byte bound
  std::size_t pending;               // events taken from the buffer, not yet delivered, failed or
                                     // abandoned: in a forming batch, waiting for a token or a
                                     // retry, or in a delegate call (after shutdown: only a call
                                     // that outlived its deadline; they settle when it returns)
  std::size_t queued_bytes;          // byte size of the queued events (0 without a byte bound)
};

}  // namespace buffered
