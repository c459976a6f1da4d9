// Steady state: allocations per event and per batch (every operator new in the process counts),
// and voluntary context switches per batch, synchronous and asynchronous dispatch.
#include <sys/resource.h>

#include <cstdint>
#include <cstdio>

#include "bench.hpp"
#include "workloads.hpp"

namespace bench {

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

void print_steady_state_rows(const SteadyState& sync_state, const SteadyState& async_state) {
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
}

}  // namespace bench
