// Lossless throughput, events delivered per second: the library against the references, and
// once more with byte bounds set that never bind (max_buffer_bytes and max_batch_bytes twice
// what the counts allow, a byte_size function), at 1 and 2 producers, beside the same run
// without them in every round.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "workloads.hpp"
#ifdef BUFFERED_BENCH_HAVE_MOODYCAMEL
#include "moodycamel_batcher.hpp"
#endif
#include "mutex_batcher.hpp"
#include "spsc_ring.hpp"

namespace bench {
namespace {

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

}  // namespace

LosslessRounds::LosslessRounds(const Options& options) : options_(options) {
  for (auto& per_impl : runs_) per_impl.resize(options.producer_counts.size());
}

void LosslessRounds::round(int r) {
  for (std::size_t c = 0; c < options_.producer_counts.size(); ++c) {
    const int p = options_.producer_counts[c];
    for (int impl = 0; impl < kImpls; ++impl) {
      if (impl == kBufferedBytes && !with_byte_bounds_row(p)) continue;
      // The byte-bound run and the run without take turns at going first.
      int run = impl;
      if (with_byte_bounds_row(p) && r % 2 == 1 && impl <= kBufferedBytes) {
        run = impl == kBuffered ? kBufferedBytes : kBuffered;
      }
      runs_[run][c].push_back(lossless_run(static_cast<Impl>(run), p, options_.events));
    }
  }
}

// What byte bounds cost: per round, the byte-bound run over the run without, side by side.
Summary LosslessRounds::bytes_cost(std::size_t c) const {
  const auto& with = runs_[kBufferedBytes][c];
  const auto& without = runs_[kBuffered][c];
  if (with.empty() || with.size() != without.size()) return {NAN, NAN, NAN};
  std::vector<double> paired;
  for (std::size_t r = 0; r < with.size(); ++r) paired.push_back(with[r] / without[r]);
  return summarize(paired);
}

void LosslessRounds::print_rows() const {
  for (std::size_t c = 0; c < options_.producer_counts.size(); ++c) {
    const int p = options_.producer_counts[c];
    const double lib = summary(kBuffered, c).median;
    const double mtx = summary(kMutex, c).median;
    const double mc = summary(kMoodycamel, c).median;
    const double spsc = summary(kSpsc, c).median;
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
  print_byte_bound_rows();
}

// Beside the rows above, from the same rounds.
void LosslessRounds::print_byte_bound_rows() const {
  for (std::size_t c = 0; c < options_.producer_counts.size(); ++c) {
    const int p = options_.producer_counts[c];
    const double bytes = summary(kBufferedBytes, c).median;
    if (std::isnan(bytes)) continue;
    const double mtx = summary(kMutex, c).median;
    const double mc = summary(kMoodycamel, c).median;
    const double spsc = summary(kSpsc, c).median;
    const double best = std::isnan(mc) ? mtx : std::max(mtx, mc);
    const Summary cost = bytes_cost(c);
    std::string range;
    if (options_.rounds > 1) {
      range = " (rounds " + fmt("%.2f", cost.min) + "-" + fmt("%.2f", cost.max) + ")";
    }
    std::printf(
        "| lossless, %d producer%s, byte bounds set, never binding (M events/s) | %s | - | - | - | "
        "%s | %s | %s | %s | byte bounds cost: %s of no bounds%s |\n",
        p, p == 1 ? "" : "s", fmt("%.1f", bytes / 1e6).c_str(), ratio(bytes, mtx).c_str(),
        ratio(bytes, mc).c_str(), ratio(bytes, best).c_str(), ratio(bytes, spsc).c_str(),
        fmt("%.2f", cost.median).c_str(), range.c_str());
  }
}

void LosslessRounds::write_csv(std::FILE* f) const {
  for (std::size_t c = 0; c < options_.producer_counts.size() && !options_.hw_only; ++c) {
    for (int impl = 0; impl < kImpls; ++impl) {
      const Summary s = summary(impl, c);
      if (std::isnan(s.median)) continue;
      std::fprintf(f, "%d,%s,%.0f,%.0f,%.0f\n", options_.producer_counts[c], kImplNames[impl],
                   s.median, s.min, s.max);
    }
  }
}

}  // namespace bench
