// Enqueue latency: 2 producers time each process_event, against the batchers.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "bench.hpp"
#include "workloads.hpp"
#ifdef BUFFERED_BENCH_HAVE_MOODYCAMEL
#include "moodycamel_batcher.hpp"
#endif
#include "mutex_batcher.hpp"

namespace bench {
namespace {

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

Percentiles median_percentiles(const std::vector<Percentiles>& v) {
  std::vector<double> p50, p99, p999;
  for (const Percentiles& p : v) {
    p50.push_back(p.p50);
    p99.push_back(p.p99);
    p999.push_back(p.p999);
  }
  return Percentiles{summarize(p50).median, summarize(p99).median, summarize(p999).median};
}

}  // namespace

LatencyRounds::LatencyRounds(const Options& options)
    : per_producer_(std::min<std::uint64_t>(options.events / 2, 1'000'000)) {}

void LatencyRounds::round() {  // interleaved
  runs_[0].push_back(latency_library(per_producer_));
  runs_[1].push_back(latency_mutex(per_producer_));
  runs_[2].push_back(latency_moodycamel(per_producer_));
}

void LatencyRounds::print_row() const {
  const Percentiles lat_lib = median_percentiles(runs_[0]);
  const Percentiles lat_mtx = median_percentiles(runs_[1]);
  const Percentiles lat_mc = median_percentiles(runs_[2]);
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
}

}  // namespace bench
