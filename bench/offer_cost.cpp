// The producer's path alone: process_event into a backend that is not running, with and
// without byte bounds, in ns per event.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>

#include "bench.hpp"
#include "workloads.hpp"

namespace bench {
namespace {

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

}  // namespace

OfferCostRounds::OfferCostRounds(const Options& options)
    : reps_(static_cast<int>(std::max<std::uint64_t>(2, options.events / kBufferSize / 10))) {}

void OfferCostRounds::round() {
  const OfferCost cost = offer_cost(reps_);
  plain_ns_.push_back(cost.plain_ns);
  bytes_ns_.push_back(cost.bytes_ns);
  diff_ns_.push_back(cost.bytes_ns - cost.plain_ns);
}

void OfferCostRounds::print_row() const {
  std::printf(
      "| process_event alone, 1 producer, backend not running (ns per event): no bounds / byte "
      "bounds set, never binding | %s / %s | - | - | - | - | - | - | - | byte bounds cost: %s ns "
      "per event |\n",
      fmt("%.1f", summarize(plain_ns_).median).c_str(),
      fmt("%.1f", summarize(bytes_ns_).median).c_str(),
      fmt("%+.1f", summarize(diff_ns_).median).c_str());
}

}  // namespace bench
