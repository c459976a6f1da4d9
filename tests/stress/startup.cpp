#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

#include "../process_threads.hpp"
#include "lifecycle.hpp"

namespace buffered_stress {
namespace {

// The thread count once threads joined earlier have left /proc: two reads 1 ms apart agree.
std::size_t stable_thread_count() {
  std::size_t n = buffered_test::count_threads();
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(1ms);
    const std::size_t m = buffered_test::count_threads();
    if (m == n) break;
    n = m;
  }
  return n;
}

// Waits up to two seconds for the thread count to become `want` (a joined thread may linger
// briefly in /proc); returns the last count seen.
std::size_t settle_threads(std::size_t want) {
  const auto until = Clock::now() + 2s;
  std::size_t n = buffered_test::count_threads();
  while (n != want && Clock::now() < until) {
    std::this_thread::sleep_for(1ms);
    n = buffered_test::count_threads();
  }
  return n;
}

// The thread count between rounds (the main thread, the watchdog, a sanitizer's own): a round
// starts with it once the threads joined by earlier rounds have left /proc, which on a loaded
// machine can take longer than two reads 1 ms apart see (then a round would count a leaving
// thread as present, and a new one as missing). Learned again if it stops holding.
std::size_t threads_at_rest() {
  static std::size_t baseline = 0;
  if (baseline != 0 && settle_threads(baseline) == baseline) return baseline;
  baseline = stable_thread_count();
  return baseline;
}

}  // namespace

Startup::Startup(const RoundPlan& plan, Backend& backend, const Observed& obs,
                 Violations& violation, FaultCounters& faults, FaultDice& dice)
    : plan_(plan),
      backend_(backend),
      obs_(obs),
      violation_(violation),
      faults_(faults),
      dice_(dice) {}

void Startup::try_invalid_bytes(const ErrorHandler& on_error, const ByteSizeFunction& byte_size) {
  buffered::BatchConfig bad = plan_.config;
  bad.max_batch_bytes = plan_.config.max_buffer_bytes + plan_.invalid_excess;
  try {
    backend_.construct_and_destroy(bad, on_error, byte_size);
    violation_("max_batch_bytes " + std::to_string(bad.max_batch_bytes) + " > max_buffer_bytes " +
               std::to_string(bad.max_buffer_bytes) + " was accepted");
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find("max_batch_bytes") == std::string::npos)
      violation_(std::string("invalid max_batch_bytes refused with: ") + e.what());
  }
  if (!obs_.calls.empty() || obs_.runs != 0) violation_("a refused config called the sink");
}

bool Startup::construct(const ErrorHandler& on_error, const ByteSizeFunction& byte_size) {
  for (std::uint64_t nth = 1;; ++nth) {
    const bool inject = plan_.faults.construct;
    if (inject) fault::fail_allocation(nth, dice_.mode());
    bool threw = false;
    try {
      backend_.construct(plan_.config, on_error, byte_size);
    } catch (const std::bad_alloc&) {
      threw = true;
    } catch (const std::exception& e) {
      fault::disarm_allocations();
      violation_(std::string("the constructor threw: ") + e.what());
      return false;
    }
    if (inject) {
      fault::disarm_allocations();
      const std::uint64_t failed = fault::failed_allocations();
      faults_.armed += 1;
      faults_.failed += failed;
      if (!threw && failed != 0) violation_("an allocation failed, yet construction succeeded");
    }
    if (threw && (!inject || backend_.constructed())) violation_("bad_alloc without a fault");
    if (!threw) return true;
    if (!obs_.calls.empty() || obs_.runs != 0) violation_("a failed constructor called the sink");
    if (nth > 1000) {
      violation_("the constructor still fails after 1000 tries");
      return false;
    }
  }
}

void Startup::count_threads() {
  threads_before_ = plan_.run_late || plan_.never_run ? 0 : threads_at_rest();
  threads_expected_ =
      threads_before_ + 1 + (plan_.config.async_delegate ? plan_.config.max_in_flight : 0);
}

void Startup::start(bool producers_running, bool racing) {
  for (std::uint64_t nth = 1;; ++nth) {
    // With producers running only this thread's next allocation may fail; otherwise any
    // allocation anywhere (the library's threads included).
    const bool inject = plan_.faults.run;
    const bool global = inject && !producers_running;
    if (global) fault::fail_allocation(nth, dice_.mode());
    ThreadFault local(faults_, inject && !global && nth == 1);
    const RunResult result = run_once();
    local.disarm();
    if (global) check_global_fault(nth, result.failed);
    if (result.unexpected) violation_("run() threw something other than bad_alloc or a failure");
    if (result.shut_first) {
      if (!racing) violation_("run() threw logic_error with no shutdown");
      return;
    }
    check_after_run(result.failed, producers_running, racing);
    if (!result.failed) return;
    if (nth > 1000) {
      violation_("run() still fails after 1000 tries");
      return;
    }
  }
}

Startup::RunResult Startup::run_once() {
  RunResult result;
  try {
    backend_.run();
  } catch (const std::logic_error&) {
    result.failed = result.shut_first = true;  // the racing shutdown came first
  } catch (const std::bad_alloc&) {
    result.failed = true;
  } catch (const std::system_error&) {
    result.failed = true;  // no thread: not injected here, but allowed
  } catch (const std::runtime_error&) {
    result.failed = true;  // delegate.run() failed
  } catch (...) {
    result.failed = result.unexpected = true;  // nothing may allocate here: reported below
  }
  return result;
}

void Startup::check_global_fault(std::uint64_t nth, bool failed_run) {
  fault::disarm_allocations();
  const std::uint64_t failed = fault::failed_allocations();
  faults_.armed += 1;
  faults_.failed += failed;
  if (!failed_run && failed != 0) {
    violation_("an allocation failed during run() (nth " + std::to_string(nth) +
               "), yet run() succeeded: a library thread allocated?");
  }
}

void Startup::check_after_run(bool failed_run, bool producers_running, bool racing) {
  // (With a racing shutdown the worker may already have shut the delegate down.)
  if (!racing && obs_.runs != obs_.shutdowns + (failed_run ? 0 : 1)) {
    violation_("after run() " + std::string(failed_run ? "failed" : "succeeded") +
               ": delegate.run() x" + std::to_string(obs_.runs.load()) + ", delegate.shutdown() x" +
               std::to_string(obs_.shutdowns.load()));
  }
  if (!producers_running && threads_before_ != 0) {
    const std::size_t want = failed_run ? threads_before_ : threads_expected_;
    const std::size_t got = settle_threads(want);
    if (got != want) {
      violation_(
          "after run() " + std::string(failed_run ? "failed" : "succeeded") + " " +
          std::to_string(static_cast<long long>(got) - static_cast<long long>(threads_before_)) +
          " threads, expected " + std::to_string(want - threads_before_));
    }
  }
}

}  // namespace buffered_stress
