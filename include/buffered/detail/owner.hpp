// Knowing whether the current thread is inside one of a backend's own calls.
#pragma once

namespace buffered::detail {

// The backend whose worker, dispatch thread, delegate call or error-handler call the current
// thread is in, if any. flush() and shutdown() cannot wait for work that the calling thread itself
// must finish, and a blocking offer cannot wait for space that only this thread would free.
inline thread_local const void* current_owner = nullptr;

// The backend whose drop_oldest offer the current thread is making, if any. An offer made from
// the error handler while it reports an eviction of that backend does not evict in turn: it would
// take the space the outer offer freed, and each would evict again without end.
inline thread_local const void* current_evictor = nullptr;

// Sets one of those marks for a scope and restores what it was (scopes nest).
class ThreadMark {
 public:
  ThreadMark(const void*& mark, const void* backend) noexcept : mark_(mark), previous_(mark) {
    mark_ = backend;
  }
  ~ThreadMark() { mark_ = previous_; }
  ThreadMark(const ThreadMark&) = delete;
  ThreadMark& operator=(const ThreadMark&) = delete;

 private:
  const void*& mark_;  // this thread's own
  const void* previous_;
};

class OwnerScope : public ThreadMark {
 public:
  explicit OwnerScope(const void* owner) noexcept : ThreadMark(current_owner, owner) {}
};

class EvictorScope : public ThreadMark {
 public:
  explicit EvictorScope(const void* backend) noexcept : ThreadMark(current_evictor, backend) {}
};

}  // namespace buffered::detail
