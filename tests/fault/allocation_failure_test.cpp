// Allocation failure at every site, the way SQLite tests out-of-memory (issue 8): each scenario
// is run once to count the allocations its armed calls make, then again for every N from 1 to
// that count + 1 with the Nth allocation failing (once, and from then on), on every thread.
//
// At every point: no hang (a watchdog aborts the binary naming the point), no terminate (a
// terminate handler names the point), no leak (the ASan build), an exception only from the
// constructor (std::bad_alloc) or run() (std::bad_alloc, std::system_error), a run() that threw
// works once retried, and after the final shutdown every accepted event was delivered, failed or
// abandoned, reported exactly once, with Stats agreeing with what the sink and the handler saw.
//
// While a fault is armed nothing here allocates: the sink and the handler count into atomics
// sized up front, outcomes are kept in fixed storage, and gtest is used only once disarmed.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <new>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

#include "../support.hpp"
#include "fault_injection.hpp"

namespace {

using namespace buffered_test;
using buffered_test::fault::Mode;

// ---- the watchdog: a hang or a terminate names the sweep point instead of a bare timeout ----

class Watchdog {
 public:
  static Watchdog& instance() {
    static Watchdog watchdog;
    return watchdog;
  }

  // A sweep point starts: it must be over within `limit`.
  void start(const char* scenario, bool async, std::uint64_t nth, const char* mode,
             Clock::duration limit) {
    scenario_.store(scenario);
    async_.store(async);
    nth_.store(nth);
    mode_.store(mode);
    phase_.store("start");
    deadline_.store((Clock::now() + limit).time_since_epoch().count());
  }
  void phase(const char* name) { phase_.store(name); }
  void stop() { deadline_.store(kNone); }

  ~Watchdog() {
    quit_.store(true);
    thread_.join();
  }

 private:
  static constexpr Clock::rep kNone = std::numeric_limits<Clock::rep>::max();

  Watchdog() : thread_([this] { watch(); }) {
    std::set_terminate([] {
      Watchdog::instance().report("std::terminate");
      std::abort();
    });
  }

  void watch() {
    while (!quit_.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (Clock::now().time_since_epoch().count() > deadline_.load()) {
        report("hang (watchdog)");
        std::abort();
      }
    }
  }

  // fprintf allocates nothing through operator new.
  void report(const char* what) const {
    std::fprintf(stderr,
                 "allocation_failure_test: %s in scenario %s (%s), N=%" PRIu64
                 ", mode %s, during %s\n",
                 what, scenario_.load(), async_.load() ? "async" : "sync", nth_.load(),
                 mode_.load(), phase_.load());
    std::fflush(stderr);
  }

  std::atomic<const char*> scenario_{"none"};
  std::atomic<bool> async_{false};
  std::atomic<std::uint64_t> nth_{0};
  std::atomic<const char*> mode_{"none"};
  std::atomic<const char*> phase_{"none"};
  std::atomic<Clock::rep> deadline_{kNone};
  std::atomic<bool> quit_{false};
  std::thread thread_;
};

// ---- what the backend is driven through ----

// The calls of a backend's life, in order. A scenario arms the fault from one to another.
enum class Phase { construct, offer_before_run, run, offer, flush, stop, settle, destroy };

const char* phase_name(Phase phase) {
  switch (phase) {
    case Phase::construct:
      return "the constructor";
    case Phase::offer_before_run:
      return "offering before run()";
    case Phase::run:
      return "run()";
    case Phase::offer:
      return "offering";
    case Phase::flush:
      return "flush()";
    case Phase::stop:
      return "shutdown()";
    case Phase::settle:
      return "the final shutdown()";
    case Phase::destroy:
      return "the destructor";
  }
  return "?";
}

enum class Load {
  plain,      // every batch delivered at once
  failing,    // every second batch fails: returns false, or throws
  throttled,  // a throttle of one batch per 2 s, burst 1: a shutdown deadline abandons the rest
  blocked,    // every batch waits until the shutdown deadline has passed
};

enum class Stop {
  unbounded,   // shutdown()
  deadline,    // shutdown(kDeadline), then (gate opened) shutdown() to settle
  destructor,  // no shutdown(): the destructor does it
};

// What the armed calls may allocate, by the reference: offering, flush, and a shutdown or
// destructor with nothing to abandon allocate nothing; reporting abandoned events may.
enum class Allocates { some, none, maybe };

struct Scenario {
  const char* name;
  Load load;
  bool runs;     // calls run()
  bool flushes;  // calls flush()
  Stop stop;
  Phase first_armed;
  Phase last_armed;
  Allocates allocates;
};

void PrintTo(const Scenario& scenario, std::ostream* os) { *os << scenario.name; }

constexpr Load kPlain = Load::plain;
constexpr Allocates kSome = Allocates::some;
constexpr Allocates kNone = Allocates::none;
constexpr Allocates kMaybe = Allocates::maybe;

// clang-format off
constexpr std::array kScenarios{
    // One call family armed at a time.
    Scenario{"Construct", kPlain, true, true, Stop::unbounded, Phase::construct, Phase::construct, kSome},
    Scenario{"OfferBeforeRun", kPlain, true, true, Stop::unbounded, Phase::offer_before_run, Phase::offer_before_run, kNone},
    Scenario{"Run", kPlain, true, true, Stop::unbounded, Phase::run, Phase::run, kSome},
    Scenario{"Offer", kPlain, true, true, Stop::unbounded, Phase::offer, Phase::offer, kNone},
    Scenario{"Flush", Load::failing, true, true, Stop::unbounded, Phase::flush, Phase::flush, kNone},
    Scenario{"Shutdown", kPlain, true, false, Stop::unbounded, Phase::stop, Phase::stop, kNone},
    Scenario{"ShutdownDeadlineThrottled", Load::throttled, true, false, Stop::deadline, Phase::stop, Phase::stop, kMaybe},
    Scenario{"ShutdownDeadlineBlockedSink", Load::blocked, true, false, Stop::deadline, Phase::stop, Phase::stop, kMaybe},
    Scenario{"NeverRunShutdown", kPlain, false, false, Stop::unbounded, Phase::stop, Phase::stop, kMaybe},
    Scenario{"NeverRunShutdownDeadline", kPlain, false, false, Stop::deadline, Phase::stop, Phase::stop, kMaybe},
    Scenario{"Destructor", kPlain, true, false, Stop::destructor, Phase::destroy, Phase::destroy, kNone},
    Scenario{"NeverRunDestructor", kPlain, false, false, Stop::destructor, Phase::destroy, Phase::destroy, kMaybe},
    // The whole life armed: a failure in one call meets every later one.
    Scenario{"Lifetime", kPlain, true, true, Stop::unbounded, Phase::construct, Phase::destroy, kSome},
    Scenario{"LifetimeFailingSink", Load::failing, true, true, Stop::unbounded, Phase::construct, Phase::destroy, kSome},
    Scenario{"LifetimeDeadlineThrottled", Load::throttled, true, false, Stop::deadline, Phase::construct, Phase::destroy, kSome},
    Scenario{"LifetimeDeadlineBlockedSink", Load::blocked, true, false, Stop::deadline, Phase::construct, Phase::destroy, kSome},
    Scenario{"LifetimeNeverRun", kPlain, false, false, Stop::unbounded, Phase::construct, Phase::destroy, kSome},
    Scenario{"LifetimeDestructor", kPlain, true, true, Stop::destructor, Phase::construct, Phase::destroy, kSome},
};
// clang-format on

// Ids 0..5 are offered before run(), 6..17 after it. With a shutdown deadline, more groups of six
// follow until the sink or the throttle holds the worker up and the buffer is full, so that events
// are still queued (in the buffer, and in the worker's batch) when the deadline passes.
constexpr std::uint64_t kEventsBeforeRun = 6;
constexpr std::uint64_t kEventsAfterRun = 18;
constexpr std::uint64_t kEvents = 60;
constexpr std::size_t kBufferSize = 8;
constexpr std::size_t kMaxBatch = 4;
constexpr std::size_t kMaxInFlight = 3;
constexpr auto kDeadline = std::chrono::milliseconds(20);
constexpr auto kFlushTimeout = std::chrono::seconds(10);
constexpr auto kPointLimit = std::chrono::seconds(15);  // a sweep point takes milliseconds

// What the sink and the handler saw, per event id. Sized up front: nothing allocates later.
struct Tally {
  explicit Tally(std::size_t events)
      : delivered(events), failed(events), abandoned(events), refused(events) {}
  std::vector<std::atomic<int>> delivered;  // by the sink
  std::vector<std::atomic<int>> failed;     // by the handler: delegate_failed
  std::vector<std::atomic<int>> abandoned;  // by the handler: abandoned
  std::vector<std::atomic<int>> refused;    // by the handler: buffer_full or shut_down
  std::atomic<int> strays{0};               // ids never offered, or an unknown ErrorKind
  std::atomic<int> batches{0};
  std::atomic<int> run_calls{0};
  std::atomic<int> shutdown_calls{0};

  static std::uint64_t sum(const std::vector<std::atomic<int>>& counts) {
    std::uint64_t total = 0;
    for (const auto& c : counts) total += static_cast<std::uint64_t>(c.load());
    return total;
  }
  void count(std::vector<std::atomic<int>>& counts, const Event& e) {
    if (e.seq < counts.size()) {
      counts[e.seq].fetch_add(1);
    } else {
      strays.fetch_add(1);
    }
  }
};

struct SinkFailure {};  // thrown by the sink; allocates nothing

class CountingSink {
 public:
  CountingSink(Tally& tally, Gate* gate, bool fail_some)
      : tally_(&tally), gate_(gate), fail_some_(fail_some) {}

  bool process_events(std::span<Event> events) {
    if (gate_ != nullptr) gate_->wait();
    const int batch = tally_->batches.fetch_add(1);
    if (fail_some_ && batch % 4 == 1) return false;
    if (fail_some_ && batch % 4 == 3) throw SinkFailure{};
    for (const Event& e : events) tally_->count(tally_->delivered, e);
    return true;
  }
  void run() { tally_->run_calls.fetch_add(1); }
  void shutdown() { tally_->shutdown_calls.fetch_add(1); }

 private:
  Tally* tally_;
  Gate* gate_;
  bool fail_some_;
};

// One pointer: std::function keeps it in place, without allocating.
struct CountingHandler {
  Tally* tally;
  void operator()(buffered::ErrorKind kind, std::span<const Event> events) const {
    for (const Event& e : events) {
      if (kind == buffered::ErrorKind::buffer_full || kind == buffered::ErrorKind::shut_down) {
        tally->count(tally->refused, e);
      } else if (kind == buffered::ErrorKind::delegate_failed) {
        tally->count(tally->failed, e);
      } else if (kind == buffered::ErrorKind::abandoned) {
        tally->count(tally->abandoned, e);
      } else {
        tally->strays.fetch_add(1);
      }
    }
  }
};

using Backend = buffered::BufferedBackend<Event, CountingSink>;

// The fault for one sweep point: count only, or fail the nth allocation.
struct Fault {
  bool count_only;
  std::uint64_t nth;
  Mode mode;
};

const char* mode_name(const Fault& fault) {
  if (fault.count_only) return "count";
  return fault.mode == Mode::once ? "once" : "from_then_on";
}

// One sweep point: drives a backend through the scenario with the fault armed over its armed
// phases, then (disarmed) checks everything. execute() returns the allocations counted.
class Trial {
 public:
  Trial(const Scenario& scenario, bool async, Fault fault)
      : scenario_(scenario),
        async_(async),
        fault_(fault),
        tally_(kEvents),
        offered_(kEvents, 0),
        accepted_(kEvents, 0) {}

  Trial(const Trial&) = delete;
  Trial& operator=(const Trial&) = delete;

  ~Trial() {
    disarm();
    Watchdog::instance().stop();
    gate_.open();
    backend_.reset();
  }

  std::uint64_t execute() {
    Watchdog::instance().start(scenario_.name, async_, fault_.nth, mode_name(fault_), kPointLimit);
    phase(Phase::construct, [&] { construct(); });
    phase(Phase::offer_before_run, [&] {
      if (backend_) offer(0, kEventsBeforeRun);
    });
    phase(Phase::run, [&] {
      if (backend_ && scenario_.runs) start("run()");
    });
    phase(Phase::offer, [&] {
      if (!backend_) return;
      offer(kEventsBeforeRun, kEventsAfterRun);
      if (scenario_.stop == Stop::deadline && running_) fill_up(kEventsAfterRun);
    });
    phase(Phase::flush, [&] {
      if (backend_ && scenario_.flushes) flush();
    });
    phase(Phase::stop, [&] {
      if (backend_ && scenario_.stop != Stop::destructor) stop();
    });
    gate_.open();  // the blocked sink's calls may end now
    phase(Phase::settle, [&] {
      if (backend_ && scenario_.stop != Stop::destructor) settle();
    });
    phase(Phase::destroy, [&] {
      if (backend_) {
        must_not_throw("the destructor", [&] { backend_.reset(); });
      }
    });
    disarm();
    Watchdog::instance().stop();
    verify();
    return counted_;
  }

  bool fault_fired() const { return failed_ != 0; }

 private:
  // ---- driving (runs armed: allocates nothing) ----

  template <class Body>
  void phase(Phase p, Body body) {
    Watchdog::instance().phase(phase_name(p));
    if (p == scenario_.first_armed) arm();
    body();
    if (p == scenario_.last_armed) disarm();
    // A run() that threw must work once the fault is gone (unless shutdown came first).
    if (!armed_ && run_threw_ && !retried_ && !stopped_ && backend_) {
      retried_ = true;
      start("run() retried after disarming");
    }
  }

  void arm() {
    if (fault_.count_only) {
      fault::count_allocations();
    } else {
      fault::fail_allocation(fault_.nth, fault_.mode);
    }
    armed_ = true;
  }

  void disarm() {
    if (!armed_) return;
    armed_ = false;
    counted_ = fault::disarm_allocations();
    failed_ = fault::failed_allocations();
  }

  void unexpected(const char* call, const char* exception) {
    if (unexpected_count_ < unexpected_.size()) unexpected_[unexpected_count_] = {call, exception};
    ++unexpected_count_;
  }

  // Runs `f`, recording any exception as a violation.
  template <class F>
  bool must_not_throw(const char* call, F f) {
    try {
      f();
      return true;
    } catch (const std::bad_alloc&) {
      unexpected(call, "std::bad_alloc");
    } catch (const std::system_error&) {
      unexpected(call, "std::system_error");
    } catch (const std::exception&) {
      unexpected(call, "a std::exception");
    } catch (...) {
      unexpected(call, "a non-standard exception");
    }
    return false;
  }

  buffered::BatchConfig config() const {
    buffered::BatchConfig c;
    c.buffer_size = kBufferSize;
    c.max_batch_size = kMaxBatch;
    c.max_batch_wait = std::chrono::hours(1);  // batches go when full, or at flush/shutdown
    c.async_delegate = async_;
    c.max_in_flight = kMaxInFlight;
    if (scenario_.load == Load::throttled) c.throttle = buffered::Throttle{0.5, 1};
    return c;
  }

  void construct() {
    try {
      backend_.emplace(CountingSink(tally_, scenario_.load == Load::blocked ? &gate_ : nullptr,
                                    scenario_.load == Load::failing),
                       config(), CountingHandler{&tally_});
    } catch (const std::bad_alloc&) {
      construct_threw_ = true;  // allowed: nothing was made
    } catch (const std::system_error&) {
      unexpected("the constructor", "std::system_error");
    } catch (const std::exception&) {
      unexpected("the constructor", "a std::exception");
    } catch (...) {
      unexpected("the constructor", "a non-standard exception");
    }
  }

  void start(const char* call) {
    try {
      backend_->run();
      running_ = true;
      run_threw_ = false;
    } catch (const std::bad_alloc&) {
      if (retried_) unexpected(call, "std::bad_alloc");
      run_threw_ = true;  // allowed the first time: retried once disarmed
    } catch (const std::system_error&) {
      if (retried_) unexpected(call, "std::system_error");
      run_threw_ = true;
    } catch (const std::exception&) {
      unexpected(call, "a std::exception");
    } catch (...) {
      unexpected(call, "a non-standard exception");
    }
  }

  void note(std::uint64_t id, bool accepted) {
    offered_[id] = 1;
    accepted_[id] = accepted ? 1 : 0;
  }

  // Offers [from, to) in groups of six: two by const&, two by &&, two in one span.
  void offer(std::uint64_t from, std::uint64_t to) {
    for (std::uint64_t id = from; id + 6 <= to; id += 6) {
      must_not_throw("process_event(const Event&)", [&] {
        for (std::uint64_t i = id; i < id + 2; ++i) {
          const Event e = ev(i);
          note(i, backend_->process_event(e));
        }
      });
      must_not_throw("process_event(Event&&)", [&] {
        for (std::uint64_t i = id + 2; i < id + 4; ++i) {
          Event e = ev(i);
          note(i, backend_->process_event(std::move(e)));
        }
      });
      must_not_throw("process_events", [&] {
        const std::array<Event, 2> two{ev(id + 4), ev(id + 5)};
        const std::size_t n = backend_->process_events(std::span<const Event>(two));
        note(id + 4, n >= 1);
        note(id + 5, n >= 2);
      });
    }
  }

  // True if the worker can take no more: the sink holds every call it can make (async: and the
  // worker holds a full batch for the next), or the throttle has no token for its full batch.
  bool held_up() const {
    const buffered::Stats s = backend_->stats();
    if (scenario_.load == Load::blocked) {
      const std::size_t calls = async_ ? kMaxInFlight : 1;
      return s.in_flight == calls && s.pending >= (async_ ? calls + 1 : calls) * kMaxBatch;
    }
    return s.batches >= 1 && s.pending >= kMaxBatch;
  }

  // Offers groups from `next` on until the worker is held up and the buffer refuses. Bounded: on
  // a slow machine it only makes the test weaker.
  void fill_up(std::uint64_t next) {
    for (; next + 6 <= kEvents; next += 6) {
      // Wait until the worker is held up, or has taken everything and needs more.
      const auto limit = Clock::now() + std::chrono::seconds(1);
      bool stuck = held_up();
      while (!stuck && backend_->stats().queued != 0 && Clock::now() < limit) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        stuck = held_up();
      }
      offer(next, next + 6);
      bool refused = false;
      for (std::uint64_t id = next; id < next + 6; ++id) refused = refused || !accepted_[id];
      if (stuck && refused) return;
    }
  }

  void flush() {
    flush_called_ = true;
    flush_while_running_ = running_;
    must_not_throw("flush()", [&] { flush_result_ = backend_->flush(kFlushTimeout); });
  }

  void stop() {
    ran_at_stop_ = running_;
    stopped_ = true;
    const auto t0 = Clock::now();
    must_not_throw("shutdown()", [&] {
      stop_result_ =
          scenario_.stop == Stop::deadline ? backend_->shutdown(kDeadline) : backend_->shutdown();
    });
    stop_took_ = Clock::now() - t0;
    stop_returned_ = true;
  }

  void settle() {
    must_not_throw("shutdown() again, to settle", [&] { backend_->shutdown(); });
    stats_ = backend_->stats();
  }

  // ---- checking (disarmed) ----

  void verify() {
    for (std::size_t i = 0; i < std::min(unexpected_count_, unexpected_.size()); ++i) {
      ADD_FAILURE() << unexpected_[i].call << " threw " << unexpected_[i].exception
                    << " (only the constructor and run() may throw)";
    }
    EXPECT_LE(unexpected_count_, unexpected_.size()) << "more violations than shown";
    EXPECT_EQ(tally_.strays.load(), 0) << "events never offered, or an unknown ErrorKind";

    const bool ran = scenario_.stop == Stop::destructor ? running_ : ran_at_stop_;
    if (construct_threw_) {
      EXPECT_EQ(Tally::sum(tally_.delivered) + Tally::sum(tally_.failed) +
                    Tally::sum(tally_.abandoned) + Tally::sum(tally_.refused),
                0u);
      EXPECT_EQ(tally_.run_calls.load(), 0);
      return;
    }

    // Per event: an accepted one ended exactly once; a refused one was reported refused once.
    std::string problems;
    std::uint64_t accepted = 0;
    std::uint64_t refused = 0;
    for (std::uint64_t id = 0; id < kEvents; ++id) {
      const int delivered = tally_.delivered[id].load();
      const int failed = tally_.failed[id].load();
      const int abandoned = tally_.abandoned[id].load();
      const int refusals = tally_.refused[id].load();
      const int ended = delivered + failed + abandoned;
      const bool ok = !offered_[id]   ? ended + refusals == 0
                      : accepted_[id] ? ended == 1 && refusals == 0
                                      : ended == 0 && refusals == 1;
      if (offered_[id]) (accepted_[id] ? accepted : refused) += 1;
      if (!ok) {
        problems += "event " + std::to_string(id) +
                    (!offered_[id]   ? " (never offered)"
                     : accepted_[id] ? " (accepted)"
                                     : " (refused)") +
                    ": delivered " + std::to_string(delivered) + ", failed " +
                    std::to_string(failed) + ", abandoned " + std::to_string(abandoned) +
                    ", refused " + std::to_string(refusals) + "\n";
      }
    }
    EXPECT_TRUE(problems.empty()) << problems;

    // The delegate's lifecycle: shut down exactly as often as it was started.
    EXPECT_EQ(tally_.run_calls.load(), tally_.shutdown_calls.load())
        << "delegate.run() and delegate.shutdown() calls do not pair up";
    EXPECT_LE(tally_.run_calls.load(), 2);

    const std::uint64_t delivered = Tally::sum(tally_.delivered);
    const std::uint64_t failed = Tally::sum(tally_.failed);
    const std::uint64_t abandoned = Tally::sum(tally_.abandoned);
    if (scenario_.runs && scenario_.last_armed < Phase::stop) {
      EXPECT_TRUE(ran) << "run() did not work once the fault was gone";
    }
    if (!ran) {
      EXPECT_EQ(delivered + failed, 0u) << "a backend that never ran delivered";
      EXPECT_EQ(tally_.batches.load(), 0);
      EXPECT_EQ(abandoned, accepted);
    } else if (scenario_.stop != Stop::deadline) {
      EXPECT_EQ(abandoned, 0u) << "a shutdown without deadline abandoned events";
      EXPECT_EQ(delivered + failed, accepted);
    }
    if (ran && scenario_.load == Load::failing && accepted > kMaxBatch) {
      EXPECT_GT(failed, 0u) << "the sink failed a batch, but no event was reported failed";
    }

    if (flush_called_ && flush_while_running_) {
      EXPECT_TRUE(flush_result_) << "flush() on a running backend did not finish";
    }
    if (stop_returned_) {
      if (scenario_.stop == Stop::unbounded) {
        EXPECT_EQ(stop_result_, ran) << "shutdown() returns true exactly when it ran and "
                                        "abandoned nothing";
      } else {
        if (stop_result_) {
          EXPECT_EQ(abandoned, 0u) << "shutdown(deadline) returned true, yet abandoned some";
        }
        EXPECT_LT(stop_took_, std::chrono::seconds(5)) << "shutdown(deadline) overran";
        // Past the deadline only running delegate calls can still hold events: the rest of what
        // was accepted must have been abandoned. (Throttled: 1 token, 1 more in 2 s.)
        const std::uint64_t capacity = scenario_.load == Load::throttled ? 2 * kMaxBatch
                                       : scenario_.load == Load::blocked
                                           ? (async_ ? kMaxInFlight : 1) * kMaxBatch
                                           : kEvents;
        if (ran && accepted > capacity) {
          EXPECT_GT(abandoned, 0u) << "the deadline abandoned nothing";
          EXPECT_FALSE(stop_result_);
        }
      }
    }

    if (stats_) {
      const buffered::Stats& s = *stats_;
      EXPECT_EQ(s.accepted, accepted);
      EXPECT_EQ(s.rejected_full + s.rejected_shut_down, refused);
      EXPECT_EQ(s.delivered, delivered) << "Stats::delivered is not what the sink saw";
      EXPECT_EQ(s.failed, failed) << "Stats::failed is not what the handler saw";
      EXPECT_EQ(s.abandoned, abandoned) << "Stats::abandoned is not what the handler saw";
      EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.pending);
      EXPECT_EQ(s.pending, 0u);
      EXPECT_EQ(s.queued, 0u);
      EXPECT_EQ(s.in_flight, 0u);
    }
  }

  struct Violation {
    const char* call = nullptr;
    const char* exception = nullptr;
  };

  const Scenario& scenario_;
  const bool async_;
  const Fault fault_;
  Tally tally_;
  Gate gate_;
  std::vector<char> offered_;
  std::vector<char> accepted_;
  std::array<Violation, 16> unexpected_{};
  std::size_t unexpected_count_ = 0;

  bool armed_ = false;
  std::uint64_t counted_ = 0;
  std::uint64_t failed_ = 0;

  bool construct_threw_ = false;
  bool running_ = false;
  bool run_threw_ = false;
  bool retried_ = false;
  bool stopped_ = false;
  bool ran_at_stop_ = false;
  bool flush_called_ = false;
  bool flush_while_running_ = false;
  bool flush_result_ = false;
  bool stop_returned_ = false;
  bool stop_result_ = false;
  Clock::duration stop_took_{};
  std::optional<buffered::Stats> stats_;

  std::optional<Backend> backend_;  // last: destroyed first
};

// ---- the sweep ----

using Param = std::tuple<Scenario, bool>;

class AllocationFailure : public ::testing::TestWithParam<Param> {};

TEST_P(AllocationFailure, EveryAllocationFailsInTurn) {
  const Scenario& scenario = std::get<0>(GetParam());
  const bool async = std::get<1>(GetParam());
  Watchdog::instance();  // its thread exists before anything is counted

  std::uint64_t count = 0;
  {
    SCOPED_TRACE("counting the allocations, none failing");
    Trial trial(scenario, async, Fault{true, 0, Mode::once});
    count = trial.execute();
  }
  if (scenario.allocates == Allocates::some) {
    EXPECT_GT(count, 0u) << "the armed calls allocate nothing?";
  } else if (scenario.allocates == Allocates::none) {
    EXPECT_EQ(count, 0u) << "the armed calls are documented not to allocate";
  }
  if (HasFailure()) return;

  for (const Mode mode : {Mode::once, Mode::from_then_on}) {
    std::uint64_t fired = 0;
    for (std::uint64_t nth = 1; nth <= count + 1; ++nth) {
      const Fault fault{false, nth, mode};
      SCOPED_TRACE(std::string("allocation N=") + std::to_string(nth) + " of " +
                   std::to_string(count) + " fails, mode " + mode_name(fault));
      Trial trial(scenario, async, fault);
      trial.execute();
      if (trial.fault_fired()) ++fired;
      if (HasFailure()) return;  // the first failing point says what is wrong
    }
    if (scenario.allocates == Allocates::some) {
      EXPECT_GT(fired, 0u) << "no allocation was ever failed: the sweep is void";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sweep, AllocationFailure,
                         ::testing::Combine(::testing::ValuesIn(kScenarios), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<Param>& param_info) {
                           return std::string(std::get<0>(param_info.param).name) +
                                  (std::get<1>(param_info.param) ? "_async" : "_sync");
                         });

}  // namespace
