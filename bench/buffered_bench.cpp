// buffered_bench: BufferedBackend against the two references in this folder, measured in one
// process and interleaved round by round so that machine drift cancels out of the ratios.
//
//   buffered_bench [--quick] [--rounds N] [--events N]
//
// Prints one Markdown table. Not a test: it asserts nothing about speed.
#include <buffered/buffered_backend.hpp>

#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "mutex_batcher.hpp"
#include "spsc_ring.hpp"

// ---- allocation counting: every operator new in the process ----
namespace {
std::atomic<std::uint64_t> g_allocations{0};
}
void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  const std::size_t align = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(align, (n + align - 1) / align * align)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) { return operator new(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Event {  // 64 bytes, as in the issue
  std::uint64_t v[8];
};
static_assert(sizeof(Event) == 64);

// The sink only sums; it is thread-safe for async dispatch.
struct SumSink {
  std::atomic<std::uint64_t> delivered{0};
  std::atomic<std::uint64_t> sum{0};
  void process_events(std::span<Event> batch) {
    std::uint64_t local = 0;
    for (const Event& e : batch) local += e.v[0];
    sum.fetch_add(local, std::memory_order_relaxed);
    delivered.fetch_add(batch.size(), std::memory_order_release);
  }
};

buffered::BatchConfig bench_config(bool async = false) {
  buffered::BatchConfig c;  // buffer 10000, batch 400, wait 30 s: the workload
  c.async_delegate = async;
  return c;
}

void relax() { std::this_thread::yield(); }

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "buffered_bench: %s\n", what);
    std::exit(2);
  }
}

// Runs `producers` threads, each calling produce(p, count); returns when all have finished.
template <class Produce>
void run_producers(int producers, std::uint64_t total, Produce produce) {
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      ++ready;
      while (ready.load() < producers) {
      }
      produce(p, total / static_cast<std::uint64_t>(producers));
    });
  }
  for (auto& t : threads) t.join();
}

// ---- workload 1: lossless throughput (events delivered per second) ----

// Producers retry refused events until all `total` are in; the clock stops when the contender
// has delivered them all. `contender` has process_event(const Event&) and flush().
template <class Contender>
double lossless(int producers, std::uint64_t total, Contender& contender, const SumSink& sink) {
  const auto t0 = Clock::now();
  run_producers(producers, total, [&](int, std::uint64_t n) {
    Event e{};
    e.v[0] = 1;
    for (std::uint64_t i = 0; i < n; ++i) {
      while (!contender.process_event(e)) relax();
    }
  });
  contender.flush();
  const double s = seconds_since(t0);
  check(sink.delivered.load() == total && sink.sum.load() == total, "a contender lost events");
  return static_cast<double>(total) / s;
}

double lossless_library(int producers, std::uint64_t total) {
  SumSink sink;
  buffered::BufferedBackend<Event, SumSink&> backend(sink, bench_config());
  backend.run();
  return lossless(producers, total, backend, sink);
}

double lossless_mutex(int producers, std::uint64_t total) {
  SumSink sink;
  bench::MutexBatcher<Event, SumSink> batcher(sink, 10000, 400, 30s);
  return lossless(producers, total, batcher, sink);
}

double lossless_spsc(std::uint64_t total) {
  bench::SpscRing<Event> ring(16384);
  std::uint64_t sum = 0;
  std::atomic<bool> started{false};
  std::thread consumer([&] {
    started = true;
    std::uint64_t seen = 0;
    while (seen < total) {
      const std::size_t n = ring.pop_all([&](const Event& e) { sum += e.v[0]; }, 400);
      seen += n;
      if (n == 0) std::this_thread::yield();
    }
  });
  while (!started.load()) {
  }
  const auto t0 = Clock::now();
  Event e{};
  e.v[0] = 1;
  for (std::uint64_t i = 0; i < total; ++i) {
    while (!ring.try_push(e)) relax();
  }
  consumer.join();
  const double s = seconds_since(t0);
  check(sum == total, "spsc ring lost events");
  return static_cast<double>(total) / s;
}

// ---- workload 2: drop-when-full at full speed ----

double refused_share_library(std::uint64_t total) {
  SumSink sink;
  buffered::BufferedBackend<Event, SumSink&> backend(sink, bench_config());
  backend.run();
  Event e{};
  e.v[0] = 1;
  std::uint64_t refused = 0;
  for (std::uint64_t i = 0; i < total; ++i) refused += backend.process_event(e) ? 0 : 1;
  backend.shutdown();
  const auto s = backend.stats();
  check(s.rejected_full == refused && s.delivered == total - refused, "drop accounting is off");
  return static_cast<double>(refused) / static_cast<double>(total);
}

double refused_share_mutex(std::uint64_t total) {
  SumSink sink;
  std::uint64_t refused = 0;
  {
    bench::MutexBatcher<Event, SumSink> batcher(sink, 10000, 400, 30s);
    Event e{};
    e.v[0] = 1;
    for (std::uint64_t i = 0; i < total; ++i) refused += batcher.process_event(e) ? 0 : 1;
    batcher.flush();
  }
  return static_cast<double>(refused) / static_cast<double>(total);
}

// ---- workload 3: enqueue latency under 2 producers ----

struct Percentiles {
  double p50, p99, p999;
};

template <class Offer>
Percentiles latency(std::uint64_t per_producer, Offer offer) {
  std::vector<std::vector<std::uint32_t>> samples(2);
  for (auto& s : samples) s.resize(per_producer);
  run_producers(2, per_producer * 2, [&](int p, std::uint64_t n) {
    Event e{};
    e.v[0] = 1;
    auto& out = samples[static_cast<std::size_t>(p)];
    for (std::uint64_t i = 0; i < n; ++i) {
      const auto t0 = Clock::now();
      offer(e);
      const auto ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
      out[i] = static_cast<std::uint32_t>(std::min<std::int64_t>(ns, UINT32_MAX));
    }
  });
  std::vector<std::uint32_t> all;
  for (auto& s : samples) all.insert(all.end(), s.begin(), s.end());
  std::sort(all.begin(), all.end());
  auto at = [&](double q) {
    return static_cast<double>(
        all[static_cast<std::size_t>(q * static_cast<double>(all.size() - 1))]);
  };
  return {at(0.50), at(0.99), at(0.999)};
}

Percentiles latency_library(std::uint64_t per_producer) {
  SumSink sink;
  buffered::BufferedBackend<Event, SumSink&> backend(sink, bench_config());
  backend.run();
  return latency(per_producer, [&](const Event& e) { backend.process_event(e); });
}

Percentiles latency_mutex(std::uint64_t per_producer) {
  SumSink sink;
  bench::MutexBatcher<Event, SumSink> batcher(sink, 10000, 400, 30s);
  return latency(per_producer, [&](const Event& e) { batcher.process_event(e); });
}

// ---- workload 4: idle cost ----

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double idle_cpu_ms(std::chrono::milliseconds idle) {
  SumSink sink;
  buffered::BatchConfig c = bench_config();
  c.max_batch_wait = 5ms;
  buffered::BufferedBackend<Event, SumSink&> backend(sink, c);
  backend.run();
  std::this_thread::sleep_for(50ms);  // let the threads settle
  const double cpu0 = process_cpu_seconds();
  std::this_thread::sleep_for(idle);
  const double cpu1 = process_cpu_seconds();
  return (cpu1 - cpu0) * 1000.0;
}

// ---- workload 5: allocations per event in steady state; voluntary context switches ----

struct SteadyState {
  double allocations_per_event;
  double allocations_per_batch;
  double voluntary_switches_per_batch;
};

SteadyState steady_state(bool async, std::uint64_t events) {
  SumSink sink;
  buffered::BufferedBackend<Event, SumSink&> backend(sink, bench_config(async));
  backend.run();
  Event e{};
  e.v[0] = 1;
  auto push = [&](std::uint64_t n) {
    for (std::uint64_t i = 0; i < n; ++i) {
      while (!backend.process_event(e)) relax();
    }
    backend.flush();
  };
  push(200000);  // warm up: every buffer touched, every thread started
  const std::uint64_t batches0 = backend.stats().batches;
  rusage r0{};
  getrusage(RUSAGE_SELF, &r0);
  const std::uint64_t a0 = g_allocations.load();
  push(events);
  const std::uint64_t a1 = g_allocations.load();
  rusage r1{};
  getrusage(RUSAGE_SELF, &r1);
  const double batches = static_cast<double>(backend.stats().batches - batches0);
  const double allocs = static_cast<double>(a1 - a0);
  return {allocs / static_cast<double>(events), allocs / batches,
          static_cast<double>(r1.ru_nvcsw - r0.ru_nvcsw) / batches};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5;
  std::uint64_t events = 10'000'000;
  auto idle = std::chrono::milliseconds(3000);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      rounds = 1;
      events = 400'000;
      idle = 300ms;
    } else if (arg == "--rounds" && i + 1 < argc) {
      rounds = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--events" && i + 1 < argc) {
      events = std::max<std::uint64_t>(800, std::strtoull(argv[++i], nullptr, 10) / 800 * 800);
    } else {
      std::fprintf(stderr, "usage: buffered_bench [--quick] [--rounds N] [--events N]\n");
      return 2;
    }
  }

  std::vector<double> lib1, mtx1, spsc1, lib2, mtx2;
  for (int r = 0; r < rounds; ++r) {  // interleaved: drift hits every contender alike
    lib1.push_back(lossless_library(1, events));
    mtx1.push_back(lossless_mutex(1, events));
    spsc1.push_back(lossless_spsc(events));
    lib2.push_back(lossless_library(2, events));
    mtx2.push_back(lossless_mutex(2, events));
  }
  std::vector<double> drop_lib, drop_mtx;
  for (int r = 0; r < rounds; ++r) {
    drop_lib.push_back(refused_share_library(events));
    drop_mtx.push_back(refused_share_mutex(events));
  }
  const std::uint64_t latency_events = std::min<std::uint64_t>(events / 2, 1'000'000);
  const Percentiles lat_lib = latency_library(latency_events);
  const Percentiles lat_mtx = latency_mutex(latency_events);
  const double idle_ms = idle_cpu_ms(idle);
  const SteadyState sync_state = steady_state(false, events / 10);
  const SteadyState async_state = steady_state(true, events / 10);

  const double m_lib1 = median(lib1), m_mtx1 = median(mtx1), m_spsc1 = median(spsc1);
  const double m_lib2 = median(lib2), m_mtx2 = median(mtx2);
  std::printf(
      "buffered_bench: %d round(s), %llu events of 64 bytes, buffer 10000, batch 400, wait 30 s; "
      "medians\n\n",
      rounds, static_cast<unsigned long long>(events));
  std::printf("| workload | buffered | mutex+deque | SPSC ring | vs mutex | vs SPSC | target |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  std::printf(
      "| lossless, 1 producer (M events/s) | %.1f | %.1f | %.1f | %.2fx | %.2fx | >= 3x mutex, >= "
      "0.6x SPSC |\n",
      m_lib1 / 1e6, m_mtx1 / 1e6, m_spsc1 / 1e6, m_lib1 / m_mtx1, m_lib1 / m_spsc1);
  std::printf(
      "| lossless, 2 producers (M events/s) | %.1f | %.1f | - | %.2fx | - | >= 1.5x mutex |\n",
      m_lib2 / 1e6, m_mtx2 / 1e6, m_lib2 / m_mtx2);
  std::printf("| drop-when-full, 1 producer (refused) | %.3f%% | %.3f%% | - | - | - | <= 1%% |\n",
              median(drop_lib) * 100, median(drop_mtx) * 100);
  std::printf(
      "| process_event p50 / p99 / p99.9, 2 producers (ns) | %.0f / %.0f / %.0f | %.0f / %.0f / "
      "%.0f | - | - | - | reported |\n",
      lat_lib.p50, lat_lib.p99, lat_lib.p999, lat_mtx.p50, lat_mtx.p99, lat_mtx.p999);
  std::printf(
      "| idle CPU over %.1f s, max wait 5 ms (ms) | %.2f | - | - | - | - | <= 10 ms over 3 s |\n",
      static_cast<double>(idle.count()) / 1000.0, idle_ms);
  std::printf("| allocations per event / per batch, sync | %.4f / %.3f | - | - | - | - | 0 / 0 |\n",
              sync_state.allocations_per_event, sync_state.allocations_per_batch);
  std::printf(
      "| allocations per event / per batch, async | %.4f / %.3f | - | - | - | - | 0 / 0 |\n",
      async_state.allocations_per_event, async_state.allocations_per_batch);
  std::printf(
      "| voluntary context switches per batch, sync / async | %.2f / %.2f | - | - | - | - | "
      "reported |\n",
      sync_state.voluntary_switches_per_batch, async_state.voluntary_switches_per_batch);
  return 0;
}
