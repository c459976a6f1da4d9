// The backend's life in a round: constructed (with allocation failures, retried), run (likewise;
// a failed run() must leave no thread behind), shut down at a random moment, with or without a
// deadline, from one or two threads, or by the destructor.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "backend.hpp"
#include "faults.hpp"
#include "stress.hpp"

namespace buffered_stress {

class Startup {
 public:
  Startup(const RoundPlan& plan, Backend& backend, const Observed& obs, Violations& violation,
          FaultCounters& faults, FaultDice& dice);

  // max_batch_bytes > max_buffer_bytes: refused, naming the field.
  void try_invalid_bytes(const ErrorHandler& on_error, const ByteSizeFunction& byte_size);
  // With faults, every allocation in turn fails (sometimes all from it on) and the constructor
  // is tried again, until it succeeds. False if it never does: the round ends there.
  bool construct(const ErrorHandler& on_error, const ByteSizeFunction& byte_size);
  // The threads at rest, before run().
  void count_threads();
  // run(): retried after a failure, which must leave nothing running.
  void start(bool producers_running, bool racing);

 private:
  struct RunResult {
    bool failed = false, unexpected = false, shut_first = false;
  };
  RunResult run_once();
  void check_global_fault(std::uint64_t nth, bool failed_run);
  void check_after_run(bool failed_run, bool producers_running, bool racing);

  const RoundPlan& plan_;
  Backend& backend_;
  const Observed& obs_;
  Violations& violation_;
  FaultCounters& faults_;
  FaultDice& dice_;
  std::size_t threads_before_ = 0;  // 0: not counted
  std::size_t threads_expected_ = 0;
};

class Shutdowns {
 public:
  Shutdowns(const RoundPlan& plan, Backend& backend, Observed& obs, Violations& violation,
            FaultCounters& faults, FaultDice& dice);

  // shutdown(timeout), with when it started and returned, for the BatchContext checks.
  bool timed(std::chrono::microseconds timeout);
  // The round's shutdown, as its style says (none: the destructor's); true if every call
  // returned true.
  bool shut_down();
  // After the round's shutdown (not the destructor's).
  void check_shut_down(bool returned_true);
  // Another unbounded shutdown, which waits for any call still running: then the counts are
  // final.
  buffered::Stats final_stats();
  void destroy();

 private:
  // A shutdown must neither throw nor allocate.
  bool guarded(std::optional<std::chrono::microseconds> timeout);
  void check_identity(bool returned_true);
  void check_flush_returns();

  const RoundPlan& plan_;
  Backend& backend_;
  Observed& obs_;
  Violations& violation_;
  FaultCounters& faults_;
  FaultDice& dice_;
};

}  // namespace buffered_stress
