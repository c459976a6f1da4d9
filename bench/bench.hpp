// What every buffered_bench workload shares: the event and workload, the sink that sums,
// producer threads released together, the allocation counter, the command line's options and
// the helpers that format the tables.
#pragma once

#include <buffered/buffered_backend.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

inline constexpr std::size_t kBufferSize = 10000;  // the workload: buffer 10000, batch 400
inline constexpr std::size_t kMaxBatch = 400;
inline constexpr std::chrono::seconds kMaxWait{30};

#ifdef BUFFERED_BENCH_HAVE_MOODYCAMEL
inline constexpr bool kHaveMoodycamel = true;
#else
inline constexpr bool kHaveMoodycamel = false;
#endif

struct Event {  // 64 bytes, as in the issue
  std::uint64_t v[8];
};
static_assert(sizeof(Event) == 64);

// Gaps between the batches a consumer delivers, longer than kGap (the drop-when-full rounds).
// Written by the one consumer thread, read once it has been joined.
struct Gaps {
  static constexpr std::chrono::microseconds kGap{100};
  bool track = false;
  Clock::time_point last{};
  std::uint64_t count = 0;
  Clock::duration total{}, longest{};
  void batch() {  // `last` starts as the producer's loop does
    const auto now = Clock::now();
    if (now - last > kGap) {
      ++count;
      total += now - last;
      longest = std::max(longest, now - last);
    }
    last = now;
  }
};

// The sink only sums; it is thread-safe for async dispatch (gaps.track only with one consumer).
struct SumSink {
  std::atomic<std::uint64_t> delivered{0};
  std::atomic<std::uint64_t> sum{0};
  Gaps gaps;
  void process_events(std::span<Event> batch) {
    if (gaps.track) gaps.batch();
    std::uint64_t local = 0;
    for (const Event& e : batch) local += e.v[0];
    sum.fetch_add(local, std::memory_order_relaxed);
    delivered.fetch_add(batch.size(), std::memory_order_release);
  }
};

inline buffered::BatchConfig bench_config(bool async = false) {
  buffered::BatchConfig c;  // buffer 10000, batch 400, wait 30 s: the workload
  c.async_delegate = async;
  return c;
}

// Both byte bounds set so that they never bind, for 64 bytes per event from a byte_size
// function: what byte accounting costs when it is switched on.
inline buffered::BatchConfig byte_bound_config() {
  buffered::BatchConfig c = bench_config();
  c.max_buffer_bytes = kBufferSize * sizeof(Event) * 2;  // twice what buffer_size allows
  c.max_batch_bytes = kMaxBatch * sizeof(Event) * 2;     // twice what max_batch_size allows
  return c;
}

inline void relax() { std::this_thread::yield(); }

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "buffered_bench: %s\n", what);
    std::exit(2);
  }
}

// Producer p's share of `total` events among `producers`.
inline std::uint64_t share(std::uint64_t total, int producers, int p) {
  const auto n = static_cast<std::uint64_t>(producers);
  return total / n + (static_cast<std::uint64_t>(p) < total % n ? 1 : 0);
}

// Starts `producers` threads; once all are running they are released together and each calls
// produce(p, its share of total). Returns the release time, after all have finished. Threads
// wait by yielding: with more producers than cores, spinning would delay the start.
template <class Produce>
Clock::time_point run_producers(int producers, std::uint64_t total, Produce produce) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      produce(p, share(total, producers, p));
    });
  }
  while (ready.load() < producers) std::this_thread::yield();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  return t0;
}

// Calls f(handle) with what one producer thread offers events to: the contender's own
// per-producer handle where it has one (make_producer(): moodycamel's ProducerToken), else the
// contender itself.
template <class Contender, class F>
void as_producer(Contender& contender, F&& f) {
  if constexpr (requires { contender.make_producer(); }) {
    auto handle = contender.make_producer();
    f(handle);
  } else {
    f(contender);
  }
}

// Every operator new in the process counts here (allocations.cpp replaces them).
extern std::atomic<std::uint64_t> g_allocations;

// The command line (main.cpp).
struct Options {
  int rounds = 5;
  std::uint64_t events = 10'000'000;
  std::chrono::milliseconds idle{3000};
  std::chrono::milliseconds hw_time{300};
  std::vector<int> producer_counts = {1, 2, 4, 8};
  const char* csv_path = nullptr;
  bool hw_only = false;
};

// ---- statistics and formatting (report.cpp) ----

struct Summary {
  double median, min, max;
};

Summary summarize(std::vector<double> v);

std::string fmt(const char* format, double v);  // "-" for NaN (not measured)

std::string ratio(double a, double b);

// "met" / "MISSED" after a target, or nothing when a side was not measured.
std::string verdict(double value, double bound, bool at_least);

}  // namespace bench
