// One producer offering at full speed into a backend with each OverflowPolicy that drops
// (drop_newest, drop_oldest), and into the mutex batcher (drop_newest). For each round it also
// shows the consumer's gaps between batches and where its time went while the producer offered
// (on a CPU, waiting for one, neither), read from /proc and the thread's CPU clock: refusals at
// full speed come from the time the consumer does not run.
#include <dirent.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>
#include <vector>

#include "bench.hpp"
#include "mutex_batcher.hpp"
#include "workloads.hpp"

namespace bench {
namespace {

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

// The offered rate is the median over rounds; the shares are those of the round that
// delivered the median share, so that they add up.
std::string full_speed_cell(std::vector<FullSpeed> v) {
  std::vector<double> rate;
  for (const FullSpeed& f : v) rate.push_back(f.offered_per_s);
  std::sort(v.begin(), v.end(),
            [](const FullSpeed& a, const FullSpeed& b) { return a.delivered < b.delivered; });
  const FullSpeed& mid = v[v.size() / 2];
  char buf[128];
  std::snprintf(buf, sizeof buf, "%.1f; %.2f%% / %.2f%% / %.2f%%", summarize(rate).median / 1e6,
                mid.delivered * 100, mid.evicted * 100, mid.refused * 100);
  return std::string(buf);
}

Summary refused_shares(const std::vector<FullSpeed>& runs) {
  std::vector<double> shares;
  for (const FullSpeed& f : runs) shares.push_back(f.refused);
  return summarize(shares);
}

}  // namespace

void DropRounds::round() {
  newest_lib_.push_back(full_speed_library(buffered::OverflowPolicy::drop_newest, options_.events));
  newest_mtx_.push_back(full_speed_mutex(options_.events));
  oldest_lib_.push_back(full_speed_library(buffered::OverflowPolicy::drop_oldest, options_.events));
}

void DropRounds::print_rows() const {
  const int rounds = options_.rounds;
  const Summary drop_l = refused_shares(newest_lib_), drop_m = refused_shares(newest_mtx_);
  std::printf(
      "| drop-when-full, 1 producer: refused, median / max of %d | %.3f%% / %.3f%% | %.3f%% / "
      "%.3f%% | - | - | - | - | - | - | <= 1%% median%s, no run > 3%%%s |\n",
      rounds, drop_l.median * 100, drop_l.max * 100, drop_m.median * 100, drop_m.max * 100,
      verdict(drop_l.median, 0.01, false).c_str(), verdict(drop_l.max, 0.03, false).c_str());
  std::printf(
      "| drop_newest, 1 producer at full speed: offered (M events/s); delivered / evicted / "
      "refused, median of %d | %s | %s | - | - | - | - | - | - | reported |\n",
      rounds, full_speed_cell(newest_lib_).c_str(), full_speed_cell(newest_mtx_).c_str());
  std::printf(
      "| drop_oldest, 1 producer at full speed: offered (M events/s); delivered / evicted / "
      "refused, median of %d | %s | - | - | - | - | - | - | - | reported |\n",
      rounds, full_speed_cell(oldest_lib_).c_str());
}

// Per round of drop-when-full: the refused share, the consumer's gaps between batches, and
// where its time went while the producer offered (ConsumerTimes).
void DropRounds::print_rounds() const {
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
  for (std::size_t r = 0; r < newest_lib_.size() && r < newest_mtx_.size(); ++r) {
    row(r + 1, "buffered", newest_lib_[r]);
    row(r + 1, "mutex+deque", newest_mtx_[r]);
  }
  std::vector<double> rates;
  for (const FullSpeed& f : newest_lib_) rates.push_back(f.offered_per_s);
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

}  // namespace bench
