// The stress tool's vocabulary, shared by its parts (tests/stress/*.cpp, one binary): the events
// and their ids, the description of a round as drawn from its seed, what a round offered (Ledger)
// and observed (Observed), how violations are reported, and the run's totals.
#pragma once

#include <buffered/buffered_backend.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace buffered_stress {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Event {
  std::uint64_t id = 0;
  std::string payload;      // heap-allocated when long: sanitizers see every copy, move and free
  std::uint32_t offer = 0;  // 0: offered by a producer; k: its k-th re-offer by the error handler
};

// Every event carries a unique id (producer << 32 | sequence) and a payload derived from it.
inline std::uint64_t make_id(std::uint32_t producer, std::uint32_t seq) {
  return (std::uint64_t{producer} << 32) | seq;
}

// What the bookkeeping counts by: one offer of an id. The id itself for a first offer (so every
// check of a round without re-offers sees the ids), the offer number in bits 48-63 for a re-offer.
inline std::uint64_t tag_of(const Event& e) { return e.id | (std::uint64_t{e.offer} << 48); }
inline std::uint64_t base_id(std::uint64_t tag) { return tag & ((std::uint64_t{1} << 48) - 1); }
inline std::uint32_t producer_of(std::uint64_t tag) {
  return static_cast<std::uint32_t>(tag >> 32 & 0xffff);
}
inline std::uint32_t offer_of(std::uint64_t tag) { return static_cast<std::uint32_t>(tag >> 48); }

inline std::string payload_for(std::uint64_t id) {
  std::string p = std::to_string(id);
  if (id % 3 == 0) p.append(40, 'x');  // beyond the small-string buffer
  return p;
}

// payload_for(id).size(), without making it.
inline std::size_t payload_size(std::uint64_t id) {
  std::size_t digits = 1;
  for (std::uint64_t v = id; v >= 10; v /= 10) ++digits;
  return digits + (id % 3 == 0 ? 40 : 0);
}

// True if copying the event allocates (its payload does not fit the small-string buffer).
inline bool copy_allocates(std::uint64_t id) {
  static const std::size_t small = std::string().capacity();
  return payload_for(id).size() > small;
}

// An event's byte size in a round with byte bounds: what the round's byte_size function returns
// (its payload's length plus 0 .. spread-1, derived from the id), or sizeof(Event) in a round
// without one.
struct ByteSizes {
  bool custom = true;
  std::size_t spread = 1;

  static std::size_t extra(std::uint64_t id, std::size_t spread) {
    std::uint64_t h = id * 0x9e3779b97f4a7c15ull;
    h ^= h >> 29;
    return static_cast<std::size_t>(h % spread);
  }
  // Of an id, or of a tag (a re-offer has its id's size).
  std::size_t of(std::uint64_t tag) const {
    const std::uint64_t id = base_id(tag);
    return custom ? payload_size(id) + extra(id, spread) : sizeof(Event);
  }
};

// The shapes a round may take besides the random config, for the messages that name a round.
enum Shape : unsigned {
  kExitOffers = 1,  // producers own a thread_local whose destructor offers
  kLinger = 2,      // new lanes register while a batch lingers
  kReoffer = 4,     // the error handler re-offers (drop_oldest)
  kFork = 8,        // the process forks while the backend runs
};
std::string shape_names(unsigned shapes);  // " exit_offers linger", or " none"

// Of the round running now, for the messages.
inline std::atomic<std::uint64_t> current_seed{0};
inline std::atomic<unsigned> current_shapes{0};  // Shape bits

// fork() with the library's threads running: not under ThreadSanitizer, which does not support
// it well (a child of a multithreaded process may deadlock in its runtime).
#if defined(__SANITIZE_THREAD__)
constexpr bool kForkSupported = false;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kForkSupported = false;
#else
constexpr bool kForkSupported = true;
#endif
#else
constexpr bool kForkSupported = true;
#endif

// Set in a forked child at once: the delegates and error handlers then only count (another
// thread of the parent may have held a lock of theirs at the fork) and the counts go back to
// the parent through a pipe.
inline std::atomic<bool> in_fork_child{false};
inline std::atomic<std::uint64_t> child_delegate_calls{0}, child_reported{0};

// Set on the tool's producer threads: evicted and too_large are reported on the producer's.
inline thread_local bool on_producer_thread = false;
inline thread_local int producer_index = -1;  // on a producer thread: its index

// An offer (or a re-offer) that takes longer than this did not return in bounded time: with
// drop_oldest or drop_newest nothing waits for space.
constexpr auto kOfferLimit = 2s;

// Where a fault round injects allocation failures.
struct FaultPlan {
  bool construct = false, run = false, offers = false, flush = false, shutdown = false,
       library_threads = false, delegate_run_throws = false;
};

// How a retry round fails its delegate calls.
struct RetryPlan {
  bool long_backoff = false;  // backoffs of ms: a shutdown deadline lands while batches wait
  double fail_rate = 0;       // of calls that fail (besides the fault rounds' failures)
  double permanent_share = 0;
  double after_share = 0;  // of Outcome::retry that carry a retry-after
  std::chrono::microseconds after_max{0};
};

// One round as its seed draws it (round_plan.cpp): everything but what timing decides.
struct RoundPlan {
  std::uint64_t seed = 0;
  buffered::BatchConfig config;
  RetryPlan retry;
  int form = 0;  // which of the six delegate forms (backend.cpp)
  std::uint32_t producers = 0, per_producer = 0;
  bool byte_round = false;
  ByteSizes sizes;                   // against this round's ids
  bool try_invalid_bytes = false;    // first max_batch_bytes > max_buffer_bytes: refused
  std::uint32_t invalid_excess = 0;  // of that max_batch_bytes over max_buffer_bytes
  bool with_byte_size = false;       // without byte bounds: one that must never be called
  bool run_late = false, never_run = false;
  // 0: shutdown(), 1: shutdown(deadline), 2: two callers, 3: the destructor alone.
  int shutdown_style = 0;
  std::chrono::microseconds shutdown_after{0}, deadline{0};
  double fault_rate = 0;         // of delegate calls that fail, are slow or block
  std::int64_t stuck_call = -1;  // this call (by start order) blocks long, if >= 0
  bool fault_round = false;
  FaultPlan faults;
  bool big_batch = false;                // max_batch_size > buffer_size
  bool stall_probe = false;              // a full buffer must go at once despite max_batch_wait
  bool race_run = false;                 // a shutdown from another thread while run() is starting
  std::chrono::microseconds run_nap{0};  // delegate.run() takes this long
  std::chrono::microseconds race_after{0};
  bool race_deadline = false;
  bool reenter_run = false;  // delegate.run() calls flush() and stats() on its own backend
  // The shapes (workloads.hpp).
  bool exit_round = false;
  int second_mode = 0;  // 1: a second backend destroyed before the threads end; 2: alive then
  bool linger_probe = false;
  std::uint32_t linger_batches = 0, linger_lanes = 0;
  bool reoffer_round = false, reoffer_others = false;
  std::uint32_t reoffer_generations = 0;
  bool fork_probe = false, fork_exit = false;
  unsigned shapes = 0;  // Shape bits
  // Bookkeeping slots: the producers, then the linger probe's first event and its threads,
  // then the handler's re-offers.
  std::uint32_t linger_slot = 0, reoffer_slot = 0, id_slots = 0;
  // One thread offers into the backend: drop_oldest then never refuses buffer_full, and evicts
  // that thread's events in order.
  bool one_thread = false;
  std::uint64_t sink_seed = 0;  // the delegate's generator
  std::vector<std::uint64_t> producer_seeds, exit_seeds;
};

// The round that `seed` draws: the same seed, the same round (round_plan.cpp).
RoundPlan draw_round(std::uint64_t seed);

// What a round offered, by bookkeeping slot: the tags accepted, refused and not offered (the
// copy threw). refused_head[s][i]: the first refused tag of the offer that refused
// refused[s][i] (itself for process_event; in a span, every tag from the refused one on shares
// its kind). A slot is written by one thread at a time (the re-offer slot under a lock).
struct Ledger {
  Ledger(std::uint32_t slots, std::uint32_t producers)
      : accepted(slots),
        refused(slots),
        refused_head(slots),
        not_offered(slots),
        next_seq(producers, 0) {}

  void offered(std::uint32_t s, std::uint64_t tag, bool ok) {
    (ok ? accepted : refused)[s].push_back(tag);
    if (!ok) refused_head[s].push_back(tag);
  }
  void offered(std::uint32_t s, std::span<const Event> events, std::size_t taken) {
    for (std::size_t k = 0; k < events.size(); ++k) {
      (k < taken ? accepted : refused)[s].push_back(tag_of(events[k]));
      if (k >= taken) refused_head[s].push_back(tag_of(events[taken]));
    }
  }
  // The copy of events[copied] threw: those before it stay accepted, the rest were not offered.
  void copy_threw(std::uint32_t s, std::span<const Event> events, std::size_t copied) {
    for (std::size_t i = 0; i < events.size(); ++i)
      (i < copied ? accepted : not_offered)[s].push_back(tag_of(events[i]));
  }

  std::vector<std::vector<std::uint64_t>> accepted, refused, refused_head, not_offered;
  std::vector<std::uint32_t> next_seq;  // a producer's next seq, once it is done
};

// How a delegate call ended, as the library must read it.
enum class Verdict { delivered, retryable, permanent };

// BatchContext::deadline() as read at `before` .. `after`.
struct DeadlineRead {
  Clock::time_point before, after, deadline;
};

// One delegate call.
struct Call {
  std::vector<std::uint64_t> ids;
  Verdict verdict = Verdict::delivered;
  bool thrown = false;
  std::chrono::nanoseconds after{0};  // Outcome::retry(after)
  std::size_t attempt = 0;            // BatchContext::attempt(); 0 without a context
  std::uint64_t start_seq = 0;        // of Observed::seq
  Clock::time_point start, end;       // end: just before it returned or threw
  bool ended = false;
  bool past_deadline = false;  // it ended after a shutdown deadline it could see had passed
  std::vector<DeadlineRead> reads;
};

// A delegate_failed report.
struct FailedReport {
  std::vector<std::uint64_t> ids;
  std::uint64_t seq = 0;
  std::int64_t exception_call = -1;  // the InjectedError's call; -1: none; -2: something else
};

// A shutdown(timeout) call: started at t0, returned at `returned` (if it did).
struct TimedShutdown {
  Clock::time_point t0, returned;
  bool has_returned = false;
  std::chrono::nanoseconds timeout{0};
};

// What one round observed, filled by the delegate and the error handler.
struct Observed {
  std::mutex mu;
  std::vector<Call> calls;  // in call-start order
  std::atomic<std::uint64_t> seq{0};
  std::unordered_map<std::uint64_t, int> reported_full, reported_shut_down, reported_failed,
      reported_abandoned, reported_evicted, reported_too_large;
  std::vector<std::uint64_t> evicted_order;           // the evicted ids, as reported
  std::unordered_map<std::uint64_t, int> evicted_by;  // id -> the producer that reported it
  std::vector<std::uint64_t> unsettled_at_flush;      // ids not settled when a flush returned true
  std::uint64_t off_producer_reports = 0;  // evicted or too_large off the producers' threads
  // Delivered (call returned), reported failed, or evicted.
  std::unordered_map<std::uint64_t, int> settled;
  std::vector<FailedReport> failed_reports;
  std::vector<TimedShutdown> timed_shutdowns;
  std::uint64_t faults = 0;
  std::uint64_t bad_payloads = 0;
  // Delegate lifecycle: run() calls that returned, shutdown() calls, flush() calls outside them.
  std::atomic<std::uint64_t> runs{0}, shutdowns{0}, bad_flushes{0}, bad_shutdowns{0};
};

inline int times_in(const std::unordered_map<std::uint64_t, int>& seen, std::uint64_t id) {
  const auto it = seen.find(id);
  return it == seen.end() ? 0 : it->second;
}

// A round's violations: each counted, the first five printed with the round's seed and shapes.
// Thread-safe.
class Violations {
 public:
  explicit Violations(std::uint64_t seed) : seed_(seed) {}
  Violations(const Violations&) = delete;
  Violations& operator=(const Violations&) = delete;

  void operator()(const std::string& what);
  std::uint64_t count() const { return count_; }  // once the round's threads are joined

 private:
  std::mutex mu_;
  std::uint64_t count_ = 0;  // guarded by mu_
  const std::uint64_t seed_;
};

struct Totals {
  std::uint64_t rounds = 0, offered = 0, delivered = 0, failed = 0, abandoned = 0, refused = 0;
  std::uint64_t faults = 0, violations = 0;
  std::uint64_t fault_rounds = 0, alloc_armed = 0, alloc_failed = 0, not_offered = 0;
  std::uint64_t big_batch_rounds = 0;
  std::uint64_t retry_rounds = 0, context_rounds = 0, retries = 0, retry_abandoned = 0,
                permanent = 0, retry_delivered = 0;
  std::uint64_t byte_rounds = 0, drop_oldest_rounds = 0, evicted = 0, too_large = 0;
  std::uint64_t exit_rounds = 0, exit_offers = 0, second_backends = 0, linger_rounds = 0,
                reoffer_rounds = 0, reoffered = 0, fork_rounds = 0;
};

// ---- the run (main.cpp) ----

// Draws the round from `seed`, runs and checks it, adds to `totals`; returns its violations.
std::uint64_t run_round(std::uint64_t seed, bool verbose, Totals& totals);  // round.cpp

// A terminate, or a sanitizer report that ends the run, names the round (reporting.cpp).
void name_the_round_at_death();

// A round that does not finish in time means a call hung: the run ends, naming the round.
class Watchdog {
 public:
  explicit Watchdog(std::uint64_t seed);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void round_starts(std::uint64_t seed);

 private:
  std::atomic<std::int64_t> round_started_;
  std::atomic<bool> finished_{false};
  std::thread thread_;
};

// The run's one summary line, on stdout.
void print_summary(std::uint64_t seed, double seconds, const Totals& totals);

}  // namespace buffered_stress
