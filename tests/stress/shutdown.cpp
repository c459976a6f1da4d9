#include <string>
#include <thread>

#include "lifecycle.hpp"

namespace buffered_stress {
namespace {

bool same(const buffered::Stats& a, const buffered::Stats& b) {
  return a.accepted == b.accepted && a.delivered == b.delivered && a.failed == b.failed &&
         a.abandoned == b.abandoned && a.evicted == b.evicted && a.pending == b.pending;
}

bool identity_holds(const buffered::Stats& s) {
  return s.accepted == s.delivered + s.failed + s.abandoned + s.evicted + s.pending;
}

}  // namespace

Shutdowns::Shutdowns(const RoundPlan& plan, Backend& backend, Observed& obs, Violations& violation,
                     FaultCounters& faults, FaultDice& dice)
    : plan_(plan),
      backend_(backend),
      obs_(obs),
      violation_(violation),
      faults_(faults),
      dice_(dice) {}

bool Shutdowns::timed(std::chrono::microseconds timeout) {
  std::size_t index = 0;
  {
    const HoldFault hold;
    std::lock_guard<std::mutex> lock(obs_.mu);
    index = obs_.timed_shutdowns.size();
    obs_.timed_shutdowns.push_back({Clock::now(), {}, false, timeout});
  }
  const bool result = backend_.shutdown(timeout);
  const Clock::time_point returned = Clock::now();
  {
    const HoldFault hold;
    std::lock_guard<std::mutex> lock(obs_.mu);
    obs_.timed_shutdowns[index].returned = returned;
    obs_.timed_shutdowns[index].has_returned = true;
  }
  return result;
}

bool Shutdowns::guarded(std::optional<std::chrono::microseconds> timeout) {
  bool result = false;
  ThreadFault f(faults_, plan_.faults.shutdown && dice_.chance(0.5));
  try {
    result = timeout ? timed(*timeout) : backend_.shutdown();
  } catch (...) {
    f.disarm();
    violation_("shutdown() threw");
    return false;
  }
  if (f.disarm()) violation_("shutdown() allocated (an injected failure fired in it)");
  return result;
}

bool Shutdowns::shut_down() {
  switch (plan_.shutdown_style) {
    case 0:
      return guarded(std::nullopt);
    case 1:
      return guarded(plan_.deadline);
    case 2: {
      std::atomic<bool> other_true{false};
      std::thread other([&] { other_true = guarded(plan_.deadline / 2); });
      const bool returned_true = guarded(plan_.deadline);
      other.join();
      return returned_true && other_true;
    }
    default:
      return false;  // the destructor shuts down
  }
}

void Shutdowns::check_shut_down(bool returned_true) {
  check_identity(returned_true);
  check_flush_returns();
}

// After every shutdown() returned: accepted == delivered + failed + abandoned + evicted +
// pending. A delegate call that outlived a deadline may still settle its events meanwhile, and
// the counters are read one by one, so a mismatch counts only if it stays, unchanged, for 50 ms
// (a call that outlives a deadline runs for 250 ms here). After true: nothing is pending.
void Shutdowns::check_identity(bool returned_true) {
  buffered::Stats first = backend_.stats();
  if (returned_true && (first.pending != 0 || first.queued != 0)) {
    violation_("shutdown() returned true with pending " + std::to_string(first.pending) +
               ", queued " + std::to_string(first.queued));
  }
  auto since = Clock::now();
  const auto give_up = since + 5s;
  for (;;) {
    const buffered::Stats s = backend_.stats();
    if (identity_holds(s)) return;
    if (!same(s, first)) first = s, since = Clock::now();
    if (Clock::now() - since >= 50ms || Clock::now() >= give_up) {
      violation_("after shutdown: accepted " + std::to_string(s.accepted) + " != delivered " +
                 std::to_string(s.delivered) + " + failed " + std::to_string(s.failed) +
                 " + abandoned " + std::to_string(s.abandoned) + " + evicted " +
                 std::to_string(s.evicted) + " + pending " + std::to_string(s.pending) +
                 " (queued " + std::to_string(s.queued) + ", in_flight " +
                 std::to_string(s.in_flight) + ")");
      return;
    }
    std::this_thread::sleep_for(200us);
  }
}

// A shut-down backend's flush() returns at once, whatever is still running.
void Shutdowns::check_flush_returns() {
  const auto t0 = Clock::now();
  backend_.flush(3s);
  const auto took = Clock::now() - t0;
  if (took > 100ms) {
    violation_("flush() after shutdown took " +
               std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()) +
               " ms");
  }
}

buffered::Stats Shutdowns::final_stats() {
  guarded(std::nullopt);
  const buffered::Stats stats = backend_.stats();
  if (stats.pending != 0) violation_("Stats.pending != 0 after an unbounded shutdown");
  return stats;
}

void Shutdowns::destroy() {
  ThreadFault f(faults_, plan_.faults.shutdown && dice_.chance(0.5));
  backend_.destroy();  // noexcept: an allocation failure that escaped would terminate
  if (f.disarm()) violation_("the destructor allocated (an injected failure fired in it)");
}

}  // namespace buffered_stress
