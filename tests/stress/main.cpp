// buffered_stress: random rounds of producers, faults and shutdowns, each checked for
// exactly-once delivery, order, accounting and reporting.
//
//   buffered_stress [--seconds S] [--seed N] [--verbose]
//
// Each round is drawn from its seed (round_plan.cpp) and runs as round.cpp says: the shapes and
// workloads in workloads.hpp, allocation failures in faults.hpp, the delegate and error handler
// in sink.hpp, the backend's life in lifecycle.hpp, the rules checked in checks.hpp. The rounds
// of a run are interleaved in one process.
// Prints one summary line; exits non-zero on any violation.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "stress.hpp"

namespace {

struct Options {
  double seconds = 10;
  std::uint64_t seed = 0;
  bool verbose = false;
};

bool parse(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--seconds" && i + 1 < argc) {
      options.seconds = std::atof(argv[++i]);
    } else if (arg == "--seed" && i + 1 < argc) {
      options.seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--verbose") {
      options.verbose = true;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using buffered_stress::Clock;
  Options options;
  options.seed = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
  if (!parse(argc, argv, options)) {
    std::fprintf(stderr, "usage: buffered_stress [--seconds S] [--seed N] [--verbose]\n");
    return 2;
  }
  buffered_stress::name_the_round_at_death();

  buffered_stress::Totals totals;
  Clock::time_point t0;
  {
    buffered_stress::Watchdog watchdog(options.seed);
    t0 = Clock::now();
    std::uint64_t round_seed = options.seed;
    do {
      watchdog.round_starts(round_seed);
      buffered_stress::run_round(round_seed, options.verbose, totals);
      round_seed = round_seed * 6364136223846793005ull + 1442695040888963407ull;
    } while (std::chrono::duration<double>(Clock::now() - t0).count() < options.seconds);
  }
  buffered_stress::print_summary(options.seed,
                                 std::chrono::duration<double>(Clock::now() - t0).count(), totals);
  return totals.violations == 0 ? 0 : 1;
}
