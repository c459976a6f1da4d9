// libFuzzer harness: the input is a configuration followed by a sequence of operations on one
// backend with a deterministic sink. After the sequence (and a final shutdown) it checks the
// same invariants as the stress tool: every accepted event delivered, failed or abandoned
// exactly once; every refused event reported exactly once; order where promised; Stats exact.
// Any violation aborts, which libFuzzer reports with the input that caused it.
//
// One operation injects an allocation failure (tests/fault replaces global operator new) into
// the next library call the input makes: this thread's next allocation, or the Nth allocation on
// any thread (once, or from it on), disarmed when that call returns. The harness itself does not
// allocate between its setup and the final checks, so every failure lands in the library. Only
// run() may fail then (std::bad_alloc, std::system_error), and it must leave no thread behind;
// process_event(s), flush(), shutdown() and stats() must neither throw nor allocate.
//
// Retry: spare bits of the configuration bytes choose BatchConfig::retry (max_attempts, backoffs
// of microseconds, multiplier, jitter; or an invalid one, which the constructor must refuse), the
// delegate's form (member or callable; void, bool or Outcome; with or without a BatchContext),
// which failures are permanent, and a retry-after. The sink fails by the input's mask with every
// outcome its form can express: a retryable exception, false, Outcome::retry(after),
// permanent_error, Outcome::permanent_failure(). Checked besides: each batch's attempts see the
// same events; only a retryable failure is attempted again, at most max_attempts times, not
// before its backoff floor or retry-after, never after an attempt that ended past a shutdown
// deadline; a batch failed for good is reported once, whole, after its last attempt, inside the
// catch of that attempt's exception; attempt() counts 1, 2, ...; deadline() is max() before any
// shutdown(timeout), never earlier than the earliest deadline given, never later than one given
// by a shutdown(timeout) that has returned; Stats.retries counts the repeated calls; flush()
// returns true only once every accepted event is delivered or failed; in sync mode (or one in
// flight) first attempts keep the order and a batch waiting to retry keeps its place.
//
// Byte bounds and drop_oldest (when bit 7 of the first byte is set): the input chooses
// OverflowPolicy::drop_oldest, the events' byte sizes (1 + 0..spread-1, derived from the id, or no
// byte_size function: sizeof(Event)), max_buffer_bytes and max_batch_bytes (0 = off; scaled up to
// near SIZE_MAX; max_batch_bytes > max_buffer_bytes must be refused, naming max_batch_bytes).
// Checked besides: every accepted event delivered, failed, abandoned or evicted exactly once (an
// evicted one never reaches the delegate); none larger than a byte bound is accepted; a refused
// event is reported too_large exactly when it (or, in a span, the first refused one) is larger
// than a bound (after a shutdown, shut_down too); drop_oldest never refuses buffer_full (this
// thread is the only producer) and evicts in order; evicted and too_large are reported on this
// thread; a batch's byte sizes sum to at most max_batch_bytes; Stats::queued_bytes is at most
// max_buffer_bytes (0 without a bound, and after shutdown); Stats::evicted and
// rejected_too_large match the reports, and accepted == delivered + failed + abandoned + evicted
// + pending; byte_size is called only with a bound, once per offer. Before run() (and before
// any shutdown) nothing leaves the buffer, so a model of it predicts every offer exactly: which
// are accepted, refused (buffer_full or too_large) or evicted, Stats::queued and queued_bytes,
// and what flush() returns.
//
// Input layout: buffer_size (bits 0-6, % 33; bit 7: the byte bounds bytes follow the header),
// max_batch_size, max_batch_wait, async (bit 0; bits 1-3: the form; bits 4-7: which failing calls
// are permanent), max_in_flight (bits 0-1; bits 2-4: 0 no retry, 1-6 max_attempts, 7 an invalid
// retry; bits 5-7: initial backoff), overflow (bit 0; bits 1-2: multiplier; bits 3-4: jitter;
// bits 5-7: max_backoff), block_timeout, throttle (bits 5-7: the retry-after), the failure mask;
// with bit 7 of the first byte three more: sizes (bit 0: drop_oldest; bits 1-3: 0 no byte_size,
// else spread 2^(n-1); bits 4-5 and 6-7: how max_buffer_bytes and max_batch_bytes scale: x1, x4,
// x64, SIZE_MAX - n), max_buffer_bytes, max_batch_bytes; then one operation per byte (some take
// the next byte). With the byte bounds, bit 7 of the block_timeout byte makes buffer_size
// (bits 0-6 of the first byte) % 72 instead of % 33: small buffers around the 64-slot blocks.
//
// Re-offering handlers: the stats operation (op % 16 == 7) with a nonzero high nibble also makes
// the error handler re-offer what it is given from then on, each event under a new id (a new
// offer, with its origin's byte size; up to 8 of a span, nested at most 3 deep): nibble bit 0
// evicted, bit 1 delegate_failed and abandoned (from the library's threads), bit 2 buffer_full,
// shut_down and too_large; bit 3 lets a re-offer be re-offered once more. Every offer, the
// re-offers included, must then end exactly once; the model of the buffer before run() stops
// there, and the order checks (evictions, batches) leave the re-offers out; a re-offer from a
// library thread makes it more than one producer (drop_oldest may then refuse buffer_full).
//
// Build: cmake --preset fuzz && cmake --build --preset fuzz
// Run:   build/fuzz/tests/fuzz/buffered_fuzz -max_total_time=60 <corpus copy> tests/fuzz/corpus
#include <buffered/buffered_backend.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "../delegate_forms.hpp"
#include "../fault/fault_injection.hpp"
#include "../process_threads.hpp"

namespace {

using namespace std::chrono_literals;
namespace fault = buffered_test::fault;
using buffered_test::Ending;
using buffered_test::Form;
using buffered_test::Result;

struct Event {
  std::uint64_t id;
};

// Set on the thread that runs the input (the only producer): evicted and too_large are reported
// there, and byte_size is called there.
thread_local bool on_input_thread = false;
// How deep the error handler's re-offers nest on this thread.
thread_local int reoffer_depth = 0;

// The events' byte sizes: what the input's byte_size function returns, or sizeof(Event) without
// one (spread 0).
struct Sizes {
  std::size_t spread = 0;

  static std::size_t extra(std::uint64_t id, std::size_t spread) {
    std::uint64_t h = id * 0x9e3779b97f4a7c15ull;
    h ^= h >> 29;
    return static_cast<std::size_t>(h % spread);
  }
  std::size_t of(std::uint64_t id) const {
    return spread == 0 ? sizeof(Event) : 1 + extra(id, spread);
  }
};

class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "buffered_fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

// Thrown by the sink: unlike std::runtime_error it allocates nothing (an injected failure must
// land in the library, not here). Retryable. `call` names the delegate call that threw it.
struct SinkFailure {
  std::uint64_t call;
};
// Permanent: copied from one made before the input runs (a copy shares the message: no
// allocation).
struct PermanentFailure : buffered::permanent_error {
  using buffered::permanent_error::permanent_error;
  std::uint64_t call = 0;
};

using buffered_test::count_threads;

// An allocation failure for the next library call: none, this thread's next allocation, or the
// Nth allocation on any thread.
struct PendingFault {
  enum class Kind { none, this_thread, nth } kind = Kind::none;
  std::uint64_t nth = 0;
  fault::Mode mode = fault::Mode::once;
};

// Arms `f` for one library call; disarm() (right after the call) says whether it fired.
class ArmedFault {
 public:
  explicit ArmedFault(PendingFault& f) : kind_(f.kind) {
    f.kind = PendingFault::Kind::none;
    if (kind_ == PendingFault::Kind::this_thread) fault::fail_next_allocation_on_this_thread();
    if (kind_ == PendingFault::Kind::nth) fault::fail_allocation(f.nth, f.mode);
  }
  bool disarm() {
    const PendingFault::Kind kind = kind_;
    kind_ = PendingFault::Kind::none;
    if (kind == PendingFault::Kind::this_thread)
      return !fault::cancel_next_allocation_failure_on_this_thread();
    if (kind == PendingFault::Kind::nth) {
      fault::disarm_allocations();
      return fault::failed_allocations() != 0;
    }
    return false;
  }
  ~ArmedFault() { disarm(); }
  ArmedFault(const ArmedFault&) = delete;
  ArmedFault& operator=(const ArmedFault&) = delete;

 private:
  PendingFault::Kind kind_;
};

using Clock = std::chrono::steady_clock;
constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();

std::int64_t ticks(Clock::time_point t) { return t.time_since_epoch().count(); }

enum class Verdict : std::uint8_t { delivered, retryable, permanent };

struct CallRecord {
  std::size_t first;  // index into Ledger::call_order
  std::size_t size;
  Verdict verdict;
  bool thrown;
  bool past_deadline;   // ended once a shutdown deadline it could see had passed
  std::size_t attempt;  // BatchContext::attempt(), 0 without a context
  std::int64_t after;   // Outcome::retry(after), ns
  std::int64_t start;   // steady_clock ticks
  std::int64_t end;     // just before it returned or threw
  std::uint64_t seq;    // of Ledger::seq, at its start
};

struct ReportRecord {  // one delegate_failed report
  std::uint64_t first_id;
  std::size_t size;
  std::uint64_t seq;
  std::int64_t exception_call;  // -1: no exception; -2: not the sink's
};

// What the harness learns of shutdown(timeout) calls, for the BatchContext checks.
struct Deadlines {
  std::atomic<bool> timed_started{false};
  std::atomic<std::int64_t> lower{kNever};  // min of (before the call) + timeout
  std::atomic<std::int64_t> upper{kNever};  // min of (after it returned) + timeout
};

constexpr std::size_t kMaxEvents = 4096;
constexpr std::size_t kMaxAttempts = 6;

// How a refused event was reported.
enum class Refusal : std::uint8_t { none, buffer_full, shut_down, too_large };

struct Ledger {
  std::mutex mu;
  std::vector<int> reported_failed, abandoned, refused_reports, settled, evicted;
  std::vector<Refusal> refusal;              // the kind of the last refusal report
  std::vector<std::uint64_t> evicted_order;  // evicted ids, as reported
  std::uint64_t too_large_reports = 0;
  std::uint64_t off_thread_reports = 0;   // evicted or too_large off the input's thread
  std::vector<std::uint64_t> call_order;  // ids in the order the delegate saw them, every call
  std::vector<CallRecord> calls;
  std::vector<ReportRecord> reports;
  std::uint64_t seq = 0;
  void grow(std::size_t n) {
    call_order.reserve(n * kMaxAttempts);  // the sink never allocates
    calls.reserve(n * kMaxAttempts);
    reports.reserve(n);
    reported_failed.resize(n);
    abandoned.resize(n);
    refused_reports.resize(n);
    settled.resize(n);
    evicted.resize(n);
    refusal.resize(n);
    evicted_order.reserve(n);
  }
};

// The deterministic sink: call number n fails if bit n % 8 of `fail_mask` is set, permanently
// if bit n % 4 of `permanent_mask` is; it throws on even calls (always for void; bool throws a
// permanent failure), otherwise returns false / Outcome::retry (with `retry_after` on every
// other) / Outcome::permanent_failure().
struct SinkCore {
  Ledger& ledger;
  Deadlines& deadlines;
  const PermanentFailure& permanent_proto;
  std::uint8_t fail_mask, permanent_mask;
  std::chrono::nanoseconds retry_after;

  Ending handle(std::span<Event> batch, const buffered::BatchContext* context, Result form) {
    if (context != nullptr) check_deadline(*context);
    const std::int64_t start = ticks(Clock::now());
    std::unique_lock<std::mutex> lock(ledger.mu);
    const std::uint64_t call = ledger.calls.size();
    const bool fails = ((fail_mask >> (call % 8)) & 1) != 0;
    const bool permanent = fails && ((permanent_mask >> (call % 4)) & 1) != 0;
    const Verdict verdict = !fails      ? Verdict::delivered
                            : permanent ? Verdict::permanent
                                        : Verdict::retryable;
    const bool thrown =
        fails && (form == Result::none || call % 2 == 0 || (permanent && form == Result::boolean));
    std::chrono::nanoseconds after{0};
    if (fails && !thrown && !permanent && form == Result::outcome && call / 2 % 2 == 0)
      after = retry_after;
    CallRecord record{ledger.call_order.size(),
                      batch.size(),
                      verdict,
                      thrown,
                      false,
                      context != nullptr ? context->attempt() : 0,
                      after.count(),
                      start,
                      0,
                      ledger.seq++};
    for (const Event& e : batch) ledger.call_order.push_back(e.id);
    require(ledger.calls.size() < ledger.calls.capacity(), "more delegate calls than expected");
    ledger.calls.push_back(record);  // reserved: no allocation
    lock.unlock();
    if (context != nullptr) check_deadline(*context);
    // Past a deadline, as the library sees it after the return: read, then the time.
    const std::int64_t upper = deadlines.upper.load();
    const std::int64_t seen =
        context != nullptr ? ticks(context->deadline()) : std::numeric_limits<std::int64_t>::max();
    const std::int64_t end = ticks(Clock::now());
    lock.lock();
    ledger.calls[call].end = end;
    ledger.calls[call].past_deadline = end >= std::min(upper, seen);
    if (verdict == Verdict::delivered) {
      for (const Event& e : batch) ledger.settled[e.id]++;
    }
    lock.unlock();
    if (thrown) {
      if (permanent) {
        PermanentFailure error(permanent_proto);
        error.call = call;
        throw error;
      }
      throw SinkFailure{call};
    }
    if (!fails) return {Ending::How::delivered};
    if (permanent) return {Ending::How::returns_permanent};
    return {form == Result::boolean ? Ending::How::returns_false : Ending::How::returns_retry,
            after};
  }

  // deadline() is max() before any shutdown(timeout), never earlier than the earliest deadline
  // given, and never later than one given by a shutdown(timeout) that has returned.
  void check_deadline(const buffered::BatchContext& context) {
    const std::int64_t upper = deadlines.upper.load();
    const auto deadline = context.deadline();
    const bool started = deadlines.timed_started.load();
    const std::int64_t lower = deadlines.lower.load();
    const bool none = deadline == Clock::time_point::max();
    require(started || none, "BatchContext::deadline() set before any shutdown(timeout)");
    require(none || ticks(deadline) >= lower, "BatchContext::deadline() earlier than any given");
    require(upper == kNever || (!none && ticks(deadline) <= upper),
            "BatchContext::deadline() later than a shutdown(timeout) that returned gave");
  }
};

template <class F>
using Sink = buffered_test::FormSink<F, SinkCore, Event>;

struct Input {
  buffered::BatchConfig config;
  bool valid = false;
  std::uint8_t fail_mask = 0, permanent_mask = 0;
  std::chrono::nanoseconds retry_after{0};
  Sizes sizes;
  bool byte_size_function = false;  // pass one (even without a byte bound: never called then)
  bool only_bytes_invalid = false;  // max_batch_bytes > max_buffer_bytes, nothing else wrong
};

template <class F>
int run_input(Reader& in, const Input& input) {
  const buffered::BatchConfig& c = input.config;
  Ledger ledger;
  ledger.grow(kMaxEvents);
  using Backend = buffered::BufferedBackend<Event, Sink<F>&>;
  // Ids: the input's offers and the error handler's re-offers take the next free one (a
  // re-offer is a new offer, under a new id, of an event with its origin's byte size).
  std::atomic<std::uint64_t> next_id{0};
  auto reserve_id = [&next_id]() -> std::uint64_t {
    std::uint64_t id = next_id.load();
    while (id < kMaxEvents && !next_id.compare_exchange_weak(id, id + 1)) {
    }
    return id < kMaxEvents ? id : kMaxEvents;
  };
  std::vector<std::uint64_t> origin(kMaxEvents);  // a re-offer's first offer; an offer's own id
  for (std::uint64_t id = 0; id < kMaxEvents; ++id) origin[id] = id;
  std::vector<std::atomic<std::uint8_t>> generation(kMaxEvents);  // 0: the input's offer
  std::vector<std::atomic<std::uint8_t>> accepted(kMaxEvents);    // 1: accepted
  std::vector<std::uint64_t> refused_head(kMaxEvents);  // the first refused id of its offer
  // Re-offers by the error handler (set by an operation; bits: 1 evicted, 2 delegate_failed and
  // abandoned, 4 buffer_full, shut_down and too_large, 8 two generations instead of one).
  std::atomic<unsigned> reoffer_mode{0};
  std::atomic<bool> reoffered_off_thread{false};  // from the library's threads: not one producer
  Backend* target = nullptr;
  Deadlines deadlines;
  const PermanentFailure permanent_proto("permanent");
  Sink<F> sink{{ledger, deadlines, permanent_proto, input.fail_mask, input.permanent_mask,
                input.retry_after}};
  auto on_error = [&](buffered::ErrorKind kind, std::span<const Event> events) {
    std::int64_t exception_call = -1;
    if (kind == buffered::ErrorKind::delegate_failed) {
      if (const std::exception_ptr cause = std::current_exception()) {
        try {
          std::rethrow_exception(cause);
        } catch (const SinkFailure& e) {
          exception_call = static_cast<std::int64_t>(e.call);
        } catch (const PermanentFailure& e) {
          exception_call = static_cast<std::int64_t>(e.call);
        } catch (...) {
          exception_call = -2;
        }
      }
    }
    std::unique_lock<std::mutex> lock(ledger.mu);
    if ((kind == buffered::ErrorKind::evicted || kind == buffered::ErrorKind::too_large) &&
        !on_input_thread) {
      ledger.off_thread_reports++;
    }
    for (const Event& e : events) {
      switch (kind) {
        case buffered::ErrorKind::buffer_full:
          ledger.refused_reports[e.id]++;
          ledger.refusal[e.id] = Refusal::buffer_full;
          break;
        case buffered::ErrorKind::shut_down:
          ledger.refused_reports[e.id]++;
          ledger.refusal[e.id] = Refusal::shut_down;
          break;
        case buffered::ErrorKind::too_large:
          ledger.refused_reports[e.id]++;
          ledger.refusal[e.id] = Refusal::too_large;
          ledger.too_large_reports++;
          break;
        case buffered::ErrorKind::delegate_failed:
          ledger.reported_failed[e.id]++;
          ledger.settled[e.id]++;
          break;
        case buffered::ErrorKind::abandoned:
          ledger.abandoned[e.id]++;
          break;
        case buffered::ErrorKind::evicted:
          ledger.evicted[e.id]++;
          ledger.settled[e.id]++;
          require(ledger.evicted_order.size() < ledger.evicted_order.capacity(),
                  "more evictions than events");
          ledger.evicted_order.push_back(e.id);
          break;
      }
    }
    if (kind == buffered::ErrorKind::delegate_failed && !events.empty()) {
      require(ledger.reports.size() < ledger.reports.capacity(), "too many failure reports");
      ledger.reports.push_back({events.front().id, events.size(), ledger.seq++, exception_call});
    }
    lock.unlock();
    // Re-offers: up to 8 events of the span, each under a new id, nested at most 3 deep.
    const unsigned mode = reoffer_mode.load();
    const bool wanted =
        kind == buffered::ErrorKind::evicted ? (mode & 1) != 0
        : kind == buffered::ErrorKind::delegate_failed || kind == buffered::ErrorKind::abandoned
            ? (mode & 2) != 0
            : (mode & 4) != 0;
    if (!wanted || target == nullptr || reoffer_depth >= 3) return;
    const unsigned generations = (mode & 8) != 0 ? 2 : 1;
    std::array<Event, 8> again{};
    std::size_t count = 0;
    for (const Event& e : events) {
      if (count == again.size() || generation[e.id].load() >= generations) continue;
      const std::uint64_t id = reserve_id();
      if (id == kMaxEvents) break;
      origin[id] = origin[e.id];
      generation[id].store(static_cast<std::uint8_t>(generation[e.id].load() + 1));
      again[count++] = Event{id};
    }
    if (count == 0) return;
    if (!on_input_thread) reoffered_off_thread = true;
    const bool was_input = on_input_thread;
    on_input_thread = true;  // this thread offers now: evictions and byte sizes are its own
    ++reoffer_depth;
    std::size_t taken = 0;
    if (count == 1 && again[0].id % 2 == 0) {
      taken = target->process_event(again[0]) ? 1 : 0;
    } else {
      taken = target->process_events(std::span<const Event>(again.data(), count));
    }
    --reoffer_depth;
    on_input_thread = was_input;
    for (std::size_t k = 0; k < count; ++k) {
      refused_head[again[k].id] = again[std::min(taken, count - 1)].id;
      accepted[again[k].id].store(k < taken ? 1 : 0);
    }
  };

  const Sizes sizes = input.sizes;
  const bool bounded = c.max_buffer_bytes != 0 || c.max_batch_bytes != 0;
  std::atomic<std::uint64_t> byte_size_calls{0}, byte_size_off_thread{0};
  struct SizeCounters {
    std::atomic<std::uint64_t>* calls;
    std::atomic<std::uint64_t>* off_thread;
  };
  typename Backend::byte_size_function byte_size;
  if (input.byte_size_function) {
    byte_size = [counters = SizeCounters{&byte_size_calls, &byte_size_off_thread},
                 spread = sizes.spread, origins = origin.data()](const Event& e) {
      counters.calls->fetch_add(1, std::memory_order_relaxed);
      if (!on_input_thread) counters.off_thread->fetch_add(1, std::memory_order_relaxed);
      return 1 + Sizes::extra(origins[e.id], spread);
    };
  }
  std::unique_ptr<Backend> backend;
  try {
    backend = std::make_unique<Backend>(sink, c, on_error, byte_size);
  } catch (const std::invalid_argument& e) {
    require(!input.valid, "a valid configuration was refused");
    require(!input.only_bytes_invalid || std::strstr(e.what(), "max_batch_bytes") != nullptr,
            "max_batch_bytes > max_buffer_bytes refused without naming max_batch_bytes");
    return 0;
  }
  require(input.valid, "an invalid configuration was accepted");
  target = backend.get();

  // Larger than a byte bound: refused too_large, whatever the policy.
  auto oversized = [&](std::uint64_t id) {
    const std::size_t bytes = sizes.of(origin[id]);
    return (c.max_buffer_bytes != 0 && bytes > c.max_buffer_bytes) ||
           (c.max_batch_bytes != 0 && bytes > c.max_batch_bytes);
  };
  // The buffer before run() and any shutdown: nothing leaves it but evictions, and this thread is
  // the only producer, so its bounds are exact.
  struct Model {
    bool active = true;
    std::vector<std::uint64_t> ids;  // queued: ids[head..]
    std::size_t head = 0, bytes = 0;
    std::size_t count() const { return ids.size() - head; }
  } model;
  model.ids.reserve(kMaxEvents);
  std::size_t evictions_seen = 0;  // of ledger.evicted_order: checked against the model
  // What the model says offering `id` does (and does it): accepted (perhaps after evicting
  // from the head), or refused buffer_full or too_large.
  auto model_offer = [&](std::uint64_t id) {
    if (oversized(id)) return Refusal::too_large;
    const std::size_t bytes = sizes.of(id);
    auto fits = [&] {
      return model.count() < c.buffer_size &&
             (c.max_buffer_bytes == 0 || model.bytes + bytes <= c.max_buffer_bytes);
    };
    if (!fits() && c.overflow != buffered::OverflowPolicy::drop_oldest) return Refusal::buffer_full;
    while (!fits()) {
      require(model.count() != 0, "model: nothing to evict");
      model.bytes -= sizes.of(model.ids[model.head++]);
    }
    model.ids.push_back(id);
    model.bytes += bytes;
    return Refusal::none;
  };
  // The evictions reported since the last check are the model's, in order.
  auto check_evictions = [&] {
    std::lock_guard<std::mutex> lock(ledger.mu);
    if (!model.active) return;
    // Only the model's evictions happen before run(): model.ids[0..head), in order.
    require(ledger.evicted_order.size() == model.head,
            "evicted other than the model of the buffer before run() says");
    for (; evictions_seen < model.head; ++evictions_seen) {
      require(ledger.evicted_order[evictions_seen] == model.ids[evictions_seen],
              "evicted other events than the model of the buffer before run()");
    }
  };

  // Nothing below allocates until the final checks.
  bool shut_down_called = false;
  std::uint64_t last_accepted_count = 0;
  std::uint64_t flush_checked = 0;  // accepted events below this id: settled at a flush
  PendingFault pending_fault;
  // A call that must neither throw nor allocate, with the pending fault armed around it.
  auto no_alloc = [&](const char* what, auto&& call) {
    ArmedFault armed(pending_fault);
    bool threw = false;
    decltype(call()) result{};
    try {
      result = call();
    } catch (...) {
      threw = true;
    }
    const bool fired = armed.disarm();
    if (threw) {
      std::fprintf(stderr, "buffered_fuzz: %s threw\n", what);
      std::abort();
    }
    if (fired) {
      std::fprintf(stderr, "buffered_fuzz: %s allocated\n", what);
      std::abort();
    }
    return result;
  };
  // shutdown(timeout), telling the sink's deadline checks when it started and returned.
  auto timed_shutdown = [&](std::chrono::nanoseconds timeout) {
    const std::int64_t lower = ticks(Clock::now()) + timeout.count();
    if (lower < deadlines.lower.load()) deadlines.lower.store(lower);
    deadlines.timed_started.store(true);
    const bool result = backend->shutdown(timeout);
    const std::int64_t upper = ticks(Clock::now()) + timeout.count();
    if (upper < deadlines.upper.load()) deadlines.upper.store(upper);
    return result;
  };
  // After a shutdown returned: accepted == delivered + failed + abandoned + pending, at once if it
  // returned true (nothing is pending then), otherwise once the calls still running settle.
  auto check_shut_down = [&](bool returned_true) {
    buffered::Stats s = backend->stats();
    auto holds = [&s] {
      return s.accepted == s.delivered + s.failed + s.abandoned + s.evicted + s.pending;
    };
    if (returned_true) {
      require(s.pending == 0 && s.queued == 0, "shutdown() returned true with work left");
      require(holds(), "accounting identity broken after shutdown() returned true");
      return;
    }
    for (int i = 0; !holds() && i < 5000; ++i) {
      std::this_thread::sleep_for(1ms);
      s = backend->stats();
    }
    require(holds(), "accounting identity broken after shutdown()");
  };
  auto offer_one = [&](bool by_move) {
    const std::uint64_t id = reserve_id();
    if (id == kMaxEvents) return;
    Event e{id};
    const Refusal want = model.active ? model_offer(id) : Refusal::none;
    const bool ok = no_alloc("process_event", [&] {
      return by_move ? backend->process_event(std::move(e)) : backend->process_event(e);
    });
    accepted[id].store(ok ? 1 : 0);
    refused_head[id] = id;
    if (model.active) {
      require(ok == (want == Refusal::none), "an offer before run() went against the model");
      require(ok || ledger.refusal[id] == want, "refused before run() with the wrong kind");
      check_evictions();
    }
  };
  while (!in.empty()) {
    const std::uint8_t op = in.byte();
    switch (op % 8) {
      case 0:
      case 1:
        offer_one(false);
        break;
      case 2:
        offer_one(true);
        break;
      case 3: {
        std::array<Event, 8> events{};
        std::size_t count = 0;
        for (int k = 0; k < 1 + op / 8 % 8; ++k) {
          const std::uint64_t id = reserve_id();
          if (id == kMaxEvents) break;
          events[count++] = Event{id};
        }
        const std::span<const Event> span(events.data(), count);
        std::size_t want_taken = count;
        Refusal want = Refusal::none;
        for (std::size_t k = 0; k < count && model.active; ++k) {
          want = model_offer(events[k].id);
          if (want != Refusal::none) {
            want_taken = k;
            break;
          }
        }
        const std::size_t n =
            no_alloc("process_events", [&] { return backend->process_events(span); });
        for (std::size_t k = 0; k < count; ++k) {
          accepted[events[k].id].store(k < n ? 1 : 0);
          refused_head[events[k].id] = events[std::min(n, count - 1)].id;
        }
        if (model.active) {
          require(n == want_taken, "a span offered before run() went against the model");
          require(n == count || ledger.refusal[events[n].id] == want,
                  "a span refused before run() with the wrong kind");
          check_evictions();
        }
        break;
      }
      case 4: {
        // May fail with an injected fault: then nothing it started may be left running.
        const std::size_t threads_before = count_threads();
        ArmedFault armed(pending_fault);
        bool failed = false;
        try {
          backend->run();
        } catch (const std::logic_error&) {
          // run() after shutdown: refused, as documented.
        } catch (const std::bad_alloc&) {
          failed = true;
        } catch (const std::system_error&) {
          failed = true;
        }
        const bool fired = armed.disarm();
        require(!failed || fired, "run() failed without an injected fault");
        if (!failed) model.active = false;  // the worker takes events from here on
        if (failed && threads_before != 0) {
          std::size_t now = count_threads();
          for (int i = 0; now > threads_before && i < 2000; ++i) {
            std::this_thread::sleep_for(1ms);  // a joined thread may linger briefly in /proc
            now = count_threads();
          }
          require(now <= threads_before, "a failed run() left a thread running");
        }
        break;
      }
      case 5: {
        const auto timeout = std::chrono::microseconds(in.byte() % 50);
        const bool flushed = no_alloc("flush", [&] { return backend->flush(timeout); });
        // Not running: at once, true if nothing it waits for is still queued.
        require(!model.active || flushed == (model.count() == 0),
                "flush() before run() did not say whether events are queued");
        if (flushed) {
          // Every event accepted so far is delivered or failed: none waits for a retry.
          std::lock_guard<std::mutex> lock(ledger.mu);
          // (A re-offer may be accepted, on a library thread, while flush() runs.)
          for (; flush_checked < next_id; ++flush_checked) {
            require(!accepted[flush_checked] || generation[flush_checked] != 0 ||
                        ledger.settled[flush_checked] != 0,
                    "flush() returned true before an accepted event was delivered or failed");
          }
        }
        break;
      }
      case 6:
        model.active = false;
        shut_down_called = true;
        if (op & 8) {
          const auto timeout = std::chrono::microseconds(in.byte() % 50);
          check_shut_down(no_alloc("shutdown", [&] { return timed_shutdown(timeout); }));
        } else {
          check_shut_down(no_alloc("shutdown", [&] { return backend->shutdown(); }));
        }
        break;
      default: {
        if ((op & 8) == 0 && op >> 4 != 0) {
          // The error handler re-offers from now on: the model of the buffer before run() does
          // not follow re-offers.
          reoffer_mode = static_cast<unsigned>(op >> 4);
          model.active = false;
        }
        if (op & 8) {
          // Fail an allocation in the next library call: 0 = this thread's next one, otherwise
          // the Nth (1..16) on any thread, once (even) or from then on (odd).
          const std::uint8_t how = in.byte();
          if (how == 0) {
            pending_fault.kind = PendingFault::Kind::this_thread;
          } else {
            pending_fault.kind = PendingFault::Kind::nth;
            pending_fault.nth = 1 + (how >> 1) % 16;
            pending_fault.mode = (how & 1) ? fault::Mode::from_then_on : fault::Mode::once;
          }
          break;
        }
        const buffered::Stats s = no_alloc("stats", [&] { return backend->stats(); });
        require(s.accepted >= last_accepted_count, "Stats.accepted went down");
        require(s.accepted >= s.delivered + s.failed + s.abandoned, "more done than accepted");
        require(s.retries <= s.batches, "Stats.retries above Stats.batches");
        require(bounded ? c.max_buffer_bytes == 0 || s.queued_bytes <= c.max_buffer_bytes
                        : s.queued_bytes == 0,
                "Stats.queued_bytes above max_buffer_bytes (or not 0 without a byte bound)");
        if (model.active) {
          require(s.queued == model.count(), "Stats.queued before run() differs from the model");
          require(s.queued_bytes == (bounded ? model.bytes : 0),
                  "Stats.queued_bytes before run() differs from the model");
        }
        last_accepted_count = s.accepted;
        break;
      }
    }
  }
  model.active = false;
  check_shut_down(no_alloc("shutdown", [&] { return backend->shutdown(); }));
  timed_shutdown(0ns);  // idempotent
  const buffered::Stats s = backend->stats();
  backend.reset();  // the destructor waits for anything still running

  // ---- batches: calls grouped by their first event; attempts in order ----
  const std::size_t max_attempts = c.retry ? c.retry->max_attempts : 1;
  std::vector<std::vector<std::size_t>> attempts(next_id);
  std::vector<std::int64_t> batch_of(next_id, -1);  // id -> first id of its batch
  enum class End { none, delivered, failed, abandoned };
  std::vector<End> ended(next_id, End::none);
  std::vector<std::int64_t> report_of(next_id, -1);  // first id -> index in ledger.reports
  for (std::size_t r = 0; r < ledger.reports.size(); ++r) {
    const std::uint64_t first = ledger.reports[r].first_id;
    require(first < next_id && report_of[first] == -1, "two delegate_failed reports of a batch");
    report_of[first] = static_cast<std::int64_t>(r);
  }
  std::uint64_t repeats = 0;
  for (std::size_t i = 0; i < ledger.calls.size(); ++i) {
    const CallRecord& call = ledger.calls[i];
    require(call.size >= 1, "an empty batch reached the delegate");
    attempts[ledger.call_order[call.first]].push_back(i);
  }
  auto same_events = [&](const CallRecord& a, const CallRecord& b) {
    if (a.size != b.size) return false;
    for (std::size_t k = 0; k < a.size; ++k) {
      if (ledger.call_order[a.first + k] != ledger.call_order[b.first + k]) return false;
    }
    return true;
  };
  for (std::uint64_t key = 0; key < next_id; ++key) {
    const std::vector<std::size_t>& tries = attempts[key];
    if (tries.empty()) continue;
    repeats += tries.size() - 1;
    require(tries.size() <= max_attempts, "more attempts than max_attempts");
    const CallRecord& first = ledger.calls[tries.front()];
    const CallRecord& last = ledger.calls[tries.back()];
    for (std::size_t k = 0; k < first.size; ++k) {
      const std::uint64_t id = ledger.call_order[first.first + k];
      require(batch_of[id] == -1, "an event reached the delegate in two batches");
      batch_of[id] = static_cast<std::int64_t>(key);
    }
    for (std::size_t k = 0; k < tries.size(); ++k) {
      const CallRecord& call = ledger.calls[tries[k]];
      require(same_events(call, first), "a retry saw other events than the first attempt");
      require(!F::context || call.attempt == k + 1, "BatchContext::attempt() is not 1, 2, ...");
      if (k + 1 == tries.size()) break;
      require(call.verdict == Verdict::retryable, "a delivered or permanent batch was retried");
      require(!call.past_deadline, "attempted again after an attempt ended past the deadline");
      const CallRecord& next = ledger.calls[tries[k + 1]];
      require(next.seq > call.seq, "attempts out of order");
      double floor_ns = 0;
      if (call.after > 0) {
        floor_ns = static_cast<double>(call.after);
      } else {
        const buffered::Retry& r = *c.retry;
        floor_ns = std::min(static_cast<double>(r.max_backoff.count()),
                            static_cast<double>(r.initial_backoff.count()) *
                                std::pow(r.multiplier, static_cast<double>(k))) *
                   (1.0 - r.jitter);
      }
      require(static_cast<double>(next.start - call.end) >= floor_ns * (1 - 1e-9) - 2,
              "attempted again before the backoff or the retry-after");
    }
    End end = End::delivered;
    if (last.verdict == Verdict::delivered) {
      end = End::delivered;
    } else if (last.verdict == Verdict::permanent || tries.size() >= max_attempts) {
      end = End::failed;
    } else {
      end = End::abandoned;  // only a shutdown deadline ends a retryable failure early
      require(deadlines.timed_started.load(), "a retryable failure neither retried nor failed");
    }
    for (std::size_t k = 0; k < first.size; ++k) ended[ledger.call_order[first.first + k]] = end;
    if (end == End::failed) {
      require(report_of[key] != -1, "a failed batch was not reported");
      const ReportRecord& report = ledger.reports[static_cast<std::size_t>(report_of[key])];
      require(report.size == first.size, "a failed batch was not reported as a whole");
      require(report.seq > last.seq, "a failed batch was reported before its last attempt");
      const std::int64_t want = last.thrown ? static_cast<std::int64_t>(tries.back()) : -1;
      require(report.exception_call == want,
              "delegate_failed not reported inside the catch of the last attempt's exception");
    } else {
      require(report_of[key] == -1, "a batch not failed for good was reported delegate_failed");
    }
  }

  std::uint64_t n_accepted = 0, n_delivered = 0, n_failed = 0, n_abandoned = 0, n_refused = 0,
                n_evicted = 0;
  for (std::uint64_t id = 0; id < next_id; ++id) {
    const End end = ended[id];
    const int done = (end == End::delivered ? 1 : 0) + ledger.reported_failed[id] +
                     ledger.abandoned[id] + ledger.evicted[id];
    n_evicted += static_cast<std::uint64_t>(ledger.evicted[id]);
    if (accepted[id]) {
      ++n_accepted;
      require(done == 1, "an accepted event was not handled exactly once");
      require(ledger.evicted[id] == 0 || end == End::none, "an evicted event reached the delegate");
      require(!oversized(id), "an event larger than a byte bound was accepted");
      require(ledger.refused_reports[id] == 0, "an accepted event was reported refused");
      require((end == End::failed) == (ledger.reported_failed[id] == 1),
              "a failed event was not reported once");
      require(end != End::abandoned || ledger.abandoned[id] == 1,
              "an event of a batch cut short was not reported abandoned");
    } else {
      ++n_refused;
      require(done == 0 && end == End::none, "a refused event reached the delegate");
      require(ledger.refused_reports[id] == 1, "a refused event was not reported exactly once");
      const std::uint64_t head = refused_head[id];
      const Refusal kind = ledger.refusal[id];
      require(kind == ledger.refusal[head], "a span's refused events reported with other kinds");
      require(kind != Refusal::too_large || oversized(head),
              "refused too_large, yet within the byte bounds");
      require(!oversized(head) || kind == Refusal::too_large ||
                  (kind == Refusal::shut_down && shut_down_called),
              "an event larger than a byte bound was not refused too_large");
      // A re-offer made while an eviction is reported does not evict, and may take what an
      // eviction freed for a later one (whose budget then ends it): with a re-offering handler
      // either may be refused.
      require(kind != Refusal::buffer_full || c.overflow != buffered::OverflowPolicy::drop_oldest ||
                  reoffered_off_thread.load() || reoffer_mode.load() != 0,
              "drop_oldest with one producer refused buffer_full");
    }
    n_delivered += end == End::delivered ? 1 : 0;
    n_failed += end == End::failed ? 1 : 0;
    n_abandoned += static_cast<std::uint64_t>(ledger.abandoned[id]);
  }
  require(s.accepted == n_accepted, "Stats.accepted");
  require(s.delivered == n_delivered, "Stats.delivered");
  require(s.failed == n_failed, "Stats.failed");
  require(s.abandoned == n_abandoned, "Stats.abandoned");
  require(s.pending == 0, "Stats.pending after an unbounded shutdown");
  require(s.evicted == n_evicted, "Stats.evicted");
  require(s.rejected_too_large == ledger.too_large_reports, "Stats.rejected_too_large");
  require(s.accepted == s.delivered + s.failed + s.abandoned + s.evicted + s.pending,
          "accounting identity");
  require(s.rejected_full + s.rejected_shut_down + s.rejected_too_large == n_refused,
          "Stats.rejected_*");
  require(s.queued_bytes == 0, "Stats.queued_bytes after shutdown");
  require(c.overflow == buffered::OverflowPolicy::drop_oldest || n_evicted == 0,
          "evicted without drop_oldest");
  // (A re-offer, pushed before the offer that evicted it, is out of the ids' order.)
  std::int64_t last_evicted = -1;
  for (const std::uint64_t id : ledger.evicted_order) {
    if (generation[id] != 0) continue;
    require(reoffered_off_thread.load() || static_cast<std::int64_t>(id) > last_evicted,
            "one producer: evictions out of order");
    last_evicted = static_cast<std::int64_t>(id);
  }
  require(ledger.off_thread_reports == 0, "evicted or too_large reported off the input's thread");
  if (input.byte_size_function) {
    const std::uint64_t calls = byte_size_calls.load();
    require(bounded || calls == 0, "byte_size called without a byte bound");
    require(!bounded || (calls >= n_accepted && calls <= next_id),
            "byte_size not called once per offered event");
    require(byte_size_off_thread.load() == 0, "byte_size called off the producer's thread");
  }
  require(s.batches == ledger.calls.size(), "Stats.batches");
  require(s.retries == repeats, "Stats.retries");
  require(s.queued == 0 && s.in_flight == 0, "work left after shutdown");
  const std::size_t batch_limit = std::min(c.max_batch_size, c.buffer_size);
  for (const CallRecord& call : ledger.calls) {
    require(call.size >= 1 && call.size <= batch_limit, "a batch of the wrong size");
    if (c.max_batch_bytes != 0) {
      std::size_t bytes = 0;
      for (std::size_t k = 0; k < call.size; ++k)
        bytes += sizes.of(origin[ledger.call_order[call.first + k]]);
      require(bytes <= c.max_batch_bytes, "a batch above max_batch_bytes");
    }
  }
  // Order: across first attempts where promised; there, a batch waiting to retry keeps its
  // place (its attempts are consecutive calls). Inside every call always.
  const bool ordered = !c.async_delegate || c.max_in_flight == 1;
  std::int64_t last_first = -1;
  std::vector<bool> taken(next_id, false);
  std::int64_t current = -1;
  for (const CallRecord& call : ledger.calls) {
    // Of the input's own offers (a re-offer is in no order with them): first and last here.
    std::int64_t first_own = -1, last_own = -1;
    for (std::size_t k = 0; k < call.size; ++k) {
      const std::uint64_t id = ledger.call_order[call.first + k];
      if (generation[id] != 0) continue;
      require(static_cast<std::int64_t>(id) > last_own, "order broken inside a batch");
      if (first_own == -1) first_own = static_cast<std::int64_t>(id);
      last_own = static_cast<std::int64_t>(id);
    }
    if (!ordered) continue;
    const std::uint64_t key = ledger.call_order[call.first];
    if (!taken[key]) {
      taken[key] = true;
      if (first_own != -1) {
        require(first_own > last_first, "order broken");
        last_first = last_own;
      }
    } else {
      require(static_cast<std::int64_t>(key) == current,
              "another batch was taken while one waited to retry");
    }
    current = static_cast<std::int64_t>(key);
  }
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  on_input_thread = true;
  Reader in(data, size);
  Input input;
  buffered::BatchConfig& c = input.config;
  const std::uint8_t buffer_byte = in.byte();
  c.buffer_size = (buffer_byte & 0x7f) % 33;  // 0 is invalid on purpose
  const std::uint8_t batch_byte = in.byte();  // 250..255: near SIZE_MAX, beyond any buffer
  c.max_batch_size = batch_byte >= 250
                         ? std::numeric_limits<std::size_t>::max() - (255u - batch_byte)
                         : std::size_t{batch_byte} % 9;
  c.max_batch_wait = std::chrono::microseconds(in.byte() % 200);
  const std::uint8_t async_byte = in.byte();
  c.async_delegate = (async_byte & 1) != 0;
  const int form = (async_byte >> 1 & 7) % 6;
  input.permanent_mask = static_cast<std::uint8_t>(async_byte >> 4);
  const std::uint8_t in_flight_byte = in.byte();
  c.max_in_flight = in_flight_byte % 4;
  const std::uint8_t overflow_byte = in.byte();
  c.overflow =
      (overflow_byte & 1) ? buffered::OverflowPolicy::block : buffered::OverflowPolicy::drop_newest;
  // Bounded: an input never hangs. With the byte bounds, bit 7 selects buffer sizes up to 71.
  const std::uint8_t timeout_byte = in.byte();
  const bool wide_buffer = (buffer_byte & 0x80) != 0 && (timeout_byte & 0x80) != 0;
  if (wide_buffer) c.buffer_size = (buffer_byte & 0x7f) % 72;
  c.block_timeout =
      std::chrono::microseconds((wide_buffer ? timeout_byte & 0x7f : timeout_byte) % 100);
  const std::uint8_t throttle = in.byte();
  if (throttle % 8 == 0)  // burst 0 (invalid) to 3
    c.throttle = buffered::Throttle{100000.0, static_cast<std::size_t>((throttle >> 3) % 4)};
  input.retry_after = std::chrono::microseconds(25 * (throttle >> 5));
  input.fail_mask = in.byte();
  if (buffer_byte & 0x80) {
    const std::uint8_t sizes_byte = in.byte();
    if (sizes_byte & 1) c.overflow = buffered::OverflowPolicy::drop_oldest;
    const unsigned spread_bits = sizes_byte >> 1 & 7;
    input.sizes.spread = spread_bits == 0 ? 0 : std::size_t{1} << (spread_bits - 1);
    input.byte_size_function = spread_bits != 0;
    auto bound = [](std::uint8_t n, unsigned scale) -> std::size_t {
      if (n == 0) return 0;
      switch (scale) {
        case 0:
          return n;
        case 1:
          return std::size_t{n} * 4;
        case 2:
          return std::size_t{n} * 64;
        default:
          return std::numeric_limits<std::size_t>::max() - n;
      }
    };
    c.max_buffer_bytes = bound(in.byte(), sizes_byte >> 4 & 3);
    c.max_batch_bytes = bound(in.byte(), sizes_byte >> 6 & 3);
  }
  const bool bytes_valid = c.max_buffer_bytes == 0 || c.max_batch_bytes <= c.max_buffer_bytes;

  bool retry_valid = true;
  const unsigned retry_kind = in_flight_byte >> 2 & 7;
  const unsigned backoff_bits = in_flight_byte >> 5;
  if (retry_kind != 0) {
    buffered::Retry r;
    constexpr std::array<int, 8> kInitialUs{1, 2, 5, 10, 20, 35, 50, 100};
    constexpr std::array<double, 4> kMultipliers{1.0, 1.5, 2.0, 4.0};
    constexpr std::array<double, 4> kJitters{0.0, 0.25, 0.5, 1.0};
    r.max_attempts = retry_kind == 7 ? 3 : retry_kind;
    r.initial_backoff = std::chrono::microseconds(kInitialUs[backoff_bits]);
    r.multiplier = kMultipliers[overflow_byte >> 1 & 3];
    r.jitter = kJitters[overflow_byte >> 3 & 3];
    r.max_backoff = r.initial_backoff * (1 + (overflow_byte >> 5));
    if (retry_kind == 7) {
      retry_valid = false;  // one field out of range, chosen by the backoff bits
      switch (backoff_bits) {
        case 0:
          r.max_attempts = 0;
          break;
        case 1:
          r.initial_backoff = 0ns;
          break;
        case 2:
          r.initial_backoff = -1us;
          break;
        case 3:
          r.multiplier = 0.5;
          break;
        case 4:
          r.multiplier = std::numeric_limits<double>::infinity();
          break;
        case 5:
          r.max_backoff = r.initial_backoff - 1ns;
          break;
        case 6:
          r.jitter = 1.5;
          break;
        default:
          r.jitter = std::numeric_limits<double>::quiet_NaN();
          break;
      }
    }
    c.retry = r;
  }

  input.valid = c.buffer_size != 0 && c.max_batch_size != 0 && c.max_in_flight != 0 &&
                (c.max_batch_size == 1 || c.max_batch_wait > 0ns) &&
                (!c.throttle || c.throttle->burst != 0) && retry_valid && bytes_valid;
  input.only_bytes_invalid = !bytes_valid && c.buffer_size != 0 && c.max_batch_size != 0 &&
                             c.max_in_flight != 0 &&
                             (c.max_batch_size == 1 || c.max_batch_wait > 0ns) &&
                             (!c.throttle || c.throttle->burst != 0) && retry_valid;
  switch (form) {
    case 0:
      return run_input<Form<Result::boolean, false, false>>(in, input);
    case 1:
      return run_input<Form<Result::outcome, true, false>>(in, input);
    case 2:
      return run_input<Form<Result::none, false, true>>(in, input);
    case 3:
      return run_input<Form<Result::outcome, false, true>>(in, input);
    case 4:
      return run_input<Form<Result::boolean, true, true>>(in, input);
    default:
      return run_input<Form<Result::none, true, false>>(in, input);
  }
}
