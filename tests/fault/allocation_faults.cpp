// Replaces the global operator new/delete so that a chosen allocation fails.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "fault_injection.hpp"

namespace buffered_test::fault {
namespace {

// 0 = disarmed; otherwise counting. The counter and the target are read on every allocation.
std::atomic<bool> armed{false};
std::atomic<bool> failing{false};
std::atomic<std::uint64_t> counted{0};
std::atomic<std::uint64_t> target{0};
std::atomic<std::uint64_t> failed{0};
std::atomic<Mode> mode{Mode::once};
thread_local bool fail_next_here = false;

// True if this allocation must fail.
bool should_fail() noexcept {
  if (fail_next_here) {
    fail_next_here = false;
    return true;
  }
  if (!armed.load(std::memory_order_acquire)) return false;
  const std::uint64_t n = counted.fetch_add(1, std::memory_order_acq_rel) + 1;
  if (!failing.load(std::memory_order_relaxed)) return false;
  const std::uint64_t t = target.load(std::memory_order_relaxed);
  const bool fail = mode.load(std::memory_order_relaxed) == Mode::once ? n == t : n >= t;
  if (fail) failed.fetch_add(1, std::memory_order_relaxed);
  return fail;
}

void* allocate(std::size_t size, std::size_t alignment) noexcept {
  if (should_fail()) return nullptr;
  if (size == 0) size = 1;
  if (alignment <= alignof(std::max_align_t)) return std::malloc(size);
  void* p = nullptr;
  return ::posix_memalign(&p, alignment, size) == 0 ? p : nullptr;
}

void* allocate_or_throw(std::size_t size, std::size_t alignment) {
  void* p = allocate(size, alignment);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

void fail_allocation(std::uint64_t nth, Mode m) {
  armed.store(false, std::memory_order_release);
  counted.store(0, std::memory_order_relaxed);
  failed.store(0, std::memory_order_relaxed);
  target.store(nth, std::memory_order_relaxed);
  mode.store(m, std::memory_order_relaxed);
  failing.store(true, std::memory_order_relaxed);
  armed.store(true, std::memory_order_release);
}

void count_allocations() {
  armed.store(false, std::memory_order_release);
  counted.store(0, std::memory_order_relaxed);
  failed.store(0, std::memory_order_relaxed);
  failing.store(false, std::memory_order_relaxed);
  armed.store(true, std::memory_order_release);
}

std::uint64_t disarm_allocations() {
  armed.store(false, std::memory_order_release);
  failing.store(false, std::memory_order_relaxed);
  return counted.load(std::memory_order_acquire);
}

std::uint64_t failed_allocations() { return failed.load(std::memory_order_acquire); }

void fail_next_allocation_on_this_thread() { fail_next_here = true; }

bool cancel_next_allocation_failure_on_this_thread() {
  const bool pending = fail_next_here;
  fail_next_here = false;
  return pending;
}

}  // namespace buffered_test::fault

using buffered_test::fault::allocate;
using buffered_test::fault::allocate_or_throw;
constexpr std::size_t kDefault = alignof(std::max_align_t);

void* operator new(std::size_t n) { return allocate_or_throw(n, kDefault); }
void* operator new[](std::size_t n) { return allocate_or_throw(n, kDefault); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return allocate(n, kDefault); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return allocate(n, kDefault);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return allocate_or_throw(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return allocate_or_throw(n, static_cast<std::size_t>(a));
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate(n, static_cast<std::size_t>(a));
}

void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
