// The counters behind Stats that the worker, the dispatch threads and shutdown update.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "cache_line.hpp"

namespace buffered::detail {

// Each counter is exact; stats() reads them one after another. Relaxed increments: they publish
// no data. `pending` is decremented with release and `abandoned_any` stored with release, so a
// shutdown() that acquires them and sees a batch settled also sees its counts.
struct alignas(kCacheLine) Counters {
  std::atomic<std::uint64_t> delivered{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> abandoned{0};
  std::atomic<std::uint64_t> batches{0};
  std::atomic<std::uint64_t> retries{0};
  std::atomic<std::size_t> in_flight{0};
  std::atomic<std::size_t> pending{0};  // taken from the buffer, not yet settled
  // Batches handed to Delivery but not in a delegate call: queued for a dispatch thread, or
  // waiting for a retry's backoff or token. Past a stop deadline they are abandoned promptly.
  std::atomic<std::size_t> waiting{0};
  std::atomic<bool> abandoned_any{false};
};

}  // namespace buffered::detail
