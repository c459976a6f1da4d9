// A fence whose cost falls on the rare side: the producer's path keeps a compiler barrier, the
// consumer's rare look (before it parks, once after close) pays for a process-wide barrier.
#pragma once

#include <atomic>

#if defined(__linux__) && __has_include(<linux/membarrier.h>)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <exception>
#define BUFFERED_HAS_MEMBARRIER 1
#else
#define BUFFERED_HAS_MEMBARRIER 0
#endif

#if defined(__SANITIZE_THREAD__)
#define BUFFERED_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define BUFFERED_TSAN 1
#endif
#endif
#ifndef BUFFERED_TSAN
#define BUFFERED_TSAN 0
#endif

namespace buffered::detail {

// The pattern (store-buffering, as in Dekker's protocol): one side stores A then loads B, the
// other stores B then loads A, and at least one of them must see the other's store. With a
// seq_cst fence between each store and load that holds by the C++ memory model; the producer's
// side runs once per event, where a fence costs more than the rest of the push. So:
// - light() (producer): a compiler barrier. Enough where heavy() uses Linux
//   membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), which makes every running thread of the
//   process execute a full barrier before it returns (a thread that is not running has none of
//   its stores buffered).
// - heavy() (consumer): membarrier, or where the process cannot use it, fallback().
// - fenced(): the process cannot use membarrier, so a light side must also run fallback()
//   (a seq_cst fence) before its load. Users keep that off the producer's fast path by making
//   the value it loads anyway take a slow path in that mode (ShardedQueue's closed_ word, the
//   Parker's disarmed value), so the fast path is the same in both modes.
// Either way one side's load sees the other side's store: by the kernel's guarantee (membarrier
// orders the light side's store before its load, as seen from the heavy side) or by the memory
// model ([atomics.order], two seq_cst fences).
//
// Memory ordering: prepare() must have returned before any thread that uses the pair runs its
// light side (the queue's constructor calls it, so every producer of a queue sees the decision
// through the queue's publication). The decision is made once per process and never changes, so
// a light side that skipped its fence always pairs with a membarrier.
//
// Under ThreadSanitizer, which understands neither stand-alone fences nor membarrier, the mode
// is `fenced` and fallback() is a seq_cst read-modify-write of one shared word: RMWs of one
// location are totally ordered and each reads the last, so whichever comes second synchronizes
// with the first, and TSan checks the protocol built on top (as folly does in its sanitizer
// builds). Slower, and only there.
//
// Cost here (2-vCPU KVM): membarrier 0.15-0.37 us per call, 7.6 us to register (once).
class AsymmetricFence {
 public:
  enum Mode : int { kUndecided = 0, kMembarrier = 1, kFences = 2 };

  // Any thread; idempotent; thread-safe. Registers the process for expedited membarrier once
  // (a few microseconds), or settles on fences where the kernel lacks it or refuses it (old
  // kernel, seccomp), under ThreadSanitizer, or with BUFFERED_NO_MEMBARRIER=1 in the
  // environment. Never throws, never allocates.
  static void prepare() noexcept {
    static const int decided = [] {
      const int mode = probe();
      mode_.store(mode, std::memory_order_release);
      return mode;
    }();
    (void)decided;
  }

  // Whether light sides must also run fallback() (only after prepare()).
  static bool fenced() noexcept { return mode_.load(std::memory_order_acquire) != kMembarrier; }

  // Producer side: a compiler barrier. Never blocks.
  [[gnu::always_inline]] static void light() noexcept {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }

  // The fence of `fenced` mode, on either side. Never blocks.
  static void fallback() noexcept {
#if BUFFERED_TSAN
    word_.fetch_add(0, std::memory_order_seq_cst);
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  }

  // Consumer side: a process-wide barrier: a system call where membarrier is used, else
  // fallback(). Thread-safe; never blocks.
  static void heavy() noexcept {
#if BUFFERED_TSAN
    fallback();  // the mode is always `fenced` there
#else
    if (mode_.load(std::memory_order_acquire) == kMembarrier) {
      std::atomic_thread_fence(std::memory_order_seq_cst);
      membarrier_or_die();
    } else {
      fallback();
    }
#endif
  }

  // Which implementation prepare() chose (tests, benchmarks).
  static Mode mode() noexcept { return static_cast<Mode>(mode_.load(std::memory_order_acquire)); }

 private:
  static int probe() noexcept {
#if BUFFERED_HAS_MEMBARRIER && !BUFFERED_TSAN
    if (forced_fences()) return kFences;
    const long cmds = call(MEMBARRIER_CMD_QUERY);
    if (cmds < 0 || (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return kFences;
    if (call(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0) return kFences;
    if (call(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0) return kFences;
    return kMembarrier;
#else
    return kFences;
#endif
  }

#if BUFFERED_HAS_MEMBARRIER && !BUFFERED_TSAN
  static long call(int cmd) noexcept { return syscall(__NR_membarrier, cmd, 0, 0); }

  // BUFFERED_NO_MEMBARRIER=1 in the environment: the fallback, for tests and measurements.
  static bool forced_fences() noexcept {
    const char* v = std::getenv("BUFFERED_NO_MEMBARRIER");
    return v != nullptr && v[0] == '1';
  }

  // Producers already skip their fence, so there is no correct way back: re-register (which is
  // idempotent) and retry; the global command (slower, no registration) next; only a kernel that
  // revokes both mid-run (a seccomp filter installed after start-up) ends the process.
  static void membarrier_or_die() noexcept {
    for (int attempt = 0; attempt < 3; ++attempt) {
      if (call(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return;
      if (errno == EINTR) continue;
      call(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED);
    }
    if (call(MEMBARRIER_CMD_GLOBAL) == 0) return;
    std::terminate();
  }
#else
  static void membarrier_or_die() noexcept {}
#endif

  alignas(64) static inline std::atomic<int> mode_{kUndecided};
#if BUFFERED_TSAN
  static inline std::atomic<unsigned> word_{0};
#endif
};

}  // namespace buffered::detail
