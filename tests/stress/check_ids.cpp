#include <optional>
#include <string>

#include "checks.hpp"

namespace buffered_stress {
namespace {

class IdJudge {
 public:
  IdJudge(const RoundPlan& plan, const Observed& obs, const Batches& batches, Violations& violation)
      : plan_(plan), c_(plan.config), obs_(obs), batches_(batches), violation_(violation) {}

  void accepted(std::uint64_t id, IdCounts& counts) {
    const std::optional<End> end = batches_.ended_as(id);
    const int by_delegate = end == End::delivered ? 1 : 0;
    const int evicted = times_in(obs_.reported_evicted, id);
    const int failed = times_in(obs_.reported_failed, id);
    const int abandoned = times_in(obs_.reported_abandoned, id);
    const int times = by_delegate + failed + abandoned + evicted;
    if (times != 1)
      violation_("accepted id " + std::to_string(id) + " ended " + std::to_string(times) +
                 " times (delivered " + std::to_string(by_delegate) + ", reported failed " +
                 std::to_string(failed) + ", abandoned " + std::to_string(abandoned) +
                 ", evicted " + std::to_string(evicted) + ")");
    if (evicted != 0 && batches_.batch_of.count(id) != 0)
      violation_("id " + std::to_string(id) + " was evicted, yet reached the delegate");
    if (refused_kinds(id) != 0)
      violation_("accepted id " + std::to_string(id) + " was reported " + refused_kind(id));
    if (oversized(id)) {
      violation_("accepted id " + std::to_string(id) + " of " + std::to_string(plan_.sizes.of(id)) +
                 " bytes, above a byte bound (" + std::to_string(c_.max_buffer_bytes) + ", " +
                 std::to_string(c_.max_batch_bytes) + ")");
    }
    if ((end == End::failed) != (failed == 1)) {
      violation_("failed id " + std::to_string(id) + " not reported exactly once");
    }
    if (end == End::abandoned && abandoned != 1)
      violation_("id " + std::to_string(id) + " of a batch cut short not reported abandoned");
    if (end == End::delivered) ++counts.delivered;
    if (end == End::failed) ++counts.failed;
  }

  void refused(std::uint64_t id, std::uint64_t head) {
    const int times = refused_kinds(id);
    if (times != 1)
      violation_("refused id " + std::to_string(id) + " reported " + std::to_string(times) +
                 " times");
    if (batches_.batch_of.count(id) != 0 || times_in(obs_.reported_failed, id) +
                                                    times_in(obs_.reported_abandoned, id) +
                                                    times_in(obs_.reported_evicted, id) !=
                                                0) {
      violation_("refused id " + std::to_string(id) + " was also accepted");
    }
    if (times != 1) return;
    const std::string kind = refused_kind(id);
    if (kind != refused_kind(head)) {
      violation_("refused id " + std::to_string(id) + " reported " + kind +
                 ", the first refused id of its span (" + std::to_string(head) + ") " +
                 refused_kind(head));
    }
    if (id == head && kind == "too_large" && !oversized(id)) {
      violation_("id " + std::to_string(id) + " of " + std::to_string(plan_.sizes.of(id)) +
                 " bytes refused too_large, bounds " + std::to_string(c_.max_buffer_bytes) + " / " +
                 std::to_string(c_.max_batch_bytes));
    }
    if (id == head && kind == "buffer_full" && oversized(id)) {
      violation_("id " + std::to_string(id) + " of " + std::to_string(plan_.sizes.of(id)) +
                 " bytes (bounds " + std::to_string(c_.max_buffer_bytes) + " / " +
                 std::to_string(c_.max_batch_bytes) + ") refused buffer_full, not too_large");
    }
    // With one producer thread drop_oldest evicts instead of refusing; but an offer made by
    // the handler while it reports an eviction does not evict (so every offer does bounded
    // work), and may take what an eviction freed for a later one (its budget then ends the
    // offer): with a re-offering handler either may be refused.
    if (c_.overflow == buffered::OverflowPolicy::drop_oldest && plan_.one_thread &&
        !plan_.reoffer_round && kind == "buffer_full") {
      violation_("drop_oldest, one producer: id " + std::to_string(id) + " refused buffer_full");
    }
  }

  void not_offered(std::uint64_t id) {
    const int times = static_cast<int>(batches_.batch_of.count(id)) +
                      times_in(obs_.reported_failed, id) + times_in(obs_.reported_abandoned, id) +
                      times_in(obs_.reported_full, id) + times_in(obs_.reported_shut_down, id) +
                      times_in(obs_.reported_evicted, id) + times_in(obs_.reported_too_large, id);
    if (times != 0)
      violation_("id " + std::to_string(id) + " whose copy threw was seen " +
                 std::to_string(times) + " times");
  }

 private:
  // Larger than a byte bound: refused too_large, whatever the policy.
  bool oversized(std::uint64_t id) const {
    const std::size_t bytes = plan_.sizes.of(id);
    return (c_.max_buffer_bytes != 0 && bytes > c_.max_buffer_bytes) ||
           (c_.max_batch_bytes != 0 && bytes > c_.max_batch_bytes);
  }
  int refused_kinds(std::uint64_t id) const {
    return times_in(obs_.reported_full, id) + times_in(obs_.reported_shut_down, id) +
           times_in(obs_.reported_too_large, id);
  }
  const char* refused_kind(std::uint64_t id) const {
    if (times_in(obs_.reported_full, id) != 0) return "buffer_full";
    if (times_in(obs_.reported_shut_down, id) != 0) return "shut_down";
    if (times_in(obs_.reported_too_large, id) != 0) return "too_large";
    return "nothing";
  }

  const RoundPlan& plan_;
  const buffered::BatchConfig& c_;
  const Observed& obs_;
  const Batches& batches_;
  Violations& violation_;
};

}  // namespace

IdCounts check_ids(const RoundPlan& plan, const Ledger& ledger, const Observed& obs,
                   const Batches& batches, Violations& violation) {
  IdJudge judge(plan, obs, batches, violation);
  IdCounts counts;
  for (std::uint32_t p = 0; p < plan.id_slots; ++p) {
    counts.accepted += ledger.accepted[p].size();
    counts.refused += ledger.refused[p].size();
    counts.not_offered += ledger.not_offered[p].size();
    for (const std::uint64_t id : ledger.accepted[p]) judge.accepted(id, counts);
    for (std::size_t i = 0; i < ledger.refused[p].size(); ++i)
      judge.refused(ledger.refused[p][i], ledger.refused_head[p][i]);
    for (const std::uint64_t id : ledger.not_offered[p]) judge.not_offered(id);
  }
  std::uint64_t reported_failed_total = 0;
  for (const auto& [id, n] : obs.reported_failed)
    reported_failed_total += static_cast<std::uint64_t>(n);
  if (reported_failed_total != counts.failed)
    violation("delegate_failed reports (" + std::to_string(reported_failed_total) +
              " events) do not match failed batches (" + std::to_string(counts.failed) +
              " events)");
  if (obs.bad_payloads != 0)
    violation(std::to_string(obs.bad_payloads) + " events arrived with a wrong payload");
  return counts;
}

void check_evictions(const RoundPlan& plan, const Observed& obs, Violations& violation) {
  // Only drop_oldest evicts; with one producer thread, that thread's oldest events, in order.
  if (plan.config.overflow != buffered::OverflowPolicy::drop_oldest &&
      !obs.reported_evicted.empty())
    violation(std::to_string(obs.reported_evicted.size()) + " events evicted without drop_oldest");
  if (plan.one_thread) {
    // (A re-offer, in the lane after later ids, is evicted out of their order.)
    std::optional<std::uint64_t> previous;
    for (const std::uint64_t id : obs.evicted_order) {
      if (offer_of(id) != 0) continue;
      if (previous && id <= *previous) {
        violation("one producer: evicted id " + std::to_string(id) + " after id " +
                  std::to_string(*previous));
        break;
      }
      previous = id;
    }
  }
  for (const std::uint64_t id : obs.unsettled_at_flush) {
    const auto by = obs.evicted_by.find(id);
    if (by != obs.evicted_by.end() && by->second != static_cast<int>(producer_of(id))) {
      violation("flush() on producer " + std::to_string(producer_of(id)) +
                "'s thread returned true before its accepted id " + std::to_string(id) +
                " was reported evicted (by producer " + std::to_string(by->second) +
                "'s thread, after the flush returned)");
    } else {
      violation("flush() returned true before accepted id " + std::to_string(id) +
                " was delivered, failed or evicted");
    }
  }
  if (obs.off_producer_reports != 0) {
    violation(std::to_string(obs.off_producer_reports) +
              " evicted or too_large reports off the producers' threads");
  }
}

void check_byte_size(const RoundPlan& plan, const ByteSizeCalls& calls, const IdCounts& counts,
                     Violations& violation) {
  const buffered::BatchConfig& c = plan.config;
  const std::uint64_t n = calls.calls.load();
  const std::uint64_t offered = counts.accepted + counts.refused + counts.not_offered;
  const bool bounded = c.max_buffer_bytes != 0 || c.max_batch_bytes != 0;
  if (!bounded && n != 0)
    violation("byte_size called " + std::to_string(n) + " times without a byte bound");
  if (bounded && (n < counts.accepted || n > offered)) {
    violation("byte_size called " + std::to_string(n) + " times for " +
              std::to_string(counts.accepted) + " events accepted, " + std::to_string(offered) +
              " offered");
  }
  if (calls.off_producer.load() != 0) {
    violation("byte_size called " + std::to_string(calls.off_producer.load()) +
              " times off the producers' threads");
  }
}

}  // namespace buffered_stress
