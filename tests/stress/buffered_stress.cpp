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
// After each round the run checks that
//   - every accepted id reached the delegate or the error handler exactly once, every refused id
//     was reported exactly once, with the right kind, and an id whose offer threw was neither;
//   - the delegate saw each producer's ids in increasing order where the contract promises it
//     (sync, or async with max_in_flight == 1), and inside every batch otherwise;
//   - Stats agree with what was observed, and accepted == delivered + failed + abandoned +
//     pending after every shutdown (pending == 0 after an unbounded one, and after one that
//     returned true); flush() on a shut-down backend returns at once;
//   - a failed run() is undone (no threads left, delegate.shutdown() matches delegate.run()), a
//     later run() makes exactly the worker and max_in_flight dispatch threads, delegate.flush()
//     never runs outside delegate.run() .. delegate.shutdown();
//   - no call hung: a watchdog ends the run, printing the seed, if a round stalls; a terminate
//     prints the seed too.
// Prints one summary line; exits non-zero on any violation.
#include <dirent.h>
#include <buffered/buffered_backend.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
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
#include <unordered_map>
#include <vector>

#include "../fault/fault_injection.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace fault = buffered_test::fault;

struct Event {
  std::uint64_t id = 0;
  std::string payload;  // heap-allocated when long: sanitizers see every copy, move and free
};

std::string payload_for(std::uint64_t id) {
  std::string p = std::to_string(id);
  if (id % 3 == 0) p.append(40, 'x');  // beyond the small-string buffer
  return p;
}

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
};

std::atomic<std::uint64_t> current_seed{0};  // of the round running now, for the messages

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

// ---- one round ----

// What one round observed, filled by the delegate and the error handler.
struct Observed {
  std::mutex mu;
  std::vector<std::vector<std::uint64_t>> calls;  // ids per delegate call, in call-start order
  std::vector<bool> call_failed;
  std::unordered_map<std::uint64_t, int> delivered, failed_by_delegate;
  std::unordered_map<std::uint64_t, int> reported_full, reported_shut_down, reported_failed,
      reported_abandoned;
  std::uint64_t faults = 0;
  std::uint64_t bad_payloads = 0;
  // Delegate lifecycle: run() calls that returned, shutdown() calls, flush() calls outside them.
  std::atomic<std::uint64_t> runs{0}, shutdowns{0}, bad_flushes{0}, bad_shutdowns{0};
};

int times_in(const std::unordered_map<std::uint64_t, int>& seen, std::uint64_t id) {
  const auto it = seen.find(id);
  return it == seen.end() ? 0 : it->second;
}

enum class Fault { none, throws, returns_false, slow, blocks, stuck };

// Where a fault round injects allocation failures.
struct FaultPlan {
  bool construct = false, run = false, offers = false, flush = false, shutdown = false,
       library_threads = false, delegate_run_throws = false;
};

struct Sink;

// Everything the delegate needs, shared with the round.
struct RoundShared {
  Observed obs;
  std::mt19937_64 rng;
  std::mutex rng_mu;
  double fault_rate = 0;
  std::int64_t stuck_call = -1;  // this call (by start order) blocks long, if >= 0
  std::uint64_t calls_started = 0;
  FaultPlan plan;
  std::chrono::microseconds run_nap{0};  // delegate.run() takes this long
  std::function<void()> in_run;          // called from delegate.run(): re-enters the backend
};

// The delegate: checks its lifecycle and records every batch.
struct Sink {
  RoundShared& sh;

  bool process_events(std::span<Event> batch) {
    library_thread_fault.settle();
    const HoldFault hold;
    Fault fault = Fault::none;
    std::chrono::microseconds nap{0};
    bool arm_after = false;
    {
      std::lock_guard<std::mutex> lock(sh.rng_mu);
      std::uniform_real_distribution<double> u(0, 1);
      const double r = u(sh.rng);
      if (static_cast<std::int64_t>(sh.calls_started++) == sh.stuck_call)
        fault = Fault::stuck, nap = 250ms;
      else if (r < sh.fault_rate * 0.3)
        fault = Fault::throws;
      else if (r < sh.fault_rate * 0.6)
        fault = Fault::returns_false;
      else if (r < sh.fault_rate * 0.9)
        fault = Fault::slow, nap = std::chrono::microseconds(sh.rng() % 500);
      else if (r < sh.fault_rate)
        fault = Fault::blocks, nap = std::chrono::microseconds(2000 + sh.rng() % 18000);
      arm_after = sh.plan.library_threads && u(sh.rng) < 0.3;
    }
    std::vector<std::uint64_t> ids;
    ids.reserve(batch.size());
    std::uint64_t bad = 0;
    for (const Event& e : batch) {
      ids.push_back(e.id);
      if (e.payload != payload_for(e.id)) ++bad;
    }
    const bool fails = fault == Fault::throws || fault == Fault::returns_false;
    {
      std::lock_guard<std::mutex> lock(sh.obs.mu);
      sh.obs.calls.push_back(std::move(ids));
      sh.obs.call_failed.push_back(fails);
      sh.obs.bad_payloads += bad;
      if (fault != Fault::none) ++sh.obs.faults;
      for (const Event& e : batch) ++(fails ? sh.obs.failed_by_delegate : sh.obs.delivered)[e.id];
    }
    if (nap.count() > 0) std::this_thread::sleep_for(nap);
    // The library must not allocate on this thread after the call: the next allocation fails.
    if (fault == Fault::throws) {
      const std::runtime_error error("injected");  // made before the arming: it allocates
      if (arm_after) library_thread_fault.arm();
      throw error;
    }
    if (arm_after) library_thread_fault.arm();
    return fault != Fault::returns_false;
  }

  void run() {
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
    const HoldFault hold;
    if (sh.obs.shutdowns.fetch_add(1) + 1 > sh.obs.runs.load()) sh.obs.bad_shutdowns.fetch_add(1);
  }

  void flush() {
    const HoldFault hold;
    if (sh.obs.runs.load() <= sh.obs.shutdowns.load()) sh.obs.bad_flushes.fetch_add(1);
  }
};

class Round {
 public:
  Round(std::uint64_t seed, bool verbose)
      : rng_(seed), fault_rng_(seed ^ 0x9e3779b97f4a7c15ull), seed_(seed), verbose_(verbose) {}

  // Runs one round; returns the number of violations found.
  std::uint64_t run(Totals& totals) {
    buffered::BatchConfig c = random_config();
    const std::uint32_t producers = pick(1, 4);
    const std::uint32_t per_producer = pick(50, 3000);
    const bool run_late = chance(0.1);
    const bool never_run = chance(0.03);
    // 0: shutdown(), 1: shutdown(deadline), 2: two callers, 3: the destructor alone (after the
    // producers finish, so not for a backend that never runs: its blocked producers would wait
    // for a shutdown that only comes after them).
    const int shutdown_style = static_cast<int>(pick(0, never_run ? 2 : 3));
    const auto shutdown_after = std::chrono::microseconds(pick(0, 30000));
    const auto deadline = std::chrono::microseconds(pick(0, 20000));
    RoundShared sh;
    sh.fault_rate = chance(0.5) ? 0.0 : 0.1;
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
    const bool stall_probe = big_batch && !run_late && !never_run && !c.throttle &&
                             c.overflow == buffered::OverflowPolicy::block &&
                             c.block_timeout == std::chrono::nanoseconds::max() && chance(0.5);
    if (stall_probe) c.max_batch_wait = 5s;
    // A shutdown from another thread while run() is starting (delegate.run() takes a while).
    const bool race_run = run_late && !never_run && chance(0.3);
    if (race_run) sh.run_nap = std::chrono::microseconds(pick(0, 3000));
    const auto race_after = std::chrono::microseconds(pick(0, 4000));
    const bool race_deadline = chance(0.5);
    // delegate.run() calls flush() and stats() on its own backend: neither may wait for run().
    const bool reenter_run = chance(0.2);

    sh.rng.seed(rng_());
    std::vector<std::mt19937_64> producer_rngs;
    for (std::uint32_t p = 0; p < producers; ++p) producer_rngs.emplace_back(rng_());
    Observed& obs = sh.obs;
    Sink sink{sh};

    std::uint64_t v = 0;
    std::mutex violation_mu;
    auto violation = [&](const std::string& what) {
      std::lock_guard<std::mutex> lock(violation_mu);
      ++v;
      if (v <= 5) std::fprintf(stderr, "VIOLATION seed=%" PRIu64 ": %s\n", seed_, what.c_str());
    };
    std::atomic<std::uint64_t> alloc_armed{0}, alloc_failed{0};
    const std::uint64_t library_fired_before = library_thread_faults_fired.load();

    auto on_error = [&obs](buffered::ErrorKind kind, std::span<const Event> events) {
      const HoldFault hold;
      std::lock_guard<std::mutex> lock(obs.mu);
      auto& into = kind == buffered::ErrorKind::buffer_full       ? obs.reported_full
                   : kind == buffered::ErrorKind::shut_down       ? obs.reported_shut_down
                   : kind == buffered::ErrorKind::delegate_failed ? obs.reported_failed
                                                                  : obs.reported_abandoned;
      for (const Event& e : events) {
        ++into[e.id];
        if (kind != buffered::ErrorKind::delegate_failed && e.payload != payload_for(e.id))
          ++obs.bad_payloads;
      }
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

    std::vector<std::vector<std::uint64_t>> accepted(producers), refused(producers),
        not_offered(producers);
    buffered::Stats stats{};
    using Backend = buffered::BufferedBackend<Event, Sink&>;
    std::optional<Backend> backend;

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
        backend.emplace(sink, c, on_error);
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

    // run(): retried after a failure, which must leave nothing running.
    const std::size_t threads_before = run_late || never_run ? 0 : stable_thread_count();
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

    std::atomic<std::uint32_t> producers_done{0};
    {
      if (!run_late && !never_run) start(false, false);
      std::atomic<bool> stop_producing{false};
      std::vector<std::thread> threads;
      for (std::uint32_t p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
          auto& prng = producer_rngs[p];
          std::uint32_t seq = 0;
          int after_shutdown = 0;
          while (seq < per_producer && after_shutdown < 3) {
            if (stop_producing.load(std::memory_order_relaxed)) ++after_shutdown;
            const unsigned op = static_cast<unsigned>(prng() % (stall_probe ? 95 : 100));
            const bool inject = plan.offers && prng() % 10 == 0;
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
                for (std::size_t k = 0; k < n; ++k)
                  (k < taken ? accepted : refused)[p].push_back(span[k].id);
                if (fired) violation("process_events allocated (failure swallowed)");
              }
              seq += n;
            } else {
              const auto timeout = std::chrono::microseconds(prng() % 2000);
              ThreadFault f(alloc_armed, alloc_failed, plan.flush && prng() % 4 == 0);
              try {
                backend->flush(timeout);
              } catch (...) {
                f.disarm();
                violation("flush() threw");
                continue;
              }
              if (f.disarm()) violation("flush() allocated (an injected failure fired in it)");
            }
            if (prng() % 64 == 0) std::this_thread::yield();
          }
          producers_done.fetch_add(1);
        });
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
      std::this_thread::sleep_for(shutdown_after);
      if (run_late && !never_run) {
        std::thread racer;
        if (race_run) {
          racer = std::thread([&] {
            std::this_thread::sleep_for(race_after);
            if (race_deadline) {
              backend->shutdown(deadline);
            } else {
              backend->shutdown();
            }
          });
        }
        start(true, race_run);
        if (racer.joinable()) racer.join();
      }
      std::this_thread::sleep_for(shutdown_after / 2);
      stop_producing = true;

      // A shutdown must neither throw nor allocate.
      auto guarded_shutdown = [&](std::optional<std::chrono::microseconds> timeout) {
        bool result = false;
        ThreadFault f(alloc_armed, alloc_failed, plan.shutdown && fault_chance(0.5));
        try {
          result = timeout ? backend->shutdown(*timeout) : backend->shutdown();
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
      for (auto& t : threads) t.join();
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
    std::uint64_t n_accepted = 0, n_refused = 0, n_not_offered = 0;
    for (std::uint32_t p = 0; p < producers; ++p) {
      n_accepted += accepted[p].size();
      n_refused += refused[p].size();
      n_not_offered += not_offered[p].size();
      for (std::uint64_t id : accepted[p]) {
        const int times = times_in(obs.delivered, id) + times_in(obs.failed_by_delegate, id) +
                          times_in(obs.reported_abandoned, id);
        if (times != 1)
          violation("accepted id " + std::to_string(id) + " seen " + std::to_string(times) +
                    " times");
        if (times_in(obs.failed_by_delegate, id) != times_in(obs.reported_failed, id)) {
          violation("failed id " + std::to_string(id) + " not reported exactly once");
        }
      }
      for (std::uint64_t id : refused[p]) {
        const int times = times_in(obs.reported_full, id) + times_in(obs.reported_shut_down, id);
        if (times != 1)
          violation("refused id " + std::to_string(id) + " reported " + std::to_string(times) +
                    " times");
        if (times_in(obs.delivered, id) + times_in(obs.failed_by_delegate, id) +
                times_in(obs.reported_abandoned, id) !=
            0) {
          violation("refused id " + std::to_string(id) + " was also accepted");
        }
      }
      for (std::uint64_t id : not_offered[p]) {
        const int times = times_in(obs.delivered, id) + times_in(obs.failed_by_delegate, id) +
                          times_in(obs.reported_abandoned, id) + times_in(obs.reported_full, id) +
                          times_in(obs.reported_shut_down, id);
        if (times != 0)
          violation("id " + std::to_string(id) + " whose copy threw was seen " +
                    std::to_string(times) + " times");
      }
    }
    std::uint64_t reported_failed_total = 0;
    for (const auto& [id, n] : obs.reported_failed)
      reported_failed_total += static_cast<std::uint64_t>(n);
    if (reported_failed_total != obs.failed_by_delegate.size())
      violation("delegate_failed reports do not match failed batches");
    if (obs.bad_payloads != 0)
      violation(std::to_string(obs.bad_payloads) + " events arrived with a wrong payload");

    // Order: per producer across calls where promised, and inside every call. Size: a batch
    // holds at most min(max_batch_size, buffer_size) events.
    const bool ordered = !c.async_delegate || c.max_in_flight == 1;
    const std::size_t batch_limit = std::min(c.max_batch_size, c.buffer_size);
    std::vector<std::int64_t> last(producers, -1);
    for (const auto& call : obs.calls) {
      std::vector<std::int64_t> in_call(producers, -1);
      for (std::uint64_t id : call) {
        const auto p = static_cast<std::uint32_t>(id >> 32);
        const auto seq = static_cast<std::int64_t>(id & 0xffffffffu);
        if (seq <= in_call[p]) violation("order broken inside a batch");
        in_call[p] = seq;
        if (ordered) {
          if (seq <= last[p])
            violation("order broken across batches for producer " + std::to_string(p));
          last[p] = seq;
        }
      }
      if (call.empty()) violation("an empty batch reached the delegate");
      if (call.size() > batch_limit) {
        violation("a batch of " + std::to_string(call.size()) + " events, limit " +
                  std::to_string(batch_limit));
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

    std::uint64_t delivered = obs.delivered.size(), failed = obs.failed_by_delegate.size(),
                  abandoned = obs.reported_abandoned.size();
    if (shutdown_style != 3) {
      if (stats.accepted != n_accepted)
        violation("Stats.accepted " + std::to_string(stats.accepted) +
                  " != " + std::to_string(n_accepted));
      if (stats.delivered != delivered) violation("Stats.delivered mismatch");
      if (stats.failed != failed) violation("Stats.failed mismatch");
      if (stats.abandoned != abandoned) violation("Stats.abandoned mismatch");
      if (stats.rejected_full != obs.reported_full.size())
        violation("Stats.rejected_full mismatch");
      if (stats.rejected_shut_down != obs.reported_shut_down.size())
        violation("Stats.rejected_shut_down mismatch");
      if (stats.accepted != stats.delivered + stats.failed + stats.abandoned + stats.pending)
        violation("accounting identity broken");
      if (stats.batches != obs.calls.size()) violation("Stats.batches mismatch");
      if (stats.queued != 0 || stats.in_flight != 0) violation("work left after shutdown");
    }
    if (never_run && !obs.calls.empty()) violation("a never-run backend called its delegate");

    if (verbose_) {
      std::fprintf(stderr,
                   "round seed=%" PRIu64
                   " producers=%u per=%u buffer=%zu batch=%zu async=%d inflight=%zu "
                   "block=%d throttle=%d shutdown=%d accepted=%" PRIu64 " refused=%" PRIu64
                   " not_offered=%" PRIu64 " abandoned=%" PRIu64 " alloc_armed=%" PRIu64
                   " alloc_failed=%" PRIu64 "%s%s%s%s\n",
                   seed_, producers, per_producer, c.buffer_size, c.max_batch_size,
                   c.async_delegate, c.max_in_flight, c.overflow == buffered::OverflowPolicy::block,
                   c.throttle.has_value(), shutdown_style, n_accepted, n_refused, n_not_offered,
                   abandoned, alloc_armed.load(), alloc_failed.load(),
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

  // After every shutdown() returned: accepted == delivered + failed + abandoned + pending. A
  // delegate call that outlived a deadline may still settle its events meanwhile, and the
  // counters are read one by one, so a mismatch counts only if it stays, unchanged, for 50 ms
  // (a call that outlives a deadline runs for 250 ms here). After true: nothing is pending.
  template <class Backend, class Violation>
  static void check_shut_down(Backend& backend, bool returned_true, Violation& violation) {
    auto same = [](const buffered::Stats& a, const buffered::Stats& b) {
      return a.accepted == b.accepted && a.delivered == b.delivered && a.failed == b.failed &&
             a.abandoned == b.abandoned && a.pending == b.pending;
    };
    auto holds = [](const buffered::Stats& s) {
      return s.accepted == s.delivered + s.failed + s.abandoned + s.pending;
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
                  " + abandoned " + std::to_string(s.abandoned) + " + pending " +
                  std::to_string(s.pending) + " (queued " + std::to_string(s.queued) +
                  ", in_flight " + std::to_string(s.in_flight) + ")");
        return;
      }
      std::this_thread::sleep_for(200us);
    }
  }

  std::uint32_t pick(std::uint32_t lo, std::uint32_t hi) {
    return lo + static_cast<std::uint32_t>(rng_() % (hi - lo + 1));
  }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
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
    c.overflow =
        chance(0.5) ? buffered::OverflowPolicy::block : buffered::OverflowPolicy::drop_newest;
    c.block_timeout = chance(0.5)
                          ? std::chrono::nanoseconds::max()
                          : std::chrono::nanoseconds(std::chrono::microseconds(pick(0, 3000)));
    // Fast enough that an unbounded drain still ends within a second or so.
    if (chance(0.15))
      c.throttle = buffered::Throttle{static_cast<double>(pick(4000, 50000)), pick(1, 20)};
    return c;
  }

  std::mt19937_64 rng_;
  std::mt19937_64 fault_rng_;
  std::mutex fault_rng_mu_;
  std::uint64_t seed_;
  bool verbose_;
};

}  // namespace

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
    std::fprintf(stderr, "TERMINATE: std::terminate in a round; rerun with --seed %" PRIu64 "\n",
                 current_seed.load());
    std::fflush(stderr);
    std::abort();
  });

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
                     "HANG: a round did not finish within %llds; rerun with --seed %" PRIu64 "\n",
                     static_cast<long long>(kRoundLimit.count()), current_seed.load());
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
              " violations=%" PRIu64 "\n",
              seed, std::chrono::duration<double>(Clock::now() - t0).count(), totals.rounds,
              totals.offered, totals.delivered, totals.failed, totals.abandoned, totals.refused,
              totals.faults, totals.big_batch_rounds, totals.fault_rounds, totals.alloc_armed,
              totals.alloc_failed, totals.not_offered, totals.violations);
  return totals.violations == 0 ? 0 : 1;
}
