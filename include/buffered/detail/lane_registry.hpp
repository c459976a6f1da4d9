// Which lane of a queue each producer thread writes to, and giving the lane back when the
// thread ends.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace buffered::detail {

// Shared by one queue and every thread registered with it; the last of them frees it. It lets
// a thread that ends give its lane back if, and only if, the queue still exists.
//
// Thread-safe. Allocated by the queue's constructor (the only allocation of this scheme).
class LaneAnchor {
 public:
  using Release = void (*)(void* queue, unsigned lane) noexcept;

  LaneAnchor(void* queue, Release on_release) noexcept
      : queue_(queue), release_(on_release), id_(next_id()) {}
  LaneAnchor(const LaneAnchor&) = delete;
  LaneAnchor& operator=(const LaneAnchor&) = delete;

  // Unique for the process's lifetime: a thread's cached lane is valid only for this id.
  std::uint64_t id() const noexcept { return id_; }
  bool alive() const noexcept { return alive_.load(std::memory_order_acquire); }

  void ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void unref() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // The queue's destructor: no thread gives a lane back from now on. Blocks while one does.
  void kill() noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    alive_.store(false, std::memory_order_release);
    queue_ = nullptr;
  }

  // A registered thread is ending: gives `lane` back unless the queue is gone.
  void release(unsigned lane) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_ != nullptr) release_(queue_, lane);
  }

 private:
  static std::uint64_t next_id() noexcept {
    static std::atomic<std::uint64_t> next{1};
    return next.fetch_add(1, std::memory_order_relaxed);
  }

  std::atomic<std::uint32_t> refs_{1};
  std::atomic<bool> alive_{true};
  std::mutex mu_;
  void* queue_;  // guarded by mu_
  const Release release_;
  const std::uint64_t id_;
};

// The producer fast path: the lane this thread used last, for the queue with id `id`.
// Trivially destructible, so reading it costs no initialisation guard.
struct LaneCache {
  std::uint64_t id = 0;
  void* lane = nullptr;
};
inline thread_local LaneCache lane_cache;

// The lanes this thread holds, one entry per queue, given back when the thread ends. A fixed
// array, so registering never allocates. A thread that produces into more than kMaxEntries live
// queues at once writes to the shared lane of the ones it could not register with, and from
// then on registers only with shared lanes: a thread never moves from a shared lane to its own,
// which could let its later events overtake its earlier ones.
class ThreadLanes {
 public:
  static constexpr std::size_t kMaxEntries = 16;
  static constexpr unsigned kNotFound = ~0u;

  ThreadLanes() = default;
  ThreadLanes(const ThreadLanes&) = delete;
  ThreadLanes& operator=(const ThreadLanes&) = delete;

  ~ThreadLanes() {
    for (std::size_t i = 0; i < count_; ++i) {
      entries_[i].anchor->release(entries_[i].lane);
      entries_[i].anchor->unref();
    }
    lane_cache = LaneCache{};
  }

  unsigned find(std::uint64_t id) const noexcept {
    for (std::size_t i = 0; i < count_; ++i) {
      if (entries_[i].anchor->id() == id) return entries_[i].lane;
    }
    return kNotFound;
  }

  // Whether add() will succeed; forgets the entries of queues that no longer exist first.
  bool has_room() noexcept {
    if (overflowed_) return false;
    std::size_t kept = 0;
    for (std::size_t i = 0; i < count_; ++i) {
      if (entries_[i].anchor->alive()) {
        entries_[kept++] = entries_[i];
      } else {
        entries_[i].anchor->unref();
      }
    }
    count_ = kept;
    if (count_ == kMaxEntries) overflowed_ = true;
    return !overflowed_;
  }

  // Only after has_room() returned true.
  void add(LaneAnchor& anchor, unsigned lane) noexcept {
    anchor.ref();
    entries_[count_++] = Entry{&anchor, lane};
  }

 private:
  struct Entry {
    LaneAnchor* anchor;
    unsigned lane;
  };
  Entry entries_[kMaxEntries] = {};
  std::size_t count_ = 0;
  bool overflowed_ = false;
};

inline ThreadLanes& thread_lanes() {
  thread_local ThreadLanes lanes;
  return lanes;
}

}  // namespace buffered::detail
