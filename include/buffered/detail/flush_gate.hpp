// Keeping delegate.flush() calls and delegate.shutdown() apart.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>

#include "fork_guard.hpp"

namespace buffered::detail {

// flush() callers enter before calling delegate.flush() and leave after; the worker closes the
// gate before calling delegate.shutdown() and waits there until every flush inside has left. So
// delegate.flush() never runs once delegate.shutdown() has started, and flushes may still run
// side by side with each other and with batches.
//
// Thread-safe: one mutex guards the state. Never allocates. close_and_wait() blocks for as long
// as the slowest delegate.flush() already running.
class FlushGate {
 public:
  // False once the gate is closed: the caller must not call delegate.flush().
  bool try_enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return false;
    ++inside_;
    return true;
  }

  void leave() {
    bool last = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      last = --inside_ == 0 && closed_;
    }
    if (last) cv_.notify_all();
  }

  // Refuses every later try_enter(), then waits for those inside to leave.
  void close_and_wait() {
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    cv_.wait(lock, [this] { return inside_ == 0; });
  }

 private:
  std::mutex mu_;
  CondVar cv_;
  std::size_t inside_ = 0;
  bool closed_ = false;
};

// RAII for one delegate.flush() call through the gate.
class FlushPass {
 public:
  explicit FlushPass(FlushGate& gate) : gate_(gate), entered_(gate.try_enter()) {}
  ~FlushPass() {
    if (entered_) gate_.leave();
  }
  FlushPass(const FlushPass&) = delete;
  FlushPass& operator=(const FlushPass&) = delete;
  explicit operator bool() const noexcept { return entered_; }

 private:
  FlushGate& gate_;
  const bool entered_;
};

}  // namespace buffered::detail
