// Idle cost: the process's CPU time while a running backend has nothing to deliver.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "bench.hpp"
#include "workloads.hpp"

namespace bench {
namespace {

using namespace std::chrono_literals;

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace

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

void print_idle_row(std::chrono::milliseconds idle, double ms) {
  std::printf(
      "| idle CPU over %.1f s, max wait 5 ms (ms) | %.2f | - | - | - | - | - | - | - | <= 10 ms "
      "over 3 s |\n",
      static_cast<double>(idle.count()) / 1000.0, ms);
}

}  // namespace bench
