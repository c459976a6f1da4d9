// buffered_bench: BufferedBackend against the references in this folder, measured in one
// process and interleaved round by round so that machine drift cancels out of the ratios.
//
//   buffered_bench [--quick] [--rounds N] [--events N] [--producers LIST] [--csv FILE]
//                  [--hw-only]
//
//   --quick          a seconds-long smoke run (CI): 1 round, 400000 events, short hardware runs
//   --rounds N       rounds of every measurement (default 5); the table shows medians
//   --events N       events per lossless and drop-when-full run (default 10000000)
//   --producers LIST lossless producer counts, e.g. 1,2,4,8 (the default)
//   --csv FILE       also writes the lossless medians, ranges and the machine (for bench/plot.py)
//   --hw-only        only the hardware table: contended CAS, contended fetch_add, private lines
//
// Besides the contenders, the library runs twice more: lossless with byte bounds set that never
// bind (max_buffer_bytes and max_batch_bytes twice what the counts allow, a byte_size function),
// at 1 and 2 producers, beside the same run without them in every round; and one producer at
// full speed into a backend with each OverflowPolicy that drops (drop_newest, drop_oldest).
// For each drop-when-full round it also shows the consumer's gaps between batches and where its
// time went while the producer offered (on a CPU, waiting for one, neither), read from /proc and
// the thread's CPU clock: refusals at full speed come from the time the consumer does not run.
//
// References: bench/mutex_batcher.hpp (mutex + condition variable + deque), bench/
// moodycamel_batcher.hpp (moodycamel::BlockingConcurrentQueue, where its header was found at
// build time), bench/spsc_ring.hpp (one bare SPSC ring per producer: the ideal sharded handoff).
// Prints Markdown tables. Not a test: it asserts nothing about speed.
#include <buffered/buffered_backend.hpp>

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#ifdef BUFFERED_BENCH_HAVE_MOODYCAMEL
#include "moodycamel_batcher.hpp"
#endif
#include "bench.hpp"
#include "mutex_batcher.hpp"
#include "report.hpp"
#include "spsc_ring.hpp"

using namespace bench;

namespace {

using namespace std::chrono_literals;

// ---- workload 1: lossless throughput (events delivered per second) ----

enum Impl { kBuffered, kBufferedBytes, kMutex, kMoodycamel, kSpsc, kImpls };
const char* const kImplNames[kImpls] = {"buffered", "buffered_bytes", "mutex", "moodycamel",
                                        "spsc"};

// kBufferedBytes: the library with both byte bounds set so that they never bind, 64 bytes per
// event from a byte_size function: what byte accounting costs when it is switched on. Run only
// at these producer counts, right beside kBuffered.
bool with_byte_bounds_row(int producers) { return producers == 1 || producers == 2; }

// Producers retry refused events until all `total` are in; the clock runs from the producers'
// release until the contender has delivered them all (flush() returned). `contender` has
// process_event(const Event&) (or make_producer()) and flush().
template <class Contender>
double lossless(int producers, std::uint64_t total, Contender& contender, const SumSink& sink) {
  const auto t0 = run_producers(producers, total, [&](int, std::uint64_t n) {
    as_producer(contender, [&](auto& handle) {
      Event e{};
      e.v[0] = 1;
      for (std::uint64_t i = 0; i < n; ++i) {
        while (!handle.process_event(e)) relax();
      }
    });
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

double lossless_library_bytes(int producers, std::uint64_t total) {
  SumSink sink;
  buffered::BufferedBackend<Event, SumSink&> backend(
      sink, byte_bound_config(), {}, [](const Event&) -> std::size_t { return sizeof(Event); });
  backend.run();
  const double rate = lossless(producers, total, backend, sink);
  const auto s = backend.stats();
  check(s.rejected_too_large == 0 && s.evicted == 0, "a byte bound that never binds refused");
  return rate;
}

double lossless_mutex(int producers, std::uint64_t total) {
  SumSink sink;
  bench::MutexBatcher<Event, SumSink> batcher(sink, kBufferSize, kMaxBatch, kMaxWait);
  return lossless(producers, total, batcher, sink);
}

double lossless_moodycamel([[maybe_unused]] int producers, [[maybe_unused]] std::uint64_t total) {
#ifdef BUFFERED_BENCH_HAVE_MOODYCAMEL
  SumSink sink;
  bench::MoodycamelBatcher<Event, SumSink> batcher(sink, kBufferSize, kMaxBatch, kMaxWait,
                                                   static_cast<std::size_t>(producers));
  return lossless(producers, total, batcher, sink);
#else
  return NAN;
#endif
}

// The ideal sharded handoff: one bare SPSC ring per producer (together about the buffer's
// size), one consumer sweeping them round robin, up to a batch from each. No batching policy,
// no wake-ups (the consumer spins), no accounting.
double lossless_spsc(int producers, std::uint64_t total) {
  const std::size_t per_ring =
      std::bit_ceil((kBufferSize + static_cast<std::size_t>(producers) - 1) /
                    static_cast<std::size_t>(producers));  // 1 producer: 16384, as before
  std::vector<std::unique_ptr<bench::SpscRing<Event>>> rings;
  for (int p = 0; p < producers; ++p)
    rings.push_back(std::make_unique<bench::SpscRing<Event>>(per_ring));
  std::uint64_t sum = 0;
  std::atomic<bool> started{false};
  std::thread consumer([&] {
    started = true;
    std::uint64_t seen = 0;
    while (seen < total) {
      std::size_t got = 0;
      for (auto& ring : rings) {
        got += ring->pop_all([&](const Event& e) { sum += e.v[0]; }, kMaxBatch);
      }
      seen += got;
      if (got == 0) std::this_thread::yield();
    }
  });
  while (!started.load()) std::this_thread::yield();
  const auto t0 = run_producers(producers, total, [&](int p, std::uint64_t n) {
    auto& ring = *rings[static_cast<std::size_t>(p)];
    Event e{};
    e.v[0] = 1;
    for (std::uint64_t i = 0; i < n; ++i) {
      while (!ring.try_push(e)) relax();
    }
  });
  consumer.join();
  const double s = seconds_since(t0);
  check(sum == total, "spsc ring lost events");
  return static_cast<double>(total) / s;
}

double lossless_run(Impl impl, int producers, std::uint64_t total) {
  switch (impl) {
    case kBuffered:
      return lossless_library(producers, total);
    case kBufferedBytes:
      return lossless_library_bytes(producers, total);
    case kMutex:
      return lossless_mutex(producers, total);
    case kMoodycamel:
      return lossless_moodycamel(producers, total);
    case kSpsc:
      return lossless_spsc(producers, total);
    case kImpls:
      break;
  }
  return NAN;
}

// ---- workload 2: one producer offering at full speed, dropping when full ----

// Where the consumer thread's time went while the producer offered (Linux; unknown elsewhere):
// a refusal at full speed means the consumer fell behind, and this tells whether it was on a CPU
// (as the guest counts it: a vCPU slowed by the hypervisor, or stopped without the guest counting
// steal, counts as running), runnable but kept off one by the guest kernel (waiting: e.g. woken
// onto the producer's busy CPU), or neither (parked).
struct ConsumerTimes {
  bool known = false;
  double wall_ms = 0, cpu_ms = 0, wait_ms = 0;
  long parks = 0;  // voluntary context switches
  Gaps gaps;       // between its batches
};

// The thread ids of this process.
std::vector<long> task_ids() {
  std::vector<long> ids;
  if (DIR* d = opendir("/proc/self/task")) {
    while (const dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ids.push_back(std::atol(e->d_name));
    }
    closedir(d);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

// The one thread in `after` that is not in `before` (the consumer a contender started), or 0.
long new_task(const std::vector<long>& before, const std::vector<long>& after) {
  std::vector<long> added;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(),
                      std::back_inserter(added));
  return added.size() == 1 ? added[0] : 0;
}

// A sample of thread `tid`: CPU time (its thread CPU clock, exact while it runs), time runnable
// but waiting for a CPU (schedstat: counted when the wait ends), voluntary switches (status).
struct ThreadSample {
  bool ok = false;
  Clock::time_point at{};
  double cpu_ms = 0, wait_ms = 0;
  long parks = 0;
};

ThreadSample sample_thread(long tid) {
  ThreadSample s;
  s.at = Clock::now();
  if (tid == 0) return s;
  // The kernel's clock id for a thread's CPU time (what glibc's pthread_getcpuclockid makes):
  // CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD_MASK under the bitwise-not of the thread id.
  const auto clock = static_cast<clockid_t>((~static_cast<unsigned>(tid) << 3) | 6u);
  timespec ts{};
  if (clock_gettime(clock, &ts) != 0) return s;
  s.cpu_ms = static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%ld/schedstat", tid);
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) return s;
  unsigned long long run_ns = 0, wait_ns = 0;
  const bool read = std::fscanf(f, "%llu %llu", &run_ns, &wait_ns) == 2;
  std::fclose(f);
  if (!read) return s;
  s.wait_ms = static_cast<double>(wait_ns) / 1e6;
  std::snprintf(path, sizeof path, "/proc/self/task/%ld/status", tid);
  f = std::fopen(path, "r");
  if (f == nullptr) return s;
  char line[128];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "voluntary_ctxt_switches: %ld", &s.parks) == 1) s.ok = true;
  }
  std::fclose(f);
  return s;
}

ConsumerTimes consumer_times(const ThreadSample& a, const ThreadSample& b) {
  ConsumerTimes t;
  t.known = a.ok && b.ok;
  t.wall_ms = std::chrono::duration<double, std::milli>(b.at - a.at).count();
  t.cpu_ms = b.cpu_ms - a.cpu_ms;
  // schedstat counts a wait when it ends; b's was read once the thread had run again, so cap
  // what it counts past the end of the loop.
  t.wait_ms = std::min(b.wait_ms - a.wait_ms, std::max(0.0, t.wall_ms - t.cpu_ms));
  t.parks = b.parks - a.parks;
  return t;
}

// One run: offered events per second (the producer's loop alone, not the drain), the shares
// of the offered events that were delivered, evicted (drop_oldest) and refused, and the
// consumer thread's time during the producer's loop.
struct FullSpeed {
  double offered_per_s, delivered, evicted, refused;
  ConsumerTimes consumer;
};

FullSpeed full_speed_library(buffered::OverflowPolicy policy, std::uint64_t total) {
  SumSink sink;
  sink.gaps.track = true;
  buffered::BatchConfig c = bench_config();
  c.overflow = policy;
  buffered::BufferedBackend<Event, SumSink&> backend(sink, c);
  const std::vector<long> before = task_ids();
  backend.run();
  const long worker = new_task(before, task_ids());
  Event e{};
  e.v[0] = 1;
  std::uint64_t refused = 0;
  const ThreadSample w0 = sample_thread(worker);
  const auto t0 = Clock::now();
  sink.gaps.last = t0;  // the worker reads it only after taking an event offered below
  for (std::uint64_t i = 0; i < total; ++i) refused += backend.process_event(e) ? 0 : 1;
  const double offer_s = seconds_since(t0);
  ThreadSample w1 = sample_thread(worker);
  backend.flush();  // the worker has run since: a wait still under way at w1 is counted now
  w1.wait_ms = sample_thread(worker).wait_ms;
  backend.shutdown();
  const auto s = backend.stats();
  check(s.rejected_full == refused && s.accepted == total - refused &&
            s.accepted == s.delivered + s.evicted && s.failed == 0 && s.abandoned == 0 &&
            s.pending == 0 && sink.delivered.load() == s.delivered &&
            (policy == buffered::OverflowPolicy::drop_oldest || s.evicted == 0),
        "drop accounting is off");
  const auto t = static_cast<double>(total);
  ConsumerTimes consumer = consumer_times(w0, w1);
  consumer.gaps = sink.gaps;
  return {t / offer_s, static_cast<double>(s.delivered) / t, static_cast<double>(s.evicted) / t,
          static_cast<double>(refused) / t, consumer};
}

FullSpeed full_speed_mutex(std::uint64_t total) {
  SumSink sink;
  sink.gaps.track = true;
  std::uint64_t refused = 0;
  double offer_s = 0;
  ConsumerTimes consumer;
  {
    const std::vector<long> before = task_ids();
    bench::MutexBatcher<Event, SumSink> batcher(sink, kBufferSize, kMaxBatch, kMaxWait);
    const long thread = new_task(before, task_ids());
    Event e{};
    e.v[0] = 1;
    const ThreadSample c0 = sample_thread(thread);
    const auto t0 = Clock::now();
    sink.gaps.last = t0;  // as in full_speed_library
    for (std::uint64_t i = 0; i < total; ++i) refused += batcher.process_event(e) ? 0 : 1;
    offer_s = seconds_since(t0);
    ThreadSample c1 = sample_thread(thread);
    batcher.flush();  // as in full_speed_library
    c1.wait_ms = sample_thread(thread).wait_ms;
    consumer = consumer_times(c0, c1);
  }
  consumer.gaps = sink.gaps;
  check(sink.delivered.load() == total - refused, "the mutex batcher lost events");
  const auto t = static_cast<double>(total);
  return {t / offer_s, static_cast<double>(total - refused) / t, 0.0,
          static_cast<double>(refused) / t, consumer};
}

// The producer's path alone, without the worker's company: one thread fills a backend that is
// not running (so nothing is taken out) with buffer_size events, timing only the offers, `reps`
// times, alternating with and without byte bounds. Returns ns per process_event for each. The
// first fill of each kind is a warm-up (it touches the buffer's pages; later backends reuse them).
struct OfferCost {
  double plain_ns, bytes_ns;
};

OfferCost offer_cost(int reps) {
  SumSink sink;
  double seconds[2] = {0, 0};
  for (int r = -1; r < reps; ++r) {
    for (int with_bytes = 0; with_bytes < 2; ++with_bytes) {
      std::optional<buffered::BufferedBackend<Event, SumSink&>> backend;
      if (with_bytes) {
        backend.emplace(sink, byte_bound_config(),
                        buffered::BufferedBackend<Event, SumSink&>::error_handler{},
                        [](const Event&) -> std::size_t { return sizeof(Event); });
      } else {
        backend.emplace(sink, bench_config());
      }
      Event e{};
      e.v[0] = 1;
      std::size_t accepted = 0;
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < kBufferSize; ++i) accepted += backend->process_event(e) ? 1 : 0;
      const double s = seconds_since(t0);
      check(accepted == kBufferSize, "one producer was refused below buffer_size");
      if (r >= 0) seconds[with_bytes] += s;
    }
  }
  const double n = static_cast<double>(kBufferSize) * reps;
  return {seconds[0] / n * 1e9, seconds[1] / n * 1e9};
}

// ---- workload 3: enqueue latency under 2 producers ----

struct Percentiles {
  double p50, p99, p999;
};

// Each of 2 producers offers per_producer events (refused ones are dropped), timing each call.
template <class Contender>
Percentiles latency(std::uint64_t per_producer, Contender& contender) {
  std::vector<std::vector<std::uint32_t>> samples(2);
  for (auto& s : samples) s.resize(per_producer);
  run_producers(2, per_producer * 2, [&](int p, std::uint64_t n) {
    as_producer(contender, [&](auto& handle) {
      Event e{};
      e.v[0] = 1;
      auto& out = samples[static_cast<std::size_t>(p)];
      for (std::uint64_t i = 0; i < n; ++i) {
        const auto t0 = Clock::now();
        handle.process_event(e);
        const auto ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
        out[i] = static_cast<std::uint32_t>(std::min<std::int64_t>(ns, UINT32_MAX));
      }
    });
  });
  contender.flush();
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
  return latency(per_producer, backend);
}

Percentiles latency_mutex(std::uint64_t per_producer) {
  SumSink sink;
  bench::MutexBatcher<Event, SumSink> batcher(sink, kBufferSize, kMaxBatch, kMaxWait);
  return latency(per_producer, batcher);
}

Percentiles latency_moodycamel([[maybe_unused]] std::uint64_t per_producer) {
#ifdef BUFFERED_BENCH_HAVE_MOODYCAMEL
  SumSink sink;
  bench::MoodycamelBatcher<Event, SumSink> batcher(sink, kBufferSize, kMaxBatch, kMaxWait, 2);
  return latency(per_producer, batcher);
#else
  return {NAN, NAN, NAN};
#endif
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

// ---- the hardware itself: what a shared cache line costs on this machine ----

enum HwTest { kCasShared, kAddShared, kAddPrivate, kHwTests };
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

// `threads` threads, each pinned to its own CPU where there are enough, run `test` for
// `duration`. Returns the total increments per second, and the slowest thread's share of them
// (1/threads when the line is shared fairly; near 0 when one thread keeps it).
bool g_hw_unpinned = false;  // a hardware test thread could not have a CPU of its own

struct HwResult {
  double ops_per_second;
  double slowest_share;
};

HwResult hw_run(HwTest test, int threads, std::chrono::milliseconds duration) {
  PaddedCounter shared;
  std::vector<PaddedCounter> own(static_cast<std::size_t>(threads));
  std::vector<std::uint64_t> made(static_cast<std::size_t>(threads));  // by each thread
  alignas(128) std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
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
    if (!pin_to_cpu(pool.back(), t)) g_hw_unpinned = true;
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
          static_cast<double>(slowest) / static_cast<double>(total)};
}

// ---- printing ----

// Per round of drop-when-full: the refused share, the consumer's gaps between batches, and
// where its time went while the producer offered (ConsumerTimes).
void print_drop_rounds(const std::vector<FullSpeed>& lib, const std::vector<FullSpeed>& mtx) {
  std::printf(
      "\n| drop-when-full, round | contender | refused | the producer's loop (ms) | gaps over "
      "0.1 ms between batches: count / total / longest (ms) | the consumer meanwhile: on a CPU "
      "(ms) | runnable, waiting for a CPU (ms) | neither (ms) | parks |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  const auto ms = [](Clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
  };
  const auto row = [&](std::size_t round, const char* name, const FullSpeed& f) {
    const ConsumerTimes& c = f.consumer;
    std::printf("| %zu | %s | %.3f%% | %.1f | %llu / %.1f / %.1f | ", round, name, f.refused * 100,
                c.wall_ms, static_cast<unsigned long long>(c.gaps.count), ms(c.gaps.total),
                ms(c.gaps.longest));
    if (!c.known) {
      std::printf("- | - | - | - |\n");
      return;
    }
    std::printf("%.1f | %.1f | %.1f | %ld |\n", c.cpu_ms, c.wait_ms,
                std::max(0.0, c.wall_ms - c.cpu_ms - c.wait_ms), c.parks);
  };
  for (std::size_t r = 0; r < lib.size() && r < mtx.size(); ++r) {
    row(r + 1, "buffered", lib[r]);
    row(r + 1, "mutex+deque", mtx[r]);
  }
  std::vector<double> rates;
  for (const FullSpeed& f : lib) rates.push_back(f.offered_per_s);
  const double rate = summarize(rates).median;
  std::printf(
      "\nThe buffer (%zu events) covers %s ms of offers at %s M/s: refusals come from gaps "
      "longer than that. Where the consumer's time went (Linux: its thread CPU clock and "
      "/proc): on a CPU as the guest counts it (time its vCPU ran slowed by the hypervisor, or "
      "stopped without the guest counting it as steal, counts here too); runnable, waiting: the "
      "guest kernel ran "
      "something else on its CPU, or woke it onto the producer's busy CPU; neither: parked "
      "(parks counts them).\n",
      kBufferSize, fmt("%.2f", static_cast<double>(kBufferSize) / rate * 1e3).c_str(),
      fmt("%.0f", rate / 1e6).c_str());
}

bool parse_producers(const char* list, std::vector<int>& out) {
  out.clear();
  const char* p = list;
  while (*p) {
    char* end = nullptr;
    const long n = std::strtol(p, &end, 10);
    if (end == p || n < 1 || n > 256) return false;
    out.push_back(static_cast<int>(n));
    p = end;
    if (*p == ',')
      ++p;
    else if (*p)
      return false;
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return !out.empty();
}

int usage() {
  std::fprintf(stderr,
               "usage: buffered_bench [--quick] [--rounds N] [--events N] [--producers 1,2,4,8] "
               "[--csv FILE] [--hw-only]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5;
  std::uint64_t events = 10'000'000;
  auto idle = std::chrono::milliseconds(3000);
  auto hw_time = std::chrono::milliseconds(300);
  std::vector<int> producer_counts = {1, 2, 4, 8};
  const char* csv_path = nullptr;
  bool hw_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      rounds = 1;
      events = 400'000;
      idle = 300ms;
      hw_time = 30ms;
    } else if (arg == "--rounds" && i + 1 < argc) {
      rounds = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--events" && i + 1 < argc) {
      events = std::max<std::uint64_t>(800, std::strtoull(argv[++i], nullptr, 10) / 800 * 800);
    } else if (arg == "--producers" && i + 1 < argc) {
      if (!parse_producers(argv[++i], producer_counts)) return usage();
    } else if (arg == "--csv" && i + 1 < argc) {
      csv_path = argv[++i];
    } else if (arg == "--hw-only") {
      hw_only = true;
    } else {
      return usage();
    }
  }

  const Machine machine = this_machine();
  const std::string load_at_start = load_average();
  std::printf(
      "buffered_bench on %s: %d processors in /proc/cpuinfo, hardware_concurrency %u; %s; %s; "
      "load average %s\n",
      machine.cpu.c_str(), machine.cpuinfo_processors, machine.hardware_concurrency,
      machine.compiler.c_str(), machine.date.c_str(), load_at_start.c_str());
  std::fflush(stdout);

  // The hardware first, while nothing else of ours runs.
  std::vector<double> hw[kHwTests], hw_share[kHwTests];
  for (int r = 0; r < rounds; ++r) {
    for (int t = 0; t < kHwTests; ++t) {
      const HwResult result = hw_run(static_cast<HwTest>(t), 2, hw_time);
      hw[t].push_back(result.ops_per_second);
      hw_share[t].push_back(result.slowest_share);
    }
  }
  Summary hw_sum[kHwTests];
  for (int t = 0; t < kHwTests; ++t) hw_sum[t] = summarize(hw[t]);
  const auto print_hw_table = [&] {
    std::printf(
        "\n| hardware: 2 threads %s, %lld ms, median of %d | M increments/s, total | "
        "slower thread's share |\n",
        g_hw_unpinned ? "(NOT pinned)" : "pinned to 2 CPUs",
        static_cast<long long>(hw_time.count()), rounds);
    std::printf("| --- | --- | --- |\n");
    for (int t = 0; t < kHwTests; ++t) {
      std::printf("| %s | %.1f | %.0f%% |\n", kHwNames[t], hw_sum[t].median / 1e6,
                  summarize(hw_share[t]).median * 100);
    }
  };

  // Lossless throughput: every producer count and contender in each round.
  const std::size_t counts = producer_counts.size();
  std::vector<std::vector<double>> runs[kImpls];
  for (auto& per_impl : runs) per_impl.resize(counts);
  if (!hw_only) {
    for (int r = 0; r < rounds; ++r) {  // interleaved: drift hits every contender alike
      for (std::size_t c = 0; c < counts; ++c) {
        const int p = producer_counts[c];
        for (int impl = 0; impl < kImpls; ++impl) {
          if (impl == kBufferedBytes && !with_byte_bounds_row(p)) continue;
          // The byte-bound run and the run without take turns at going first.
          int run = impl;
          if (with_byte_bounds_row(p) && r % 2 == 1 && impl <= kBufferedBytes) {
            run = impl == kBuffered ? kBufferedBytes : kBuffered;
          }
          runs[run][c].push_back(lossless_run(static_cast<Impl>(run), p, events));
        }
      }
    }
  }
  std::vector<Summary> lossless_sum[kImpls];
  for (int impl = 0; impl < kImpls; ++impl) {
    for (std::size_t c = 0; c < counts; ++c) lossless_sum[impl].push_back(summarize(runs[impl][c]));
  }
  // What byte bounds cost: per round, the byte-bound run over the run without, side by side.
  std::vector<Summary> bytes_cost(counts, Summary{NAN, NAN, NAN});
  for (std::size_t c = 0; c < counts; ++c) {
    const auto& with = runs[kBufferedBytes][c];
    const auto& without = runs[kBuffered][c];
    if (with.empty() || with.size() != without.size()) continue;
    std::vector<double> paired;
    for (std::size_t r = 0; r < with.size(); ++r) paired.push_back(with[r] / without[r]);
    bytes_cost[c] = summarize(paired);
  }

  if (csv_path) {
    std::FILE* f = std::fopen(csv_path, "w");
    check(f != nullptr, "cannot write the --csv file");
    std::fprintf(f, "# buffered_bench: lossless delivered events/s, median/min/max over rounds\n");
    std::fprintf(f,
                 "# buffered_bytes: buffered with max_buffer_bytes and max_batch_bytes set but "
                 "never binding (1 and 2 producers)\n");
    std::fprintf(f, "# cpu=%s\n# cpuinfo_processors=%d\n# hardware_concurrency=%u\n",
                 machine.cpu.c_str(), machine.cpuinfo_processors, machine.hardware_concurrency);
    std::fprintf(f, "# compiler=%s\n# date=%s\n# rounds=%d\n# events=%llu\n",
                 machine.compiler.c_str(), machine.date.c_str(), rounds,
                 static_cast<unsigned long long>(events));
    std::fprintf(f, "# load_average_at_start=%s\n# load_average_after_lossless=%s\n",
                 load_at_start.c_str(), load_average().c_str());
    for (int t = 0; t < kHwTests; ++t) {
      std::fprintf(f, "# %s_ops_per_s=%.0f\n", kHwKeys[t], hw_sum[t].median);
    }
    std::fprintf(f, "producers,implementation,median,min,max\n");
    for (std::size_t c = 0; c < counts && !hw_only; ++c) {
      for (int impl = 0; impl < kImpls; ++impl) {
        const Summary& s = lossless_sum[impl][c];
        if (std::isnan(s.median)) continue;
        std::fprintf(f, "%d,%s,%.0f,%.0f,%.0f\n", producer_counts[c], kImplNames[impl], s.median,
                     s.min, s.max);
      }
    }
    check(std::fclose(f) == 0, "cannot write the --csv file");
  }

  if (hw_only) {
    print_hw_table();
    return 0;
  }

  std::vector<FullSpeed> newest_lib, newest_mtx, oldest_lib;
  for (int r = 0; r < rounds; ++r) {
    newest_lib.push_back(full_speed_library(buffered::OverflowPolicy::drop_newest, events));
    newest_mtx.push_back(full_speed_mutex(events));
    oldest_lib.push_back(full_speed_library(buffered::OverflowPolicy::drop_oldest, events));
  }
  const int offer_reps = static_cast<int>(std::max<std::uint64_t>(2, events / kBufferSize / 10));
  std::vector<double> offer_plain, offer_bytes, offer_diff;
  for (int r = 0; r < rounds; ++r) {
    const OfferCost cost = offer_cost(offer_reps);
    offer_plain.push_back(cost.plain_ns);
    offer_bytes.push_back(cost.bytes_ns);
    offer_diff.push_back(cost.bytes_ns - cost.plain_ns);
  }
  std::vector<double> drop_lib, drop_mtx;
  for (const FullSpeed& f : newest_lib) drop_lib.push_back(f.refused);
  for (const FullSpeed& f : newest_mtx) drop_mtx.push_back(f.refused);
  const std::uint64_t latency_events = std::min<std::uint64_t>(events / 2, 1'000'000);
  std::vector<Percentiles> lat_runs[3];  // buffered, mutex, moodycamel; interleaved
  for (int r = 0; r < rounds; ++r) {
    lat_runs[0].push_back(latency_library(latency_events));
    lat_runs[1].push_back(latency_mutex(latency_events));
    lat_runs[2].push_back(latency_moodycamel(latency_events));
  }
  const auto median_percentiles = [](const std::vector<Percentiles>& v) {
    std::vector<double> p50, p99, p999;
    for (const Percentiles& p : v) {
      p50.push_back(p.p50);
      p99.push_back(p.p99);
      p999.push_back(p.p999);
    }
    return Percentiles{summarize(p50).median, summarize(p99).median, summarize(p999).median};
  };
  const Percentiles lat_lib = median_percentiles(lat_runs[0]);
  const Percentiles lat_mtx = median_percentiles(lat_runs[1]);
  const Percentiles lat_mc = median_percentiles(lat_runs[2]);
  const double idle_ms = idle_cpu_ms(idle);
  const SteadyState sync_state = steady_state(false, events / 10);
  const SteadyState async_state = steady_state(true, events / 10);

  std::printf(
      "%d round(s) interleaved; %llu events of 64 bytes per run; buffer %zu, batch %zu, "
      "wait %lld s; medians\n\n",
      rounds, static_cast<unsigned long long>(events), kBufferSize, kMaxBatch,
      static_cast<long long>(kMaxWait.count()));
  std::printf(
      "| workload | buffered | mutex+deque | moodycamel | SPSC ring | vs mutex | vs moodycamel | "
      "vs best batcher | vs SPSC | target |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (std::size_t c = 0; c < counts; ++c) {
    const int p = producer_counts[c];
    const double lib = lossless_sum[kBuffered][c].median;
    const double mtx = lossless_sum[kMutex][c].median;
    const double mc = lossless_sum[kMoodycamel][c].median;
    const double spsc = lossless_sum[kSpsc][c].median;
    const double best = std::isnan(mc) ? mtx : std::max(mtx, mc);
    std::string target = "-";
    if (p == 1) {
      target = ">= 0.6x SPSC" + verdict(lib / spsc, 0.6, true);
    } else if (p == 2 || p == 4) {
      target = ">= 1.5x best batcher" + verdict(lib / best, 1.5, true);
    } else if (p == 8) {
      target = ">= 1.0x best batcher" + verdict(lib / best, 1.0, true);
    }
    std::printf(
        "| lossless, %d producer%s (M events/s) | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
        p, p == 1 ? "" : "s", fmt("%.1f", lib / 1e6).c_str(), fmt("%.1f", mtx / 1e6).c_str(),
        fmt("%.1f", mc / 1e6).c_str(), fmt("%.1f", spsc / 1e6).c_str(), ratio(lib, mtx).c_str(),
        ratio(lib, mc).c_str(), ratio(lib, best).c_str(), ratio(lib, spsc).c_str(), target.c_str());
  }
  for (std::size_t c = 0; c < counts; ++c) {  // beside the rows above, from the same rounds
    const int p = producer_counts[c];
    const double bytes = lossless_sum[kBufferedBytes][c].median;
    if (std::isnan(bytes)) continue;
    const double mtx = lossless_sum[kMutex][c].median;
    const double mc = lossless_sum[kMoodycamel][c].median;
    const double spsc = lossless_sum[kSpsc][c].median;
    const double best = std::isnan(mc) ? mtx : std::max(mtx, mc);
    const Summary& cost = bytes_cost[c];
    std::string range;
    if (rounds > 1) range = " (rounds " + fmt("%.2f", cost.min) + "-" + fmt("%.2f", cost.max) + ")";
    std::printf(
        "| lossless, %d producer%s, byte bounds set, never binding (M events/s) | %s | - | - | - | "
        "%s | %s | %s | %s | byte bounds cost: %s of no bounds%s |\n",
        p, p == 1 ? "" : "s", fmt("%.1f", bytes / 1e6).c_str(), ratio(bytes, mtx).c_str(),
        ratio(bytes, mc).c_str(), ratio(bytes, best).c_str(), ratio(bytes, spsc).c_str(),
        fmt("%.2f", cost.median).c_str(), range.c_str());
  }
  std::printf(
      "| process_event alone, 1 producer, backend not running (ns per event): no bounds / byte "
      "bounds set, never binding | %s / %s | - | - | - | - | - | - | - | byte bounds cost: %s ns "
      "per event |\n",
      fmt("%.1f", summarize(offer_plain).median).c_str(),
      fmt("%.1f", summarize(offer_bytes).median).c_str(),
      fmt("%+.1f", summarize(offer_diff).median).c_str());
  const Summary drop_l = summarize(drop_lib), drop_m = summarize(drop_mtx);
  std::printf(
      "| drop-when-full, 1 producer: refused, median / max of %d | %.3f%% / %.3f%% | %.3f%% / "
      "%.3f%% | - | - | - | - | - | - | <= 1%% median%s, no run > 3%%%s |\n",
      rounds, drop_l.median * 100, drop_l.max * 100, drop_m.median * 100, drop_m.max * 100,
      verdict(drop_l.median, 0.01, false).c_str(), verdict(drop_l.max, 0.03, false).c_str());
  // The offered rate is the median over rounds; the shares are those of the round that
  // delivered the median share, so that they add up.
  const auto full_speed_cell = [](std::vector<FullSpeed> v) {
    std::vector<double> rate;
    for (const FullSpeed& f : v) rate.push_back(f.offered_per_s);
    std::sort(v.begin(), v.end(),
              [](const FullSpeed& a, const FullSpeed& b) { return a.delivered < b.delivered; });
    const FullSpeed& mid = v[v.size() / 2];
    char buf[128];
    std::snprintf(buf, sizeof buf, "%.1f; %.2f%% / %.2f%% / %.2f%%", summarize(rate).median / 1e6,
                  mid.delivered * 100, mid.evicted * 100, mid.refused * 100);
    return std::string(buf);
  };
  std::printf(
      "| drop_newest, 1 producer at full speed: offered (M events/s); delivered / evicted / "
      "refused, median of %d | %s | %s | - | - | - | - | - | - | reported |\n",
      rounds, full_speed_cell(newest_lib).c_str(), full_speed_cell(newest_mtx).c_str());
  std::printf(
      "| drop_oldest, 1 producer at full speed: offered (M events/s); delivered / evicted / "
      "refused, median of %d | %s | - | - | - | - | - | - | - | reported |\n",
      rounds, full_speed_cell(oldest_lib).c_str());
  std::printf(
      "| process_event p50 / p99 / p99.9, 2 producers, medians (ns) | %s / %s / %s | %s / %s / %s "
      "| %s / %s "
      "/ %s | - | p99.9 %s | p99.9 %s | - | - | p99.9 <= 0.2x mutex%s |\n",
      fmt("%.0f", lat_lib.p50).c_str(), fmt("%.0f", lat_lib.p99).c_str(),
      fmt("%.0f", lat_lib.p999).c_str(), fmt("%.0f", lat_mtx.p50).c_str(),
      fmt("%.0f", lat_mtx.p99).c_str(), fmt("%.0f", lat_mtx.p999).c_str(),
      fmt("%.0f", lat_mc.p50).c_str(), fmt("%.0f", lat_mc.p99).c_str(),
      fmt("%.0f", lat_mc.p999).c_str(), ratio(lat_lib.p999, lat_mtx.p999).c_str(),
      ratio(lat_lib.p999, lat_mc.p999).c_str(),
      verdict(lat_lib.p999 / lat_mtx.p999, 0.2, false).c_str());
  std::printf(
      "| idle CPU over %.1f s, max wait 5 ms (ms) | %.2f | - | - | - | - | - | - | - | <= 10 ms "
      "over 3 s |\n",
      static_cast<double>(idle.count()) / 1000.0, idle_ms);
  std::printf(
      "| allocations per event / per batch, sync | %.4f / %.3f | - | - | - | - | - | - | - | 0 / 0 "
      "|\n",
      sync_state.allocations_per_event, sync_state.allocations_per_batch);
  std::printf(
      "| allocations per event / per batch, async | %.4f / %.3f | - | - | - | - | - | - | - | 0 / "
      "0 |\n",
      async_state.allocations_per_event, async_state.allocations_per_batch);
  std::printf(
      "| voluntary context switches per batch, sync / async | %.2f / %.2f | - | - | - | - | - | - "
      "| - | reported |\n",
      sync_state.voluntary_switches_per_batch, async_state.voluntary_switches_per_batch);

  print_drop_rounds(newest_lib, newest_mtx);
  print_hw_table();

  std::printf(
      "\nmoodycamel: %s. SPSC ring: one bare ring per producer (%s), the consumer sweeps them "
      "round robin; the ideal sharded handoff, no batching policy, no wake-ups. Best batcher: the "
      "faster of mutex+deque and moodycamel. Byte bounds set, never binding: max_buffer_bytes "
      "%zu and max_batch_bytes %zu (twice what the counts allow), byte_size a function returning "
      "%zu; its cost is the median over rounds of its events/s over those of the run without, "
      "side by side (1.00: free); lossless, the producer and the worker share the cores, so a "
      "slower producer can even raise it. The process_event-alone row times one thread filling "
      "a backend that is not running with %zu events, %d times per round with and without byte "
      "bounds in turn; its cost is the median of the per-round differences. The drop_newest "
      "row and the drop-when-full row are the same runs. "
      "At full speed: one producer offers %llu events as fast as it can, nobody retries; offered "
      "is the producer's loop alone, the shares are of the offered events after shutdown (from "
      "Stats), from the round with the median delivered share.\n",
      kHaveMoodycamel ? "BlockingConcurrentQueue, a ProducerToken per producer, enqueue with at "
                        "most 10000 queued (slots reserved 32 at a time; blocks pre-allocated), "
                        "wait_dequeue_bulk_timed into batches of up to 400"
                      : "not built (blockingconcurrentqueue.h not found)",
      "about 10000 slots in all", byte_bound_config().max_buffer_bytes,
      byte_bound_config().max_batch_bytes, sizeof(Event), kBufferSize, offer_reps,
      static_cast<unsigned long long>(events));
  std::printf("load average at the end: %s (a busy machine makes every figure above noisy)\n",
              load_average().c_str());
  return 0;
}
