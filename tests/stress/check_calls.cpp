#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "checks.hpp"

namespace buffered_stress {
namespace {

// Order: per producer across first attempts where promised (where, too, the worker takes no
// further batch while one waits to retry), and inside every call. Size: a batch holds at most
// min(max_batch_size, buffer_size) events.
class CallJudge {
 public:
  CallJudge(const RoundPlan& plan, Violations& violation)
      : plan_(plan),
        c_(plan.config),
        violation_(violation),
        ordered_(!c_.async_delegate || c_.max_in_flight == 1),
        batch_limit_(std::min(c_.max_batch_size, c_.buffer_size)),
        last_(plan.id_slots, -1) {}

  void judge(const Call& call) {
    if (call.ids.empty()) return;
    const bool first_attempt = attempts_seen_[call.ids.front()]++ == 0;
    if (ordered_) {
      if (current_batch_ && *current_batch_ != call.ids.front() && !first_attempt) {
        violation_("batch starting with id " + std::to_string(call.ids.front()) +
                   " attempted again after another batch was taken");
      }
      current_batch_ = call.ids.front();
    }
    check_order(call, first_attempt);
    check_size(call);
  }

 private:
  void check_order(const Call& call, bool first_attempt) {
    std::vector<std::int64_t> in_call(plan_.id_slots, -1);
    for (const std::uint64_t id : call.ids) {
      // A re-offer is a new offer, by whichever thread reported it: in no producer's order.
      if (offer_of(id) != 0) continue;
      const auto p = producer_of(id);
      const auto seq = static_cast<std::int64_t>(id & 0xffffffffu);
      if (seq <= in_call[p]) violation_("order broken inside a batch");
      in_call[p] = seq;
      if (ordered_ && first_attempt) {
        if (seq <= last_[p])
          violation_("order broken across batches for producer " + std::to_string(p));
        last_[p] = seq;
      }
    }
  }

  void check_size(const Call& call) {
    if (call.ids.size() > batch_limit_) {
      violation_("a batch of " + std::to_string(call.ids.size()) + " events, limit " +
                 std::to_string(batch_limit_));
    }
    if (c_.max_batch_bytes != 0) {
      std::size_t bytes = 0;
      for (const std::uint64_t id : call.ids) bytes += plan_.sizes.of(id);
      if (bytes > c_.max_batch_bytes) {
        violation_("a batch of " + std::to_string(call.ids.size()) + " events and " +
                   std::to_string(bytes) + " bytes, max_batch_bytes " +
                   std::to_string(c_.max_batch_bytes));
      }
    }
  }

  const RoundPlan& plan_;
  const buffered::BatchConfig& c_;
  Violations& violation_;
  const bool ordered_;
  const std::size_t batch_limit_;
  std::vector<std::int64_t> last_;
  std::unordered_map<std::uint64_t, int> attempts_seen_;
  std::optional<std::uint64_t> current_batch_;
};

// A batch keeps its place while it waits to retry: from its first attempt's start to its last
// attempt's end it holds the worker (sync) or a dispatch slot (async), so no more than that many
// batches are under way at once.
void check_slots(const buffered::BatchConfig& c, const Observed& obs, const Batches& batches,
                 Violations& violation) {
  const std::size_t slots = c.async_delegate ? c.max_in_flight : 1;
  std::vector<std::pair<Clock::time_point, int>> edges;
  for (const std::uint64_t key : batches.order) {
    const std::vector<std::size_t>& attempts = batches.attempts.at(key);
    edges.emplace_back(obs.calls[attempts.front()].start, +1);
    edges.emplace_back(obs.calls[attempts.back()].end, -1);
  }
  std::sort(edges.begin(), edges.end());  // at equal times an end (-1) comes first
  std::size_t under_way = 0, most = 0;
  for (const auto& edge : edges) {
    under_way = edge.second > 0 ? under_way + 1 : under_way - 1;
    most = std::max(most, under_way);
  }
  if (most > slots) {
    violation(std::to_string(most) + " batches under way at once (first attempt to last), " +
              std::to_string(slots) + (c.async_delegate ? " dispatch slots" : " worker"));
  }
}

// One throttle token per attempt. In sync mode call k's token was taken after call k-1 ended
// and before call k started: tokens taken in [end(i), start(j)] for calls i+1..j are at most
// burst + qps * (start(j) - end(i)) (plus one for rounding).
void check_throttle(const buffered::BatchConfig& c, const Observed& obs, Violations& violation) {
  const double qps = c.throttle->qps;
  const double burst = static_cast<double>(c.throttle->burst);
  for (std::size_t i = 0; i < obs.calls.size(); ++i) {
    for (std::size_t j = i + 1; j < obs.calls.size(); ++j) {
      const double span =
          std::chrono::duration<double>(obs.calls[j].start - obs.calls[i].end).count();
      const double allowed = burst + qps * std::max(0.0, span) + 1;
      if (static_cast<double>(j - i) > allowed) {
        violation("throttle: " + std::to_string(j - i) + " delegate calls within " +
                  std::to_string(span * 1e6) + " us, qps " + std::to_string(qps) + " burst " +
                  std::to_string(c.throttle->burst));
        return;
      }
      if (j - i > 4 * c.throttle->burst + 64) break;  // far enough: cheap
    }
  }
}

}  // namespace

void check_calls(const RoundPlan& plan, const Observed& obs, const Batches& batches,
                 Violations& violation) {
  CallJudge judge(plan, violation);
  for (const Call& call : obs.calls) judge.judge(call);
  check_slots(plan.config, obs, batches, violation);
  if (plan.config.throttle && !plan.config.async_delegate)
    check_throttle(plan.config, obs, violation);
}

}  // namespace buffered_stress
