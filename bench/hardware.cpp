// The hardware itself, measured first while nothing else of ours runs: 2 threads contend for
// one cache line (a CAS loop, fetch_add) or each add to a line of its own.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "workloads.hpp"

namespace bench {
namespace {

const char* const kHwKeys[kHwTests] = {"hw_cas_shared", "hw_add_shared", "hw_add_private"};
const char* const kHwNames[kHwTests] = {
    "CAS loop (+1), one shared cache line",
    "fetch_add, one shared cache line",
    "fetch_add, private 128-byte-aligned lines",
};

struct alignas(128) PaddedCounter {
  std::atomic<std::uint64_t> value{0};
};

// Pins `thread` to the index-th CPU this process may run on, so that the threads of a hardware
// test run on different cores (on a shared machine they might otherwise take turns on one).
// Returns false if there is no such CPU.
bool pin_to_cpu(std::thread& thread, int index) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return false;
  for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed) || seen++ != index) continue;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return pthread_setaffinity_np(thread.native_handle(), sizeof one, &one) == 0;
  }
  return false;
}

struct HwResult {
  double ops_per_second;
  double slowest_share;
  bool unpinned;  // a thread could not have a CPU of its own
};

// `threads` threads, each pinned to its own CPU where there are enough, run `test` for
// `duration`. Returns the total increments per second, and the slowest thread's share of them
// (1/threads when the line is shared fairly; near 0 when one thread keeps it).
HwResult hw_run(HwTest test, int threads, std::chrono::milliseconds duration) {
  PaddedCounter shared;
  std::vector<PaddedCounter> own(static_cast<std::size_t>(threads));
  std::vector<std::uint64_t> made(static_cast<std::size_t>(threads));  // by each thread
  alignas(128) std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  bool unpinned = false;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::atomic<std::uint64_t>& line =
          test == kAddPrivate ? own[static_cast<std::size_t>(t)].value : shared.value;
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 256; ++i) {
          if (test == kCasShared) {
            std::uint64_t v = line.load(std::memory_order_relaxed);
            while (!line.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel,
                                               std::memory_order_relaxed)) {
            }
          } else {
            line.fetch_add(1, std::memory_order_acq_rel);
          }
        }
        n += 256;
      }
      made[static_cast<std::size_t>(t)] = n;
    });
    if (!pin_to_cpu(pool.back(), t)) unpinned = true;
  }
  while (ready.load() < threads) std::this_thread::yield();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  std::this_thread::sleep_for(duration);
  stop.store(true, std::memory_order_relaxed);
  for (auto& t : pool) t.join();
  const double s = seconds_since(t0);
  std::uint64_t counted = shared.value.load();
  for (auto& c : own) counted += c.value.load();
  const std::uint64_t total = std::accumulate(made.begin(), made.end(), std::uint64_t{0});
  check(counted == total && total != 0, "hardware counters disagree");
  const std::uint64_t slowest = *std::min_element(made.begin(), made.end());
  return {static_cast<double>(counted) / s,
          static_cast<double>(slowest) / static_cast<double>(total), unpinned};
}

}  // namespace

void HardwareRounds::round() {
  for (int t = 0; t < kHwTests; ++t) {
    const HwResult result = hw_run(static_cast<HwTest>(t), 2, options_.hw_time);
    ops_per_second_[t].push_back(result.ops_per_second);
    slowest_share_[t].push_back(result.slowest_share);
    if (result.unpinned) unpinned_ = true;
  }
}

void HardwareRounds::print_table() const {
  std::printf(
      "\n| hardware: 2 threads %s, %lld ms, median of %d | M increments/s, total | "
      "slower thread's share |\n",
      unpinned_ ? "(NOT pinned)" : "pinned to 2 CPUs",
      static_cast<long long>(options_.hw_time.count()), options_.rounds);
  std::printf("| --- | --- | --- |\n");
  for (int t = 0; t < kHwTests; ++t) {
    std::printf("| %s | %.1f | %.0f%% |\n", kHwNames[t], summarize(ops_per_second_[t]).median / 1e6,
                summarize(slowest_share_[t]).median * 100);
  }
}

void HardwareRounds::write_csv(std::FILE* f) const {
  for (int t = 0; t < kHwTests; ++t) {
    std::fprintf(f, "# %s_ops_per_s=%.0f\n", kHwKeys[t], summarize(ops_per_second_[t]).median);
  }
}

}  // namespace bench
