#include <algorithm>
#include <functional>
#include <utility>

#include "workloads.hpp"

namespace buffered_stress {
namespace {

// A producer thread's thread_local, constructed before the thread's first offer: it is destroyed
// after the library's own thread_locals of that thread (made at the first offer), and its
// destructor offers more events.
struct AtThreadExit {
  std::function<void()> at_exit;
  ~AtThreadExit() {
    if (!at_exit) return;
    const std::function<void()> f = std::move(at_exit);
    f();
  }
};

AtThreadExit& at_thread_exit() {
  thread_local AtThreadExit offers;
  return offers;
}

}  // namespace

ExitOffers::ExitOffers(const RoundPlan& plan, Backend& backend, Ledger& ledger,
                       SecondBackend& second)
    : plan_(plan), backend_(backend), ledger_(ledger), second_(second) {
  for (const std::uint64_t seed : plan.exit_seeds) rngs_.emplace_back(seed);
}

void ExitOffers::thread_starts(std::uint32_t p) {
  if (plan_.exit_round) at_thread_exit().at_exit = [this, p] { offer_at_exit(p); };
}

// More of the producer's ids (after those of its loop), by each of the three calls, and with
// second_mode 2 more into the second backend.
void ExitOffers::offer_at_exit(std::uint32_t p) {
  auto& erng = rngs_[p];
  std::uint32_t seq = ledger_.next_seq[p];
  const std::uint32_t n = 1 + static_cast<std::uint32_t>(erng() % 12);
  for (std::uint32_t k = 0; k < n;) {
    const unsigned how = static_cast<unsigned>(erng() % 3);
    if (how == 2) {
      const std::uint32_t m = std::min<std::uint32_t>(1 + erng() % 4, n - k);
      offer_span(p, seq, m);
      seq += m;
      k += m;
    } else {
      offer_one(p, seq++, how);
      ++k;
    }
  }
  offered_ += n;
  if (plan_.second_mode == 2) second_.offer(p, 1 + static_cast<std::uint32_t>(erng() % 3));
}

void ExitOffers::offer_span(std::uint32_t p, std::uint32_t seq, std::uint32_t m) {
  std::vector<Event> span;
  for (std::uint32_t i = 0; i < m; ++i)
    span.push_back({make_id(p, seq + i), payload_for(make_id(p, seq + i))});
  const std::size_t taken = backend_.process_events(span);
  ledger_.offered(p, span, taken);
}

// how 0: process_event(const&), 1: process_event(&&).
void ExitOffers::offer_one(std::uint32_t p, std::uint32_t seq, unsigned how) {
  const std::uint64_t id = make_id(p, seq);
  Event e{id, payload_for(id)};
  const bool ok = how == 0 ? backend_.process_event(e) : backend_.process_event(std::move(e));
  ledger_.offered(p, id, ok);
}

}  // namespace buffered_stress
