#include "report.hpp"

#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "bench.hpp"
#include "workloads.hpp"

namespace bench {
namespace {

std::string trim(std::string s) {
  const auto first = s.find_first_not_of(" \t\n");
  const auto last = s.find_last_not_of(" \t\n");
  return first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
}

}  // namespace

Summary summarize(std::vector<double> v) {
  if (v.empty() || std::isnan(v.front())) return {NAN, NAN, NAN};
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

std::string fmt(const char* format, double v) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string ratio(double a, double b) { return fmt("%.2fx", a / b); }

std::string verdict(double value, double bound, bool at_least) {
  if (std::isnan(value) || std::isnan(bound)) return "";
  return (at_least ? value >= bound : value <= bound) ? ": met" : ": MISSED";
}

Machine this_machine() {
  Machine m;
  if (std::FILE* f = std::fopen("/proc/cpuinfo", "r")) {
    char line[512];
    bool named = false;
    while (std::fgets(line, sizeof line, f)) {
      const std::string l = line;
      const auto colon = l.find(':');
      if (colon == std::string::npos) continue;
      const std::string key = trim(l.substr(0, colon));
      if (key == "processor") ++m.cpuinfo_processors;
      if (key == "model name" && !named) {
        m.cpu = trim(l.substr(colon + 1));
        named = true;
      }
    }
    std::fclose(f);
  }
#if defined(__clang__)
  m.compiler = __VERSION__;
#elif defined(__GNUC__)
  m.compiler = "g++ " __VERSION__;
#else
  m.compiler = "unknown compiler";
#endif
#ifndef __OPTIMIZE__
  m.compiler += " (UNOPTIMIZED BUILD)";
#endif
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d", &utc);
  m.date = date;
  return m;
}

std::string load_average() {
  std::string load = "unknown";
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    double a = 0, b = 0, c = 0;
    if (std::fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.2f %.2f %.2f", a, b, c);
      load = buf;
    }
    std::fclose(f);
  }
  return load;
}

void print_machine(const Machine& machine, const std::string& load_at_start) {
  std::printf(
      "buffered_bench on %s: %d processors in /proc/cpuinfo, hardware_concurrency %u; %s; %s; "
      "load average %s\n",
      machine.cpu.c_str(), machine.cpuinfo_processors, machine.hardware_concurrency,
      machine.compiler.c_str(), machine.date.c_str(), load_at_start.c_str());
  std::fflush(stdout);
}

void print_table_head(const Options& options) {
  std::printf(
      "%d round(s) interleaved; %llu events of 64 bytes per run; buffer %zu, batch %zu, "
      "wait %lld s; medians\n\n",
      options.rounds, static_cast<unsigned long long>(options.events), kBufferSize, kMaxBatch,
      static_cast<long long>(kMaxWait.count()));
  std::printf(
      "| workload | buffered | mutex+deque | moodycamel | SPSC ring | vs mutex | vs moodycamel | "
      "vs best batcher | vs SPSC | target |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
}

void print_notes(const Options& options, int offer_reps) {
  std::printf(
      "\nmoodycamel: %s. SPSC ring: one bare ring per producer (%s), the consumer sweeps them "
      "round robin; the ideal sharded handoff, no batching policy, no wake-ups. Best batcher: the "
      "faster of mutex+deque and moodycamel. Byte bounds set, never binding: max_buffer_bytes "
      "%zu and max_batch_bytes %zu (twice what the counts allow), byte_size a function returning "
      "%zu; its cost is the median over rounds of its events/s over those of the run without, "
      "side by side (1.00: free); lossless, the producer and the worker share the cores, so a "
      "slower producer can even raise it. The process_event-alone row times one thread filling "
      "a backend that is not running with %zu events, %d times per round with and without byte "
      "bounds in turn; its cost is the median of the per-round differences. The drop_newest "
      "row and the drop-when-full row are the same runs. "
      "At full speed: one producer offers %llu events as fast as it can, nobody retries; offered "
      "is the producer's loop alone, the shares are of the offered events after shutdown (from "
      "Stats), from the round with the median delivered share.\n",
      kHaveMoodycamel ? "BlockingConcurrentQueue, a ProducerToken per producer, enqueue with at "
                        "most 10000 queued (slots reserved 32 at a time; blocks pre-allocated), "
                        "wait_dequeue_bulk_timed into batches of up to 400"
                      : "not built (blockingconcurrentqueue.h not found)",
      "about 10000 slots in all", byte_bound_config().max_buffer_bytes,
      byte_bound_config().max_batch_bytes, sizeof(Event), kBufferSize, offer_reps,
      static_cast<unsigned long long>(options.events));
  std::printf("load average at the end: %s (a busy machine makes every figure above noisy)\n",
              load_average().c_str());
}

void write_csv(const Options& options, const Machine& machine, const std::string& load_at_start,
               const HardwareRounds& hardware, const LosslessRounds& lossless) {
  std::FILE* f = std::fopen(options.csv_path, "w");
  check(f != nullptr, "cannot write the --csv file");
  std::fprintf(f, "# buffered_bench: lossless delivered events/s, median/min/max over rounds\n");
  std::fprintf(f,
               "# buffered_bytes: buffered with max_buffer_bytes and max_batch_bytes set but "
               "never binding (1 and 2 producers)\n");
  std::fprintf(f, "# cpu=%s\n# cpuinfo_processors=%d\n# hardware_concurrency=%u\n",
               machine.cpu.c_str(), machine.cpuinfo_processors, machine.hardware_concurrency);
  std::fprintf(f, "# compiler=%s\n# date=%s\n# rounds=%d\n# events=%llu\n",
               machine.compiler.c_str(), machine.date.c_str(), options.rounds,
               static_cast<unsigned long long>(options.events));
  std::fprintf(f, "# load_average_at_start=%s\n# load_average_after_lossless=%s\n",
               load_at_start.c_str(), load_average().c_str());
  hardware.write_csv(f);
  std::fprintf(f, "producers,implementation,median,min,max\n");
  lossless.write_csv(f);
  check(std::fclose(f) == 0, "cannot write the --csv file");
}

}  // namespace bench
