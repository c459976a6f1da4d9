// buffered_stress: random rounds of producers, faults and shutdowns, each checked for
// exactly-once delivery, order, accounting and reporting.
//
//   buffered_stress [--seconds S] [--seed N] [--verbose]
//
// Every event carries a unique id (producer << 32 | sequence) and a payload derived from it.
// About one round in five injects allocation failures into the library (a replaced global
// operator new, tests/fault): while constructing (every allocation in turn, then retried), in
// run() (likewise, or the first allocation when producers already run; then run() again), in
// the copy an offer makes (a long payload's copy throws: the event is then not offered, counted
// nowhere), in flush(), shutdown() and the destructor (which must neither throw nor allocate),
// and on the library's own threads after a delegate call (which must never allocate). About one
// round in five has max_batch_size above buffer_size (up to SIZE_MAX): a batch holds at most
// buffer_size events and a full buffer must go at once, not wait for max_batch_wait. Some rounds
// race a shutdown from another thread against a slow delegate.run(), or have delegate.run() call
// flush() and stats() on its own backend.
// Retry: about half the rounds configure BatchConfig::retry (backoffs of microseconds to a few
// ms; in some rounds long enough, with a deadline shutdown, that the deadline lands while batches
// wait to retry). The delegate takes one of six forms (member or callable; void, bool or Outcome
// result; with or without a BatchContext) and fails with every outcome its form can express: a
// retryable exception, `false`, Outcome::retry() (sometimes with a retry-after), permanent_error,
// Outcome::permanent_failure().
// Byte bounds and drop_oldest: the overflow policy is drop_newest, block or drop_oldest, a third
// each. About three rounds in ten set BatchConfig::max_buffer_bytes and/or max_batch_bytes, tiny
// (some events alone are too large), binding long before buffer_size or max_batch_size, or loose,
// and give events variable byte sizes (the payload's length plus a spread derived from the id, so
// the checker can recompute them; in some rounds no byte_size function: sizeof(Event)); a few of
// them first try max_batch_bytes > max_buffer_bytes, which the constructor must refuse, naming
// max_batch_bytes.
// Four more shapes, drawn from a generator of their own (so a seed's other draws stay as they
// were); the watchdog and every violation name the round's shapes with its seed:
//   - exit_offers: every producer thread owns a thread_local, made before its first offer, whose
//     destructor (run after the library's thread_locals of that thread are gone) offers 1-12 more
//     of the thread's ids by all three calls; with a second backend the thread first offers into
//     it too, and that backend is destroyed before the thread ends, or alive then and offered
//     into by the destructor as well (its ids are checked delivered or reported exactly once);
//   - linger: max_batch_wait of 2-4 s, one event queued, then 2-6 NEW threads, a lane each, fill
//     one or two full batches between them: those must reach the delegate within half of
//     max_batch_wait, else a violation;
//   - reoffer: drop_oldest, and the error handler re-offers the evicted events (with
//     reoffer_others every kind), each up to 1-3 times, nested at most four deep. A re-offer is a
//     new offer of the same id: the bookkeeping counts by tag (id | offer << 48), so each offer
//     ends exactly once; the order checks leave re-offers out. No offer may take over 2 s;
//   - fork (not under TSan, which does not support fork with threads well): while producers
//     offer, the process forks; the child destroys the inherited backend(s) at once and exits
//     (exit(0) or _exit(0)); the parent kills it after 10 s (a violation), checks its exit status
//     and that it made no delegate call (counted back through a pipe), then goes on with the
//     round, which must still be exactly-once.
// After each round the run checks that
//   - every accepted id ended exactly once: in a batch whose last attempt delivered it, or
//     reported delegate_failed, abandoned or evicted (an evicted id never reached the delegate;
//     only drop_oldest evicts, reporting on the producer's thread); no accepted id is larger than
//     a byte bound; every refused id was reported exactly once, with the right kind: too_large
//     exactly for an id larger than a byte bound (or a refused span's ids from such an id on;
//     such an id may be refused shut_down instead, never buffer_full), and an id whose offer
//     threw was neither;
//   - with drop_oldest and one producer thread: nothing is refused buffer_full (a full buffer
//     evicts instead), and the evictions follow the thread's order;
//   - a delegate call's byte sizes sum to at most max_batch_bytes; Stats::queued_bytes, sampled
//     while the round runs, is at most max_buffer_bytes (and 0 without a byte bound);
//   - each batch's attempts saw the same events in the same order; only a retryable failure is
//     followed by another attempt, at most max_attempts in all (one without retry), never one
//     after an attempt that ended past a shutdown deadline, and not before the backoff floor
//     (initial_backoff * multiplier^k capped at max_backoff, less jitter) or the retry-after;
//     a batch failed for good is reported once, as a whole, after its last attempt started and
//     inside the catch of its exception (none for a returned failure); a retryable failure short
//     of max_attempts ends abandoned, only when a shutdown deadline was given;
//   - with a BatchContext: attempt() is 1, 2, 3... per batch, and deadline() is max() before any
//     shutdown(timeout), never earlier than the earliest deadline given and never later than one
//     given by a shutdown(timeout) that had returned;
//   - the delegate saw each producer's ids in increasing order across first attempts where the
//     contract promises it (sync, or async with max_in_flight == 1), and there it took no further
//     batch while one waited to retry; inside every batch otherwise;
//   - flush() returned true only once every event its thread had accepted before was delivered,
//     failed or evicted (it waits for retries);
//   - Stats agree with what was observed (batches counts every attempt, retries the repeats,
//     evicted and rejected_too_large the reports), and accepted == delivered + failed +
//     abandoned + evicted + pending after every shutdown (pending == 0 after an unbounded one,
//     and after one that returned true), queued_bytes == 0 after the last; flush() on a
//     shut-down backend returns at once;
//   - a failed run() is undone (no threads left, delegate.shutdown() matches delegate.run()), a
//     later run() makes exactly the worker and max_in_flight dispatch threads, delegate.flush()
//     never runs outside delegate.run() .. delegate.shutdown();
//   - no call hung: a watchdog ends the run, printing the seed, if a round stalls; a terminate
//     prints the seed too.
// Prints one summary line; exits non-zero on any violation.
#include <dirent.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <buffered/buffered_backend.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "../delegate_forms.hpp"
#include "../fault/fault_injection.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#include <sanitizer/common_interface_defs.h>
#define BUFFERED_STRESS_SANITIZER 1
#endif

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using buffered_test::Ending;
using buffered_test::Form;
using buffered_test::Result;
namespace fault = buffered_test::fault;

struct Event {
  std::uint64_t id = 0;
  std::string payload;      // heap-allocated when long: sanitizers see every copy, move and free
  std::uint32_t offer = 0;  // 0: offered by a producer; k: its k-th re-offer by the error handler
};

// What the bookkeeping counts by: one offer of an id. The id itself for a first offer (so every
// check of a round without re-offers sees the ids), the offer number in bits 48-63 for a re-offer.
std::uint64_t tag_of(const Event& e) { return e.id | (std::uint64_t{e.offer} << 48); }
std::uint64_t base_id(std::uint64_t tag) { return tag & ((std::uint64_t{1} << 48) - 1); }
std::uint32_t producer_of(std::uint64_t tag) {
  return static_cast<std::uint32_t>(tag >> 32 & 0xffff);
}
std::uint32_t offer_of(std::uint64_t tag) { return static_cast<std::uint32_t>(tag >> 48); }

std::string payload_for(std::uint64_t id) {
  std::string p = std::to_string(id);
  if (id % 3 == 0) p.append(40, 'x');  // beyond the small-string buffer
  return p;
}

// payload_for(id).size(), without making it.
std::size_t payload_size(std::uint64_t id) {
  std::size_t digits = 1;
  for (std::uint64_t v = id; v >= 10; v /= 10) ++digits;
  return digits + (id % 3 == 0 ? 40 : 0);
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

// True if copying the event allocates (its payload does not fit the small-string buffer).
bool copy_allocates(std::uint64_t id) {
  static const std::size_t small = std::string().capacity();
  return payload_for(id).size() > small;
}

std::uint64_t make_id(std::uint32_t producer, std::uint32_t seq) {
  return (std::uint64_t{producer} << 32) | seq;
}

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

std::atomic<std::uint64_t> current_seed{0};  // of the round running now, for the messages
std::atomic<unsigned> current_shapes{0};     // of the round running now: Shape bits

// The shapes a round may take besides the random config, for the watchdog's message.
enum Shape : unsigned {
  kExitOffers = 1,  // producers own a thread_local whose destructor offers
  kLinger = 2,      // new lanes register while a batch lingers
  kReoffer = 4,     // the error handler re-offers (drop_oldest)
  kFork = 8,        // the process forks while the backend runs
};
std::string shape_names(unsigned shapes) {
  std::string names;
  if (shapes & kExitOffers) names += " exit_offers";
  if (shapes & kLinger) names += " linger";
  if (shapes & kReoffer) names += " reoffer";
  if (shapes & kFork) names += " fork";
  return names.empty() ? " none" : names;
}

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
std::atomic<bool> in_fork_child{false};
std::atomic<std::uint64_t> child_delegate_calls{0}, child_reported{0};

// A producer thread's thread_local, constructed before the thread's first offer: it is destroyed
// after the library's own thread_locals of that thread (made at the first offer), and its
// destructor offers more events.
struct ExitOffers {
  std::function<void()> at_exit;
  ~ExitOffers() {
    if (!at_exit) return;
    const std::function<void()> f = std::move(at_exit);
    f();
  }
};
ExitOffers& exit_offers() {
  thread_local ExitOffers offers;
  return offers;
}

// How deep the error handler's re-offers nest on this thread (a re-offer that evicts reports
// on this thread, and the handler may re-offer again).
thread_local int reoffer_depth = 0;

// Set on the tool's producer threads: evicted and too_large are reported on the producer's.
thread_local bool on_producer_thread = false;
thread_local int producer_index = -1;  // on a producer thread: its index

// ---- allocation faults ----

// Allocation failures that fired on the library's own threads after a delegate call (where the
// library must not allocate). Global: a thread may outlive its round's bookkeeping.
std::atomic<std::uint64_t> library_thread_faults_fired{0};

// A failure armed on a library thread (the worker or a dispatch thread) by the delegate, after
// its call: settled when the tool next runs on that thread, or when the thread ends.
struct LibraryThreadFault {
  bool armed = false;
  void arm() {
    armed = true;
    fault::fail_next_allocation_on_this_thread();
  }
  void settle() {
    if (!armed) return;
    armed = false;
    if (!fault::cancel_next_allocation_failure_on_this_thread()) {
      library_thread_faults_fired.fetch_add(1);
    }
  }
  ~LibraryThreadFault() { settle(); }
};
thread_local LibraryThreadFault library_thread_fault;

// The tool's own bookkeeping in the delegate and the error handler must not take a failure meant
// for the library: this holds back a failure armed on this thread and re-arms it afterwards.
class HoldFault {
 public:
  HoldFault() : held_(fault::cancel_next_allocation_failure_on_this_thread()) {}
  ~HoldFault() {
    if (held_) fault::fail_next_allocation_on_this_thread();
  }
  HoldFault(const HoldFault&) = delete;
  HoldFault& operator=(const HoldFault&) = delete;

 private:
  const bool held_;
};

// Threads in this process now (Linux); 0 if unknown.
std::size_t count_threads() {
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return 0;
  std::size_t n = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n;
}

// The thread count once threads joined earlier have left /proc: two reads 1 ms apart agree.
std::size_t stable_thread_count() {
  std::size_t n = count_threads();
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(1ms);
    const std::size_t m = count_threads();
    if (m == n) break;
    n = m;
  }
  return n;
}

// Waits up to two seconds for the thread count to become `want` (a joined thread may linger
// briefly in /proc); returns the last count seen.
std::size_t settle_threads(std::size_t want) {
  const auto until = Clock::now() + 2s;
  std::size_t n = count_threads();
  while (n != want && Clock::now() < until) {
    std::this_thread::sleep_for(1ms);
    n = count_threads();
  }
  return n;
}

// The thread count between rounds (the main thread, the watchdog, a sanitizer's own): a round
// starts with it once the threads joined by earlier rounds have left /proc, which on a loaded
// machine can take longer than two reads 1 ms apart see (then a round would count a leaving
// thread as present, and a new one as missing). Learned again if it stops holding.
std::size_t threads_at_rest() {
  static std::size_t baseline = 0;
  if (baseline != 0 && settle_threads(baseline) == baseline) return baseline;
  baseline = stable_thread_count();
  return baseline;
}

// ---- one round ----

// The second backend of an exit_offers round: its own ids (producer kSecondProducer + p), a plain
// sink and error handler that count what they see per id.
constexpr std::uint32_t kSecondProducer = 0x1000;
struct SecondLedger {
  std::mutex mu;
  std::unordered_map<std::uint64_t, int> delivered, reported, accepted;  // guarded by mu
  std::vector<std::uint64_t> refused;                                    // guarded by mu
};
struct SecondSink {
  SecondLedger* ledger;
  void operator()(std::span<Event> batch) const {
    if (in_fork_child.load()) {
      child_delegate_calls.fetch_add(1);
      return;
    }
    std::lock_guard<std::mutex> lock(ledger->mu);
    for (const Event& e : batch) ++ledger->delivered[e.id];
  }
};

// An offer (or a re-offer) that takes longer than this did not return in bounded time: with
// drop_oldest or drop_newest nothing waits for space.
constexpr auto kOfferLimit = 2s;
// A forked child must have exited this long after the fork.
constexpr auto kForkChildLimit = 10s;

// How a delegate call ended, as the library must read it.
enum class Verdict { delivered, retryable, permanent };

// Thrown by the delegate, naming the call (its index in Observed::calls): the error handler
// checks that it is called inside the catch of the batch's last exception.
struct InjectedError : std::runtime_error {
  std::size_t call;
  explicit InjectedError(std::size_t c) : std::runtime_error("injected"), call(c) {}
};
struct InjectedPermanent : buffered::permanent_error {
  std::size_t call;
  explicit InjectedPermanent(std::size_t c) : buffered::permanent_error("permanent"), call(c) {}
};

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

int times_in(const std::unordered_map<std::uint64_t, int>& seen, std::uint64_t id) {
  const auto it = seen.find(id);
  return it == seen.end() ? 0 : it->second;
}

enum class Fault { none, fails, slow, blocks, stuck };

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

// Everything the delegate needs, shared with the round.
struct RoundShared {
  Observed obs;
  std::mt19937_64 rng;
  std::mutex rng_mu;
  double fault_rate = 0;
  RetryPlan retry_plan;
  bool retry = false;            // BatchConfig::retry is set
  std::int64_t stuck_call = -1;  // this call (by start order) blocks long, if >= 0
  std::uint64_t calls_started = 0;
  FaultPlan plan;
  std::chrono::microseconds run_nap{0};  // delegate.run() takes this long
  std::function<void()> in_run;          // called from delegate.run(): re-enters the backend
};

// The delegate: checks its lifecycle and records every call. handle() is the work; Sink<F>
// gives it the form F.
class SinkBase {
 public:
  explicit SinkBase(RoundShared& shared) : sh(shared) {}

  void run() {
    if (in_fork_child.load()) return;
    const HoldFault hold;
    if (sh.plan.delegate_run_throws) {
      std::lock_guard<std::mutex> lock(sh.rng_mu);
      if (sh.rng() % 2 == 0) throw std::runtime_error("delegate.run() fails");
    }
    if (sh.in_run) sh.in_run();
    if (sh.run_nap.count() > 0) std::this_thread::sleep_for(sh.run_nap);
    sh.obs.runs.fetch_add(1);
  }

  void shutdown() {
    if (in_fork_child.load()) return;
    const HoldFault hold;
    if (sh.obs.shutdowns.fetch_add(1) + 1 > sh.obs.runs.load()) sh.obs.bad_shutdowns.fetch_add(1);
  }

  void flush() {
    if (in_fork_child.load()) return;
    const HoldFault hold;
    if (sh.obs.runs.load() <= sh.obs.shutdowns.load()) sh.obs.bad_flushes.fetch_add(1);
  }

 protected:
  Ending handle(std::span<Event> batch, const buffered::BatchContext* context, Result form) {
    if (in_fork_child.load()) {
      child_delegate_calls.fetch_add(1);  // a forked child must deliver nothing
      return {Ending::How::delivered};
    }
    library_thread_fault.settle();
    const HoldFault hold;
    DeadlineRead first_read{};
    if (context != nullptr) {
      first_read.before = Clock::now();
      first_read.deadline = context->deadline();
      first_read.after = Clock::now();
    }
    const Clock::time_point start = Clock::now();
    Fault fault = Fault::none;
    std::chrono::microseconds nap{0};
    bool arm_after = false;
    Verdict verdict = Verdict::delivered;
    bool thrown = false;
    std::chrono::nanoseconds after{0};
    {
      std::lock_guard<std::mutex> lock(sh.rng_mu);
      std::uniform_real_distribution<double> u(0, 1);
      const double r = u(sh.rng);
      if (static_cast<std::int64_t>(sh.calls_started++) == sh.stuck_call) {
        fault = Fault::stuck, nap = 250ms;
        // With retry, a stuck call that fails ends past the deadline: never attempted again.
        if (sh.retry && u(sh.rng) < 0.5) verdict = Verdict::retryable;
      } else if (r < sh.fault_rate * 0.6) {
        fault = Fault::fails;
      } else if (r < sh.fault_rate * 0.9) {
        fault = Fault::slow, nap = std::chrono::microseconds(sh.rng() % 500);
      } else if (r < sh.fault_rate) {
        fault = Fault::blocks, nap = std::chrono::microseconds(2000 + sh.rng() % 18000);
      } else if (u(sh.rng) < sh.retry_plan.fail_rate) {
        fault = Fault::fails;
      }
      if (fault == Fault::fails) {
        verdict =
            u(sh.rng) < sh.retry_plan.permanent_share ? Verdict::permanent : Verdict::retryable;
      }
      if (verdict != Verdict::delivered) {
        // Throw, or return what the form can say (void can only throw).
        thrown = form == Result::none || sh.rng() % 2 == 0;
        if (!thrown && verdict == Verdict::retryable && form == Result::outcome &&
            u(sh.rng) < sh.retry_plan.after_share) {
          after = std::chrono::microseconds(
              1 + sh.rng() % static_cast<std::uint64_t>(sh.retry_plan.after_max.count() + 1));
        }
        // bool cannot say "permanent": it throws permanent_error.
        if (verdict == Verdict::permanent && form == Result::boolean) thrown = true;
      }
      arm_after = sh.plan.library_threads && u(sh.rng) < 0.3;
    }
    std::vector<std::uint64_t> ids;
    ids.reserve(batch.size());
    std::uint64_t bad = 0;
    for (const Event& e : batch) {
      ids.push_back(tag_of(e));
      if (e.payload != payload_for(e.id)) ++bad;
    }
    std::size_t index = 0;
    {
      std::lock_guard<std::mutex> lock(sh.obs.mu);
      index = sh.obs.calls.size();
      Call call;
      call.ids = std::move(ids);
      call.verdict = verdict;
      call.thrown = thrown;
      call.after = after;
      call.attempt = context != nullptr ? context->attempt() : 0;
      call.start_seq = sh.obs.seq.fetch_add(1);
      call.start = start;
      if (context != nullptr) call.reads.push_back(first_read);
      sh.obs.calls.push_back(std::move(call));
      sh.obs.bad_payloads += bad;
      if (fault != Fault::none) ++sh.obs.faults;
    }
    if (nap.count() > 0) std::this_thread::sleep_for(nap);
    {
      DeadlineRead last_read{};
      if (context != nullptr) {
        last_read.before = Clock::now();
        last_read.deadline = context->deadline();
        last_read.after = Clock::now();
      }
      const Clock::time_point end = Clock::now();
      std::lock_guard<std::mutex> lock(sh.obs.mu);
      Call& call = sh.obs.calls[index];
      call.end = end;
      call.ended = true;
      if (context != nullptr) {
        call.reads.push_back(last_read);
        // Read before `end`: the library, checking after the return, sees it has passed.
        if (last_read.deadline != Clock::time_point::max() && end >= last_read.deadline)
          call.past_deadline = true;
      }
      if (verdict == Verdict::delivered) {
        for (const Event& e : batch) ++sh.obs.settled[tag_of(e)];
      }
    }
    // The library must not allocate on this thread after the call: the next allocation fails.
    if (thrown) {
      // Made before the arming: it allocates.
      if (verdict == Verdict::permanent) {
        const InjectedPermanent error(index);
        if (arm_after) library_thread_fault.arm();
        throw error;
      }
      const InjectedError error(index);
      if (arm_after) library_thread_fault.arm();
      throw error;
    }
    if (arm_after) library_thread_fault.arm();
    if (verdict == Verdict::delivered) return {Ending::How::delivered};
    if (verdict == Verdict::permanent) return {Ending::How::returns_permanent};
    if (form == Result::boolean) return {Ending::How::returns_false};
    return {Ending::How::returns_retry, after};
  }

  RoundShared& sh;
};

template <class F>
using Sink = buffered_test::FormSink<F, SinkBase, Event>;

class Round {
 public:
  Round(std::uint64_t seed, bool verbose)
      : rng_(seed),
        fault_rng_(seed ^ 0x9e3779b97f4a7c15ull),
        shape_rng_(seed ^ 0x5851f42d4c957f2dull),
        seed_(seed),
        verbose_(verbose) {}

  // Runs one round; returns the number of violations found.
  std::uint64_t run(Totals& totals) {
    buffered::BatchConfig c = random_config();
    const RetryPlan retry_plan = random_retry(c);
    switch (pick(0, 5)) {
      case 0:
        return run_as<Sink<Form<Result::boolean, false, false>>>(totals, c, retry_plan);
      case 1:
        return run_as<Sink<Form<Result::outcome, true, false>>>(totals, c, retry_plan);
      case 2:
        return run_as<Sink<Form<Result::none, false, true>>>(totals, c, retry_plan);
      case 3:
        return run_as<Sink<Form<Result::outcome, false, true>>>(totals, c, retry_plan);
      case 4:
        return run_as<Sink<Form<Result::boolean, true, true>>>(totals, c, retry_plan);
      default:
        return run_as<Sink<Form<Result::none, true, false>>>(totals, c, retry_plan);
    }
  }

 private:
  template <class SinkType>
  std::uint64_t run_as(Totals& totals, buffered::BatchConfig c, const RetryPlan& retry_plan) {
    const bool with_context = SinkType::form::context;
    const std::uint32_t producers = pick(1, 4);
    const std::uint32_t per_producer = pick(50, 3000);
    // Byte bounds (and event sizes) against this round's ids.
    ByteSizes sizes;
    const bool byte_round = chance(0.3);
    bool try_invalid_bytes = false;
    if (byte_round) try_invalid_bytes = random_byte_bounds(c, sizes, producers, per_producer);
    const bool run_late = chance(0.1);
    const bool never_run = chance(0.03);
    // 0: shutdown(), 1: shutdown(deadline), 2: two callers, 3: the destructor alone (after the
    // producers finish, so not for a backend that never runs: its blocked producers would wait
    // for a shutdown that only comes after them).
    // Long backoffs: a deadline shutdown, so that it lands while batches wait to retry (and an
    // unbounded drain would take long).
    const int shutdown_style = retry_plan.long_backoff
                                   ? static_cast<int>(pick(1, 2))
                                   : static_cast<int>(pick(0, never_run ? 2 : 3));
    const auto shutdown_after = std::chrono::microseconds(pick(0, 30000));
    const auto deadline = std::chrono::microseconds(pick(0, 20000));
    RoundShared sh;
    sh.fault_rate = chance(0.5) ? 0.0 : 0.1;
    sh.retry_plan = retry_plan;
    sh.retry = c.retry.has_value();
    // One delegate call outlives any shutdown deadline: pending, and flush() after shutdown.
    if (shutdown_style == 1 || shutdown_style == 2) {
      if (chance(0.05)) sh.stuck_call = pick(0, 8);
    }
    const bool fault_round = chance(0.2);
    FaultPlan& plan = sh.plan;
    if (fault_round) {
      plan.construct = chance(0.5);
      plan.run = chance(0.5);
      plan.offers = chance(0.6);
      plan.flush = chance(0.5);
      plan.shutdown = chance(0.5);
      plan.library_threads = chance(0.5);
      plan.delegate_run_throws = chance(0.2);
    }
    const bool big_batch = c.max_batch_size > c.buffer_size;
    // A full buffer is a full batch: with a long max_batch_wait, blocked producers must still
    // move at full speed. Probed before the shutdown (producers do not flush in this round).
    // (Not with a buffer bound by bytes: a buffer full by bytes need not be a full batch.)
    const bool stall_probe = big_batch && !run_late && !never_run && !c.throttle &&
                             c.max_buffer_bytes == 0 && retry_plan.fail_rate == 0 &&
                             c.overflow == buffered::OverflowPolicy::block &&
                             c.block_timeout == std::chrono::nanoseconds::max() && chance(0.5);
    if (stall_probe) c.max_batch_wait = 5s;
    // A shutdown from another thread while run() is starting (delegate.run() takes a while).
    const bool race_run = run_late && !never_run && chance(0.3);
    if (race_run) sh.run_nap = std::chrono::microseconds(pick(0, 3000));
    const auto race_after = std::chrono::microseconds(pick(0, 4000));
    const bool race_deadline = retry_plan.long_backoff || chance(0.5);
    // delegate.run() calls flush() and stats() on its own backend: neither may wait for run().
    const bool reenter_run = chance(0.2);

    // ---- the shapes (their own generator: the rest of the round is drawn as without them) ----
    // Offers from thread_local destructors: every producer thread owns one, made before its first
    // offer, whose destructor offers more (after the library's thread_locals of that thread are
    // gone). second_mode: 1 the thread also offered into a second backend, destroyed before the
    // thread ends; 2 one still alive then, which the destructor offers into too.
    const bool exit_round = !fault_round && shape_chance(0.15);
    const int second_mode = exit_round ? static_cast<int>(shape_pick(0, 2)) : 0;
    // Lanes registering during a linger: one event queued with a max_batch_wait of seconds, then
    // new threads, each in a lane of its own, fill full batches between them: those must go at
    // once.
    const bool linger_probe = !run_late && !never_run && !stall_probe && !big_batch &&
                              !byte_round && !c.throttle && !retry_plan.long_backoff &&
                              !fault_round && shape_chance(0.1);
    const std::uint32_t linger_batches = shape_pick(1, 2);
    const std::uint32_t linger_lanes = shape_pick(2 * linger_batches, 6);
    if (linger_probe) {
      c.max_batch_size = shape_pick(8, 64);
      c.buffer_size = std::max<std::size_t>(c.buffer_size, 4 * c.max_batch_size + 16);
      c.max_batch_wait = std::chrono::seconds(shape_pick(2, 4));
    }
    // Handlers that re-offer under drop_oldest: evicted events (reported on the producer's
    // thread, inside its offer), and with reoffer_others every other kind too (delegate_failed
    // and abandoned on the library's threads or a shutdown's caller), each event up to
    // reoffer_generations times.
    const bool reoffer_round = !fault_round && !stall_probe && shape_chance(0.15);
    const bool reoffer_others = reoffer_round && shape_chance(0.5);
    const std::uint32_t reoffer_generations = shape_pick(1, 3);
    if (reoffer_round) c.overflow = buffered::OverflowPolicy::drop_oldest;
    // A fork while the backend runs: the child destroys the inherited backend(s) at once and
    // exits (exit(0) or _exit(0)); it must exit in time and deliver nothing.
    const bool fork_probe = kForkSupported && !run_late && !never_run && shape_chance(0.08);
    const bool fork_exit = shape_chance(0.5);
    current_shapes = (exit_round ? kExitOffers : 0u) | (linger_probe ? kLinger : 0u) |
                     (reoffer_round ? kReoffer : 0u) | (fork_probe ? kFork : 0u);
    // Bookkeeping slots: the producers, then the linger probe's first event and its threads,
    // then the handler's re-offers.
    const std::uint32_t linger_slot = producers;
    const std::uint32_t reoffer_slot = producers + 1 + linger_lanes;
    const std::uint32_t id_slots = reoffer_slot + 1;
    // One thread offers into the backend: drop_oldest then never refuses buffer_full, and evicts
    // that thread's events in order.
    const bool one_thread = producers == 1 && !linger_probe && !reoffer_others;

    sh.rng.seed(rng_());
    std::vector<std::mt19937_64> producer_rngs;
    for (std::uint32_t p = 0; p < producers; ++p) producer_rngs.emplace_back(rng_());
    std::vector<std::mt19937_64> exit_rngs;  // what the thread_local destructors offer
    for (std::uint32_t p = 0; p < producers; ++p) exit_rngs.emplace_back(shape_rng_());
    Observed& obs = sh.obs;
    SinkType sink{SinkBase(sh)};

    std::uint64_t v = 0;
    std::mutex violation_mu;
    auto violation = [&](const std::string& what) {
      std::lock_guard<std::mutex> lock(violation_mu);
      ++v;
      if (v <= 5)
        std::fprintf(stderr, "VIOLATION seed=%" PRIu64 " (shapes:%s): %s\n", seed_,
                     shape_names(current_shapes.load()).c_str(), what.c_str());
    };
    std::atomic<std::uint64_t> alloc_armed{0}, alloc_failed{0};
    const std::uint64_t library_fired_before = library_thread_faults_fired.load();

    // A reoffer round's re-offers, called by the error handler after it has recorded the report.
    std::function<void(buffered::ErrorKind, std::span<const Event>)> reoffer;
    auto on_error = [&obs, &reoffer](buffered::ErrorKind kind, std::span<const Event> events) {
      if (in_fork_child.load()) {
        child_reported.fetch_add(events.size());
        return;
      }
      const HoldFault hold;
      // delegate_failed is reported inside the catch of the last attempt's exception, if any.
      std::int64_t exception_call = -1;
      if (kind == buffered::ErrorKind::delegate_failed) {
        if (const std::exception_ptr cause = std::current_exception()) {
          try {
            std::rethrow_exception(cause);
          } catch (const InjectedError& e) {
            exception_call = static_cast<std::int64_t>(e.call);
          } catch (const InjectedPermanent& e) {
            exception_call = static_cast<std::int64_t>(e.call);
          } catch (...) {
            exception_call = -2;
          }
        }
      }
      const std::uint64_t seq = obs.seq.fetch_add(1);
      {
        std::lock_guard<std::mutex> lock(obs.mu);
        std::unordered_map<std::uint64_t, int>* into = &obs.reported_abandoned;
        switch (kind) {
          case buffered::ErrorKind::buffer_full:
            into = &obs.reported_full;
            break;
          case buffered::ErrorKind::shut_down:
            into = &obs.reported_shut_down;
            break;
          case buffered::ErrorKind::delegate_failed:
            into = &obs.reported_failed;
            break;
          case buffered::ErrorKind::abandoned:
            break;
          case buffered::ErrorKind::evicted:
            into = &obs.reported_evicted;
            break;
          case buffered::ErrorKind::too_large:
            into = &obs.reported_too_large;
            break;
        }
        const bool on_producer =
            kind == buffered::ErrorKind::evicted || kind == buffered::ErrorKind::too_large;
        if (on_producer && !on_producer_thread) ++obs.off_producer_reports;
        for (const Event& e : events) {
          ++(*into)[tag_of(e)];
          if (kind == buffered::ErrorKind::evicted) {
            obs.evicted_order.push_back(tag_of(e));
            obs.evicted_by[tag_of(e)] = producer_index;
            ++obs.settled[tag_of(e)];
          }
          // The delegate never moves from events: a failed batch is reported as it was offered.
          if (e.payload != payload_for(e.id)) ++obs.bad_payloads;
        }
        if (kind == buffered::ErrorKind::delegate_failed) {
          FailedReport report;
          report.seq = seq;
          report.exception_call = exception_call;
          for (const Event& e : events) {
            report.ids.push_back(tag_of(e));
            ++obs.settled[tag_of(e)];
          }
          obs.failed_reports.push_back(std::move(report));
        }
      }
      if (reoffer) reoffer(kind, events);  // with no lock held: it may be called again inside
    };

    // Arms a one-shot failure of this thread's next allocation, if `on`; disarm() says whether
    // it fired. Call disarm() right after the library call, before the tool allocates.
    struct ThreadFault {
      std::atomic<std::uint64_t>& armed_count;
      std::atomic<std::uint64_t>& failed_count;
      bool on;
      ThreadFault(std::atomic<std::uint64_t>& a, std::atomic<std::uint64_t>& f, bool enable)
          : armed_count(a), failed_count(f), on(enable) {
        if (on) fault::fail_next_allocation_on_this_thread();
      }
      bool disarm() {
        if (!on) return false;
        on = false;
        const bool fired = !fault::cancel_next_allocation_failure_on_this_thread();
        armed_count.fetch_add(1);
        if (fired) failed_count.fetch_add(1);
        return fired;
      }
      ~ThreadFault() { disarm(); }
    };

    // refused_head[p][i]: the first refused id of the offer that refused refused[p][i] (itself
    // for process_event; in a span, every id from the refused one on shares its kind).
    std::vector<std::vector<std::uint64_t>> accepted(id_slots), refused(id_slots),
        refused_head(id_slots), not_offered(id_slots);
    std::vector<std::uint32_t> next_seq(producers, 0);  // a producer's next seq, once it is done
    buffered::Stats stats{};
    using Backend = buffered::BufferedBackend<Event, SinkType&>;
    std::optional<Backend> backend;

    // The byte_size function: in a byte round without sizes.custom none (sizeof(Event)); in a
    // round without byte bounds sometimes one anyway, which must then never be called.
    std::atomic<std::uint64_t> byte_size_calls{0}, byte_size_off_producer{0};
    struct SizeCounters {
      std::atomic<std::uint64_t>* calls;
      std::atomic<std::uint64_t>* off_producer;
    };
    typename Backend::byte_size_function byte_size;
    if (byte_round ? sizes.custom : chance(0.5)) {
      byte_size = [counters = SizeCounters{&byte_size_calls, &byte_size_off_producer},
                   spread = sizes.spread](const Event& e) {
        counters.calls->fetch_add(1, std::memory_order_relaxed);
        if (!on_producer_thread) counters.off_producer->fetch_add(1, std::memory_order_relaxed);
        return e.payload.size() + ByteSizes::extra(e.id, spread);
      };
    }
    // max_batch_bytes > max_buffer_bytes: refused, naming the field.
    if (try_invalid_bytes) {
      buffered::BatchConfig bad = c;
      bad.max_batch_bytes = c.max_buffer_bytes + pick(1, 1000);
      try {
        Backend refused_backend(sink, bad, on_error, byte_size);
        violation("max_batch_bytes " + std::to_string(bad.max_batch_bytes) +
                  " > max_buffer_bytes " + std::to_string(bad.max_buffer_bytes) + " was accepted");
      } catch (const std::invalid_argument& e) {
        if (std::string(e.what()).find("max_batch_bytes") == std::string::npos)
          violation(std::string("invalid max_batch_bytes refused with: ") + e.what());
      }
      if (!obs.calls.empty() || obs.runs != 0) violation("a refused config called the sink");
    }

    // Construction: with faults, every allocation in turn fails (sometimes all from it on) and
    // the constructor is tried again, until it succeeds.
    for (std::uint64_t nth = 1;; ++nth) {
      const bool inject = plan.construct;
      if (inject) {
        fault::fail_allocation(nth,
                               fault_chance(0.25) ? fault::Mode::from_then_on : fault::Mode::once);
      }
      bool threw = false;
      try {
        backend.emplace(sink, c, on_error, byte_size);
      } catch (const std::bad_alloc&) {
        threw = true;
      } catch (const std::exception& e) {
        fault::disarm_allocations();
        violation(std::string("the constructor threw: ") + e.what());
        return finish(totals, v, 0, 0, 0);
      }
      if (inject) {
        fault::disarm_allocations();
        const std::uint64_t failed = fault::failed_allocations();
        alloc_armed += 1;
        alloc_failed += failed;
        if (!threw && failed != 0) violation("an allocation failed, yet construction succeeded");
      }
      if (threw && (!inject || backend.has_value())) violation("bad_alloc without a fault");
      if (!threw) break;
      if (!obs.calls.empty() || obs.runs != 0) violation("a failed constructor called the sink");
      if (nth > 1000) {
        violation("the constructor still fails after 1000 tries");
        return finish(totals, v, 0, 0, 0);
      }
    }

    // The re-offers: copies of the reported events, each one offer further (a new offer of the
    // same id, counted by its tag in the re-offer slot), on the reporting thread, nested at most
    // four deep on it. Into the backend also while its destructor shuts it down (the object is
    // alive until that returns).
    Backend* const target = &*backend;
    std::mutex reoffer_mu;
    std::uint64_t reoffered = 0;                // guarded by reoffer_mu
    std::chrono::nanoseconds slowest_offer{0};  // guarded by reoffer_mu: with re-offers
    if (reoffer_round) {
      reoffer = [&, target](buffered::ErrorKind kind, std::span<const Event> events) {
        if (kind != buffered::ErrorKind::evicted && !reoffer_others) return;
        if (reoffer_depth >= 4) return;
        std::vector<Event> again;
        for (const Event& e : events) {
          if (e.offer < reoffer_generations) again.push_back({e.id, e.payload, e.offer + 1});
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
          taken = target->process_event(std::move(copy)) ? 1 : 0;
        } else {
          taken = target->process_events(again);
        }
        const auto took = Clock::now() - t0;
        on_producer_thread = was_producer;
        --reoffer_depth;
        std::lock_guard<std::mutex> lock(reoffer_mu);
        reoffered += again.size();
        slowest_offer = std::max<std::chrono::nanoseconds>(slowest_offer, took);
        for (std::size_t k = 0; k < again.size(); ++k) {
          (k < taken ? accepted : refused)[reoffer_slot].push_back(tag_of(again[k]));
          if (k >= taken) refused_head[reoffer_slot].push_back(tag_of(again[taken]));
        }
      };
    }

    // The second backend of an exit_offers round: runs at once, takes each producer's first few
    // events (so the thread holds a lane of it) and, with second_mode 2, more from the
    // thread_local destructors.
    SecondLedger second_ledger;
    using SecondBackend = buffered::BufferedBackend<Event, SecondSink>;
    std::optional<SecondBackend> second;
    std::atomic<std::uint32_t> second_offered{0};
    std::atomic<bool> second_settled{second_mode == 0};
    if (second_mode != 0) {
      buffered::BatchConfig sc;
      sc.buffer_size = 256;
      sc.max_batch_size = 16;
      sc.max_batch_wait = 200us;
      second.emplace(SecondSink{&second_ledger}, sc,
                     [&second_ledger](buffered::ErrorKind, std::span<const Event> events) {
                       if (in_fork_child.load()) {
                         child_reported.fetch_add(events.size());
                         return;
                       }
                       std::lock_guard<std::mutex> lock(second_ledger.mu);
                       for (const Event& e : events) ++second_ledger.reported[e.id];
                     });
      second->run();
    }
    auto offer_second = [&](std::uint32_t p, std::uint32_t& seq, std::uint32_t n) {
      for (std::uint32_t k = 0; k < n; ++k) {
        const std::uint64_t id = make_id(kSecondProducer + p, seq++);
        const bool ok = second->process_event(Event{id, payload_for(id)});
        std::lock_guard<std::mutex> lock(second_ledger.mu);
        if (ok) {
          ++second_ledger.accepted[id];
        } else {
          second_ledger.refused.push_back(id);
        }
      }
    };
    // After the second backend is gone: each accepted id delivered or reported once, each refused
    // one reported once.
    auto check_second = [&] {
      std::lock_guard<std::mutex> lock(second_ledger.mu);
      for (const auto& [id, n] : second_ledger.accepted) {
        const int times =
            times_in(second_ledger.delivered, id) + times_in(second_ledger.reported, id);
        if (n != 1 || times != 1)
          violation("second backend: accepted id " + std::to_string(id) + " ended " +
                    std::to_string(times) + " times");
      }
      for (const std::uint64_t id : second_ledger.refused) {
        if (times_in(second_ledger.reported, id) != 1 || times_in(second_ledger.delivered, id) != 0)
          violation("second backend: refused id " + std::to_string(id) + " not reported once");
      }
      for (const auto& [id, n] : second_ledger.delivered) {
        if (second_ledger.accepted.count(id) == 0)
          violation("second backend: delivered id " + std::to_string(id) + " never accepted");
      }
    };

    // run(): retried after a failure, which must leave nothing running.
    const std::size_t threads_before = run_late || never_run ? 0 : threads_at_rest();
    const std::size_t threads_expected =
        threads_before + 1 + (c.async_delegate ? c.max_in_flight : 0);
    if (reenter_run) {
      sh.in_run = [&backend] {
        backend->flush(1ms);
        (void)backend->stats();
      };
    }
    auto start = [&](bool producers_running, bool racing) {
      for (std::uint64_t nth = 1;; ++nth) {
        // With producers running only this thread's next allocation may fail; otherwise any
        // allocation anywhere (the library's threads included).
        const bool inject = plan.run;
        const bool global = inject && !producers_running;
        if (global) {
          fault::fail_allocation(
              nth, fault_chance(0.25) ? fault::Mode::from_then_on : fault::Mode::once);
        }
        ThreadFault local(alloc_armed, alloc_failed, inject && !global && nth == 1);
        bool failed_run = false, unexpected = false, shut_first = false;
        try {
          backend->run();
        } catch (const std::logic_error&) {
          failed_run = shut_first = true;  // the racing shutdown came first
        } catch (const std::bad_alloc&) {
          failed_run = true;
        } catch (const std::system_error&) {
          failed_run = true;  // no thread: not injected here, but allowed
        } catch (const std::runtime_error&) {
          failed_run = true;  // delegate.run() failed
        } catch (...) {
          failed_run = unexpected = true;  // nothing may allocate here: reported below
        }
        local.disarm();
        if (global) {
          fault::disarm_allocations();
          const std::uint64_t failed = fault::failed_allocations();
          alloc_armed += 1;
          alloc_failed += failed;
          if (!failed_run && failed != 0) {
            violation("an allocation failed during run() (nth " + std::to_string(nth) +
                      "), yet run() succeeded: a library thread allocated?");
          }
        }
        if (unexpected) violation("run() threw something other than bad_alloc or a failure");
        if (shut_first) {
          if (!racing) violation("run() threw logic_error with no shutdown");
          return;
        }
        // (With a racing shutdown the worker may already have shut the delegate down.)
        if (!racing && obs.runs != obs.shutdowns + (failed_run ? 0 : 1)) {
          violation("after run() " + std::string(failed_run ? "failed" : "succeeded") +
                    ": delegate.run() x" + std::to_string(obs.runs.load()) +
                    ", delegate.shutdown() x" + std::to_string(obs.shutdowns.load()));
        }
        if (!producers_running && threads_before != 0) {
          const std::size_t want = failed_run ? threads_before : threads_expected;
          const std::size_t got = settle_threads(want);
          if (got != want) {
            violation("after run() " + std::string(failed_run ? "failed" : "succeeded") + " " +
                      std::to_string(static_cast<long long>(got) -
                                     static_cast<long long>(threads_before)) +
                      " threads, expected " + std::to_string(want - threads_before));
          }
        }
        if (!failed_run) return;
        if (nth > 1000) {
          violation("run() still fails after 1000 tries");
          return;
        }
      }
    };

    // shutdown(timeout), with when it started and returned, for the BatchContext checks.
    auto timed_shutdown = [&](std::chrono::microseconds timeout) {
      std::size_t index = 0;
      {
        const HoldFault hold;
        std::lock_guard<std::mutex> lock(obs.mu);
        index = obs.timed_shutdowns.size();
        obs.timed_shutdowns.push_back({Clock::now(), {}, false, timeout});
      }
      const bool result = backend->shutdown(timeout);
      const Clock::time_point returned = Clock::now();
      {
        const HoldFault hold;
        std::lock_guard<std::mutex> lock(obs.mu);
        obs.timed_shutdowns[index].returned = returned;
        obs.timed_shutdowns[index].has_returned = true;
      }
      return result;
    };

    // Sleeps for `d`, sampling Stats::queued_bytes: never above max_buffer_bytes, and 0 without
    // a byte bound.
    bool queued_bytes_reported = false;
    auto watch = [&](std::chrono::microseconds d) {
      const auto until = Clock::now() + d;
      for (;;) {
        const buffered::Stats s = backend->stats();
        const bool bounded = c.max_buffer_bytes != 0 || c.max_batch_bytes != 0;
        if (!queued_bytes_reported &&
            (bounded ? c.max_buffer_bytes != 0 && s.queued_bytes > c.max_buffer_bytes
                     : s.queued_bytes != 0)) {
          queued_bytes_reported = true;
          violation("Stats::queued_bytes " + std::to_string(s.queued_bytes) +
                    " while the round ran, max_buffer_bytes " + std::to_string(c.max_buffer_bytes));
        }
        const auto now = Clock::now();
        if (now >= until) return;
        std::this_thread::sleep_for(std::min<Clock::duration>(until - now, 300us));
      }
    };

    // What a producer's thread_local destructor offers: more of its ids (after those of its
    // loop), by each of the three calls, and with second_mode 2 more into the second backend.
    std::vector<std::uint32_t> second_seqs(producers, 0);
    std::atomic<std::uint64_t> exit_offered{0};
    auto offer_at_exit = [&](std::uint32_t p) {
      auto& erng = exit_rngs[p];
      std::uint32_t seq = next_seq[p];
      const std::uint32_t n = 1 + static_cast<std::uint32_t>(erng() % 12);
      for (std::uint32_t k = 0; k < n;) {
        const unsigned how = static_cast<unsigned>(erng() % 3);
        if (how == 2) {
          const std::uint32_t m = std::min<std::uint32_t>(1 + erng() % 4, n - k);
          std::vector<Event> span;
          for (std::uint32_t i = 0; i < m; ++i)
            span.push_back({make_id(p, seq + i), payload_for(make_id(p, seq + i))});
          const std::size_t taken = backend->process_events(span);
          for (std::uint32_t i = 0; i < m; ++i) {
            (i < taken ? accepted : refused)[p].push_back(span[i].id);
            if (i >= taken) refused_head[p].push_back(span[taken].id);
          }
          seq += m;
          k += m;
        } else {
          const std::uint64_t id = make_id(p, seq++);
          Event e{id, payload_for(id)};
          const bool ok =
              how == 0 ? backend->process_event(e) : backend->process_event(std::move(e));
          (ok ? accepted : refused)[p].push_back(id);
          if (!ok) refused_head[p].push_back(id);
          ++k;
        }
      }
      exit_offered += n;
      if (second_mode == 2)
        offer_second(p, second_seqs[p], 1 + static_cast<std::uint32_t>(erng() % 3));
    };

    // fork() while the backend runs (and producers offer): the child, with only this thread,
    // destroys the inherited backend(s) at once and exits; the parent waits for it (SIGKILL
    // after kForkChildLimit), checks its exit status, and reads back through a pipe how many
    // delegate calls the child made (none allowed) and how many events it reported.
    std::uint64_t child_reports = 0;
    auto fork_and_check = [&](bool use_exit) {
      int fds[2];
      if (::pipe(fds) != 0) {
        violation("fork: pipe() failed");
        return;
      }
      std::fflush(stdout);
      std::fflush(stderr);
      const pid_t pid = ::fork();
      if (pid == 0) {
        in_fork_child = true;
        ::close(fds[0]);
        backend.reset();
        second.reset();
        const std::uint64_t counts[2] = {child_delegate_calls.load(), child_reported.load()};
        const ssize_t written = ::write(fds[1], counts, sizeof counts);
        ::close(fds[1]);
        const int code = written == static_cast<ssize_t>(sizeof counts) ? 0 : 4;
        if (use_exit) std::exit(code);
        ::_exit(code);
      }
      ::close(fds[1]);
      if (pid < 0) {
        ::close(fds[0]);
        violation("fork: fork() failed");
        return;
      }
      int status = 0;
      bool exited = false;
      const auto t0 = Clock::now();
      while (Clock::now() - t0 < kForkChildLimit) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) {
          exited = true;
          break;
        }
        std::this_thread::sleep_for(1ms);
      }
      if (!exited) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        violation("fork: the child (" + std::string(use_exit ? "exit" : "_exit") +
                  ") had not destroyed the inherited backend(s) and exited " +
                  std::to_string(
                      std::chrono::duration_cast<std::chrono::seconds>(kForkChildLimit).count()) +
                  " s after the fork: killed");
      } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        violation("fork: the child ended with " +
                  (WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                     : "signal " + std::to_string(WTERMSIG(status))));
      }
      std::uint64_t counts[2] = {0, 0};
      const ssize_t got = ::read(fds[0], counts, sizeof counts);
      ::close(fds[0]);
      if (got == static_cast<ssize_t>(sizeof counts)) {
        if (counts[0] != 0)
          violation("fork: the child made " + std::to_string(counts[0]) + " delegate call(s)");
        child_reports += counts[1];
      } else if (exited) {
        violation("fork: no counts from the child");
      }
    };

    std::atomic<std::uint32_t> producers_done{0};
    std::atomic<std::uint64_t> slow_offers{0};  // reoffer rounds: offers past kOfferLimit
    std::uint64_t linger_waited_ms = 0;
    {
      if (!run_late && !never_run) start(false, false);
      if (linger_probe) {
        // One event queued: its batch lingers for max_batch_wait (seconds); the worker parks
        // with a threshold for one lane. Then new threads, a lane each, fill full batches.
        on_producer_thread = true;
        producer_index = static_cast<int>(linger_slot);
        const std::uint64_t first_id = make_id(linger_slot, 0);
        const bool first_ok = backend->process_event(Event{first_id, payload_for(first_id)});
        (first_ok ? accepted : refused)[linger_slot].push_back(first_id);
        if (!first_ok) refused_head[linger_slot].push_back(first_id);
        on_producer_thread = false;
        producer_index = -1;
        std::this_thread::sleep_for(20ms);
        const std::uint64_t total = linger_batches * c.max_batch_size - 1;
        std::atomic<std::uint32_t> lanes_offered{0};
        std::atomic<bool> release{false};
        std::vector<std::thread> lane_threads;
        for (std::uint32_t i = 0; i < linger_lanes; ++i) {
          const std::uint32_t slot = linger_slot + 1 + i;
          const std::uint64_t count = total / linger_lanes + (i < total % linger_lanes ? 1 : 0);
          lane_threads.emplace_back([&, slot, count] {
            on_producer_thread = true;
            producer_index = static_cast<int>(slot);
            for (std::uint32_t k = 0; k < count; ++k) {
              const std::uint64_t id = make_id(slot, k);
              const bool ok = backend->process_event(Event{id, payload_for(id)});
              (ok ? accepted : refused)[slot].push_back(id);
              if (!ok) refused_head[slot].push_back(id);
            }
            lanes_offered.fetch_add(1);
            // Its lane stays registered until the check is done.
            const auto until = Clock::now() + 30s;
            while (!release.load() && Clock::now() < until) std::this_thread::sleep_for(200us);
          });
        }
        const auto offered_by = Clock::now() + 10s;
        while (lanes_offered.load() < linger_lanes && Clock::now() < offered_by)
          std::this_thread::sleep_for(100us);
        const auto t_full = Clock::now();
        const auto slack = c.max_batch_wait / 2;
        while (backend->stats().batches < linger_batches && Clock::now() - t_full < slack)
          std::this_thread::sleep_for(500us);
        const auto waited = Clock::now() - t_full;
        linger_waited_ms = static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(waited).count());
        const std::uint64_t batches_seen = backend->stats().batches;
        if (batches_seen < linger_batches) {
          violation(
              "linger: " + std::to_string(linger_batches) + " full batch(es) of " +
              std::to_string(c.max_batch_size) + " events (1 queued, then " +
              std::to_string(linger_lanes) + " new lanes) still not dispatched " +
              std::to_string(linger_waited_ms) + " ms after they filled, max_batch_wait " +
              std::to_string(
                  std::chrono::duration_cast<std::chrono::seconds>(c.max_batch_wait).count()) +
              " s (" + std::to_string(batches_seen) + " delegate calls)");
        }
        release = true;
        for (auto& t : lane_threads) t.join();
      }
      std::atomic<bool> stop_producing{false};
      std::vector<std::thread> threads;
      for (std::uint32_t p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
          on_producer_thread = true;
          producer_index = static_cast<int>(p);
          // Made before this thread's first offer: destroyed after the library's thread_locals.
          if (exit_round) exit_offers().at_exit = [&offer_at_exit, p] { offer_at_exit(p); };
          if (second_mode != 0) {
            offer_second(p, second_seqs[p], 1 + p % 3);  // a lane in the second backend
            second_offered.fetch_add(1);
          }
          auto& prng = producer_rngs[p];
          std::uint32_t seq = 0;
          int after_shutdown = 0;
          std::size_t flush_checked = 0;  // accepted[p] before this index: settled at a flush
          while (seq < per_producer && after_shutdown < 3) {
            if (stop_producing.load(std::memory_order_relaxed)) ++after_shutdown;
            const unsigned op = static_cast<unsigned>(prng() % (stall_probe ? 95 : 100));
            const bool inject = plan.offers && prng() % 10 == 0;
            const auto offer_t0 = Clock::now();
            if (op < 40) {
              const std::uint64_t id = make_id(p, seq);
              const Event e{id, payload_for(id)};
              bool threw = false, ok = false;
              ThreadFault f(alloc_armed, alloc_failed, inject);
              try {
                ok = backend->process_event(e);
              } catch (const std::bad_alloc&) {
                threw = true;
              }
              const bool fired = f.disarm();
              if (threw) {
                not_offered[p].push_back(id);
                if (!copy_allocates(id)) violation("process_event(const&) threw bad_alloc");
              } else {
                (ok ? accepted : refused)[p].push_back(id);
                if (!ok) refused_head[p].push_back(id);
                if (fired) violation("process_event(const&) allocated (failure swallowed)");
              }
              ++seq;
            } else if (op < 70) {
              const std::uint64_t id = make_id(p, seq);
              Event e{id, payload_for(id)};
              bool ok = false;
              ThreadFault f(alloc_armed, alloc_failed, inject);
              try {
                ok = backend->process_event(std::move(e));
              } catch (const std::bad_alloc&) {
                f.disarm();
                violation("process_event(Event&&) threw bad_alloc");
                not_offered[p].push_back(id);
                ++seq;
                continue;
              }
              if (f.disarm()) violation("process_event(Event&&) allocated");
              (ok ? accepted : refused)[p].push_back(id);
              if (!ok) refused_head[p].push_back(id);
              ++seq;
            } else if (op < 95) {
              const std::uint32_t n = std::min<std::uint32_t>(
                  1 + static_cast<std::uint32_t>(prng() % 16), per_producer - seq);
              std::vector<Event> span;
              for (std::uint32_t k = 0; k < n; ++k)
                span.push_back({make_id(p, seq + k), payload_for(make_id(p, seq + k))});
              std::size_t taken = 0;
              bool threw = false;
              ThreadFault f(alloc_armed, alloc_failed, inject);
              try {
                taken = backend->process_events(span);
              } catch (const std::bad_alloc&) {
                threw = true;
              }
              const bool fired = f.disarm();
              if (threw) {
                // The copy of the first event that allocates failed: those before it stay
                // accepted, it and those after it were never offered.
                std::size_t k = 0;
                while (k < n && !copy_allocates(span[k].id)) ++k;
                if (k == n) violation("process_events threw bad_alloc, no copy allocates");
                for (std::size_t i = 0; i < n; ++i)
                  (i < k ? accepted : not_offered)[p].push_back(span[i].id);
              } else {
                for (std::size_t k = 0; k < n; ++k) {
                  (k < taken ? accepted : refused)[p].push_back(span[k].id);
                  if (k >= taken) refused_head[p].push_back(span[taken].id);
                }
                if (fired) violation("process_events allocated (failure swallowed)");
              }
              seq += n;
            } else {
              const auto timeout = std::chrono::microseconds(prng() % 2000);
              ThreadFault f(alloc_armed, alloc_failed, plan.flush && prng() % 4 == 0);
              bool flushed = false;
              try {
                flushed = backend->flush(timeout);
              } catch (...) {
                f.disarm();
                violation("flush() threw");
                continue;
              }
              if (f.disarm()) violation("flush() allocated (an injected failure fired in it)");
              if (flushed) {
                // Every event this thread had accepted is delivered, failed or evicted: none
                // waits for a retry, none was abandoned. (Judged after the round: one evicted by
                // another producer's thread gets its own message.)
                std::lock_guard<std::mutex> lock(obs.mu);
                for (; flush_checked < accepted[p].size(); ++flush_checked) {
                  const std::uint64_t id = accepted[p][flush_checked];
                  if (times_in(obs.settled, id) == 0) {
                    obs.unsettled_at_flush.push_back(id);
                    break;
                  }
                }
              }
            }
            if (reoffer_round && op < 95 && Clock::now() - offer_t0 > kOfferLimit)
              slow_offers.fetch_add(1);
            if (prng() % 64 == 0) std::this_thread::yield();
          }
          next_seq[p] = seq;
          producers_done.fetch_add(1);
          // With second_mode 1 this thread ends only once the second backend is gone.
          const auto until = Clock::now() + 30s;
          while (!second_settled.load() && Clock::now() < until) std::this_thread::sleep_for(200us);
        });
      }
      if (second_mode != 0) {
        const auto until = Clock::now() + 10s;
        while (second_offered.load() < producers && Clock::now() < until)
          std::this_thread::sleep_for(100us);
        if (second_mode == 1) {
          second.reset();  // the threads still hold lanes of it
          check_second();
        }
        second_settled = true;
      }
      if (stall_probe) {
        // Accepted events beyond two buffers' worth mean full batches went out without waiting.
        const std::uint64_t want = 2 * c.buffer_size + 1;
        const auto until = Clock::now() + 1500ms;
        while (backend->stats().accepted < want && producers_done.load() < producers &&
               Clock::now() < until) {
          std::this_thread::sleep_for(1ms);
        }
        if (backend->stats().accepted < want && producers_done.load() < producers) {
          violation("max_batch_size " + std::to_string(c.max_batch_size) + " > buffer_size " +
                    std::to_string(c.buffer_size) + ": producers stalled (accepted " +
                    std::to_string(backend->stats().accepted) + ", batches " +
                    std::to_string(backend->stats().batches) + " after 1.5 s)");
        }
      }
      if (fork_probe) {
        watch(shutdown_after / 2);
        fork_and_check(fork_exit);
        watch(shutdown_after - shutdown_after / 2);
      } else {
        watch(shutdown_after);
      }
      if (run_late && !never_run) {
        std::thread racer;
        if (race_run) {
          racer = std::thread([&] {
            std::this_thread::sleep_for(race_after);
            if (race_deadline) {
              timed_shutdown(deadline);
            } else {
              backend->shutdown();
            }
          });
        }
        start(true, race_run);
        if (racer.joinable()) racer.join();
      }
      watch(shutdown_after / 2);
      stop_producing = true;

      // A shutdown must neither throw nor allocate.
      auto guarded_shutdown = [&](std::optional<std::chrono::microseconds> timeout) {
        bool result = false;
        ThreadFault f(alloc_armed, alloc_failed, plan.shutdown && fault_chance(0.5));
        try {
          result = timeout ? timed_shutdown(*timeout) : backend->shutdown();
        } catch (...) {
          f.disarm();
          violation("shutdown() threw");
          return false;
        }
        if (f.disarm()) violation("shutdown() allocated (an injected failure fired in it)");
        return result;
      };
      bool returned_true = false;
      switch (shutdown_style) {
        case 0:
          returned_true = guarded_shutdown(std::nullopt);
          break;
        case 1:
          returned_true = guarded_shutdown(deadline);
          break;
        case 2: {
          std::atomic<bool> other_true{false};
          std::thread other([&] { other_true = guarded_shutdown(deadline / 2); });
          returned_true = guarded_shutdown(deadline);
          other.join();
          returned_true = returned_true && other_true;
          break;
        }
        default:
          break;  // the destructor shuts down
      }
      if (shutdown_style != 3) {
        check_shut_down(*backend, returned_true, violation);
        // A shut-down backend's flush() returns at once, whatever is still running.
        const auto t0 = Clock::now();
        backend->flush(3s);
        const auto took = Clock::now() - t0;
        if (took > 100ms) {
          violation(
              "flush() after shutdown took " +
              std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()) +
              " ms");
        }
      }
      for (auto& t : threads) t.join();  // their thread_local destructors have offered
      if (second_mode == 2) {
        second.reset();
        check_second();
      }
      if (shutdown_style != 3) {
        // Waits for any call still running: then the counts are final.
        guarded_shutdown(std::nullopt);
        stats = backend->stats();
        if (stats.pending != 0) violation("Stats.pending != 0 after an unbounded shutdown");
      }
      ThreadFault f(alloc_armed, alloc_failed, plan.shutdown && fault_chance(0.5));
      backend.reset();  // noexcept: an allocation failure that escaped would terminate
      if (f.disarm()) violation("the destructor allocated (an injected failure fired in it)");
    }
    if (shutdown_style == 3)
      stats = buffered::Stats{};  // gone with the backend: checked below by observation only

    const std::uint64_t library_fired = library_thread_faults_fired.load() - library_fired_before;
    if (library_fired != 0) {
      violation(std::to_string(library_fired) +
                " allocation(s) on the worker or a dispatch thread after a delegate call");
    }
    alloc_failed += library_fired;

    std::lock_guard<std::mutex> lock(obs.mu);

    // ---- batches: the calls grouped by their first id (each accepted id is in one batch) ----
    const std::size_t max_attempts = c.retry ? c.retry->max_attempts : 1;
    std::unordered_map<std::uint64_t, std::vector<std::size_t>> batches;  // first id -> calls
    std::vector<std::uint64_t> batch_order;                               // first ids, in order
    for (std::size_t i = 0; i < obs.calls.size(); ++i) {
      const Call& call = obs.calls[i];
      if (call.ids.empty()) {
        violation("an empty batch reached the delegate");
        continue;
      }
      if (!call.ended) violation("a delegate call had not returned after the shutdown");
      auto& attempts = batches[call.ids.front()];
      if (attempts.empty()) batch_order.push_back(call.ids.front());
      attempts.push_back(i);
    }
    // How each batch ended, by what the delegate said and what was reported.
    enum class End { delivered, failed, abandoned };
    std::unordered_map<std::uint64_t, End> batch_end;
    std::unordered_map<std::uint64_t, std::uint64_t> batch_of;  // id -> first id of its batch
    std::unordered_map<std::uint64_t, const FailedReport*> report_of;  // first id -> report
    for (const FailedReport& report : obs.failed_reports) {
      if (report.ids.empty()) continue;
      if (!report_of.emplace(report.ids.front(), &report).second)
        violation("two delegate_failed reports start with id " +
                  std::to_string(report.ids.front()));
    }
    // The earliest deadline a shutdown(timeout) gave is at least t0 + timeout, and once that
    // call has returned, at most returned + timeout.
    std::optional<Clock::time_point> first_shutdown_start, earliest_given;
    for (const TimedShutdown& t : obs.timed_shutdowns) {
      const auto given = t.t0 + t.timeout;
      if (!earliest_given || given < *earliest_given) earliest_given = given;
      if (!first_shutdown_start || t.t0 < *first_shutdown_start) first_shutdown_start = t.t0;
    }
    auto past_a_deadline_at = [&](Clock::time_point when) {
      for (const TimedShutdown& t : obs.timed_shutdowns) {
        if (t.has_returned && when >= t.returned + t.timeout) return true;
      }
      return false;
    };
    std::uint64_t n_retries = 0, n_retry_abandoned = 0, n_permanent = 0, n_retry_delivered = 0;
    for (const std::uint64_t key : batch_order) {
      const std::vector<std::size_t>& attempts = batches[key];
      const Call& first = obs.calls[attempts.front()];
      const Call& last = obs.calls[attempts.back()];
      const std::string which = "batch starting with id " + std::to_string(key) + " (" +
                                std::to_string(attempts.size()) + " attempts)";
      n_retries += attempts.size() - 1;
      for (const std::uint64_t id : first.ids) {
        if (!batch_of.emplace(id, key).second)
          violation("id " + std::to_string(id) + " reached the delegate in two batches");
      }
      if (attempts.size() > max_attempts) {
        violation(which + ": more than max_attempts " + std::to_string(max_attempts));
      }
      for (std::size_t k = 0; k < attempts.size(); ++k) {
        const Call& call = obs.calls[attempts[k]];
        if (call.ids != first.ids) {
          violation(which + ": attempt " + std::to_string(k + 1) +
                    " saw other events than the first");
        }
        if (with_context && call.attempt != k + 1) {
          violation(which + ": BatchContext::attempt() " + std::to_string(call.attempt) +
                    " on attempt " + std::to_string(k + 1));
        }
        if (k + 1 == attempts.size()) break;
        // Another attempt follows this one.
        if (call.verdict != Verdict::retryable) {
          violation(which + ": attempt " + std::to_string(k + 1) + " was " +
                    (call.verdict == Verdict::delivered ? "delivered" : "a permanent failure") +
                    ", yet the batch was attempted again");
        }
        if (call.past_deadline || past_a_deadline_at(call.end)) {
          violation(which + ": attempted again after attempt " + std::to_string(k + 1) +
                    " ended past the shutdown deadline");
        }
        // Not before the backoff (less its jitter), or the retry-after.
        const Call& next = obs.calls[attempts[k + 1]];
        double floor_ns = 0;
        if (call.after > std::chrono::nanoseconds::zero()) {
          floor_ns = static_cast<double>(call.after.count());
        } else if (c.retry) {
          const buffered::Retry& r = *c.retry;
          floor_ns = std::min(static_cast<double>(r.max_backoff.count()),
                              static_cast<double>(r.initial_backoff.count()) *
                                  std::pow(r.multiplier, static_cast<double>(k))) *
                     (1.0 - r.jitter);
        }
        const double gap_ns =
            static_cast<double>(std::chrono::nanoseconds(next.start - call.end).count());
        if (gap_ns < floor_ns * (1 - 1e-9) - 2) {
          violation(which + ": attempt " + std::to_string(k + 2) + " began " +
                    std::to_string(gap_ns / 1000) + " us after attempt " + std::to_string(k + 1) +
                    " ended, the " +
                    (call.after > std::chrono::nanoseconds::zero() ? "retry-after" : "backoff") +
                    " is at least " + std::to_string(floor_ns / 1000) + " us");
        }
      }
      End end = End::delivered;
      if (last.verdict == Verdict::delivered) {
        end = End::delivered;
        if (attempts.size() > 1) ++n_retry_delivered;
      } else if (last.verdict == Verdict::permanent || attempts.size() >= max_attempts) {
        end = End::failed;
        if (last.verdict == Verdict::permanent) ++n_permanent;
      } else {
        // A retryable failure short of max_attempts: only a shutdown deadline ends it.
        end = End::abandoned;
        ++n_retry_abandoned;
        if (obs.timed_shutdowns.empty()) {
          violation(which +
                    ": its retryable failure was neither retried nor failed, and no "
                    "shutdown deadline was given");
        }
      }
      batch_end[key] = end;
      const auto report = report_of.find(key);
      if (end == End::failed) {
        if (report == report_of.end()) {
          violation(which + ": failed for good, never reported delegate_failed as a whole");
        } else {
          const FailedReport& r = *report->second;
          if (r.ids != first.ids) violation(which + ": its delegate_failed report differs");
          if (r.seq < last.start_seq)
            violation(which + ": reported delegate_failed before its last attempt");
          const std::int64_t want =
              last.thrown ? static_cast<std::int64_t>(attempts.back()) : std::int64_t{-1};
          if (r.exception_call != want) {
            violation(which + ": reported delegate_failed with std::current_exception() " +
                      (r.exception_call == -1   ? std::string("null")
                       : r.exception_call == -2 ? std::string("of another type")
                                                : "of call " + std::to_string(r.exception_call)) +
                      ", its last attempt " +
                      (last.thrown ? "threw (call " + std::to_string(attempts.back()) + ")"
                                   : std::string("returned a failure")));
          }
        }
      } else if (report != report_of.end()) {
        violation(which + ": reported delegate_failed, yet it ended " +
                  (end == End::delivered ? "delivered" : "waiting for a retry"));
      }
    }
    for (const auto& [key, report] : report_of) {
      if (batches.find(key) == batches.end())
        violation("a delegate_failed report for events no delegate call had");
    }

    // ---- BatchContext::deadline() ----
    if (with_context) {
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
            if (t.has_returned && read.before > t.returned &&
                read.deadline > t.returned + t.timeout) {
              violation("BatchContext::deadline() later than the deadline of a shutdown(" +
                        std::to_string(t.timeout.count()) + " ns) that had returned" +
                        (none ? " (still max())" : ""));
              break;
            }
          }
        }
      }
    }

    // ---- every id ----
    std::uint64_t n_accepted = 0, n_refused = 0, n_not_offered = 0;
    std::uint64_t delivered = 0, failed = 0;
    const bool drop_oldest = c.overflow == buffered::OverflowPolicy::drop_oldest;
    // Larger than a byte bound: refused too_large, whatever the policy.
    auto oversized = [&](std::uint64_t id) {
      const std::size_t bytes = sizes.of(id);
      return (c.max_buffer_bytes != 0 && bytes > c.max_buffer_bytes) ||
             (c.max_batch_bytes != 0 && bytes > c.max_batch_bytes);
    };
    auto refused_kinds = [&](std::uint64_t id) {
      return times_in(obs.reported_full, id) + times_in(obs.reported_shut_down, id) +
             times_in(obs.reported_too_large, id);
    };
    auto refused_kind = [&](std::uint64_t id) -> const char* {
      if (times_in(obs.reported_full, id) != 0) return "buffer_full";
      if (times_in(obs.reported_shut_down, id) != 0) return "shut_down";
      if (times_in(obs.reported_too_large, id) != 0) return "too_large";
      return "nothing";
    };
    auto ended_as = [&](std::uint64_t id) -> std::optional<End> {
      const auto b = batch_of.find(id);
      if (b == batch_of.end()) return std::nullopt;
      return batch_end[b->second];
    };
    for (std::uint32_t p = 0; p < id_slots; ++p) {
      n_accepted += accepted[p].size();
      n_refused += refused[p].size();
      n_not_offered += not_offered[p].size();
      for (std::uint64_t id : accepted[p]) {
        const std::optional<End> end = ended_as(id);
        const int by_delegate = end == End::delivered ? 1 : 0;
        const int evicted = times_in(obs.reported_evicted, id);
        const int times = by_delegate + times_in(obs.reported_failed, id) +
                          times_in(obs.reported_abandoned, id) + evicted;
        if (times != 1)
          violation("accepted id " + std::to_string(id) + " ended " + std::to_string(times) +
                    " times (delivered " + std::to_string(by_delegate) + ", reported failed " +
                    std::to_string(times_in(obs.reported_failed, id)) + ", abandoned " +
                    std::to_string(times_in(obs.reported_abandoned, id)) + ", evicted " +
                    std::to_string(evicted) + ")");
        if (evicted != 0 && batch_of.count(id) != 0)
          violation("id " + std::to_string(id) + " was evicted, yet reached the delegate");
        if (refused_kinds(id) != 0)
          violation("accepted id " + std::to_string(id) + " was reported " + refused_kind(id));
        if (oversized(id)) {
          violation("accepted id " + std::to_string(id) + " of " + std::to_string(sizes.of(id)) +
                    " bytes, above a byte bound (" + std::to_string(c.max_buffer_bytes) + ", " +
                    std::to_string(c.max_batch_bytes) + ")");
        }
        if ((end == End::failed) != (times_in(obs.reported_failed, id) == 1)) {
          violation("failed id " + std::to_string(id) + " not reported exactly once");
        }
        if (end == End::abandoned && times_in(obs.reported_abandoned, id) != 1)
          violation("id " + std::to_string(id) + " of a batch cut short not reported abandoned");
        if (end == End::delivered) ++delivered;
        if (end == End::failed) ++failed;
      }
      for (std::size_t i = 0; i < refused[p].size(); ++i) {
        const std::uint64_t id = refused[p][i];
        const std::uint64_t head = refused_head[p][i];
        const int times = refused_kinds(id);
        if (times != 1)
          violation("refused id " + std::to_string(id) + " reported " + std::to_string(times) +
                    " times");
        if (batch_of.count(id) != 0 || times_in(obs.reported_failed, id) +
                                               times_in(obs.reported_abandoned, id) +
                                               times_in(obs.reported_evicted, id) !=
                                           0) {
          violation("refused id " + std::to_string(id) + " was also accepted");
        }
        if (times != 1) continue;
        const std::string kind = refused_kind(id);
        if (kind != refused_kind(head)) {
          violation("refused id " + std::to_string(id) + " reported " + kind +
                    ", the first refused id of its span (" + std::to_string(head) + ") " +
                    refused_kind(head));
        }
        if (id == head && kind == "too_large" && !oversized(id)) {
          violation("id " + std::to_string(id) + " of " + std::to_string(sizes.of(id)) +
                    " bytes refused too_large, bounds " + std::to_string(c.max_buffer_bytes) +
                    " / " + std::to_string(c.max_batch_bytes));
        }
        if (id == head && kind == "buffer_full" && oversized(id)) {
          violation("id " + std::to_string(id) + " of " + std::to_string(sizes.of(id)) +
                    " bytes (bounds " + std::to_string(c.max_buffer_bytes) + " / " +
                    std::to_string(c.max_batch_bytes) + ") refused buffer_full, not too_large");
        }
        // With one producer thread drop_oldest evicts instead of refusing; but an offer made by
        // the handler while it reports an eviction does not evict (so every offer does bounded
        // work), and may take what an eviction freed for a later one (its budget then ends the
        // offer): with a re-offering handler either may be refused.
        if (drop_oldest && one_thread && !reoffer_round && kind == "buffer_full") {
          violation("drop_oldest, one producer: id " + std::to_string(id) + " refused buffer_full");
        }
      }
      for (std::uint64_t id : not_offered[p]) {
        const int times = static_cast<int>(batch_of.count(id)) + times_in(obs.reported_failed, id) +
                          times_in(obs.reported_abandoned, id) + times_in(obs.reported_full, id) +
                          times_in(obs.reported_shut_down, id) +
                          times_in(obs.reported_evicted, id) + times_in(obs.reported_too_large, id);
        if (times != 0)
          violation("id " + std::to_string(id) + " whose copy threw was seen " +
                    std::to_string(times) + " times");
      }
    }
    std::uint64_t reported_failed_total = 0;
    for (const auto& [id, n] : obs.reported_failed)
      reported_failed_total += static_cast<std::uint64_t>(n);
    if (reported_failed_total != failed)
      violation("delegate_failed reports (" + std::to_string(reported_failed_total) +
                " events) do not match failed batches (" + std::to_string(failed) + " events)");
    if (obs.bad_payloads != 0)
      violation(std::to_string(obs.bad_payloads) + " events arrived with a wrong payload");

    // drop_oldest: only it evicts; with one producer thread, that thread's oldest events, in order.
    if (!drop_oldest && !obs.reported_evicted.empty())
      violation(std::to_string(obs.reported_evicted.size()) +
                " events evicted without drop_oldest");
    if (one_thread) {
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
    // byte_size: only with a byte bound, once per event offered (at least every accepted one),
    // on the producer's thread.
    if (byte_size) {
      const std::uint64_t calls = byte_size_calls.load();
      const bool bounded = c.max_buffer_bytes != 0 || c.max_batch_bytes != 0;
      if (!bounded && calls != 0)
        violation("byte_size called " + std::to_string(calls) + " times without a byte bound");
      if (bounded && (calls < n_accepted || calls > n_accepted + n_refused + n_not_offered)) {
        violation("byte_size called " + std::to_string(calls) + " times for " +
                  std::to_string(n_accepted) + " events accepted, " +
                  std::to_string(n_accepted + n_refused + n_not_offered) + " offered");
      }
      if (byte_size_off_producer.load() != 0) {
        violation("byte_size called " + std::to_string(byte_size_off_producer.load()) +
                  " times off the producers' threads");
      }
    }

    // Order: per producer across first attempts where promised (where, too, the worker takes no
    // further batch while one waits to retry), and inside every call. Size: a batch holds at
    // most min(max_batch_size, buffer_size) events.
    const bool ordered = !c.async_delegate || c.max_in_flight == 1;
    const std::size_t batch_limit = std::min(c.max_batch_size, c.buffer_size);
    std::vector<std::int64_t> last(id_slots, -1);
    std::unordered_map<std::uint64_t, int> attempts_seen;
    std::optional<std::uint64_t> current_batch;
    for (const Call& call : obs.calls) {
      if (call.ids.empty()) continue;
      const bool first_attempt = attempts_seen[call.ids.front()]++ == 0;
      if (ordered) {
        if (current_batch && *current_batch != call.ids.front() && !first_attempt) {
          violation("batch starting with id " + std::to_string(call.ids.front()) +
                    " attempted again after another batch was taken");
        }
        current_batch = call.ids.front();
      }
      std::vector<std::int64_t> in_call(id_slots, -1);
      for (std::uint64_t id : call.ids) {
        // A re-offer is a new offer, by whichever thread reported it: in no producer's order.
        if (offer_of(id) != 0) continue;
        const auto p = producer_of(id);
        const auto seq = static_cast<std::int64_t>(id & 0xffffffffu);
        if (seq <= in_call[p]) violation("order broken inside a batch");
        in_call[p] = seq;
        if (ordered && first_attempt) {
          if (seq <= last[p])
            violation("order broken across batches for producer " + std::to_string(p));
          last[p] = seq;
        }
      }
      if (call.ids.size() > batch_limit) {
        violation("a batch of " + std::to_string(call.ids.size()) + " events, limit " +
                  std::to_string(batch_limit));
      }
      if (c.max_batch_bytes != 0) {
        std::size_t bytes = 0;
        for (std::uint64_t id : call.ids) bytes += sizes.of(id);
        if (bytes > c.max_batch_bytes) {
          violation("a batch of " + std::to_string(call.ids.size()) + " events and " +
                    std::to_string(bytes) + " bytes, max_batch_bytes " +
                    std::to_string(c.max_batch_bytes));
        }
      }
    }

    // A batch keeps its place while it waits to retry: from its first attempt's start to its
    // last attempt's end it holds the worker (sync) or a dispatch slot (async), so no more than
    // that many batches are under way at once.
    {
      const std::size_t slots = c.async_delegate ? c.max_in_flight : 1;
      std::vector<std::pair<Clock::time_point, int>> edges;
      for (const std::uint64_t key : batch_order) {
        const std::vector<std::size_t>& attempts = batches[key];
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

    // One throttle token per attempt. In sync mode call k's token was taken after call k-1
    // ended and before call k started: tokens taken in [end(i), start(j)] for calls i+1..j are
    // at most burst + qps * (start(j) - end(i)) (plus one for rounding).
    if (c.throttle && !c.async_delegate) {
      const double qps = c.throttle->qps;
      const double burst = static_cast<double>(c.throttle->burst);
      bool reported = false;
      for (std::size_t i = 0; i < obs.calls.size() && !reported; ++i) {
        for (std::size_t j = i + 1; j < obs.calls.size(); ++j) {
          const double span =
              std::chrono::duration<double>(obs.calls[j].start - obs.calls[i].end).count();
          const double allowed = burst + qps * std::max(0.0, span) + 1;
          if (static_cast<double>(j - i) > allowed) {
            violation("throttle: " + std::to_string(j - i) + " delegate calls within " +
                      std::to_string(span * 1e6) + " us, qps " + std::to_string(qps) + " burst " +
                      std::to_string(c.throttle->burst));
            reported = true;
            break;
          }
          if (j - i > 4 * c.throttle->burst + 64) break;  // far enough: cheap
        }
      }
    }

    // The delegate's lifecycle.
    if (never_run && (obs.runs != 0 || obs.shutdowns != 0))
      violation("a never-run backend called delegate.run() or delegate.shutdown()");
    if (obs.runs != obs.shutdowns) {
      violation("delegate.run() x" + std::to_string(obs.runs.load()) +
                " but delegate.shutdown() x" + std::to_string(obs.shutdowns.load()));
    }
    if (obs.bad_shutdowns != 0) violation("delegate.shutdown() without a delegate.run()");
    if (obs.bad_flushes != 0) violation("delegate.flush() outside delegate.run() .. shutdown()");

    const std::uint64_t abandoned = obs.reported_abandoned.size();
    if (shutdown_style != 3) {
      if (stats.accepted != n_accepted)
        violation("Stats.accepted " + std::to_string(stats.accepted) +
                  " != " + std::to_string(n_accepted));
      if (stats.delivered != delivered)
        violation("Stats.delivered " + std::to_string(stats.delivered) + " != observed " +
                  std::to_string(delivered));
      if (stats.failed != failed)
        violation("Stats.failed " + std::to_string(stats.failed) + " != observed " +
                  std::to_string(failed));
      if (stats.abandoned != abandoned)
        violation("Stats.abandoned " + std::to_string(stats.abandoned) + " != reported " +
                  std::to_string(abandoned));
      if (stats.rejected_full != obs.reported_full.size())
        violation("Stats.rejected_full mismatch");
      if (stats.rejected_shut_down != obs.reported_shut_down.size())
        violation("Stats.rejected_shut_down mismatch");
      if (stats.rejected_too_large != obs.reported_too_large.size())
        violation("Stats.rejected_too_large " + std::to_string(stats.rejected_too_large) +
                  " != reported " + std::to_string(obs.reported_too_large.size()));
      if (stats.evicted != obs.reported_evicted.size())
        violation("Stats.evicted " + std::to_string(stats.evicted) + " != reported " +
                  std::to_string(obs.reported_evicted.size()));
      if (stats.accepted + stats.rejected_full + stats.rejected_shut_down +
              stats.rejected_too_large !=
          n_accepted + n_refused)
        violation("Stats: accepted + rejected_* != events offered");
      if (stats.accepted !=
          stats.delivered + stats.failed + stats.abandoned + stats.evicted + stats.pending)
        violation("accounting identity broken");
      if (stats.queued_bytes != 0)
        violation("Stats.queued_bytes " + std::to_string(stats.queued_bytes) + " after shutdown");
      if (stats.batches != obs.calls.size())
        violation("Stats.batches " + std::to_string(stats.batches) + " != delegate calls " +
                  std::to_string(obs.calls.size()));
      if (stats.retries != n_retries)
        violation("Stats.retries " + std::to_string(stats.retries) + " != repeated calls " +
                  std::to_string(n_retries));
      if (stats.queued != 0 || stats.in_flight != 0) violation("work left after shutdown");
    }
    if (never_run && !obs.calls.empty()) violation("a never-run backend called its delegate");
    if (slow_offers.load() != 0 || slowest_offer > kOfferLimit) {
      violation(
          "reoffer: " + std::to_string(slow_offers.load()) + " producer offer(s) took over " +
          std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kOfferLimit).count()) +
          " s; slowest re-offer from the handler " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(slowest_offer).count()) +
          " ms");
    }

    if (verbose_) {
      std::fprintf(
          stderr,
          "round seed=%" PRIu64
          " producers=%u per=%u buffer=%zu batch=%zu async=%d inflight=%zu "
          "overflow=%d bytes=%zu/%zu sizes=%s%zu evicted=%zu too_large=%zu"
          " throttle=%d shutdown=%d accepted=%" PRIu64 " refused=%" PRIu64 " not_offered=%" PRIu64
          " abandoned=%" PRIu64 " alloc_armed=%" PRIu64 " alloc_failed=%" PRIu64
          " retry=%zu/%lldus/x%.1f/j%.1f fail_rate=%.2f"
          " context=%d calls=%zu retries=%" PRIu64 " retry_abandoned=%" PRIu64
          " shapes=%s second=%d exit_offered=%" PRIu64 " linger_ms=%" PRIu64 " reoffered=%" PRIu64
          "/%s/g%u child_reports=%" PRIu64 "%s%s%s%s%s\n",
          seed_, producers, per_producer, c.buffer_size, c.max_batch_size, c.async_delegate,
          c.max_in_flight, static_cast<int>(c.overflow), c.max_buffer_bytes, c.max_batch_bytes,
          sizes.custom ? "+" : "sizeof", sizes.custom ? sizes.spread : sizeof(Event),
          obs.reported_evicted.size(), obs.reported_too_large.size(), c.throttle.has_value(),
          shutdown_style, n_accepted, n_refused, n_not_offered, abandoned, alloc_armed.load(),
          alloc_failed.load(), c.retry ? c.retry->max_attempts : 0,
          c.retry ? static_cast<long long>(c.retry->initial_backoff.count() / 1000) : 0LL,
          c.retry ? c.retry->multiplier : 0.0, c.retry ? c.retry->jitter : 0.0,
          retry_plan.fail_rate, with_context ? 1 : 0, obs.calls.size(), n_retries,
          n_retry_abandoned, shape_names(current_shapes.load()).c_str() + 1, second_mode,
          exit_offered.load(), linger_waited_ms, reoffered, reoffer_others ? "all" : "evicted",
          reoffer_generations, child_reports, retry_plan.long_backoff ? " long_backoff" : "",
          stall_probe ? " stall_probe" : "", sh.stuck_call >= 0 ? " stuck_call" : "",
          race_run ? " race_run" : "", reenter_run ? " reenter_run" : "");
    }
    totals.offered += n_accepted + n_refused;
    totals.delivered += delivered;
    totals.failed += failed;
    totals.abandoned += abandoned;
    totals.refused += n_refused;
    totals.faults += obs.faults;
    totals.fault_rounds += fault_round ? 1 : 0;
    totals.big_batch_rounds += big_batch ? 1 : 0;
    totals.retry_rounds += c.retry ? 1 : 0;
    totals.context_rounds += with_context ? 1 : 0;
    totals.retries += n_retries;
    totals.retry_abandoned += n_retry_abandoned;
    totals.permanent += n_permanent;
    totals.retry_delivered += n_retry_delivered;
    totals.byte_rounds += byte_round ? 1 : 0;
    totals.drop_oldest_rounds += drop_oldest ? 1 : 0;
    totals.evicted += obs.reported_evicted.size();
    totals.too_large += obs.reported_too_large.size();
    totals.exit_rounds += exit_round ? 1 : 0;
    totals.exit_offers += exit_offered.load();
    totals.second_backends += second_mode != 0 ? 1 : 0;
    totals.linger_rounds += linger_probe ? 1 : 0;
    totals.reoffer_rounds += reoffer_round ? 1 : 0;
    totals.reoffered += reoffered;
    totals.fork_rounds += fork_probe ? 1 : 0;
    return finish(totals, v, alloc_armed.load(), alloc_failed.load(), n_not_offered);
  }

 private:
  std::uint64_t finish(Totals& totals, std::uint64_t v, std::uint64_t armed, std::uint64_t failed,
                       std::uint64_t not_offered) {
    totals.rounds += 1;
    totals.alloc_armed += armed;
    totals.alloc_failed += failed;
    totals.not_offered += not_offered;
    totals.violations += v;
    return v;
  }

  // After every shutdown() returned: accepted == delivered + failed + abandoned + evicted +
  // pending. A
  // delegate call that outlived a deadline may still settle its events meanwhile, and the
  // counters are read one by one, so a mismatch counts only if it stays, unchanged, for 50 ms
  // (a call that outlives a deadline runs for 250 ms here). After true: nothing is pending.
  template <class Backend, class Violation>
  static void check_shut_down(Backend& backend, bool returned_true, Violation& violation) {
    auto same = [](const buffered::Stats& a, const buffered::Stats& b) {
      return a.accepted == b.accepted && a.delivered == b.delivered && a.failed == b.failed &&
             a.abandoned == b.abandoned && a.evicted == b.evicted && a.pending == b.pending;
    };
    auto holds = [](const buffered::Stats& s) {
      return s.accepted == s.delivered + s.failed + s.abandoned + s.evicted + s.pending;
    };
    buffered::Stats first = backend.stats();
    if (returned_true && (first.pending != 0 || first.queued != 0)) {
      violation("shutdown() returned true with pending " + std::to_string(first.pending) +
                ", queued " + std::to_string(first.queued));
    }
    auto since = Clock::now();
    const auto give_up = since + 5s;
    for (;;) {
      const buffered::Stats s = backend.stats();
      if (holds(s)) return;
      if (!same(s, first)) first = s, since = Clock::now();
      if (Clock::now() - since >= 50ms || Clock::now() >= give_up) {
        violation("after shutdown: accepted " + std::to_string(s.accepted) + " != delivered " +
                  std::to_string(s.delivered) + " + failed " + std::to_string(s.failed) +
                  " + abandoned " + std::to_string(s.abandoned) + " + evicted " +
                  std::to_string(s.evicted) + " + pending " + std::to_string(s.pending) +
                  " (queued " + std::to_string(s.queued) + ", in_flight " +
                  std::to_string(s.in_flight) + ")");
        return;
      }
      std::this_thread::sleep_for(200us);
    }
  }

  std::uint32_t pick(std::uint32_t lo, std::uint32_t hi) {
    return lo + static_cast<std::uint32_t>(rng_() % (hi - lo + 1));
  }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  std::uint32_t shape_pick(std::uint32_t lo, std::uint32_t hi) {
    return lo + static_cast<std::uint32_t>(shape_rng_() % (hi - lo + 1));
  }
  bool shape_chance(double p) {
    return std::uniform_real_distribution<double>(0, 1)(shape_rng_) < p;
  }
  // For injection choices, from any thread: a generator of their own, so that how many
  // allocations the library makes does not change the rest of the round.
  bool fault_chance(double p) {
    std::lock_guard<std::mutex> lock(fault_rng_mu_);
    return std::uniform_real_distribution<double>(0, 1)(fault_rng_) < p;
  }

  buffered::BatchConfig random_config() {
    buffered::BatchConfig c;
    c.buffer_size = chance(0.3) ? pick(1, 8) : pick(9, 2000);
    c.max_batch_size = chance(0.2) ? 1 : pick(2, 64);
    if (chance(0.2)) {
      // Larger than the buffer: a batch then holds at most buffer_size events.
      switch (pick(0, 3)) {
        case 0:
          c.max_batch_size = c.buffer_size + 1;
          break;
        case 1:
          c.max_batch_size = c.buffer_size + pick(2, 5000);
          break;
        case 2:
          c.max_batch_size = std::numeric_limits<std::size_t>::max();
          break;
        default:
          c.max_batch_size = std::numeric_limits<std::size_t>::max() - pick(1, 1000);
          break;
      }
    }
    c.max_batch_wait = std::chrono::microseconds(pick(50, 20000));
    c.async_delegate = chance(0.5);
    c.max_in_flight = pick(1, 4);
    const buffered::OverflowPolicy policies[] = {buffered::OverflowPolicy::drop_newest,
                                                 buffered::OverflowPolicy::block,
                                                 buffered::OverflowPolicy::drop_oldest};
    c.overflow = policies[pick(0, 2)];
    c.block_timeout = chance(0.5)
                          ? std::chrono::nanoseconds::max()
                          : std::chrono::nanoseconds(std::chrono::microseconds(pick(0, 3000)));
    // Fast enough that an unbounded drain still ends within a second or so.
    if (chance(0.15))
      c.throttle = buffered::Throttle{static_cast<double>(pick(4000, 50000)), pick(1, 20)};
    return c;
  }

  // Sets max_buffer_bytes and/or max_batch_bytes against the byte sizes of the round's ids, and
  // the sizes: tiny bounds (some events alone are too large), ones that bind long before the
  // event counts, loose ones (up to SIZE_MAX). Returns whether the round first tries a
  // max_batch_bytes above max_buffer_bytes.
  bool random_byte_bounds(buffered::BatchConfig& c, ByteSizes& sizes, std::uint32_t producers,
                          std::uint32_t per_producer) {
    sizes.custom = !chance(0.15);
    const std::size_t spreads[] = {1, 8, 64, 1000};
    sizes.spread = spreads[pick(0, 3)];
    std::size_t smallest = std::numeric_limits<std::size_t>::max(), largest = 0, total = 0;
    for (std::uint32_t p = 0; p < producers; ++p) {
      for (std::uint32_t s = 0; s < per_producer; ++s) {
        const std::size_t bytes = sizes.of(make_id(p, s));
        smallest = std::min(smallest, bytes);
        largest = std::max(largest, bytes);
        total += bytes;
      }
    }
    const std::size_t mean =
        std::max<std::size_t>(1, total / (std::size_t{producers} * per_producer));
    auto tiny = [&] {
      return static_cast<std::size_t>(
          pick(static_cast<std::uint32_t>(smallest), static_cast<std::uint32_t>(largest)));
    };
    auto upto = [&](std::size_t n) {
      return static_cast<std::size_t>(pick(1, static_cast<std::uint32_t>(std::max<std::size_t>(
                                                  1, std::min<std::size_t>(n, 100000)))));
    };
    const bool buffer_bound = chance(0.75);
    const bool batch_bound = !buffer_bound || chance(0.5);
    if (buffer_bound) {
      switch (pick(0, 4)) {
        case 0:
          c.max_buffer_bytes = tiny();
          break;
        case 1:  // binds long before buffer_size
          c.max_buffer_bytes = mean * upto(std::min<std::size_t>(c.buffer_size, 32));
          break;
        case 2:
          c.max_buffer_bytes = mean * upto(c.buffer_size) + upto(largest);
          break;
        case 3:  // buffer_size binds first
          c.max_buffer_bytes = largest * c.buffer_size + upto(largest);
          break;
        default:
          c.max_buffer_bytes = std::numeric_limits<std::size_t>::max() - upto(1000);
          break;
      }
    }
    if (batch_bound) {
      const std::size_t batch_events = std::min(c.max_batch_size, c.buffer_size);
      switch (pick(0, 3)) {
        case 0:
          c.max_batch_bytes = tiny();
          break;
        case 1:  // binds long before max_batch_size
          c.max_batch_bytes = mean * upto(std::min<std::size_t>(batch_events, 16));
          break;
        case 2:
          c.max_batch_bytes = mean * upto(batch_events) + upto(largest);
          break;
        default:
          c.max_batch_bytes = c.max_buffer_bytes != 0 ? c.max_buffer_bytes
                                                      : std::numeric_limits<std::size_t>::max();
          break;
      }
      if (c.max_buffer_bytes != 0)
        c.max_batch_bytes = std::min(c.max_batch_bytes, c.max_buffer_bytes);
    }
    return c.max_buffer_bytes != 0 && c.max_batch_bytes != 0 &&
           c.max_buffer_bytes < std::numeric_limits<std::size_t>::max() - 1000 && chance(0.2);
  }

  // Half the rounds retry. Short backoffs (microseconds) keep rounds short; long ones (ms) make
  // a deadline shutdown land while batches wait. Some rounds without retry fail too: permanent
  // errors and Outcome::retry are then failures like any other.
  RetryPlan random_retry(buffered::BatchConfig& c) {
    RetryPlan plan;
    const double rates[] = {0.0, 0.05, 0.2, 0.4};
    plan.fail_rate = rates[pick(0, 3)];
    plan.permanent_share =
        chance(0.3) ? 0.0 : 0.1 + 0.3 * std::uniform_real_distribution<double>(0, 1)(rng_);
    plan.after_share = chance(0.5) ? 0.0 : 0.5;
    if (!chance(0.5)) {
      plan.after_max = std::chrono::microseconds(pick(1, 300));
      return plan;
    }
    buffered::Retry r;
    r.max_attempts = pick(1, 6);
    const double multipliers[] = {1.0, 1.5, 2.0, 3.0};
    r.multiplier = multipliers[pick(0, 3)];
    const double jitters[] = {0.0, 0.1, 0.5, 1.0};
    r.jitter = jitters[pick(0, 3)];
    plan.long_backoff = chance(0.2);
    if (plan.long_backoff) {
      r.initial_backoff = std::chrono::microseconds(pick(1000, 10000));
      r.max_backoff = r.initial_backoff + std::chrono::microseconds(pick(0, 20000));
      r.max_attempts = pick(2, 6);
      plan.fail_rate = 0.5;
      plan.after_max = std::chrono::microseconds(pick(1000, 20000));
    } else {
      r.initial_backoff = std::chrono::microseconds(pick(1, 200));
      r.max_backoff = r.initial_backoff + std::chrono::microseconds(pick(0, 2000));
      plan.after_max = std::chrono::microseconds(pick(1, 500));
    }
    c.retry = r;
    return plan;
  }

  std::mt19937_64 rng_;
  std::mt19937_64 fault_rng_;
  std::mutex fault_rng_mu_;
  std::mt19937_64 shape_rng_;  // the shapes': a round draws the rest as it would without them
  std::uint64_t seed_;
  bool verbose_;
};

}  // namespace

// LeakSanitizer: a forked child exits with the parent's threads gone, so what only they
// referenced would look leaked. No leak check in a child.
#if defined(__SANITIZE_ADDRESS__)
extern "C" int __lsan_is_turned_off() { return in_fork_child.load() ? 1 : 0; }
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
extern "C" int __lsan_is_turned_off() { return in_fork_child.load() ? 1 : 0; }
#endif
#endif

int main(int argc, char** argv) {
  double seconds = 10;
  std::uint64_t seed = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (arg == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--verbose") {
      verbose = true;
    } else {
      std::fprintf(stderr, "usage: buffered_stress [--seconds S] [--seed N] [--verbose]\n");
      return 2;
    }
  }

  // A terminate (an exception escaping a library thread or a noexcept call) names the round.
  std::set_terminate([] {
    std::fprintf(
        stderr, "TERMINATE: std::terminate in a round; rerun with --seed %" PRIu64 " (shapes:%s)\n",
        current_seed.load(), shape_names(current_shapes.load()).c_str());
    std::fflush(stderr);
    std::abort();
  });

#ifdef BUFFERED_STRESS_SANITIZER
  // A sanitizer report that ends the run names the round too (no allocation here).
  __sanitizer_set_death_callback([] {
    const unsigned shapes = current_shapes.load();
    std::fprintf(stderr,
                 "SANITIZER: the run ends in a round; rerun with --seed %" PRIu64
                 " (shapes:%s%s%s%s)\n",
                 current_seed.load(), shapes & kExitOffers ? " exit_offers" : "",
                 shapes & kLinger ? " linger" : "", shapes & kReoffer ? " reoffer" : "",
                 shapes & kFork ? " fork" : "");
  });
#endif

  // The watchdog: a round that does not finish in time means a call hung.
  current_seed = seed;
  std::atomic<std::int64_t> round_started{Clock::now().time_since_epoch().count()};
  std::atomic<bool> finished{false};
  constexpr auto kRoundLimit = 120s;  // rounds take milliseconds; sanitizers slow them down a lot
  std::thread watchdog([&] {
    while (!finished.load()) {
      std::this_thread::sleep_for(100ms);
      const Clock::time_point started{Clock::duration(round_started.load())};
      if (Clock::now() - started > kRoundLimit) {
        std::fprintf(stderr,
                     "HANG: a round did not finish within %llds; rerun with --seed %" PRIu64
                     " (shapes:%s)\n",
                     static_cast<long long>(kRoundLimit.count()), current_seed.load(),
                     shape_names(current_shapes.load()).c_str());
        std::fflush(stderr);
        std::_Exit(3);
      }
    }
  });

  Totals totals;
  const auto t0 = Clock::now();
  std::uint64_t round_seed = seed;
  do {
    current_seed = round_seed;
    round_started = Clock::now().time_since_epoch().count();
    Round round(round_seed, verbose);
    round.run(totals);
    round_seed = round_seed * 6364136223846793005ull + 1442695040888963407ull;
  } while (std::chrono::duration<double>(Clock::now() - t0).count() < seconds);
  finished = true;
  watchdog.join();

  std::printf("buffered_stress: seed=%" PRIu64 " seconds=%.1f rounds=%" PRIu64 " offered=%" PRIu64
              " delivered=%" PRIu64 " failed=%" PRIu64 " abandoned=%" PRIu64 " refused=%" PRIu64
              " faults=%" PRIu64 " big_batch_rounds=%" PRIu64 " fault_rounds=%" PRIu64
              " alloc_faults_armed=%" PRIu64 " alloc_faults_fired=%" PRIu64 " not_offered=%" PRIu64
              " retry_rounds=%" PRIu64 " context_rounds=%" PRIu64 " retries=%" PRIu64
              " retry_delivered=%" PRIu64 " retry_abandoned=%" PRIu64 " permanent=%" PRIu64
              " byte_rounds=%" PRIu64 " drop_oldest_rounds=%" PRIu64 " evicted=%" PRIu64
              " too_large=%" PRIu64 " exit_rounds=%" PRIu64 " exit_offers=%" PRIu64
              " second_backends=%" PRIu64 " linger_rounds=%" PRIu64 " reoffer_rounds=%" PRIu64
              " reoffered=%" PRIu64 " fork_rounds=%" PRIu64 "%s violations=%" PRIu64 "\n",
              seed, std::chrono::duration<double>(Clock::now() - t0).count(), totals.rounds,
              totals.offered, totals.delivered, totals.failed, totals.abandoned, totals.refused,
              totals.faults, totals.big_batch_rounds, totals.fault_rounds, totals.alloc_armed,
              totals.alloc_failed, totals.not_offered, totals.retry_rounds, totals.context_rounds,
              totals.retries, totals.retry_delivered, totals.retry_abandoned, totals.permanent,
              totals.byte_rounds, totals.drop_oldest_rounds, totals.evicted, totals.too_large,
              totals.exit_rounds, totals.exit_offers, totals.second_backends, totals.linger_rounds,
              totals.reoffer_rounds, totals.reoffered, totals.fork_rounds,
              kForkSupported ? "" : " (fork skipped: TSan)", totals.violations);
  return totals.violations == 0 ? 0 : 1;
}
