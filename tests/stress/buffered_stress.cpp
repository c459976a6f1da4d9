// buffered_stress: random rounds of producers, faults and shutdowns, each checked for
// exactly-once delivery, order, accounting and reporting.
//
//   buffered_stress [--seconds S] [--seed N] [--verbose]
//
// Every event carries a unique id (producer << 32 | sequence) and a payload derived from it.
// After each round the run checks that
//   - every accepted id reached the delegate or the error handler exactly once, and every
//     refused id was reported exactly once, with the right kind;
//   - the delegate saw each producer's ids in increasing order where the contract promises it
//     (sync, or async with max_in_flight == 1), and inside every batch otherwise;
//   - Stats agree with what was observed, and accepted == delivered + failed + abandoned;
//   - no call hung: a watchdog ends the run, printing the seed, if a round stalls.
// Prints one summary line; exits non-zero on any violation.
#include <buffered/buffered_backend.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Event {
  std::uint64_t id = 0;
  std::string payload;  // heap-allocated when long: sanitizers see every copy, move and free
};

std::string payload_for(std::uint64_t id) {
  std::string p = std::to_string(id);
  if (id % 3 == 0) p.append(40, 'x');  // beyond the small-string buffer
  return p;
}

std::uint64_t make_id(std::uint32_t producer, std::uint32_t seq) {
  return (std::uint64_t{producer} << 32) | seq;
}

struct Totals {
  std::uint64_t rounds = 0, offered = 0, delivered = 0, failed = 0, abandoned = 0, refused = 0;
  std::uint64_t faults = 0, violations = 0;
};

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
};

int times_in(const std::unordered_map<std::uint64_t, int>& seen, std::uint64_t id) {
  const auto it = seen.find(id);
  return it == seen.end() ? 0 : it->second;
}

enum class Fault { none, throws, returns_false, slow, blocks };

class Round {
 public:
  Round(std::uint64_t seed, bool verbose) : rng_(seed), seed_(seed), verbose_(verbose) {}

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
    const double fault_rate = chance(0.5) ? 0.0 : 0.1;

    Observed obs;
    std::vector<std::mt19937_64> producer_rngs;
    for (std::uint32_t p = 0; p < producers; ++p) producer_rngs.emplace_back(rng_());
    std::mt19937_64 delegate_rng(rng_());
    std::mutex delegate_rng_mu;

    auto delegate = [&](std::span<Event> batch) -> bool {
      Fault fault = Fault::none;
      std::chrono::microseconds nap{0};
      {
        std::lock_guard<std::mutex> lock(delegate_rng_mu);
        std::uniform_real_distribution<double> u(0, 1);
        const double r = u(delegate_rng);
        if (r < fault_rate * 0.3)
          fault = Fault::throws;
        else if (r < fault_rate * 0.6)
          fault = Fault::returns_false;
        else if (r < fault_rate * 0.9)
          fault = Fault::slow, nap = std::chrono::microseconds(delegate_rng() % 500);
        else if (r < fault_rate)
          fault = Fault::blocks, nap = std::chrono::microseconds(2000 + delegate_rng() % 18000);
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
        std::lock_guard<std::mutex> lock(obs.mu);
        obs.calls.push_back(ids);
        obs.call_failed.push_back(fails);
        obs.bad_payloads += bad;
        if (fault != Fault::none) ++obs.faults;
        for (std::uint64_t id : ids) ++(fails ? obs.failed_by_delegate : obs.delivered)[id];
      }
      if (nap.count() > 0) std::this_thread::sleep_for(nap);
      if (fault == Fault::throws) throw std::runtime_error("injected");
      return fault != Fault::returns_false;
    };
    auto on_error = [&](buffered::ErrorKind kind, std::span<const Event> events) {
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

    std::vector<std::vector<std::uint64_t>> accepted(producers), refused(producers);
    buffered::Stats stats{};
    {
      using Backend = buffered::BufferedBackend<Event, decltype(delegate)&>;
      Backend backend(delegate, c, on_error);
      if (!run_late && !never_run) backend.run();
      std::atomic<bool> stop_producing{false};
      std::vector<std::thread> threads;
      for (std::uint32_t p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
          auto& prng = producer_rngs[p];
          std::uint32_t seq = 0;
          int after_shutdown = 0;
          while (seq < per_producer && after_shutdown < 3) {
            if (stop_producing.load(std::memory_order_relaxed)) ++after_shutdown;
            const unsigned op = static_cast<unsigned>(prng() % 100);
            if (op < 40) {
              const Event e{make_id(p, seq), payload_for(make_id(p, seq))};
              (backend.process_event(e) ? accepted : refused)[p].push_back(e.id);
              ++seq;
            } else if (op < 70) {
              Event e{make_id(p, seq), payload_for(make_id(p, seq))};
              const std::uint64_t id = e.id;
              (backend.process_event(std::move(e)) ? accepted : refused)[p].push_back(id);
              ++seq;
            } else if (op < 95) {
              const std::uint32_t n = std::min<std::uint32_t>(
                  1 + static_cast<std::uint32_t>(prng() % 16), per_producer - seq);
              std::vector<Event> span;
              for (std::uint32_t k = 0; k < n; ++k)
                span.push_back({make_id(p, seq + k), payload_for(make_id(p, seq + k))});
              const std::size_t taken = backend.process_events(span);
              for (std::size_t k = 0; k < n; ++k)
                (k < taken ? accepted : refused)[p].push_back(span[k].id);
              seq += n;
            } else {
              backend.flush(std::chrono::microseconds(prng() % 2000));
            }
            if (prng() % 64 == 0) std::this_thread::yield();
          }
        });
      }
      std::this_thread::sleep_for(shutdown_after);
      if (run_late && !never_run) backend.run();
      std::this_thread::sleep_for(shutdown_after / 2);
      stop_producing = true;
      switch (shutdown_style) {
        case 0:
          backend.shutdown();
          break;
        case 1:
          backend.shutdown(deadline);
          break;
        case 2: {
          std::thread other([&] { backend.shutdown(deadline / 2); });
          backend.shutdown(deadline);
          other.join();
          break;
        }
        default:
          break;  // the destructor shuts down
      }
      for (auto& t : threads) t.join();
      if (shutdown_style != 3) {
        backend.shutdown();  // waits for any call still running: then the counts are final
        stats = backend.stats();
      }
    }
    if (shutdown_style == 3)
      stats = buffered::Stats{};  // gone with the backend: checked below by observation only

    std::uint64_t v = 0;
    auto violation = [&](const std::string& what) {
      ++v;
      if (v <= 5) std::fprintf(stderr, "VIOLATION seed=%" PRIu64 ": %s\n", seed_, what.c_str());
    };
    std::lock_guard<std::mutex> lock(obs.mu);
    std::uint64_t n_accepted = 0, n_refused = 0;
    for (std::uint32_t p = 0; p < producers; ++p) {
      n_accepted += accepted[p].size();
      n_refused += refused[p].size();
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
    }
    std::uint64_t reported_failed_total = 0;
    for (const auto& [id, n] : obs.reported_failed)
      reported_failed_total += static_cast<std::uint64_t>(n);
    if (reported_failed_total != obs.failed_by_delegate.size())
      violation("delegate_failed reports do not match failed batches");
    if (obs.bad_payloads != 0)
      violation(std::to_string(obs.bad_payloads) + " events arrived with a wrong payload");

    // Order: per producer across calls where promised, and inside every call.
    const bool ordered = !c.async_delegate || c.max_in_flight == 1;
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
    }

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
      if (stats.accepted != stats.delivered + stats.failed + stats.abandoned)
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
                   " abandoned=%" PRIu64 "\n",
                   seed_, producers, per_producer, c.buffer_size, c.max_batch_size,
                   c.async_delegate, c.max_in_flight, c.overflow == buffered::OverflowPolicy::block,
                   c.throttle.has_value(), shutdown_style, n_accepted, n_refused, abandoned);
    }
    totals.rounds += 1;
    totals.offered += n_accepted + n_refused;
    totals.delivered += delivered;
    totals.failed += failed;
    totals.abandoned += abandoned;
    totals.refused += n_refused;
    totals.faults += obs.faults;
    totals.violations += v;
    return v;
  }

 private:
  std::uint32_t pick(std::uint32_t lo, std::uint32_t hi) {
    return lo + static_cast<std::uint32_t>(rng_() % (hi - lo + 1));
  }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  buffered::BatchConfig random_config() {
    buffered::BatchConfig c;
    c.buffer_size = chance(0.3) ? pick(1, 8) : pick(9, 2000);
    c.max_batch_size = chance(0.2) ? 1 : pick(2, 64);
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

  // The watchdog: a round that does not finish in time means a call hung.
  std::atomic<std::uint64_t> current_seed{seed};
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
              " faults=%" PRIu64 " violations=%" PRIu64 "\n",
              seed, std::chrono::duration<double>(Clock::now() - t0).count(), totals.rounds,
              totals.offered, totals.delivered, totals.failed, totals.abandoned, totals.refused,
              totals.faults, totals.violations);
  return totals.violations == 0 ? 0 : 1;
}
