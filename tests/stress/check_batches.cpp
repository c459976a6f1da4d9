#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "checks.hpp"

namespace buffered_stress {
namespace {

class BatchJudge {
 public:
  BatchJudge(const RoundPlan& plan, const Observed& obs, bool with_context, Violations& violation)
      : config_(plan.config),
        obs_(obs),
        with_context_(with_context),
        violation_(violation),
        max_attempts_(plan.config.retry ? plan.config.retry->max_attempts : 1) {}

  Batches judge() {
    group();
    index_reports();
    for (const std::uint64_t key : b_.order) judge_batch(key);
    for (const auto& [key, report] : report_of_) {
      if (b_.attempts.find(key) == b_.attempts.end())
        violation_("a delegate_failed report for events no delegate call had");
    }
    return std::move(b_);
  }

 private:
  void group() {
    for (std::size_t i = 0; i < obs_.calls.size(); ++i) {
      const Call& call = obs_.calls[i];
      if (call.ids.empty()) {
        violation_("an empty batch reached the delegate");
        continue;
      }
      if (!call.ended) violation_("a delegate call had not returned after the shutdown");
      auto& attempts = b_.attempts[call.ids.front()];
      if (attempts.empty()) b_.order.push_back(call.ids.front());
      attempts.push_back(i);
    }
  }

  void index_reports() {
    for (const FailedReport& report : obs_.failed_reports) {
      if (report.ids.empty()) continue;
      if (!report_of_.emplace(report.ids.front(), &report).second)
        violation_("two delegate_failed reports start with id " +
                   std::to_string(report.ids.front()));
    }
  }

  void judge_batch(std::uint64_t key) {
    const std::vector<std::size_t>& attempts = b_.attempts[key];
    const Call& first = obs_.calls[attempts.front()];
    const std::string which = "batch starting with id " + std::to_string(key) + " (" +
                              std::to_string(attempts.size()) + " attempts)";
    b_.retries += attempts.size() - 1;
    for (const std::uint64_t id : first.ids) {
      if (!b_.batch_of.emplace(id, key).second)
        violation_("id " + std::to_string(id) + " reached the delegate in two batches");
    }
    if (attempts.size() > max_attempts_) {
      violation_(which + ": more than max_attempts " + std::to_string(max_attempts_));
    }
    for (std::size_t k = 0; k < attempts.size(); ++k) {
      if (!check_attempt(which, attempts, k)) break;
    }
    const End end = end_of(which, attempts);
    b_.end[key] = end;
    check_report(which, key, end, attempts);
  }

  // Attempt k; false if it is the last.
  bool check_attempt(const std::string& which, const std::vector<std::size_t>& attempts,
                     std::size_t k) {
    const Call& first = obs_.calls[attempts.front()];
    const Call& call = obs_.calls[attempts[k]];
    if (call.ids != first.ids) {
      violation_(which + ": attempt " + std::to_string(k + 1) + " saw other events than the first");
    }
    if (with_context_ && call.attempt != k + 1) {
      violation_(which + ": BatchContext::attempt() " + std::to_string(call.attempt) +
                 " on attempt " + std::to_string(k + 1));
    }
    if (k + 1 == attempts.size()) return false;
    // Another attempt follows this one.
    if (call.verdict != Verdict::retryable) {
      violation_(which + ": attempt " + std::to_string(k + 1) + " was " +
                 (call.verdict == Verdict::delivered ? "delivered" : "a permanent failure") +
                 ", yet the batch was attempted again");
    }
    if (call.past_deadline || past_a_deadline_at(call.end)) {
      violation_(which + ": attempted again after attempt " + std::to_string(k + 1) +
                 " ended past the shutdown deadline");
    }
    check_gap(which, call, obs_.calls[attempts[k + 1]], k);
    return true;
  }

  // Not before the backoff (less its jitter), or the retry-after.
  void check_gap(const std::string& which, const Call& call, const Call& next, std::size_t k) {
    double floor_ns = 0;
    if (call.after > std::chrono::nanoseconds::zero()) {
      floor_ns = static_cast<double>(call.after.count());
    } else if (config_.retry) {
      const buffered::Retry& r = *config_.retry;
      floor_ns = std::min(static_cast<double>(r.max_backoff.count()),
                          static_cast<double>(r.initial_backoff.count()) *
                              std::pow(r.multiplier, static_cast<double>(k))) *
                 (1.0 - r.jitter);
    }
    const double gap_ns =
        static_cast<double>(std::chrono::nanoseconds(next.start - call.end).count());
    if (gap_ns < floor_ns * (1 - 1e-9) - 2) {
      violation_(which + ": attempt " + std::to_string(k + 2) + " began " +
                 std::to_string(gap_ns / 1000) + " us after attempt " + std::to_string(k + 1) +
                 " ended, the " +
                 (call.after > std::chrono::nanoseconds::zero() ? "retry-after" : "backoff") +
                 " is at least " + std::to_string(floor_ns / 1000) + " us");
    }
  }

  End end_of(const std::string& which, const std::vector<std::size_t>& attempts) {
    const Call& last = obs_.calls[attempts.back()];
    if (last.verdict == Verdict::delivered) {
      if (attempts.size() > 1) ++b_.retry_delivered;
      return End::delivered;
    }
    if (last.verdict == Verdict::permanent || attempts.size() >= max_attempts_) {
      if (last.verdict == Verdict::permanent) ++b_.permanent;
      return End::failed;
    }
    // A retryable failure short of max_attempts: only a shutdown deadline ends it.
    ++b_.retry_abandoned;
    if (obs_.timed_shutdowns.empty()) {
      violation_(which +
                 ": its retryable failure was neither retried nor failed, and no "
                 "shutdown deadline was given");
    }
    return End::abandoned;
  }

  void check_report(const std::string& which, std::uint64_t key, End end,
                    const std::vector<std::size_t>& attempts) {
    const auto report = report_of_.find(key);
    if (end != End::failed) {
      if (report != report_of_.end()) {
        violation_(which + ": reported delegate_failed, yet it ended " +
                   (end == End::delivered ? "delivered" : "waiting for a retry"));
      }
      return;
    }
    if (report == report_of_.end()) {
      violation_(which + ": failed for good, never reported delegate_failed as a whole");
      return;
    }
    const Call& first = obs_.calls[attempts.front()];
    const Call& last = obs_.calls[attempts.back()];
    const FailedReport& r = *report->second;
    if (r.ids != first.ids) violation_(which + ": its delegate_failed report differs");
    if (r.seq < last.start_seq)
      violation_(which + ": reported delegate_failed before its last attempt");
    const std::int64_t want =
        last.thrown ? static_cast<std::int64_t>(attempts.back()) : std::int64_t{-1};
    if (r.exception_call != want) {
      violation_(which + ": reported delegate_failed with std::current_exception() " +
                 (r.exception_call == -1   ? std::string("null")
                  : r.exception_call == -2 ? std::string("of another type")
                                           : "of call " + std::to_string(r.exception_call)) +
                 ", its last attempt " +
                 (last.thrown ? "threw (call " + std::to_string(attempts.back()) + ")"
                              : std::string("returned a failure")));
    }
  }

  // A shutdown(timeout) that had returned gave a deadline at most returned + timeout.
  bool past_a_deadline_at(Clock::time_point when) const {
    for (const TimedShutdown& t : obs_.timed_shutdowns) {
      if (t.has_returned && when >= t.returned + t.timeout) return true;
    }
    return false;
  }

  const buffered::BatchConfig& config_;
  const Observed& obs_;
  const bool with_context_;
  Violations& violation_;
  const std::size_t max_attempts_;
  Batches b_;
  std::unordered_map<std::uint64_t, const FailedReport*> report_of_;  // first id -> report
};

// The earliest deadline a shutdown(timeout) gave is at least t0 + timeout, and once that call
// has returned, at most returned + timeout.
void check_deadline_reads(const Observed& obs, Violations& violation) {
  std::optional<Clock::time_point> first_shutdown_start, earliest_given;
  for (const TimedShutdown& t : obs.timed_shutdowns) {
    const auto given = t.t0 + t.timeout;
    if (!earliest_given || given < *earliest_given) earliest_given = given;
    if (!first_shutdown_start || t.t0 < *first_shutdown_start) first_shutdown_start = t.t0;
  }
  for (const Call& call : obs.calls) {
    for (const DeadlineRead& read : call.reads) {
      const bool none = read.deadline == Clock::time_point::max();
      if (!first_shutdown_start || read.after < *first_shutdown_start) {
        if (!none) violation("BatchContext::deadline() was set before any shutdown(timeout)");
        continue;
      }
      if (!none && earliest_given && read.deadline < *earliest_given)
        violation("BatchContext::deadline() earlier than any deadline given");
      for (const TimedShutdown& t : obs.timed_shutdowns) {
        if (t.has_returned && read.before > t.returned && read.deadline > t.returned + t.timeout) {
          violation("BatchContext::deadline() later than the deadline of a shutdown(" +
                    std::to_string(t.timeout.count()) + " ns) that had returned" +
                    (none ? " (still max())" : ""));
          break;
        }
      }
    }
  }
}

}  // namespace

Batches check_batches(const RoundPlan& plan, const Observed& obs, bool with_context,
                      Violations& violation) {
  Batches batches = BatchJudge(plan, obs, with_context, violation).judge();
  if (with_context) check_deadline_reads(obs, violation);
  return batches;
}

}  // namespace buffered_stress
