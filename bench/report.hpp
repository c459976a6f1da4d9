// What buffered_bench prints besides the workloads' rows: the machine it ran on, the table's
// head, the notes below the tables, and the --csv file.
#pragma once

#include <string>

#include "bench.hpp"

namespace bench {

struct Machine {
  std::string cpu = "unknown CPU";
  int cpuinfo_processors = 0;
  unsigned hardware_concurrency = std::thread::hardware_concurrency();
  std::string compiler;
  std::string date;
};

Machine this_machine();

// The 1, 5 and 15 minute load averages, to tell a reader whether the machine was busy: the
// benchmark's threads need the cores to themselves.
std::string load_average();

}  // namespace bench
