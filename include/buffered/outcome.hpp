// What a delegate may say about a batch: Outcome, permanent_error, and the BatchContext it may
// take.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <limits>
#include <stdexcept>

namespace buffered {

// What a delegate may return instead of void/bool, to say how a batch went. Without
// BatchConfig::retry, retry() counts as a failure like permanent_failure().
class Outcome {
 public:
  enum class Kind { delivered, retry, permanent_failure };

  static Outcome delivered() noexcept { return Outcome(Kind::delivered, {}); }
  // Worth another attempt. after > 0: not before this long (e.g. an HTTP Retry-After), instead
  // of the backoff.
  static Outcome retry(std::chrono::nanoseconds after = {}) noexcept {
    return Outcome(Kind::retry, after);
  }
  // Never retried.
  static Outcome permanent_failure() noexcept { return Outcome(Kind::permanent_failure, {}); }

  Kind kind() const noexcept { return kind_; }
  std::chrono::nanoseconds retry_after() const noexcept { return after_; }
  friend bool operator==(const Outcome&, const Outcome&) = default;

 private:
  Outcome(Kind kind, std::chrono::nanoseconds after) noexcept : kind_(kind), after_(after) {}
  Kind kind_;
  std::chrono::nanoseconds after_;
};

// Thrown by a delegate: the batch fails at once and is not retried. Any other exception, a
// `false` result or Outcome::retry() is retryable.
struct permanent_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
struct BatchContextAccess;
}

// The optional second parameter of a delegate: process_events(std::span<Event>, const
// BatchContext&) or d(std::span<Event>, const BatchContext&). Valid only during the call.
// Thread-safe to read.
class BatchContext {
 public:
  using time_point = std::chrono::steady_clock::time_point;

  // For testing a delegate on its own: a fixed attempt number and deadline.
  explicit BatchContext(std::size_t attempt = 1, time_point deadline = time_point::max()) noexcept
      : attempt_(attempt), fixed_(deadline) {}

  // 1 for a batch's first delegate call, 2 for its first retry, ...
  std::size_t attempt() const noexcept { return attempt_; }

  // When this call should end by: the earliest shutdown deadline once one is set, else
  // time_point::max(). Live: it changes while the call runs if shutdown(timeout) is called
  // meanwhile, so read it when you set a socket or statement timeout, not once up front.
  time_point deadline() const noexcept {
    if (live_ == nullptr) return fixed_;
    const auto rep = live_->load(std::memory_order_acquire);
    if (rep == std::numeric_limits<time_point::rep>::max()) return time_point::max();
    return time_point(time_point::duration(rep));
  }

 private:
  friend struct detail::BatchContextAccess;
  BatchContext(std::size_t attempt, const std::atomic<time_point::rep>* live) noexcept
      : attempt_(attempt), live_(live) {}

  std::size_t attempt_;
  const std::atomic<time_point::rep>* live_ = nullptr;
  time_point fixed_ = time_point::max();
};

namespace detail {
struct BatchContextAccess {
  static BatchContext live(std::size_t attempt,
                           const std::atomic<BatchContext::time_point::rep>* deadline) noexcept {
    return BatchContext(attempt, deadline);
  }
};
}  // namespace detail

}  // namespace buffered
