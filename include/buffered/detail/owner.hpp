// Knowing whether the current thread is inside one of a backend's own calls.
#pragma once

namespace buffered::detail {

// The backend whose worker, dispatch thread, delegate call or error-handler call the current
// thread is in, if any. flush() and shutdown() cannot wait for work that the calling thread itself
// must finish, and a blocking offer cannot wait for space that only this thread would free.
inline thread_local const void* current_owner = nullptr;

class OwnerScope {
 public:
  explicit OwnerScope(const void* owner) noexcept : previous_(current_owner) {
    current_owner = owner;
  }
  ~OwnerScope() { current_owner = previous_; }
  OwnerScope(const OwnerScope&) = delete;
  OwnerScope& operator=(const OwnerScope&) = delete;

 private:
  const void* previous_;
};

// The backend whose drop_oldest offer the current thread is making, if any. An offer made from
// the error handler while it reports an eviction of that backend does not evict in turn: it would
// take the space the outer offer freed, and each would evict again without end.
inline thread_local const void* current_evictor = nullptr;

class EvictorScope {
 public:
  explicit EvictorScope(const void* backend) noexcept : previous_(current_evictor) {
    current_evictor = backend;
  }
  ~EvictorScope() { current_evictor = previous_; }
  EvictorScope(const EvictorScope&) = delete;
  EvictorScope& operator=(const EvictorScope&) = delete;

 private:
  const void* previous_;
};

}  // namespace buffered::detail
