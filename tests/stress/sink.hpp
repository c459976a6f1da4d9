// What fills Observed: the delegate (SinkBase, in one of six forms) and the error handler
// (ReportRecorder).
//
// Retry: about half the rounds configure BatchConfig::retry (backoffs of microseconds to a few
// ms; in some rounds long enough, with a deadline shutdown, that the deadline lands while batches
// wait to retry). The delegate takes one of six forms (member or callable; void, bool or Outcome
// result; with or without a BatchContext) and fails with every outcome its form can express: a
// retryable exception, `false`, Outcome::retry() (sometimes with a retry-after), permanent_error,
// Outcome::permanent_failure().
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <span>
#include <stdexcept>

#include "../delegate_forms.hpp"
#include "stress.hpp"

namespace buffered_stress {

class Reoffers;

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

// What the delegate follows (the round's plan, its own generator) and fills, shared with the
// round.
struct SinkScript {
  SinkScript(const RoundPlan& round, Observed& observed)
      : plan(round), obs(observed), rng(round.sink_seed) {}

  const RoundPlan& plan;
  Observed& obs;
  std::mutex rng_mu;
  std::mt19937_64 rng;              // guarded by rng_mu
  std::uint64_t calls_started = 0;  // guarded by rng_mu
  std::function<void()> in_run;     // called from delegate.run(): re-enters the backend
};

// The delegate: checks its lifecycle and records every call. handle() is the work;
// buffered_test::FormSink gives it a form.
class SinkBase {
 public:
  explicit SinkBase(SinkScript& script) : script_(script) {}

  void run();
  void shutdown();
  void flush();

 protected:
  buffered_test::Ending handle(std::span<Event> batch, const buffered::BatchContext* context,
                               buffered_test::Result form);

 private:
  struct CallPlan;  // how a call goes, drawn as it starts

  CallPlan draw(buffered_test::Result form);
  std::size_t record_start(std::span<const Event> batch, const buffered::BatchContext* context,
                           const CallPlan& plan, Clock::time_point start, DeadlineRead first_read);
  void record_end(std::size_t index, std::span<const Event> batch,
                  const buffered::BatchContext* context, Verdict verdict);
  buffered_test::Ending end(std::size_t index, const CallPlan& plan, buffered_test::Result form);

  SinkScript& script_;
};

// The error handler: records every report in Observed, then (in a reoffer round) has the
// reported events offered again.
class ReportRecorder {
 public:
  explicit ReportRecorder(Observed& obs) : obs_(obs) {}
  ReportRecorder(const ReportRecorder&) = delete;
  ReportRecorder& operator=(const ReportRecorder&) = delete;

  // Before the backend runs.
  void reoffer_with(Reoffers* reoffers) { reoffers_ = reoffers; }

  void record(buffered::ErrorKind kind, std::span<const Event> events);

 private:
  std::unordered_map<std::uint64_t, int>& counts_of(buffered::ErrorKind kind);

  Observed& obs_;
  Reoffers* reoffers_ = nullptr;
};

}  // namespace buffered_stress
