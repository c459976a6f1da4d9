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

// The first line: the machine, the compiler, the date and the load average at the start.
void print_machine(const Machine& machine, const std::string& load_at_start);

// The workloads' table starts here; its rows come from each workload in turn.
void print_table_head(const Options& options);

// What the contenders and the rows are, below the tables, and the load average at the end.
void print_notes(const Options& options, int offer_reps);

class HardwareRounds;
class LosslessRounds;

// The --csv file: the machine and the run as "# key=value" lines, the hardware's medians, then
// the lossless medians and ranges (what bench/plot.py draws).
void write_csv(const Options& options, const Machine& machine, const std::string& load_at_start,
               const HardwareRounds& hardware, const LosslessRounds& lossless);

}  // namespace bench
