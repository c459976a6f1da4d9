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
// Each workload has a file of its own (workloads.hpp lists them): lossless.cpp (throughput
// against the references, and with byte bounds that never bind), drop_when_full.cpp (one
// producer at full speed, each OverflowPolicy that drops), offer_cost.cpp (process_event
// alone), latency.cpp, idle_cpu.cpp, steady_state.cpp (allocations, context switches) and
// hardware.cpp (what a shared cache line costs). They stay in one binary so that their rounds
// run in one process; this file only reads the command line and runs the rounds.
//
// References: bench/mutex_batcher.hpp (mutex + condition variable + deque), bench/
// moodycamel_batcher.hpp (moodycamel::BlockingConcurrentQueue, where its header was found at
// build time), bench/spsc_ring.hpp (one bare SPSC ring per producer: the ideal sharded handoff).
// Prints Markdown tables. Not a test: it asserts nothing about speed.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench.hpp"
#include "report.hpp"
#include "workloads.hpp"

namespace bench {
namespace {

using namespace std::chrono_literals;

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

bool parse_options(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      options.rounds = 1;
      options.events = 400'000;
      options.idle = 300ms;
      options.hw_time = 30ms;
    } else if (arg == "--rounds" && i + 1 < argc) {
      options.rounds = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--events" && i + 1 < argc) {
      options.events =
          std::max<std::uint64_t>(800, std::strtoull(argv[++i], nullptr, 10) / 800 * 800);
    } else if (arg == "--producers" && i + 1 < argc) {
      if (!parse_producers(argv[++i], options.producer_counts)) return false;
    } else if (arg == "--csv" && i + 1 < argc) {
      options.csv_path = argv[++i];
    } else if (arg == "--hw-only") {
      options.hw_only = true;
    } else {
      return false;
    }
  }
  return true;
}

// Each workload's rounds in turn, its contenders interleaved within each round: drift hits
// every contender alike.
int run(const Options& options) {
  const int rounds = options.rounds;
  const Machine machine = this_machine();
  const std::string load_at_start = load_average();
  print_machine(machine, load_at_start);

  // The hardware first, while nothing else of ours runs.
  HardwareRounds hardware(options);
  for (int r = 0; r < rounds; ++r) hardware.round();

  LosslessRounds lossless(options);
  if (!options.hw_only) {
    for (int r = 0; r < rounds; ++r) lossless.round(r);
  }
  if (options.csv_path) write_csv(options, machine, load_at_start, hardware, lossless);
  if (options.hw_only) {
    hardware.print_table();
    return 0;
  }

  DropRounds drop(options);
  for (int r = 0; r < rounds; ++r) drop.round();
  OfferCostRounds offer_cost(options);
  for (int r = 0; r < rounds; ++r) offer_cost.round();
  LatencyRounds latency(options);
  for (int r = 0; r < rounds; ++r) latency.round();
  const double idle_ms = idle_cpu_ms(options.idle);
  const SteadyState sync_state = steady_state(false, options.events / 10);
  const SteadyState async_state = steady_state(true, options.events / 10);

  print_table_head(options);
  lossless.print_rows();
  offer_cost.print_row();
  drop.print_rows();
  latency.print_row();
  print_idle_row(options.idle, idle_ms);
  print_steady_state_rows(sync_state, async_state);
  drop.print_rounds();
  hardware.print_table();
  print_notes(options, offer_cost.reps());
  return 0;
}

}  // namespace
}  // namespace bench

int main(int argc, char** argv) {
  bench::Options options;
  if (!bench::parse_options(argc, argv, options)) return bench::usage();
  return bench::run(options);
}
