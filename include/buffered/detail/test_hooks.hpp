// Test-only seams. They exist only when BUFFERED_TEST_HOOKS is defined, which the project's own
// test targets do; otherwise they are empty and cost nothing. Do not define it in your program.
#pragma once

#include <atomic>
#include <cstdint>

namespace buffered::detail::test_hooks {

#ifdef BUFFERED_TEST_HOOKS
// Called by a producer between taking the slot for its event number `position` and publishing
// it: a test can stall it there.
inline std::atomic<void (*)(std::uint64_t position)> before_publish{nullptr};
// The position at which backends constructed from now on start counting (to test the wrap).
inline std::atomic<std::uint64_t> initial_position{0};

inline void on_before_publish(std::uint64_t position) noexcept {
  if (auto hook = before_publish.load(std::memory_order_acquire)) hook(position);
}
inline std::uint64_t start_position() noexcept {
  return initial_position.load(std::memory_order_relaxed);
}
#else
inline void on_before_publish(std::uint64_t) noexcept {}
inline std::uint64_t start_position() noexcept { return 0; }
#endif

}  // namespace buffered::detail::test_hooks
