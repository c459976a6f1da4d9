// Reference: the batcher an expert writes on moodycamel::BlockingConcurrentQueue (Debian's
// libconcurrentqueue-dev), with the same triggers as BufferedBackend and MutexBatcher: a batch
// goes to the sink when it holds max_batch events, or max_wait after its first event, or on
// flush(); destruction drains everything.
//
// Choices, as an expert would make them:
// - Each producer thread enqueues through its own moodycamel::ProducerToken (the queue's fast
//   path: one sub-queue per producer, no shared tail). The bench gets one with make_producer().
// - Bounded like the others: at most buffer_size events queued, counted in one atomic. Each
//   producer reserves slots 32 at a time (one if 32 do not fit) and gives back what it did not
//   use when its handle goes, so the shared count is touched once per 32 events, not per event;
//   the consumer frees a batch's slots when it takes the batch. Queued events never exceed
//   buffer_size; the slots producers hold unused (under 32 each) can make a producer see the
//   buffer full a little early. (A fetch_add per event would be a second contended atomic per
//   event, beside the semaphore's.)
//   try_enqueue alone cannot be the bound: an explicit producer keeps every block it ever took,
//   so one that ran ahead holds the pre-allocated blocks for good and try_enqueue of another
//   fails forever (measured here: with 2 producers the second could not enqueue one event).
// - Allocation-free in practice: the queue is built with the (capacity, producers, 0)
//   constructor, which pre-allocates enough 32-event blocks for each of `producers` tokens to
//   hold buffer_size events at once; enqueue would allocate beyond that, which the cap prevents.
// - BlockingConcurrentQueue signals a semaphore on every enqueue: one shared atomic per event
//   remains. That is the price of its blocking wait, and part of what this reference measures.
// - One consumer with a ConsumerToken fills a batch with wait_dequeue_bulk_timed. A blocked
//   consumer cannot be woken without an event, so it waits at most `tick` at a time and then
//   looks at the flush and stop requests: flush() returns up to one tick late, and an idle
//   batcher wakes once per tick.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "blockingconcurrentqueue.h"

namespace bench {

template <class Event, class Sink>
class MoodycamelBatcher {
  using Queue = moodycamel::BlockingConcurrentQueue<Event>;
  static constexpr std::size_t kCredits = 32;  // slots a producer reserves at a time

 public:
  // One producer's handle: use it from one thread at a time.
  class Producer {
   public:
    Producer(const Producer&) = delete;
    Producer& operator=(const Producer&) = delete;
    ~Producer() {  // gives back the slots it reserved and did not use
      if (credits_ != 0) owner_->reserved_.fetch_sub(credits_, std::memory_order_relaxed);
    }

    bool process_event(const Event& e) {
      if (credits_ == 0 && !reserve()) return false;
      --credits_;
      owner_->queue_.enqueue(token_, e);
      return true;
    }

   private:
    friend class MoodycamelBatcher;
    explicit Producer(MoodycamelBatcher& owner) : owner_(&owner), token_(owner.queue_) {}

    // Reserves kCredits slots if they fit under the cap, else one, else none (the buffer is
    // full). The shared count is touched once per kCredits events, not per event.
    bool reserve() {
      for (const std::size_t want : {kCredits, std::size_t{1}}) {
        if (owner_->reserved_.fetch_add(want, std::memory_order_relaxed) + want <=
            owner_->buffer_size_) {
          credits_ = want;
          return true;
        }
        owner_->reserved_.fetch_sub(want, std::memory_order_relaxed);
      }
      return false;
    }

    MoodycamelBatcher* owner_;
    moodycamel::ProducerToken token_;
    std::size_t credits_ = 0;  // slots reserved and not used yet
  };

  MoodycamelBatcher(Sink& sink, std::size_t buffer_size, std::size_t max_batch,
                    std::chrono::nanoseconds max_wait, std::size_t producers,
                    std::chrono::microseconds tick = std::chrono::milliseconds(1))
      : sink_(sink),
        buffer_size_(buffer_size),
        max_batch_(max_batch),
        max_wait_(max_wait),
        tick_(tick),
        queue_(buffer_size, producers, 0) {
    worker_ = std::thread([this] { run(); });
  }
  ~MoodycamelBatcher() {
    stop_.store(true, std::memory_order_release);
    worker_.join();
  }

  Producer make_producer() { return Producer(*this); }

  // Delivers everything whose process_event returned before this call.
  void flush() {
    std::unique_lock<std::mutex> lock(flush_mu_);
    const std::uint64_t ticket = flush_requested_.load(std::memory_order_relaxed) + 1;
    flush_requested_.store(ticket, std::memory_order_release);
    flush_cv_.wait(lock, [&] { return flush_done_ >= ticket; });
  }

 private:
  bool urgent(std::uint64_t done) const {
    return stop_.load(std::memory_order_acquire) ||
           flush_requested_.load(std::memory_order_acquire) != done;
  }

  void run() {
    std::vector<Event> batch(max_batch_);
    moodycamel::ConsumerToken ctok(queue_);
    std::uint64_t done = 0;  // the flush requests answered so far
    for (;;) {
      // Read the requests before looking at the queue: an empty queue after this read means
      // every event offered before these requests has been delivered.
      const std::uint64_t requested = flush_requested_.load(std::memory_order_acquire);
      const bool stopping = stop_.load(std::memory_order_acquire);
      const bool hurry = stopping || requested != done;
      std::size_t n = queue_.wait_dequeue_bulk_timed(ctok, batch.data(), max_batch_,
                                                     hurry ? std::chrono::microseconds(0) : tick_);
      // A batch has started: fill it until it is full, its deadline passes, or a request comes.
      if (n != 0 && !hurry) {
        const auto deadline = std::chrono::steady_clock::now() + max_wait_;
        while (n < max_batch_ && !urgent(done)) {
          const auto left = deadline - std::chrono::steady_clock::now();
          if (left <= std::chrono::nanoseconds::zero()) break;
          const auto wait = std::min(std::chrono::duration_cast<std::chrono::microseconds>(left) +
                                         std::chrono::microseconds(1),
                                     tick_);
          n += queue_.wait_dequeue_bulk_timed(ctok, batch.data() + n, max_batch_ - n, wait);
        }
      }
      if (n != 0) {
        reserved_.fetch_sub(n, std::memory_order_relaxed);  // their slots are free again
        sink_.process_events(std::span<Event>(batch.data(), n));
        continue;
      }
      if (hurry) {  // the queue is empty after the requests were read: answer them
        {
          std::lock_guard<std::mutex> lock(flush_mu_);
          flush_done_ = requested;
        }
        done = requested;
        flush_cv_.notify_all();
        if (stopping) return;
      }
    }
  }

  Sink& sink_;
  const std::size_t buffer_size_;
  const std::size_t max_batch_;
  const std::chrono::nanoseconds max_wait_;
  const std::chrono::microseconds tick_;
  Queue queue_;
  // Slots taken: events enqueued and not yet dequeued, plus credits producers hold unused.
  alignas(64) std::atomic<std::size_t> reserved_{0};
  alignas(64) std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> flush_requested_{0};
  std::mutex flush_mu_;
  std::condition_variable flush_cv_;
  std::uint64_t flush_done_ = 0;  // guarded by flush_mu_
  std::thread worker_;
};

}  // namespace bench
