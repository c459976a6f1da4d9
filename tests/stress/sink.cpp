#include "sink.hpp"

#include <thread>
#include <utility>
#include <vector>

#include "faults.hpp"

namespace buffered_stress {

using buffered_test::Ending;
using buffered_test::Result;

namespace {

enum class Fault { none, fails, slow, blocks, stuck };

DeadlineRead read_deadline(const buffered::BatchContext* context) {
  DeadlineRead read{};
  if (context != nullptr) {
    read.before = Clock::now();
    read.deadline = context->deadline();
    read.after = Clock::now();
  }
  return read;
}

}  // namespace

struct SinkBase::CallPlan {
  Fault fault = Fault::none;
  std::chrono::microseconds nap{0};
  bool arm_after = false;  // a failure of the library's next allocation on this thread
  Verdict verdict = Verdict::delivered;
  bool thrown = false;
  std::chrono::nanoseconds after{0};
};

void SinkBase::run() {
  if (in_fork_child.load()) return;
  const HoldFault hold;
  if (script_.plan.faults.delegate_run_throws) {
    std::lock_guard<std::mutex> lock(script_.rng_mu);
    if (script_.rng() % 2 == 0) throw std::runtime_error("delegate.run() fails");
  }
  if (script_.in_run) script_.in_run();
  if (script_.plan.run_nap.count() > 0) std::this_thread::sleep_for(script_.plan.run_nap);
  script_.obs.runs.fetch_add(1);
}

void SinkBase::shutdown() {
  if (in_fork_child.load()) return;
  const HoldFault hold;
  Observed& obs = script_.obs;
  if (obs.shutdowns.fetch_add(1) + 1 > obs.runs.load()) obs.bad_shutdowns.fetch_add(1);
}

void SinkBase::flush() {
  if (in_fork_child.load()) return;
  const HoldFault hold;
  if (script_.obs.runs.load() <= script_.obs.shutdowns.load()) script_.obs.bad_flushes.fetch_add(1);
}

Ending SinkBase::handle(std::span<Event> batch, const buffered::BatchContext* context,
                        Result form) {
  if (in_fork_child.load()) {
    child_delegate_calls.fetch_add(1);  // a forked child must deliver nothing
    return {Ending::How::delivered};
  }
  settle_library_thread_fault();
  const HoldFault hold;
  const DeadlineRead first_read = read_deadline(context);
  const Clock::time_point start = Clock::now();
  const CallPlan plan = draw(form);
  const std::size_t index = record_start(batch, context, plan, start, first_read);
  if (plan.nap.count() > 0) std::this_thread::sleep_for(plan.nap);
  record_end(index, batch, context, plan.verdict);
  return end(index, plan, form);
}

SinkBase::CallPlan SinkBase::draw(Result form) {
  const RoundPlan& round = script_.plan;
  const RetryPlan& retry = round.retry;
  std::mt19937_64& rng = script_.rng;
  CallPlan plan;
  std::lock_guard<std::mutex> lock(script_.rng_mu);
  std::uniform_real_distribution<double> u(0, 1);
  const double r = u(rng);
  if (static_cast<std::int64_t>(script_.calls_started++) == round.stuck_call) {
    plan.fault = Fault::stuck, plan.nap = 250ms;
    // With retry, a stuck call that fails ends past the deadline: never attempted again.
    if (round.config.retry.has_value() && u(rng) < 0.5) plan.verdict = Verdict::retryable;
  } else if (r < round.fault_rate * 0.6) {
    plan.fault = Fault::fails;
  } else if (r < round.fault_rate * 0.9) {
    plan.fault = Fault::slow, plan.nap = std::chrono::microseconds(rng() % 500);
  } else if (r < round.fault_rate) {
    plan.fault = Fault::blocks, plan.nap = std::chrono::microseconds(2000 + rng() % 18000);
  } else if (u(rng) < retry.fail_rate) {
    plan.fault = Fault::fails;
  }
  if (plan.fault == Fault::fails) {
    plan.verdict = u(rng) < retry.permanent_share ? Verdict::permanent : Verdict::retryable;
  }
  if (plan.verdict != Verdict::delivered) {
    // Throw, or return what the form can say (void can only throw).
    plan.thrown = form == Result::none || rng() % 2 == 0;
    if (!plan.thrown && plan.verdict == Verdict::retryable && form == Result::outcome &&
        u(rng) < retry.after_share) {
      plan.after = std::chrono::microseconds(
          1 + rng() % static_cast<std::uint64_t>(retry.after_max.count() + 1));
    }
    // bool cannot say "permanent": it throws permanent_error.
    if (plan.verdict == Verdict::permanent && form == Result::boolean) plan.thrown = true;
  }
  plan.arm_after = round.faults.library_threads && u(rng) < 0.3;
  return plan;
}

std::size_t SinkBase::record_start(std::span<const Event> batch,
                                   const buffered::BatchContext* context, const CallPlan& plan,
                                   Clock::time_point start, DeadlineRead first_read) {
  std::vector<std::uint64_t> ids;
  ids.reserve(batch.size());
  std::uint64_t bad = 0;
  for (const Event& e : batch) {
    ids.push_back(tag_of(e));
    if (e.payload != payload_for(e.id)) ++bad;
  }
  Observed& obs = script_.obs;
  std::lock_guard<std::mutex> lock(obs.mu);
  const std::size_t index = obs.calls.size();
  Call call;
  call.ids = std::move(ids);
  call.verdict = plan.verdict;
  call.thrown = plan.thrown;
  call.after = plan.after;
  call.attempt = context != nullptr ? context->attempt() : 0;
  call.start_seq = obs.seq.fetch_add(1);
  call.start = start;
  if (context != nullptr) call.reads.push_back(first_read);
  obs.calls.push_back(std::move(call));
  obs.bad_payloads += bad;
  if (plan.fault != Fault::none) ++obs.faults;
  return index;
}

void SinkBase::record_end(std::size_t index, std::span<const Event> batch,
                          const buffered::BatchContext* context, Verdict verdict) {
  const DeadlineRead last_read = read_deadline(context);
  const Clock::time_point end = Clock::now();
  Observed& obs = script_.obs;
  std::lock_guard<std::mutex> lock(obs.mu);
  Call& call = obs.calls[index];
  call.end = end;
  call.ended = true;
  if (context != nullptr) {
    call.reads.push_back(last_read);
    // Read before `end`: the library, checking after the return, sees it has passed.
    if (last_read.deadline != Clock::time_point::max() && end >= last_read.deadline)
      call.past_deadline = true;
  }
  if (verdict == Verdict::delivered) {
    for (const Event& e : batch) ++obs.settled[tag_of(e)];
  }
}

Ending SinkBase::end(std::size_t index, const CallPlan& plan, Result form) {
  // The library must not allocate on this thread after the call: the next allocation fails.
  if (plan.thrown) {
    // Made before the arming: it allocates.
    if (plan.verdict == Verdict::permanent) {
      const InjectedPermanent error(index);
      if (plan.arm_after) arm_library_thread_fault();
      throw error;
    }
    const InjectedError error(index);
    if (plan.arm_after) arm_library_thread_fault();
    throw error;
  }
  if (plan.arm_after) arm_library_thread_fault();
  if (plan.verdict == Verdict::delivered) return {Ending::How::delivered};
  if (plan.verdict == Verdict::permanent) return {Ending::How::returns_permanent};
  if (form == Result::boolean) return {Ending::How::returns_false};
  return {Ending::How::returns_retry, plan.after};
}

}  // namespace buffered_stress
