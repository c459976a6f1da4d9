#include <algorithm>
#include <new>
#include <utility>

#include "workloads.hpp"

namespace buffered_stress {

// One producer thread's state.
struct Producers::Thread {
  std::uint32_t p;
  std::mt19937_64& rng;
  std::uint32_t seq = 0;
  std::size_t flush_checked = 0;  // accepted[p] before this index: settled at a flush
};

Producers::Producers(const RoundPlan& plan, Backend& backend, Ledger& ledger, Observed& obs,
                     Violations& violation, FaultCounters& faults, ExitOffers& exit_offers,
                     SecondBackend& second)
    : plan_(plan),
      backend_(backend),
      ledger_(ledger),
      obs_(obs),
      violation_(violation),
      faults_(faults),
      exit_offers_(exit_offers),
      second_(second) {
  for (const std::uint64_t seed : plan.producer_seeds) rngs_.emplace_back(seed);
}

void Producers::start() {
  for (std::uint32_t p = 0; p < plan_.producers; ++p)
    threads_.emplace_back([this, p] { produce(p); });
}

void Producers::join() {
  for (auto& t : threads_) t.join();  // their thread_local destructors have offered
}

void Producers::produce(std::uint32_t p) {
  on_producer_thread = true;
  producer_index = static_cast<int>(p);
  exit_offers_.thread_starts(p);
  second_.thread_starts(p);
  Thread t{p, rngs_[p]};
  int after_shutdown = 0;
  while (t.seq < plan_.per_producer && after_shutdown < 3) {
    if (stop_.load(std::memory_order_relaxed)) ++after_shutdown;
    const unsigned op = static_cast<unsigned>(t.rng() % (plan_.stall_probe ? 95 : 100));
    const bool inject = plan_.faults.offers && t.rng() % 10 == 0;
    const auto offer_t0 = Clock::now();
    bool go_on = true;  // false: the next call at once, with no draw in between
    if (op < 40) {
      offer_copy(t, inject);
    } else if (op < 70) {
      go_on = offer_moved(t, inject);
    } else if (op < 95) {
      offer_span(t, inject);
    } else {
      go_on = flush(t);
    }
    if (!go_on) continue;
    if (plan_.reoffer_round && op < 95 && Clock::now() - offer_t0 > kOfferLimit)
      slow_offers_.fetch_add(1);
    if (t.rng() % 64 == 0) std::this_thread::yield();
  }
  ledger_.next_seq[p] = t.seq;
  done_.fetch_add(1);
  second_.wait_settled();
}

void Producers::offer_copy(Thread& t, bool inject) {
  const std::uint64_t id = make_id(t.p, t.seq);
  const Event e{id, payload_for(id)};
  bool threw = false, ok = false;
  ThreadFault f(faults_, inject);
  try {
    ok = backend_.process_event(e);
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  const bool fired = f.disarm();
  if (threw) {
    ledger_.not_offered[t.p].push_back(id);
    if (!copy_allocates(id)) violation_("process_event(const&) threw bad_alloc");
  } else {
    ledger_.offered(t.p, id, ok);
    if (fired) violation_("process_event(const&) allocated (failure swallowed)");
  }
  ++t.seq;
}

bool Producers::offer_moved(Thread& t, bool inject) {
  const std::uint64_t id = make_id(t.p, t.seq);
  Event e{id, payload_for(id)};
  bool ok = false;
  ThreadFault f(faults_, inject);
  try {
    ok = backend_.process_event(std::move(e));
  } catch (const std::bad_alloc&) {
    f.disarm();
    violation_("process_event(Event&&) threw bad_alloc");
    ledger_.not_offered[t.p].push_back(id);
    ++t.seq;
    return false;
  }
  if (f.disarm()) violation_("process_event(Event&&) allocated");
  ledger_.offered(t.p, id, ok);
  ++t.seq;
  return true;
}

void Producers::offer_span(Thread& t, bool inject) {
  const std::uint32_t n = std::min<std::uint32_t>(1 + static_cast<std::uint32_t>(t.rng() % 16),
                                                  plan_.per_producer - t.seq);
  std::vector<Event> span;
  for (std::uint32_t k = 0; k < n; ++k)
    span.push_back({make_id(t.p, t.seq + k), payload_for(make_id(t.p, t.seq + k))});
  std::size_t taken = 0;
  bool threw = false;
  ThreadFault f(faults_, inject);
  try {
    taken = backend_.process_events(span);
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  const bool fired = f.disarm();
  if (threw) {
    // The copy of the first event that allocates failed: those before it stay accepted, it and
    // those after it were never offered.
    std::size_t k = 0;
    while (k < n && !copy_allocates(span[k].id)) ++k;
    if (k == n) violation_("process_events threw bad_alloc, no copy allocates");
    ledger_.copy_threw(t.p, span, k);
  } else {
    ledger_.offered(t.p, span, taken);
    if (fired) violation_("process_events allocated (failure swallowed)");
  }
  t.seq += n;
}

bool Producers::flush(Thread& t) {
  const auto timeout = std::chrono::microseconds(t.rng() % 2000);
  ThreadFault f(faults_, plan_.faults.flush && t.rng() % 4 == 0);
  bool flushed = false;
  try {
    flushed = backend_.flush(timeout);
  } catch (...) {
    f.disarm();
    violation_("flush() threw");
    return false;
  }
  if (f.disarm()) violation_("flush() allocated (an injected failure fired in it)");
  if (flushed) {
    // Every event this thread had accepted is delivered, failed or evicted: none waits for a
    // retry, none was abandoned. (Judged after the round: one evicted by another producer's
    // thread gets its own message.)
    std::lock_guard<std::mutex> lock(obs_.mu);
    const std::vector<std::uint64_t>& accepted = ledger_.accepted[t.p];
    for (; t.flush_checked < accepted.size(); ++t.flush_checked) {
      const std::uint64_t id = accepted[t.flush_checked];
      if (times_in(obs_.settled, id) == 0) {
        obs_.unsettled_at_flush.push_back(id);
        break;
      }
    }
  }
  return true;
}

}  // namespace buffered_stress
