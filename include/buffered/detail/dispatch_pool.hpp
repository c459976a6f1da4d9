// A fixed pool of threads that run delegate calls for async dispatch.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "fork_guard.hpp"

namespace buffered::detail {

// `threads` threads, made by start(), each running one job at a time. At most `threads` jobs are
// submitted and unfinished at once (the submitter checks has_free_slot() first), so a job never
// waits for a thread and memory stays bounded. Batch buffers are recycled: `threads + 1` of them
// exist (one per job plus the one the submitter is filling), so nothing allocates after start().
//
// Lifecycle: start() makes the threads; stop_and_join() lets every submitted job run, then
// joins them, after which start() may be called again. The destructor does the same.
template <class Batch>
class DispatchPool {
 public:
  // Runs a job: the batch and the queue position of its first event.
  using Work = std::function<void(Batch&, std::uint64_t)>;

  DispatchPool(std::size_t threads, std::size_t batch_capacity, Work work,
               std::function<void()> slot_freed)
      : threads_(threads), work_(std::move(work)), slot_freed_(std::move(slot_freed)) {
    jobs_.reserve(threads);
    free_.reserve(threads + 1);
    for (std::size_t i = 0; i < threads + 1; ++i) {
      Batch batch;
      batch.reserve(batch_capacity);
      free_.push_back(std::move(batch));
    }
  }

  DispatchPool(const DispatchPool&) = delete;
  DispatchPool& operator=(const DispatchPool&) = delete;
  ~DispatchPool() { stop_and_join(); }

  // Makes the threads; `on_thread_start` runs first on each. Not thread-safe; call once per
  // stop_and_join(). Allocates. If a thread cannot be made (std::system_error) or an allocation
  // fails, the threads already made are joined and the exception propagates: the pool is then as
  // before the call.
  void start(const std::function<void()>& on_thread_start) {
    try {
      workers_.reserve(threads_);
      for (std::size_t i = 0; i < threads_; ++i) {
        workers_.emplace_back([this, on_thread_start] {
          on_thread_start();
          run_jobs();
        });
      }
    } catch (...) {
      stop_and_join();
      throw;
    }
  }

  // Submitter. True if a job can be submitted now; otherwise false, and slot_freed() will be
  // called when one can. Takes the mutex; never allocates.
  bool has_free_slot() {
    std::lock_guard<std::mutex> lock(mu_);
    if (busy_ < threads_) return true;
    submitter_waits_ = true;
    return false;
  }

  // Submitter: a cleared buffer with the batch capacity reserved. Never allocates.
  Batch take_buffer() {
    std::lock_guard<std::mutex> lock(mu_);
    Batch batch = std::move(free_.back());
    free_.pop_back();
    return batch;
  }

  // Submitter, after has_free_slot() returned true. Never blocks beyond the mutex.
  void submit(Batch&& batch, std::uint64_t first_position) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++busy_;
      jobs_.push_back(Job{std::move(batch), first_position});
    }
    cv_.notify_one();
  }

  // Blocks until every submitted job has run, then joins the threads. Idempotent; call from one
  // thread (not from a pool thread). Never allocates.
  void stop_and_join() {
    if (forked_since(generation_)) {  // a forked child: the threads are not there (fork_guard)
      for (std::thread& t : workers_) join_or_forget(t, generation_);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) {
      if (t.joinable()) t.join();
    }
    workers_.clear();  // keeps the capacity
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = false;
  }

 private:
  struct Job {
    Batch batch;
    std::uint64_t first_position;
  };

  void run_jobs() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !jobs_.empty() || stopping_; });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.erase(jobs_.begin());
      }
      work_(job.batch, job.first_position);
      job.batch.clear();
      bool notify = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        free_.push_back(std::move(job.batch));
        --busy_;
        notify = std::exchange(submitter_waits_, false);
      }
      if (notify) slot_freed_();
    }
  }

  const std::size_t threads_;
  const Work work_;
  const std::function<void()> slot_freed_;
  std::mutex mu_;
  CondVar cv_;
  std::vector<Job> jobs_;  // FIFO; at most threads_ long
  std::vector<Batch> free_;
  std::size_t busy_ = 0;  // submitted and not finished
  bool submitter_waits_ = false;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  const unsigned generation_ = ForkRegistry::generation();
};

}  // namespace buffered::detail
