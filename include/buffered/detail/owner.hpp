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

}  // namespace buffered::detail
