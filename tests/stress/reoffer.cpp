#include <algorithm>
#include <utility>
#include <vector>

#include "workloads.hpp"

namespace buffered_stress {
namespace {

// How deep the error handler's re-offers nest on this thread (a re-offer that evicts reports
// on this thread, and the handler may re-offer again).
thread_local int reoffer_depth = 0;

}  // namespace

Reoffers::Reoffers(const RoundPlan& plan, Backend& backend, Ledger& ledger)
    : plan_(plan), backend_(backend), ledger_(ledger) {}

// Copies of the reported events, each one offer further (a new offer of the same id, counted by
// its tag in the re-offer slot), on the reporting thread, nested at most four deep on it. Into
// the backend also while its destructor shuts it down (the object is alive until that returns).
void Reoffers::offer_again(buffered::ErrorKind kind, std::span<const Event> events) {
  if (kind != buffered::ErrorKind::evicted && !plan_.reoffer_others) return;
  if (reoffer_depth >= 4) return;
  std::vector<Event> again;
  for (const Event& e : events) {
    if (e.offer < plan_.reoffer_generations) again.push_back({e.id, e.payload, e.offer + 1});
  }
  if (again.empty()) return;
  ++reoffer_depth;
  // This thread offers now: evicted and too_large are reported here, byte_size called here.
  const bool was_producer = on_producer_thread;
  on_producer_thread = true;
  const auto t0 = Clock::now();
  std::size_t taken = 0;
  if (again.size() == 1 && again.front().id % 2 == 0) {
    Event copy = again.front();  // left intact if refused
    taken = backend_.process_event(std::move(copy)) ? 1 : 0;
  } else {
    taken = backend_.process_events(again);
  }
  const auto took = Clock::now() - t0;
  on_producer_thread = was_producer;
  --reoffer_depth;
  std::lock_guard<std::mutex> lock(mu_);
  reoffered_ += again.size();
  slowest_ = std::max<std::chrono::nanoseconds>(slowest_, took);
  ledger_.offered(plan_.reoffer_slot, again, taken);
}

std::uint64_t Reoffers::reoffered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reoffered_;
}

std::chrono::nanoseconds Reoffers::slowest() const {
  std::lock_guard<std::mutex> lock(mu_);
  return slowest_;
}

}  // namespace buffered_stress
