// Interposes pthread_create so that a chosen thread creation fails with EAGAIN, as it does at
// the system's thread limit (RLIMIT_NPROC does not bind root, and CI runs as root).
#include <dlfcn.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "fault_injection.hpp"

namespace buffered_test::fault {
namespace {

std::atomic<bool> armed{false};
std::atomic<std::uint64_t> counted{0};
std::atomic<std::uint64_t> target{0};
std::atomic<Mode> mode{Mode::once};
std::atomic<std::uint64_t> created{0};

bool should_fail() noexcept {
  if (!armed.load(std::memory_order_acquire)) return false;
  const std::uint64_t n = counted.fetch_add(1, std::memory_order_acq_rel) + 1;
  const std::uint64_t t = target.load(std::memory_order_relaxed);
  return mode.load(std::memory_order_relaxed) == Mode::once ? n == t : n >= t;
}

}  // namespace

void fail_thread_creation(std::uint64_t nth, Mode m) {
  armed.store(false, std::memory_order_release);
  counted.store(0, std::memory_order_relaxed);
  target.store(nth, std::memory_order_relaxed);
  mode.store(m, std::memory_order_relaxed);
  armed.store(true, std::memory_order_release);
}

std::uint64_t disarm_thread_creation() {
  armed.store(false, std::memory_order_release);
  return counted.load(std::memory_order_acquire);
}

std::uint64_t threads_created() { return created.load(std::memory_order_acquire); }

}  // namespace buffered_test::fault

extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*),
                              void* arg) {
  using Create = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
  static const Create real = reinterpret_cast<Create>(dlsym(RTLD_NEXT, "pthread_create"));
  if (buffered_test::fault::should_fail()) return EAGAIN;
  const int rc = real(thread, attr, start, arg);
  if (rc == 0) buffered_test::fault::created.fetch_add(1, std::memory_order_relaxed);
  return rc;
}
