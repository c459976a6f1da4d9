// What a process forked from one that runs backends may do with the copies it inherits.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <new>
#include <thread>
#include <utility>

#if __has_include(<pthread.h>)
#include <pthread.h>
#define BUFFERED_HAS_ATFORK 1
#else
#define BUFFERED_HAS_ATFORK 0
#endif

namespace buffered::detail {

// A forked child has one thread: the parent's worker and dispatch threads are not there, and
// any lock they held is held for ever. So in the child an inherited backend is closed (offers
// are refused as shut_down), and its destructor neither waits for nor joins threads, nor touches
// a condition variable (glibc's pthread_cond_destroy waits for the parent's sleepers): it
// returns at once, delivering and reporting nothing, since its events are the parent's to
// deliver.
//
// ForkRegistry: the live backends, so that the child handler of pthread_atfork can close them.
// Its mutex is taken by the prepare handler, so the list is whole when the child copies it.
class ForkRegistry {
 public:
  struct Node {
    Node* prev = nullptr;
    Node* next = nullptr;
    void (*on_child)(void* self) noexcept = nullptr;  // runs in the child, with one thread
    void* self = nullptr;
  };

  // Thread-safe; never throws (a mutex aside); never allocates.
  static void add(Node& node) noexcept {
    install();
    std::lock_guard<std::mutex> lock(mu());
    node.prev = nullptr;
    node.next = head();
    if (head() != nullptr) head()->prev = &node;
    head() = &node;
  }
  static void remove(Node& node) noexcept {
    std::lock_guard<std::mutex> lock(mu());
    if (node.prev != nullptr) node.prev->next = node.next;
    if (node.next != nullptr) node.next->prev = node.prev;
    if (head() == &node) head() = node.next;
    node.prev = node.next = nullptr;
  }

  // How many times this process is a fork of the one it came from. Lock-free.
  static unsigned generation() noexcept { return generation_.load(std::memory_order_acquire); }

 private:
  static std::mutex& mu() noexcept {
    // Never destroyed: backends may end while static destructors run.
    alignas(std::mutex) static unsigned char storage[sizeof(std::mutex)];
    static std::mutex* const m = ::new (storage) std::mutex;
    return *m;
  }
  static Node*& head() noexcept {
    static Node* h = nullptr;
    return h;
  }
  static void install() noexcept {
#if BUFFERED_HAS_ATFORK
    static const bool installed = [] {
      return pthread_atfork([] { mu().lock(); }, [] { mu().unlock(); },
                            [] {
                              generation_.fetch_add(1, std::memory_order_acq_rel);
                              for (Node* n = head(); n != nullptr; n = n->next)
                                n->on_child(n->self);
                              mu().unlock();
                            }) == 0;
    }();
    (void)installed;
#endif
  }

  static inline std::atomic<unsigned> generation_{0};
};

// True in a process forked since `generation` was read (in the object's own process).
inline bool forked_since(unsigned generation) noexcept {
  return ForkRegistry::generation() != generation;
}

// std::condition_variable, but not destroyed in a forked child, where the parent's threads may
// still count as its waiters (destroying it there would wait for them for ever). The same
// members; the same blocking and thread safety.
class CondVar {
 public:
  CondVar() : generation_(ForkRegistry::generation()) { ::new (storage_) std::condition_variable; }
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;
  ~CondVar() {
    if (!forked_since(generation_)) get().~condition_variable();
  }

  void notify_one() noexcept { get().notify_one(); }
  void notify_all() noexcept { get().notify_all(); }
  void wait(std::unique_lock<std::mutex>& lock) { get().wait(lock); }
  template <class TimePoint>
  std::cv_status wait_until(std::unique_lock<std::mutex>& lock, const TimePoint& deadline) {
    return get().wait_until(lock, deadline);
  }
  template <class Predicate>
  void wait(std::unique_lock<std::mutex>& lock, Predicate ready) {
    get().wait(lock, std::move(ready));
  }
  template <class TimePoint, class Predicate>
  bool wait_until(std::unique_lock<std::mutex>& lock, const TimePoint& deadline, Predicate ready) {
    return get().wait_until(lock, deadline, std::move(ready));
  }

 private:
  std::condition_variable& get() noexcept {
    return *std::launder(reinterpret_cast<std::condition_variable*>(storage_));
  }

  alignas(std::condition_variable) unsigned char storage_[sizeof(std::condition_variable)];
  const unsigned generation_;
};

// Ends a thread object made in this process: joins it, or in a forked child (where the thread
// does not exist) detaches it, so that neither hangs nor std::terminate()s.
inline void join_or_forget(std::thread& t, unsigned generation) noexcept {
  if (!t.joinable()) return;
  try {
    if (!forked_since(generation)) {
      t.join();
      return;
    }
    // No pthread call on the handle: in the child glibc reuses the parent threads'
    // descriptors for new threads, so detaching it could detach a live thread of the child.
    // The handle is kept, never destroyed (a few bytes per inherited thread).
    if (auto* kept = new (std::nothrow) std::thread) {
      *kept = std::move(t);
    } else {
      t.detach();  // out of memory: the lesser risk
    }
  } catch (...) {
    // Joining the current thread or a dead one: neither happens here; never throw.
  }
}

}  // namespace buffered::detail
