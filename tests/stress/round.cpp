// One round: the backend made, run, offered into by the round's workloads and shapes, shut down,
// destroyed, and then checked.
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "backend.hpp"
#include "checks.hpp"
#include "faults.hpp"
#include "lifecycle.hpp"
#include "sink.hpp"
#include "workloads.hpp"

namespace buffered_stress {
namespace {

class Round {
 public:
  Round(std::uint64_t seed, bool verbose);

  // Runs one round; returns the number of violations found.
  std::uint64_t run(Totals& totals);

 private:
  void run_workloads();
  void start_late();
  void shut_down();
  void check_library_faults();
  std::uint64_t check(Totals& totals);
  void print(const IdCounts& counts, const Batches& batches) const;
  void add_to(Totals& totals, const IdCounts& counts, const Batches& batches) const;
  std::uint64_t finish(Totals& totals, std::uint64_t armed, std::uint64_t failed,
                       std::uint64_t not_offered);

  const RoundPlan plan_;
  const bool verbose_;
  Violations violation_;
  FaultDice fault_dice_;
  FaultCounters faults_;
  Observed obs_;
  SinkScript script_;
  const std::unique_ptr<Backend> backend_;
  Ledger ledger_;
  ByteSizeCalls byte_size_calls_;
  const ByteSizeFunction byte_size_;
  ReportRecorder reports_;
  const ErrorHandler on_error_;
  Reoffers reoffers_;
  SecondBackend second_;
  ExitOffers exit_offers_;
  Startup startup_;
  Shutdowns shutdowns_;
  Producers producers_;
  Linger linger_;
  ForkProbe fork_;
  QueuedBytesWatch watch_;
  const std::uint64_t library_fired_before_;
  buffered::Stats stats_{};  // after the last shutdown; none after the destructor's alone
};

Round::Round(std::uint64_t seed, bool verbose)
    : plan_(draw_round(seed)),
      verbose_(verbose),
      violation_(seed),
      fault_dice_(seed),
      script_(plan_, obs_),
      backend_(make_backend(plan_.form, script_)),
      ledger_(plan_.id_slots, plan_.producers),
      byte_size_(plan_.with_byte_size ? make_byte_size(byte_size_calls_, plan_.sizes.spread)
                                      : ByteSizeFunction()),
      reports_(obs_),
      on_error_([this](buffered::ErrorKind kind, std::span<const Event> events) {
        reports_.record(kind, events);
      }),
      reoffers_(plan_, *backend_, ledger_),
      second_(plan_, violation_),
      exit_offers_(plan_, *backend_, ledger_, second_),
      startup_(plan_, *backend_, obs_, violation_, faults_, fault_dice_),
      shutdowns_(plan_, *backend_, obs_, violation_, faults_, fault_dice_),
      producers_(plan_, *backend_, ledger_, obs_, violation_, faults_, exit_offers_, second_),
      linger_(plan_, *backend_, ledger_, violation_),
      fork_(*backend_, second_, violation_),
      watch_(plan_.config, *backend_, violation_),
      library_fired_before_(library_thread_faults_fired()) {}

std::uint64_t Round::run(Totals& totals) {
  current_shapes = plan_.shapes;
  if (plan_.try_invalid_bytes) startup_.try_invalid_bytes(on_error_, byte_size_);
  if (!startup_.construct(on_error_, byte_size_)) return finish(totals, 0, 0, 0);
  if (plan_.reoffer_round) reports_.reoffer_with(&reoffers_);
  second_.start();
  startup_.count_threads();
  if (plan_.reenter_run) {
    // Neither may wait for run().
    script_.in_run = [backend = backend_.get()] {
      backend->flush(1ms);
      (void)backend->stats();
    };
  }
  run_workloads();
  shut_down();
  check_library_faults();
  return check(totals);
}

void Round::run_workloads() {
  const std::chrono::microseconds after = plan_.shutdown_after;
  if (!plan_.run_late && !plan_.never_run) startup_.start(false, false);
  if (plan_.linger_probe) linger_.run();
  producers_.start();
  second_.settle();
  if (plan_.stall_probe)
    check_no_stall(plan_.config, *backend_, producers_, plan_.producers, violation_);
  if (plan_.fork_probe) {
    watch_.sleep(after / 2);
    fork_.fork_and_check(plan_.fork_exit);
    watch_.sleep(after - after / 2);
  } else {
    watch_.sleep(after);
  }
  if (plan_.run_late && !plan_.never_run) start_late();
  watch_.sleep(after / 2);
  producers_.stop();
}

// run() while producers offer, perhaps raced by a shutdown from another thread.
void Round::start_late() {
  std::thread racer;
  if (plan_.race_run) {
    racer = std::thread([this] {
      std::this_thread::sleep_for(plan_.race_after);
      if (plan_.race_deadline) {
        shutdowns_.timed(plan_.deadline);
      } else {
        backend_->shutdown();
      }
    });
  }
  startup_.start(true, plan_.race_run);
  if (racer.joinable()) racer.join();
}

void Round::shut_down() {
  const bool returned_true = shutdowns_.shut_down();
  if (plan_.shutdown_style != 3) shutdowns_.check_shut_down(returned_true);
  producers_.join();
  second_.finish();
  if (plan_.shutdown_style != 3) stats_ = shutdowns_.final_stats();
  shutdowns_.destroy();
}

void Round::check_library_faults() {
  const std::uint64_t library_fired = library_thread_faults_fired() - library_fired_before_;
  if (library_fired != 0) {
    violation_(std::to_string(library_fired) +
               " allocation(s) on the worker or a dispatch thread after a delegate call");
  }
  faults_.failed += library_fired;
}

std::uint64_t Round::check(Totals& totals) {
  std::lock_guard<std::mutex> lock(obs_.mu);
  const Batches batches = check_batches(plan_, obs_, backend_->with_context(), violation_);
  const IdCounts counts = check_ids(plan_, ledger_, obs_, batches, violation_);
  check_evictions(plan_, obs_, violation_);
  if (plan_.with_byte_size) check_byte_size(plan_, byte_size_calls_, counts, violation_);
  check_calls(plan_, obs_, batches, violation_);
  check_lifecycle(plan_, obs_, violation_);
  check_stats(plan_, obs_, stats_, counts, batches, violation_);
  check_offer_times(producers_.slow_offers(), reoffers_.slowest(), violation_);
  if (verbose_) print(counts, batches);
  add_to(totals, counts, batches);
  return finish(totals, faults_.armed.load(), faults_.failed.load(), counts.not_offered);
}

void Round::print(const IdCounts& counts, const Batches& batches) const {
  const buffered::BatchConfig& c = plan_.config;
  const ByteSizes& sizes = plan_.sizes;
  const std::uint64_t abandoned = obs_.reported_abandoned.size();
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
      plan_.seed, plan_.producers, plan_.per_producer, c.buffer_size, c.max_batch_size,
      c.async_delegate, c.max_in_flight, static_cast<int>(c.overflow), c.max_buffer_bytes,
      c.max_batch_bytes, sizes.custom ? "+" : "sizeof", sizes.custom ? sizes.spread : sizeof(Event),
      obs_.reported_evicted.size(), obs_.reported_too_large.size(), c.throttle.has_value(),
      plan_.shutdown_style, counts.accepted, counts.refused, counts.not_offered, abandoned,
      faults_.armed.load(), faults_.failed.load(), c.retry ? c.retry->max_attempts : 0,
      c.retry ? static_cast<long long>(c.retry->initial_backoff.count() / 1000) : 0LL,
      c.retry ? c.retry->multiplier : 0.0, c.retry ? c.retry->jitter : 0.0, plan_.retry.fail_rate,
      backend_->with_context() ? 1 : 0, obs_.calls.size(), batches.retries, batches.retry_abandoned,
      shape_names(current_shapes.load()).c_str() + 1, plan_.second_mode, exit_offers_.offered(),
      linger_.waited_ms(), reoffers_.reoffered(), plan_.reoffer_others ? "all" : "evicted",
      plan_.reoffer_generations, fork_.child_reports(),
      plan_.retry.long_backoff ? " long_backoff" : "", plan_.stall_probe ? " stall_probe" : "",
      plan_.stuck_call >= 0 ? " stuck_call" : "", plan_.race_run ? " race_run" : "",
      plan_.reenter_run ? " reenter_run" : "");
}

void Round::add_to(Totals& totals, const IdCounts& counts, const Batches& batches) const {
  const buffered::BatchConfig& c = plan_.config;
  totals.offered += counts.accepted + counts.refused;
  totals.delivered += counts.delivered;
  totals.failed += counts.failed;
  totals.abandoned += obs_.reported_abandoned.size();
  totals.refused += counts.refused;
  totals.faults += obs_.faults;
  totals.fault_rounds += plan_.fault_round ? 1 : 0;
  totals.big_batch_rounds += plan_.big_batch ? 1 : 0;
  totals.retry_rounds += c.retry ? 1 : 0;
  totals.context_rounds += backend_->with_context() ? 1 : 0;
  totals.retries += batches.retries;
  totals.retry_abandoned += batches.retry_abandoned;
  totals.permanent += batches.permanent;
  totals.retry_delivered += batches.retry_delivered;
  totals.byte_rounds += plan_.byte_round ? 1 : 0;
  totals.drop_oldest_rounds += c.overflow == buffered::OverflowPolicy::drop_oldest ? 1 : 0;
  totals.evicted += obs_.reported_evicted.size();
  totals.too_large += obs_.reported_too_large.size();
  totals.exit_rounds += plan_.exit_round ? 1 : 0;
  totals.exit_offers += exit_offers_.offered();
  totals.second_backends += plan_.second_mode != 0 ? 1 : 0;
  totals.linger_rounds += plan_.linger_probe ? 1 : 0;
  totals.reoffer_rounds += plan_.reoffer_round ? 1 : 0;
  totals.reoffered += reoffers_.reoffered();
  totals.fork_rounds += plan_.fork_probe ? 1 : 0;
}

std::uint64_t Round::finish(Totals& totals, std::uint64_t armed, std::uint64_t failed,
                            std::uint64_t not_offered) {
  const std::uint64_t v = violation_.count();
  totals.rounds += 1;
  totals.alloc_armed += armed;
  totals.alloc_failed += failed;
  totals.not_offered += not_offered;
  totals.violations += v;
  return v;
}

}  // namespace

std::uint64_t run_round(std::uint64_t seed, bool verbose, Totals& totals) {
  Round round(seed, verbose);
  return round.run(totals);
}

}  // namespace buffered_stress
