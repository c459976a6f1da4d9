#include <string>
#include <thread>
#include <vector>

#include "workloads.hpp"

namespace buffered_stress {

Linger::Linger(const RoundPlan& plan, Backend& backend, Ledger& ledger, Violations& violation)
    : plan_(plan), backend_(backend), ledger_(ledger), violation_(violation) {}

// One event queued: its batch lingers for max_batch_wait (seconds); the worker parks with a
// threshold for one lane. Then new threads, a lane each, fill full batches.
void Linger::run() {
  offer_first();
  std::this_thread::sleep_for(20ms);
  const std::uint64_t total = plan_.linger_batches * plan_.config.max_batch_size - 1;
  const std::uint32_t lanes = plan_.linger_lanes;
  std::vector<std::thread> lane_threads;
  for (std::uint32_t i = 0; i < lanes; ++i) {
    const std::uint32_t slot = plan_.linger_slot + 1 + i;
    const std::uint64_t count = total / lanes + (i < total % lanes ? 1 : 0);
    lane_threads.emplace_back([this, slot, count] { fill_lane(slot, count); });
  }
  const auto offered_by = Clock::now() + 10s;
  while (lanes_offered_.load() < lanes && Clock::now() < offered_by)
    std::this_thread::sleep_for(100us);
  wait_dispatched();
  release_ = true;
  for (auto& t : lane_threads) t.join();
}

void Linger::offer_first() {
  on_producer_thread = true;
  producer_index = static_cast<int>(plan_.linger_slot);
  const std::uint64_t first_id = make_id(plan_.linger_slot, 0);
  const bool first_ok = backend_.process_event(Event{first_id, payload_for(first_id)});
  ledger_.offered(plan_.linger_slot, first_id, first_ok);
  on_producer_thread = false;
  producer_index = -1;
}

void Linger::fill_lane(std::uint32_t slot, std::uint64_t count) {
  on_producer_thread = true;
  producer_index = static_cast<int>(slot);
  for (std::uint32_t k = 0; k < count; ++k) {
    const std::uint64_t id = make_id(slot, k);
    const bool ok = backend_.process_event(Event{id, payload_for(id)});
    ledger_.offered(slot, id, ok);
  }
  lanes_offered_.fetch_add(1);
  // Its lane stays registered until the check is done.
  const auto until = Clock::now() + 30s;
  while (!release_.load() && Clock::now() < until) std::this_thread::sleep_for(200us);
}

void Linger::wait_dispatched() {
  const buffered::BatchConfig& c = plan_.config;
  const auto t_full = Clock::now();
  const auto slack = c.max_batch_wait / 2;
  while (backend_.stats().batches < plan_.linger_batches && Clock::now() - t_full < slack)
    std::this_thread::sleep_for(500us);
  const auto waited = Clock::now() - t_full;
  waited_ms_ = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(waited).count());
  const std::uint64_t batches_seen = backend_.stats().batches;
  if (batches_seen < plan_.linger_batches) {
    violation_(
        "linger: " + std::to_string(plan_.linger_batches) + " full batch(es) of " +
        std::to_string(c.max_batch_size) + " events (1 queued, then " +
        std::to_string(plan_.linger_lanes) + " new lanes) still not dispatched " +
        std::to_string(waited_ms_) + " ms after they filled, max_batch_wait " +
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(c.max_batch_wait).count()) +
        " s (" + std::to_string(batches_seen) + " delegate calls)");
  }
}

}  // namespace buffered_stress
