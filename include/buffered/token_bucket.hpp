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

  // The largest burst: tokens are counted in a double, which counts single tokens exactly only
  // up to 2^53.
  static constexpr std::size_t kMaxBurst = std::size_t{1} << 53;

  // Throws std::invalid_argument if qps is not a positive finite number or burst is not in
  // [1, kMaxBurst]. Any positive qps works: a tiny one just means long waits.
  TokenBucket(double qps, std::size_t burst)
      : qps_(qps), burst_(burst), tokens_(static_cast<double>(burst)) {
    if (!(qps > 0) || !std::isfinite(qps)) {
      throw std::invalid_argument("TokenBucket: qps must be a positive, finite number");
    }
    if (burst == 0) throw std::invalid_argument("TokenBucket: burst must be at least 1");
    if (burst > kMaxBurst) throw std::invalid_argument("TokenBucket: burst must be at most 2^53");
    last_ = Clock::now();
  }

  TokenBucket(const TokenBucket&) = delete;
  TokenBucket& operator=(const TokenBucket&) = delete;

  // Takes a token if one is there now. Never blocks (beyond the internal mutex).
  bool try_accept() { return try_accept_or_wait() == duration::zero(); }

  // Takes a token if one is there now and returns zero; otherwise takes nothing and returns how
  // long until one will be: at least one tick, and at most kMaxWait (ask again then: a rate so
  // low that the next token is further away than that is still honoured, in steps). Never
  // blocks (beyond the internal mutex).
  duration try_accept_or_wait() {
    std::lock_guard<std::mutex> lock(mu_);
    refill(Clock::now());
    if (tokens_ >= 1.0) {
      tokens_ -= 1.0;
      return duration::zero();
    }
    // In double seconds first: with a tiny qps the wait does not fit in `duration` (converting
    // it would overflow, which is undefined behaviour).
    const double missing = std::min((1.0 - tokens_) / qps_, kMaxWait.count());
    return std::max(std::chrono::ceil<duration>(std::chrono::duration<double>(missing)),
                    duration(1));
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
  std::size_t burst() const noexcept { return burst_; }

  // The longest wait try_accept_or_wait() reports: about 31 years, or a quarter of what
  // `duration` can hold if that is less, so that now() + wait cannot overflow either.
  static constexpr std::chrono::duration<double> kMaxWait{
      std::min(1e9, std::chrono::duration<double>(duration::max()).count() / 4)};

 private:
  void refill(time_point now) {
    if (now <= last_) return;  // a clock that stood still or stepped back adds nothing
    const std::chrono::duration<double> elapsed = now - last_;
    tokens_ = std::min(static_cast<double>(burst_), tokens_ + elapsed.count() * qps_);
    last_ = now;
  }

  const double qps_;
  const std::size_t burst_;
  std::mutex mu_;
  double tokens_;
  time_point last_;
};

}  // namespace buffered
