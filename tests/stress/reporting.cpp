// What the run prints: violations, the summary line, and the messages that name the round when
// the run ends in one (a terminate, a sanitizer report, a hang).
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "stress.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#include <sanitizer/common_interface_defs.h>
#define BUFFERED_STRESS_SANITIZER 1
#endif

namespace buffered_stress {

std::string shape_names(unsigned shapes) {
  std::string names;
  if (shapes & kExitOffers) names += " exit_offers";
  if (shapes & kLinger) names += " linger";
  if (shapes & kReoffer) names += " reoffer";
  if (shapes & kFork) names += " fork";
  return names.empty() ? " none" : names;
}

void Violations::operator()(const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  ++count_;
  if (count_ <= 5)
    std::fprintf(stderr, "VIOLATION seed=%" PRIu64 " (shapes:%s): %s\n", seed_,
                 shape_names(current_shapes.load()).c_str(), what.c_str());
}

void name_the_round_at_death() {
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
}

namespace {

constexpr auto kRoundLimit = 120s;  // rounds take milliseconds; sanitizers slow them down a lot

}  // namespace

Watchdog::Watchdog(std::uint64_t seed) : round_started_(Clock::now().time_since_epoch().count()) {
  current_seed = seed;
  thread_ = std::thread([this] {
    while (!finished_.load()) {
      std::this_thread::sleep_for(100ms);
      const Clock::time_point started{Clock::duration(round_started_.load())};
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
}

Watchdog::~Watchdog() {
  finished_ = true;
  thread_.join();
}

void Watchdog::round_starts(std::uint64_t seed) {
  current_seed = seed;
  round_started_ = Clock::now().time_since_epoch().count();
}

void print_summary(std::uint64_t seed, double seconds, const Totals& totals) {
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
              seed, seconds, totals.rounds, totals.offered, totals.delivered, totals.failed,
              totals.abandoned, totals.refused, totals.faults, totals.big_batch_rounds,
              totals.fault_rounds, totals.alloc_armed, totals.alloc_failed, totals.not_offered,
              totals.retry_rounds, totals.context_rounds, totals.retries, totals.retry_delivered,
              totals.retry_abandoned, totals.permanent, totals.byte_rounds,
              totals.drop_oldest_rounds, totals.evicted, totals.too_large, totals.exit_rounds,
              totals.exit_offers, totals.second_backends, totals.linger_rounds,
              totals.reoffer_rounds, totals.reoffered, totals.fork_rounds,
              kForkSupported ? "" : " (fork skipped: TSan)", totals.violations);
}

}  // namespace buffered_stress
