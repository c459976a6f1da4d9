#include <exception>
#include <utility>

#include "faults.hpp"
#include "sink.hpp"
#include "workloads.hpp"

namespace buffered_stress {
namespace {

// delegate_failed is reported inside the catch of the last attempt's exception, if any: the
// InjectedError's call, -1 for none, -2 for something else.
std::int64_t exception_call() {
  const std::exception_ptr cause = std::current_exception();
  if (!cause) return -1;
  try {
    std::rethrow_exception(cause);
  } catch (const InjectedError& e) {
    return static_cast<std::int64_t>(e.call);
  } catch (const InjectedPermanent& e) {
    return static_cast<std::int64_t>(e.call);
  } catch (...) {
    return -2;
  }
}

}  // namespace

void ReportRecorder::record(buffered::ErrorKind kind, std::span<const Event> events) {
  if (in_fork_child.load()) {
    child_reported.fetch_add(events.size());
    return;
  }
  const HoldFault hold;
  const std::int64_t cause = kind == buffered::ErrorKind::delegate_failed ? exception_call() : -1;
  const std::uint64_t seq = obs_.seq.fetch_add(1);
  {
    std::lock_guard<std::mutex> lock(obs_.mu);
    std::unordered_map<std::uint64_t, int>& into = counts_of(kind);
    const bool on_producer =
        kind == buffered::ErrorKind::evicted || kind == buffered::ErrorKind::too_large;
    if (on_producer && !on_producer_thread) ++obs_.off_producer_reports;
    for (const Event& e : events) {
      ++into[tag_of(e)];
      if (kind == buffered::ErrorKind::evicted) {
        obs_.evicted_order.push_back(tag_of(e));
        obs_.evicted_by[tag_of(e)] = producer_index;
        ++obs_.settled[tag_of(e)];
      }
      // The delegate never moves from events: a failed batch is reported as it was offered.
      if (e.payload != payload_for(e.id)) ++obs_.bad_payloads;
    }
    if (kind == buffered::ErrorKind::delegate_failed) {
      FailedReport report;
      report.seq = seq;
      report.exception_call = cause;
      for (const Event& e : events) {
        report.ids.push_back(tag_of(e));
        ++obs_.settled[tag_of(e)];
      }
      obs_.failed_reports.push_back(std::move(report));
    }
  }
  // With no lock held: it may be called again inside.
  if (reoffers_ != nullptr) reoffers_->offer_again(kind, events);
}

std::unordered_map<std::uint64_t, int>& ReportRecorder::counts_of(buffered::ErrorKind kind) {
  switch (kind) {
    case buffered::ErrorKind::buffer_full:
      return obs_.reported_full;
    case buffered::ErrorKind::shut_down:
      return obs_.reported_shut_down;
    case buffered::ErrorKind::delegate_failed:
      return obs_.reported_failed;
    case buffered::ErrorKind::abandoned:
      break;
    case buffered::ErrorKind::evicted:
      return obs_.reported_evicted;
    case buffered::ErrorKind::too_large:
      return obs_.reported_too_large;
  }
  return obs_.reported_abandoned;
}

}  // namespace buffered_stress
