// Reference: the batcher a user writes in 30 lines — a mutex, a condition variable and a deque,
// with the same triggers as BufferedBackend (max batch size, max wait from the first event).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

namespace bench {

template <class Event, class Sink>
class MutexBatcher {
 public:
  MutexBatcher(Sink& sink, std::size_t buffer_size, std::size_t max_batch,
               std::chrono::nanoseconds max_wait)
      : sink_(sink), buffer_size_(buffer_size), max_batch_(max_batch), max_wait_(max_wait) {
    worker_ = std::thread([this] { run(); });
  }
  ~MutexBatcher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    worker_.join();
  }

  bool process_event(const Event& e) {
    std::unique_lock<std::mutex> lock(mu_);
    if (queue_.size() >= buffer_size_) return false;
    queue_.push_back(e);
    const bool wake = queue_.size() == 1 || queue_.size() >= max_batch_;
    lock.unlock();
    if (wake) cv_.notify_one();
    return true;
  }

  // Delivers everything queued now, at once.
  void flush() {
    std::unique_lock<std::mutex> lock(mu_);
    ++flush_requests_;
    cv_.notify_one();
    done_cv_.wait(lock, [this] { return queue_.empty() && !delivering_; });
  }

 private:
  void run() {
    std::vector<Event> batch;
    batch.reserve(max_batch_);
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty() && stop_) return;
      const auto deadline = std::chrono::steady_clock::now() + max_wait_;
      cv_.wait_until(lock, deadline, [this] {
        return stop_ || flush_requests_ != 0 || queue_.size() >= max_batch_;
      });
      const std::size_t n = std::min(max_batch_, queue_.size());
      batch.assign(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
      if (queue_.empty()) flush_requests_ = 0;
      delivering_ = true;
      lock.unlock();
      sink_.process_events(std::span<Event>(batch));
      lock.lock();
      delivering_ = false;
      done_cv_.notify_all();
    }
  }

  Sink& sink_;
  const std::size_t buffer_size_;
  const std::size_t max_batch_;
  const std::chrono::nanoseconds max_wait_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  std::deque<Event> queue_;
  std::size_t flush_requests_ = 0;
  bool delivering_ = false;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace bench
