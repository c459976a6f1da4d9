// The workloads of buffered_bench, one file each. A workload that runs in rounds keeps each
// round's figures, so that main.cpp can run its rounds one after the other (the contenders
// interleaved inside each round: drift hits every contender alike) and print the medians.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "bench.hpp"

namespace bench {

// ---- hardware.cpp: what a shared cache line costs on this machine ----

enum HwTest { kCasShared, kAddShared, kAddPrivate, kHwTests };

class HardwareRounds {
 public:
  explicit HardwareRounds(const Options& options) : options_(options) {}
  void round();  // each test once
  void print_table() const;
  void write_csv(std::FILE* f) const;  // the medians, as "# key=value" lines

 private:
  const Options& options_;
  std::vector<double> ops_per_second_[kHwTests], slowest_share_[kHwTests];
  bool unpinned_ = false;  // a hardware test thread could not have a CPU of its own
};

// ---- lossless.cpp: lossless throughput (events delivered per second) ----

enum Impl { kBuffered, kBufferedBytes, kMutex, kMoodycamel, kSpsc, kImpls };

class LosslessRounds {
 public:
  explicit LosslessRounds(const Options& options);
  void round(int r);  // every producer count and contender once
  void print_rows() const;
  void write_csv(std::FILE* f) const;  // the medians and ranges, a line per contender and count

 private:
  Summary summary(int impl, std::size_t c) const { return summarize(runs_[impl][c]); }
  Summary bytes_cost(std::size_t c) const;
  void print_byte_bound_rows() const;

  const Options& options_;
  std::vector<std::vector<double>> runs_[kImpls];  // per producer count, each round's events/s
};

// ---- drop_when_full.cpp: one producer offering at full speed, dropping when full ----

// Where the consumer thread's time went while the producer offered (Linux; unknown elsewhere):
// a refusal at full speed means the consumer fell behind, and this tells whether it was on a CPU
// (as the guest counts it: a vCPU slowed by the hypervisor, or stopped without the guest counting
// steal, counts as running), runnable but kept off one by the guest kernel (waiting: e.g. woken
// onto the producer's busy CPU), or neither (parked).
struct ConsumerTimes {
  bool known = false;
  double wall_ms = 0, cpu_ms = 0, wait_ms = 0;
  long parks = 0;  // voluntary context switches
  Gaps gaps;       // between its batches
};

// One run: offered events per second (the producer's loop alone, not the drain), the shares
// of the offered events that were delivered, evicted (drop_oldest) and refused, and the
// consumer thread's time during the producer's loop.
struct FullSpeed {
  double offered_per_s, delivered, evicted, refused;
  ConsumerTimes consumer;
};

class DropRounds {
 public:
  explicit DropRounds(const Options& options) : options_(options) {}
  void round();  // drop_newest (the library, the mutex batcher), drop_oldest (the library)
  void print_rows() const;
  void print_rounds() const;  // a table of each round's refusals, gaps and consumer times

 private:
  const Options& options_;
  std::vector<FullSpeed> newest_lib_, newest_mtx_, oldest_lib_;
};

// ---- offer_cost.cpp: process_event alone, into a backend that is not running ----

class OfferCostRounds {
 public:
  explicit OfferCostRounds(const Options& options);
  void round();
  void print_row() const;
  int reps() const { return reps_; }  // fills of each kind per round

 private:
  int reps_;
  std::vector<double> plain_ns_, bytes_ns_, diff_ns_;
};

// ---- latency.cpp: enqueue latency under 2 producers ----

struct Percentiles {
  double p50, p99, p999;
};

class LatencyRounds {
 public:
  explicit LatencyRounds(const Options& options);
  void round();  // the library, the mutex batcher, moodycamel
  void print_row() const;

 private:
  std::uint64_t per_producer_;
  std::vector<Percentiles> runs_[3];  // buffered, mutex, moodycamel
};

// ---- idle_cpu.cpp: idle cost ----

double idle_cpu_ms(std::chrono::milliseconds idle);
void print_idle_row(std::chrono::milliseconds idle, double ms);

// ---- steady_state.cpp: allocations per event in steady state; voluntary context switches ----

struct SteadyState {
  double allocations_per_event;
  double allocations_per_batch;
  double voluntary_switches_per_batch;
};

SteadyState steady_state(bool async, std::uint64_t events);
void print_steady_state_rows(const SteadyState& sync_state, const SteadyState& async_state);

}  // namespace bench
