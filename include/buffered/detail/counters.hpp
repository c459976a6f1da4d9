// The counters of delegate calls behind Stats, and the batches between calls.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "cache_line.hpp"

namespace buffered::detail {

// What Delivery and the dispatcher count about calls (outcomes are the Ledger's). Each counter is
// exact; stats() reads them one after another. Relaxed increments: they publish no data;
// `waiting` is decremented with release so that a shutdown() that acquires it at 0 sees every
// batch settled.
struct alignas(kCacheLine) Counters {
  std::atomic<std::uint64_t> batches{0};
  std::atomic<std::uint64_t> retries{0};
  std::atomic<std::size_t> in_flight{0};
  // Batches handed to Delivery but not in a delegate call: queued for a dispatch thread, or
  // waiting for a retry's backoff or token. Past a stop deadline they are abandoned promptly.
  std::atomic<std::size_t> waiting{0};
};

}  // namespace buffered::detail
