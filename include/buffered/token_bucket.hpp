// A thread-safe token bucket rate limiter.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace buffered {

// Holds up to `burst` tokens, starts full, and gains `qps` tokens per second of `Clock`. The
// clock is a parameter so tests can drive time by hand.
//
// Thread-safe: every member may be called from any number of threads at once. A short internal
// mutex is taken by each call. Nothing allocates after construction.
template <class Clock = std::chrono::steady_clock>
class TokenBucket {
 public:
  using clock = Clock;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;

  // Throws std::invalid_argument if qps is not a positive finite number or burst is 0.
  TokenBucket(double qps, std::size_t burst)
      : qps_(qps), burst_(static_cast<double>(burst)), tokens_(static_cast<double>(burst)) {
    if (!(qps > 0) || !std::isfinite(qps)) {
      throw std::invalid_argument("TokenBucket: qps must be a positive, finite number");
    }
    if (burst == 0) throw std::invalid_argument("TokenBucket: burst must be at least 1");
    last_ = Clock::now();
  }

  TokenBucket(const TokenBucket&) = delete;
  TokenBucket& operator=(const TokenBucket&) = delete;

  // Takes a token if one is there now. Never blocks (beyond the internal mutex).
  bool try_accept() { return try_accept_or_wait() == duration::zero(); }

  // Takes a token if one is there now and returns zero; otherwise takes nothing and returns how
  // long until one will be (at least one tick). Never blocks (beyond the internal mutex).
  duration try_accept_or_wait() {
    std::lock_guard<std::mutex> lock(mu_);
    refill(Clock::now());
    if (tokens_ >= 1.0) {
      tokens_ -= 1.0;
      return duration::zero();
    }
    const std::chrono::duration<double> missing((1.0 - tokens_) / qps_);
    return std::max(std::chrono::ceil<duration>(missing), duration(1));
  }

  // Blocks (sleeping) until a token is taken.
  void accept() {
    for (;;) {
      const duration wait = try_accept_or_wait();
      if (wait == duration::zero()) return;
      std::this_thread::sleep_for(wait);
    }
  }

  // Blocks (sleeping) until a token is taken and returns true, or returns false once no token
  // can be had by `deadline`. It returns false at once, without sleeping, when the next token is
  // due after the deadline: nothing else refills the bucket, so waiting could not help.
  bool accept_until(time_point deadline) {
    for (;;) {
      const duration wait = try_accept_or_wait();
      if (wait == duration::zero()) return true;
      const time_point now = Clock::now();
      if (now >= deadline || deadline - now < wait) return false;
      std::this_thread::sleep_for(wait);
    }
  }

  double qps() const noexcept { return qps_; }
  std::size_t burst() const noexcept { return static_cast<std::size_t>(burst_); }

 private:
  void refill(time_point now) {
    if (now <= last_) return;  // a clock that stood still or stepped back adds nothing
    const std::chrono::duration<double> elapsed = now - last_;
    tokens_ = std::min(burst_, tokens_ + elapsed.count() * qps_);
    last_ = now;
  }

  const double qps_;
  const double burst_;
  std::mutex mu_;
  double tokens_;
  time_point last_;
};

}  // namespace buffered
