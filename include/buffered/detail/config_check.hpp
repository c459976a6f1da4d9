// Checking a BatchConfig before anything is built from it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "../config.hpp"
#include "../token_bucket.hpp"
#include "deadline.hpp"

namespace buffered::detail {

// The largest dispatch pool a config may ask for.
inline constexpr std::size_t kMaxInFlight = 4096;

// Returns `c` when every field is usable; otherwise throws std::invalid_argument with a message
// that names the field and what it must be. Pure; allocates only the exception.
inline BatchConfig checked_config(BatchConfig c) {
  using std::invalid_argument;
  if (c.buffer_size == 0) throw invalid_argument("BatchConfig::buffer_size must be at least 1");
  if (c.buffer_size > (std::size_t{1} << 40)) {
    throw invalid_argument("BatchConfig::buffer_size must be at most 2^40");
  }
  if (c.max_batch_size == 0)
    throw invalid_argument("BatchConfig::max_batch_size must be at least 1");
  if (c.max_batch_size > 1 && c.max_batch_wait <= std::chrono::nanoseconds::zero()) {
    throw invalid_argument("BatchConfig::max_batch_wait must be positive when max_batch_size > 1");
  }
  if (c.max_in_flight == 0) throw invalid_argument("BatchConfig::max_in_flight must be at least 1");
  if (c.max_in_flight > kMaxInFlight) {
    throw invalid_argument("BatchConfig::max_in_flight must be at most 4096 (threads)");
  }
  if (c.throttle) {
    if (!(c.throttle->qps > 0) || !std::isfinite(c.throttle->qps)) {
      throw invalid_argument("BatchConfig::throttle.qps must be a positive, finite number");
    }
    if (c.throttle->burst == 0)
      throw invalid_argument("BatchConfig::throttle.burst must be at least 1");
    if (c.throttle->burst > TokenBucket<SteadyClock>::kMaxBurst) {
      throw invalid_argument("BatchConfig::throttle.burst must be at most 2^53");
    }
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

// A byte bound is set: every event's size is taken when it is offered, and stored beside it.
inline bool has_byte_bound(const BatchConfig& c) noexcept {
  return c.max_buffer_bytes != 0 || c.max_batch_bytes != 0;
}

// The largest event a (checked) config admits: above either byte bound it is too_large.
inline std::uint64_t max_event_bytes(const BatchConfig& c) noexcept {
  std::uint64_t m = ~std::uint64_t{0};
  if (c.max_buffer_bytes != 0) m = std::min<std::uint64_t>(m, c.max_buffer_bytes);
  if (c.max_batch_bytes != 0) m = std::min<std::uint64_t>(m, c.max_batch_bytes);
  return m;
}

}  // namespace buffered::detail
