// BatchContext: a delegate may take `const buffered::BatchContext&` as a second parameter, in the
// member form process_events(span, context) or the callable form d(span, context). It learns the
// attempt number and a deadline: the earliest shutdown deadline, live while the call runs, so a
// slow call can give up in time instead of outliving shutdown(timeout).
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "support.hpp"

namespace {

using namespace buffered_test;
using buffered::BatchContext;
using buffered::Outcome;
using TimePoint = BatchContext::time_point;

// ---- which shapes are sinks ----

struct MemberWithContext {
  void process_events(std::span<Event>, const BatchContext&) {}
};
struct MemberWithContextReturningOutcome {
  Outcome process_events(std::span<Event>, const BatchContext&) { return Outcome::delivered(); }
};
struct MemberWithContextReturningBool {
  bool process_events(std::span<Event>, const BatchContext&) { return true; }
};
struct MemberWithContextByValue {
  void process_events(std::span<Event>, BatchContext) {}
};
struct ConstMemberOfConstEventsWithContext {
  void process_events(std::span<const Event>, const BatchContext&) const {}
};
struct CallableWithContext {
  Outcome operator()(std::span<Event>, const BatchContext&) { return Outcome::delivered(); }
};
struct BothMembers {
  void process_events(std::span<Event>) {}
  void process_events(std::span<Event>, const BatchContext&) {}
};
using LambdaWithContext = decltype([](std::span<Event>, const BatchContext&) {});
using FunctionPointerWithContext = bool (*)(std::span<Event>, const BatchContext&);
using FunctionWithContext = std::function<Outcome(std::span<Event>, const BatchContext&)>;

static_assert(buffered::Sink<MemberWithContext, Event>);
static_assert(buffered::Sink<MemberWithContextReturningOutcome, Event>);
static_assert(buffered::Sink<MemberWithContextReturningBool, Event>);
static_assert(buffered::Sink<MemberWithContextByValue, Event>);
static_assert(buffered::Sink<ConstMemberOfConstEventsWithContext, Event>);
static_assert(buffered::Sink<CallableWithContext, Event>);
static_assert(buffered::Sink<BothMembers, Event>);
static_assert(buffered::Sink<LambdaWithContext, Event>);
static_assert(buffered::Sink<FunctionPointerWithContext, Event>);
static_assert(buffered::Sink<FunctionWithContext, Event>);

// Not sinks: a second parameter that is not a context, a result that says nothing, another event.
struct WrongSecondParameter {
  void process_events(std::span<Event>, int) {}
};
struct ContextReturningString {
  std::string process_events(std::span<Event>, const BatchContext&) { return {}; }
};
struct ContextOfOtherEvents {
  void process_events(std::span<int>, const BatchContext&) {}
};
static_assert(!buffered::Sink<WrongSecondParameter, Event>);
static_assert(!buffered::Sink<ContextReturningString, Event>);
static_assert(!buffered::Sink<ContextOfOtherEvents, Event>);

buffered::BatchConfig config(bool async, std::optional<buffered::Retry> retry = std::nullopt) {
  buffered::BatchConfig c;
  c.max_batch_size = 2;
  c.max_batch_wait = 1ms;
  c.async_delegate = async;
  c.max_in_flight = 1;
  c.retry = retry;
  return c;
}

buffered::Retry quick_retry() {
  buffered::Retry r;
  r.max_attempts = 5;
  r.initial_backoff = 1ms;
  r.multiplier = 1.0;
  r.max_backoff = 1ms;
  r.jitter = 0.0;
  return r;
}

// ---- the forms are called ----

TEST(BatchContext, MemberFormSeesTheAttemptNumber) {
  struct Sink {
    CallLog* log;
    bool process_events(std::span<Event> events, const BatchContext& context) {
      log->record(events, context.attempt());
      return context.attempt() == 3;
    }
  };
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    buffered::BufferedBackend<Event, Sink> backend(Sink{&log}, config(async, quick_retry()));
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
    const auto calls = log.calls();
    ASSERT_EQ(calls.size(), 3u);
    for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(calls[i].attempt, i + 1);
    EXPECT_EQ(backend.stats().delivered, 2u);
  }
}

TEST(BatchContext, CallableFormSeesTheAttemptNumber) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events, const BatchContext& context) {
      log.record(events, context.attempt());
      if (context.attempt() < 3) throw std::runtime_error("not yet");
    };
    static_assert(buffered::Sink<decltype(sink), Event>);
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, quick_retry()));
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
    const auto calls = log.calls();
    ASSERT_EQ(calls.size(), 3u);
    for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(calls[i].attempt, i + 1);
    EXPECT_EQ(backend.stats().delivered, 2u);
  }
}

TEST(BatchContext, EveryBatchStartsAtAttemptOne) {
  CallLog log;
  auto sink = [&](std::span<Event> events, const BatchContext& context) {
    log.record(events, context.attempt());
  };
  for (const bool with_retry : {false, true}) {
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, config(false, with_retry ? std::optional(quick_retry()) : std::nullopt));
    for (std::uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
  }
  const auto calls = log.calls();
  ASSERT_EQ(calls.size(), 6u);
  for (const Call& call : calls) EXPECT_EQ(call.attempt, 1u);
}

TEST(BatchContext, TheContextFormIsUsedWhenADelegateHasBoth) {
  struct Members {
    std::atomic<int>* plain;
    std::atomic<int>* with_context;
    void process_events(std::span<Event>) { ++*plain; }
    void process_events(std::span<Event>, const BatchContext&) { ++*with_context; }
  };
  struct Calls {
    std::atomic<int>* plain;
    std::atomic<int>* with_context;
    void operator()(std::span<Event>) { ++*plain; }
    void operator()(std::span<Event>, const BatchContext&) { ++*with_context; }
  };
  // The member form comes before the callable form, whatever its parameters.
  struct MemberBeforeCallable {
    std::atomic<int>* plain;
    std::atomic<int>* with_context;
    void process_events(std::span<Event>) { ++*plain; }
    void operator()(std::span<Event>, const BatchContext&) { ++*with_context; }
  };
  const auto run = [](auto sink) {
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(false));
    for (std::uint64_t i = 0; i < 4; ++i) EXPECT_TRUE(backend.process_event(ev(i)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
  };
  std::atomic<int> plain{0};
  std::atomic<int> with_context{0};
  run(Members{&plain, &with_context});
  EXPECT_EQ(plain.load(), 0);
  EXPECT_EQ(with_context.load(), 2);
  run(Calls{&plain, &with_context});
  EXPECT_EQ(plain.load(), 0);
  EXPECT_EQ(with_context.load(), 4);
  run(MemberBeforeCallable{&plain, &with_context});
  EXPECT_EQ(plain.load(), 2);
  EXPECT_EQ(with_context.load(), 4);
}

// A plain function is a sink too. (This also keeps the header clean under -Wshadow: the
// constructor's parameter once shadowed the member function delegate() for a pointer type.)
std::atomic<int> function_pointer_attempts{0};
Outcome function_pointer_sink(std::span<Event>, const BatchContext& context) {
  function_pointer_attempts = static_cast<int>(context.attempt());
  return context.attempt() == 1 ? Outcome::retry() : Outcome::delivered();
}

TEST(BatchContext, FunctionPointerForm) {
  using Pointer = Outcome (*)(std::span<Event>, const BatchContext&);
  buffered::BufferedBackend<Event, Pointer> backend(&function_pointer_sink,
                                                    config(false, quick_retry()));
  ASSERT_TRUE(backend.process_event(ev(0)));
  backend.run();
  EXPECT_TRUE(backend.shutdown(kPatience));
  EXPECT_EQ(function_pointer_attempts.load(), 2);
  EXPECT_EQ(backend.stats().delivered, 1u);
}

TEST(BatchContext, StdFunctionForm) {
  CallLog log;
  FunctionWithContext function = [&](std::span<Event> events, const BatchContext& context) {
    log.record(events, context.attempt());
    return context.attempt() == 1 ? Outcome::retry() : Outcome::delivered();
  };
  buffered::BufferedBackend<Event, FunctionWithContext> backend(function,
                                                                config(true, quick_retry()));
  ASSERT_TRUE(backend.process_event(ev(0)));
  backend.run();
  EXPECT_TRUE(backend.shutdown(kPatience));
  ASSERT_EQ(log.count(), 2u);
  EXPECT_EQ(log.calls()[1].attempt, 2u);
}

// ---- the deadline ----

TEST(BatchContext, DeadlineIsMaxWithoutAShutdownDeadline) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    Gate entered;
    Gate release;
    std::atomic<const BatchContext*> current{nullptr};
    std::mutex mu;
    std::vector<TimePoint> seen;
    auto sink = [&](std::span<Event>, const BatchContext& context) {
      {
        std::lock_guard<std::mutex> lock(mu);
        seen.push_back(context.deadline());
      }
      if (!entered.is_open()) {
        current = &context;
        entered.open();
        release.wait();
        current = nullptr;
      }
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async));
    for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    backend.run();
    entered.wait();
    EXPECT_EQ(current.load()->deadline(), TimePoint::max());
    // A shutdown without a timeout sets no deadline, even while it waits for this call.
    std::thread stopper([&] { EXPECT_TRUE(backend.shutdown()); });
    // Once an offer is refused, the shutdown has begun (the ones accepted before are delivered).
    ASSERT_TRUE(eventually([&] { return !backend.process_event(ev(99)); }));
    EXPECT_EQ(current.load()->deadline(), TimePoint::max());
    release.open();
    stopper.join();
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_GE(seen.size(), 2u);
    for (const TimePoint& d : seen) EXPECT_EQ(d, TimePoint::max());
  }
}

TEST(BatchContext, DeadlineIsLiveWhileTheCallRuns) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    Gate entered;
    std::atomic<bool> changed{false};
    TimePoint at_entry{};
    TimePoint later{};
    auto sink = [&](std::span<Event>, const BatchContext& context) {
      at_entry = context.deadline();
      entered.open();
      // A delegate blocked in a call (here: polling) sees the deadline change under it.
      eventually([&] { return context.deadline() != TimePoint::max(); });
      later = context.deadline();
      changed = true;
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async));
    ASSERT_TRUE(backend.process_event(ev(0)));
    backend.run();
    entered.wait();
    const auto t0 = Clock::now();
    std::atomic<bool> result{false};
    std::thread stopper([&] { result = backend.shutdown(kPatience); });
    ASSERT_TRUE(eventually([&] { return changed.load(); }));
    const auto t1 = Clock::now();
    stopper.join();
    EXPECT_TRUE(result.load());
    EXPECT_EQ(at_entry, TimePoint::max());
    ASSERT_NE(later, TimePoint::max()) << "the call never saw the shutdown's deadline";
    // shutdown(timeout) was called between t0 and t1: its deadline is now + timeout then.
    EXPECT_GE(later, t0 + kPatience);
    EXPECT_LE(later, t1 + kPatience);
  }
}

TEST(BatchContext, DeadlineIsTheEarliestOfSeveralShutdownDeadlines) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    // The delegate shuts its own backend down (which returns at once from inside it) with
    // several timeouts, reading the deadline after each.
    std::function<bool(std::chrono::nanoseconds)> shut_down_with;
    Gate done;
    TimePoint before_60{}, after_60{}, after_20{}, after_40{}, after_unbounded{};
    TimePoint d_entry{}, d_60{}, d_20{}, d_40{}, d_unbounded{};
    auto sink = [&](std::span<Event>, const BatchContext& context) {
      d_entry = context.deadline();
      before_60 = Clock::now();
      shut_down_with(60s);
      d_60 = context.deadline();
      after_60 = Clock::now();
      shut_down_with(20s);
      d_20 = context.deadline();
      after_20 = Clock::now();
      shut_down_with(40s);
      d_40 = context.deadline();
      after_40 = Clock::now();
      shut_down_with(std::chrono::nanoseconds::max());
      d_unbounded = context.deadline();
      after_unbounded = Clock::now();
      done.open();
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async));
    shut_down_with = [&backend](std::chrono::nanoseconds t) { return backend.shutdown(t); };
    ASSERT_TRUE(backend.process_event(ev(0)));
    backend.run();
    done.wait();  // before shutting down from here, which would set a deadline of its own
    EXPECT_TRUE(backend.shutdown(kPatience));  // the call has ended, nothing was abandoned
    EXPECT_EQ(d_entry, TimePoint::max());
    EXPECT_GE(d_60, before_60 + 60s);
    EXPECT_LE(d_60, after_60 + 60s);
    EXPECT_GE(d_20, after_60 + 20s);
    EXPECT_LE(d_20, after_20 + 20s);
    EXPECT_LT(d_20, d_60);
    EXPECT_EQ(d_40, d_20);  // a later deadline does not move it
    EXPECT_EQ(d_unbounded, d_20);
    (void)after_40;
    (void)after_unbounded;
  }
}

TEST(BatchContext, ASlowCallThatHonoursTheDeadlineEndsByTheShutdownDeadline) {
  // A network sink waits for a reply that never comes, up to its own 1 h timeout or the
  // context's deadline, re-read while it waits. shutdown(300ms) then ends it in time, and the
  // batch it gave up on is not retried past the deadline.
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    Gate entered;
    std::atomic<int> calls{0};
    auto sink = [&](std::span<Event>, const BatchContext& context) {
      ++calls;
      entered.open();
      const auto own_timeout = Clock::now() + 1h;
      while (Clock::now() < std::min(own_timeout, context.deadline())) {
        std::this_thread::sleep_for(1ms);
      }
      return Outcome::retry();  // timed out: worth another attempt, if there were time
    };
    ReportLog reports;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, quick_retry()),
                                                             reports.handler());
    ASSERT_TRUE(backend.process_event(ev(0)));
    backend.run();
    entered.wait();
    const auto t0 = Clock::now();
    EXPECT_FALSE(backend.shutdown(300ms));  // the batch is not delivered
    ASSERT_TRUE(eventually([&] {
      const auto s = backend.stats();
      return s.in_flight == 0 && s.pending == 0;
    })) << "the call outlived the deadline by far";
    EXPECT_LT(millis(Clock::now() - t0), 300.0 + millis(kSlack));
    EXPECT_EQ(calls.load(), 1);
    const auto s = backend.stats();
    EXPECT_EQ(s.abandoned, 1u);
    expect_accounting(s, 1);
    const auto r = reports.reports();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, buffered::ErrorKind::abandoned);
  }
}

// ---- testing a sink on its own ----

// A sink that gives up (retry later) when less than a second is left, and stops trying after
// the fourth attempt.
struct CarefulSink {
  Outcome process_events(std::span<Event>, const BatchContext& context) {
    if (context.attempt() > 4) return Outcome::permanent_failure();
    if (context.deadline() - Clock::now() < 1s) return Outcome::retry();
    return Outcome::delivered();
  }
};

TEST(BatchContext, APublicConstructorLetsASinkBeTestedAlone) {
  const BatchContext plain;
  EXPECT_EQ(plain.attempt(), 1u);
  EXPECT_EQ(plain.deadline(), TimePoint::max());
  const auto soon = Clock::now() + 50ms;
  const BatchContext third(3, soon);
  EXPECT_EQ(third.attempt(), 3u);
  EXPECT_EQ(third.deadline(), soon);
  const BatchContext copy = third;
  EXPECT_EQ(copy.attempt(), 3u);
  EXPECT_EQ(copy.deadline(), soon);

  CarefulSink sink;
  std::vector<Event> events = seqs(0, 2);
  EXPECT_EQ(sink.process_events(events, BatchContext{}), Outcome::delivered());
  EXPECT_EQ(sink.process_events(events, BatchContext(2, Clock::now() + 100ms)), Outcome::retry());
  EXPECT_EQ(sink.process_events(events, BatchContext(2, Clock::now() + 1h)), Outcome::delivered());
  EXPECT_EQ(sink.process_events(events, BatchContext(5)), Outcome::permanent_failure());
}

}  // namespace
