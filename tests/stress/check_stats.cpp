#include <string>

#include "checks.hpp"

namespace buffered_stress {
namespace {

void check_counts(const Observed& obs, const buffered::Stats& stats, const IdCounts& counts,
                  Violations& violation) {
  const std::uint64_t abandoned = obs.reported_abandoned.size();
  if (stats.accepted != counts.accepted)
    violation("Stats.accepted " + std::to_string(stats.accepted) +
              " != " + std::to_string(counts.accepted));
  if (stats.delivered != counts.delivered)
    violation("Stats.delivered " + std::to_string(stats.delivered) + " != observed " +
              std::to_string(counts.delivered));
  if (stats.failed != counts.failed)
    violation("Stats.failed " + std::to_string(stats.failed) + " != observed " +
              std::to_string(counts.failed));
  if (stats.abandoned != abandoned)
    violation("Stats.abandoned " + std::to_string(stats.abandoned) + " != reported " +
              std::to_string(abandoned));
  if (stats.rejected_full != obs.reported_full.size()) violation("Stats.rejected_full mismatch");
  if (stats.rejected_shut_down != obs.reported_shut_down.size())
    violation("Stats.rejected_shut_down mismatch");
  if (stats.rejected_too_large != obs.reported_too_large.size())
    violation("Stats.rejected_too_large " + std::to_string(stats.rejected_too_large) +
              " != reported " + std::to_string(obs.reported_too_large.size()));
  if (stats.evicted != obs.reported_evicted.size())
    violation("Stats.evicted " + std::to_string(stats.evicted) + " != reported " +
              std::to_string(obs.reported_evicted.size()));
  if (stats.accepted + stats.rejected_full + stats.rejected_shut_down + stats.rejected_too_large !=
      counts.accepted + counts.refused)
    violation("Stats: accepted + rejected_* != events offered");
}

void check_after_shutdown(const Observed& obs, const buffered::Stats& stats, const Batches& batches,
                          Violations& violation) {
  if (stats.accepted !=
      stats.delivered + stats.failed + stats.abandoned + stats.evicted + stats.pending)
    violation("accounting identity broken");
  if (stats.queued_bytes != 0)
    violation("Stats.queued_bytes " + std::to_string(stats.queued_bytes) + " after shutdown");
  if (stats.batches != obs.calls.size())
    violation("Stats.batches " + std::to_string(stats.batches) + " != delegate calls " +
              std::to_string(obs.calls.size()));
  if (stats.retries != batches.retries)
    violation("Stats.retries " + std::to_string(stats.retries) + " != repeated calls " +
              std::to_string(batches.retries));
  if (stats.queued != 0 || stats.in_flight != 0) violation("work left after shutdown");
}

}  // namespace

void check_lifecycle(const RoundPlan& plan, const Observed& obs, Violations& violation) {
  if (plan.never_run && (obs.runs != 0 || obs.shutdowns != 0))
    violation("a never-run backend called delegate.run() or delegate.shutdown()");
  if (obs.runs != obs.shutdowns) {
    violation("delegate.run() x" + std::to_string(obs.runs.load()) + " but delegate.shutdown() x" +
              std::to_string(obs.shutdowns.load()));
  }
  if (obs.bad_shutdowns != 0) violation("delegate.shutdown() without a delegate.run()");
  if (obs.bad_flushes != 0) violation("delegate.flush() outside delegate.run() .. shutdown()");
}

// Without the destructor's shutdown (its Stats are gone with the backend: then only what was
// observed is checked).
void check_stats(const RoundPlan& plan, const Observed& obs, const buffered::Stats& stats,
                 const IdCounts& counts, const Batches& batches, Violations& violation) {
  if (plan.shutdown_style != 3) {
    check_counts(obs, stats, counts, violation);
    check_after_shutdown(obs, stats, batches, violation);
  }
  if (plan.never_run && !obs.calls.empty()) violation("a never-run backend called its delegate");
}

void check_offer_times(std::uint64_t slow_offers, std::chrono::nanoseconds slowest_reoffer,
                       Violations& violation) {
  if (slow_offers != 0 || slowest_reoffer > kOfferLimit) {
    violation(
        "reoffer: " + std::to_string(slow_offers) + " producer offer(s) took over " +
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kOfferLimit).count()) +
        " s; slowest re-offer from the handler " +
        std::to_string(
            std::chrono::duration_cast<std::chrono::milliseconds>(slowest_reoffer).count()) +
        " ms");
  }
}

}  // namespace buffered_stress
