// Which lane of a queue each producer thread writes to, and giving the lane back when the
// thread ends.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <type_traits>

#if __has_include(<pthread.h>)
#include <pthread.h>
#define BUFFERED_HAS_PTHREAD_KEY 1
#else
#define BUFFERED_HAS_PTHREAD_KEY 0
#endif

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

  // In a forked child, where a parent thread may have held mu_ at the fork: a new, free one.
  void reset_lock_in_child() noexcept { ::new (&mu_) std::mutex; }

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

// Gives the thread's lanes back from a thread_local destructor (where no pthread key is had).
struct ThreadExitGuard {
  ThreadExitGuard() noexcept = default;
  ThreadExitGuard(const ThreadExitGuard&) = delete;
  ThreadExitGuard& operator=(const ThreadExitGuard&) = delete;
  ~ThreadExitGuard();
};

// The lanes this thread holds, one entry per queue, given back when the thread ends. A fixed
// array, so registering never allocates. A thread that produces into more than kMaxEntries live
// queues at once writes to the shared lane of the ones it could not register with ("spills");
// a spilled thread later takes a lane of its own in such a queue only once that queue's shared
// lane is empty (ShardedQueue::register_thread), so its later events never overtake its earlier
// ones.
//
// Thread exit. The record is trivially destructible, so it stays usable while the thread's other
// thread_local objects are destroyed, whatever their order: a destructor that offers events
// (a logger flushing on exit) finds the thread's lanes still held. The lanes are given back
// after all of them, by the destructor of a POSIX thread-specific key (glibc runs those after
// every thread_local destructor; a key destructor that offers again re-registers the thread, and
// the key runs again, up to PTHREAD_DESTRUCTOR_ITERATIONS times). Without pthreads, or if no key
// can be made, a thread_local guard gives them back instead; an offer made after the guard's
// destructor then holds its new lanes until the queues end.
class ThreadLanes {
 public:
  static constexpr std::size_t kMaxEntries = 16;
  static constexpr unsigned kNotFound = ~0u;

  constexpr ThreadLanes() = default;
  ThreadLanes(const ThreadLanes&) = delete;
  ThreadLanes& operator=(const ThreadLanes&) = delete;

  unsigned find(std::uint64_t id) const noexcept {
    for (std::size_t i = 0; i < count_; ++i) {
      if (entries_[i].anchor->id() == id) return entries_[i].lane;
    }
    return kNotFound;
  }

  // Whether add() will succeed; forgets the entries of queues that no longer exist first.
  bool has_room() noexcept {
    std::size_t kept = 0;
    for (std::size_t i = 0; i < count_; ++i) {
      if (entries_[i].anchor->alive()) {
        entries_[kept++] = entries_[i];
      } else {
        entries_[i].anchor->unref();
      }
    }
    count_ = kept;
    return count_ < kMaxEntries;
  }

  // The thread wrote into a queue's shared lane without an entry for it.
  void spill() noexcept { spilled_ = true; }
  bool spilled() const noexcept { return spilled_; }

  // Only after has_room() returned true. Arms the thread-exit hook if it is not armed.
  void add(LaneAnchor& anchor, unsigned lane) noexcept {
    anchor.ref();
    entries_[count_++] = Entry{&anchor, lane};
    if (!hooked_) hooked_ = hook(this);
  }

  // The thread is ending: gives every lane back. Idempotent.
  void release_all() noexcept {
    hooked_ = false;
    lane_cache = LaneCache{};
    // One at a time from the back: a release cannot offer, but stay consistent if one did.
    while (count_ != 0) {
      const Entry e = entries_[--count_];
      e.anchor->release(e.lane);
      e.anchor->unref();
    }
  }

 private:
  struct Entry {
    LaneAnchor* anchor;
    unsigned lane;
  };

  static bool hook(ThreadLanes* self) noexcept;

  Entry entries_[kMaxEntries] = {};
  std::size_t count_ = 0;
  bool spilled_ = false;
  bool hooked_ = false;  // the exit hook will call release_all()
};

static_assert(std::is_trivially_destructible_v<ThreadLanes>,
              "ThreadLanes must outlive every thread_local destructor that may offer");

inline constinit thread_local ThreadLanes thread_lanes;

inline ThreadExitGuard::~ThreadExitGuard() { thread_lanes.release_all(); }

#if BUFFERED_HAS_PTHREAD_KEY
inline bool ThreadLanes::hook(ThreadLanes* self) noexcept {
  struct Key {
    pthread_key_t key{};
    bool made = false;
    Key() noexcept {
      made = pthread_key_create(
                 &key, [](void* p) noexcept { static_cast<ThreadLanes*>(p)->release_all(); }) == 0;
    }
  };
  static const Key key;  // never deleted: threads may end while static destructors run
  if (key.made && pthread_setspecific(key.key, self) == 0) return true;
  thread_local ThreadExitGuard guard;  // no key: the fallback below
  return true;
}
#else
inline bool ThreadLanes::hook(ThreadLanes*) noexcept {
  thread_local ThreadExitGuard guard;
  return true;
}
#endif

}  // namespace buffered::detail
