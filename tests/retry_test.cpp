// Retry (BatchConfig::retry): a failed batch is offered again after an exponential backoff, the
// same events each time, and reported once at the end; every attempt takes a throttle token; a
// batch waiting to retry keeps its place (sync: order; async: its dispatch slot); flush waits for
// it; a shutdown deadline ends it. Without `retry`, a failed batch is reported at once.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <stdexcept>
#include <string>

#include "support.hpp"

namespace {

using namespace buffered_test;

// A retry policy without jitter, so waits are exact.
buffered::Retry exact(std::size_t attempts, std::chrono::nanoseconds initial, double multiplier,
                      std::chrono::nanoseconds max) {
  buffered::Retry r;
  r.max_attempts = attempts;
  r.initial_backoff = initial;
  r.multiplier = multiplier;
  r.max_backoff = max;
  r.jitter = 0.0;
  return r;
}

// Batches of `batch` events that go after 1 ms; async with one call in flight, so "the next
// call" is well defined in both modes.
buffered::BatchConfig with_retry(buffered::Retry retry, bool async, std::size_t batch = 2) {
  buffered::BatchConfig c;
  c.max_batch_size = batch;
  c.max_batch_wait = 1ms;
  c.async_delegate = async;
  c.max_in_flight = 1;
  c.retry = retry;
  return c;
}

std::vector<Event> events_of(const std::vector<Call>& calls, std::size_t from) {
  std::vector<Event> all;
  for (std::size_t i = from; i < calls.size(); ++i) {
    all.insert(all.end(), calls[i].events.begin(), calls[i].events.end());
  }
  return all;
}

std::size_t count_kind(const std::vector<Report>& reports, buffered::ErrorKind kind) {
  return static_cast<std::size_t>(std::count_if(
      reports.begin(), reports.end(), [kind](const Report& r) { return r.kind == kind; }));
}

TEST(Retry, BackoffStartsAtInitialAndGrowsByTheMultiplierUpToTheCap) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      log.record(events);
      throw std::runtime_error("down");
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(5, 100ms, 2.0, 300ms), async));
    ASSERT_TRUE(backend.process_event(ev(0)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));  // all five attempts; the batch failed in time
    const auto calls = log.calls();
    ASSERT_EQ(calls.size(), 5u);
    // 100, 200, then 400 and 800 capped at 300. A wait starts when a call returns, after it
    // began: the gap between two calls' starts is at least the wait, exactly.
    const double waits[] = {100, 200, 300, 300};
    for (std::size_t i = 0; i < 4; ++i) {
      const double gap = millis(calls[i + 1].at - calls[i].at);
      EXPECT_GE(gap, waits[i]) << "retry " << i + 1 << " came early";
      EXPECT_LT(gap, waits[i] + millis(kSlack)) << "retry " << i + 1 << " came very late";
    }
    const auto s = backend.stats();
    EXPECT_EQ(s.batches, 5u);
    EXPECT_EQ(s.retries, 4u);
    EXPECT_EQ(s.failed, 1u);
    expect_accounting(s, 1);
  }
}

TEST(Retry, BackoffIsCappedAtMaxBackoff) {
  // Uncapped, multiplier 1000 would make the waits 20 ms, 20 s, 20000 s.
  CallLog log;
  auto sink = [&](std::span<Event> events) -> bool {
    log.record(events);
    return false;
  };
  buffered::BufferedBackend<Event, decltype(sink)> backend(
      sink, with_retry(exact(4, 20ms, 1000.0, 100ms), false));
  ASSERT_TRUE(backend.process_event(ev(0)));
  backend.run();
  EXPECT_TRUE(backend.shutdown(kPatience));
  const auto calls = log.calls();
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_GE(millis(calls[1].at - calls[0].at), 20.0);
  EXPECT_GE(millis(calls[2].at - calls[1].at), 100.0);
  EXPECT_GE(millis(calls[3].at - calls[2].at), 100.0);
  EXPECT_LT(millis(calls[3].at - calls[0].at), 220.0 + millis(kSlack));
  EXPECT_EQ(backend.stats().failed, 1u);
}

// The backoff formula itself, without clocks: exact with jitter 0, and spread uniformly over
// w * [1 - jitter, 1 + jitter] with jitter.
TEST(Retry, BackoffFormulaAndJitterSpread) {
  struct NullSink {
    void process_events(std::span<Event>) {}
  };
  NullSink sink;
  buffered::detail::Ledger<Event> report({}, nullptr);
  buffered::detail::Counters counters;
  buffered::detail::StopState stop;
  buffered::Retry r = exact(5, 100ms, 2.0, 300ms);
  buffered::detail::Delivery<Event, NullSink> plain(sink, report, counters, stop, nullptr, r,
                                                    nullptr);
  const auto ns = [](std::chrono::nanoseconds d) { return d.count(); };
  EXPECT_EQ(ns(plain.backoff(1)), ns(100ms));
  EXPECT_EQ(ns(plain.backoff(2)), ns(200ms));
  EXPECT_EQ(ns(plain.backoff(3)), ns(300ms));
  EXPECT_EQ(ns(plain.backoff(4)), ns(300ms));
  EXPECT_EQ(ns(plain.backoff(5000)), ns(300ms));  // multiplier^4999 is inf: still the cap

  r.jitter = 0.5;
  buffered::detail::Delivery<Event, NullSink> jittered(sink, report, counters, stop, nullptr, r,
                                                       nullptr);
  double lowest = std::numeric_limits<double>::max();
  double highest = 0;
  double sum = 0;
  constexpr int kSamples = 4000;
  for (int i = 0; i < kSamples; ++i) {
    const double w = millis(jittered.backoff(2));  // 200 ms +- 50 %
    ASSERT_GE(w, 100.0);
    ASSERT_LE(w, 300.0);
    lowest = std::min(lowest, w);
    highest = std::max(highest, w);
    sum += w;
  }
  EXPECT_LT(lowest, 110.0);                  // uniform: P(all 4000 above 110) = 0.95^4000
  EXPECT_GT(highest, 290.0);                 // likewise
  EXPECT_NEAR(sum / kSamples, 200.0, 10.0);  // the standard error is about 0.9 ms
}

TEST(Retry, JitteredWaitIsNotShorterThanItsLowerBound) {
  CallLog log;
  auto sink = [&](std::span<Event> events) {
    log.record(events);
    throw std::runtime_error("down");
  };
  buffered::Retry r = exact(3, 200ms, 1.0, 200ms);
  r.jitter = 0.5;  // each wait in [100, 300] ms
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, with_retry(r, false));
  ASSERT_TRUE(backend.process_event(ev(0)));
  backend.run();
  EXPECT_TRUE(backend.shutdown(kPatience));
  const auto calls = log.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_GE(millis(calls[1].at - calls[0].at), 100.0);
  EXPECT_GE(millis(calls[2].at - calls[1].at), 100.0);
}

TEST(Retry, EveryAttemptGetsTheSameEventsInTheSameOrder) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) -> bool {
      const std::size_t i = log.record(events);
      if (i == 0) throw std::runtime_error("first attempt");
      return i == 3;  // calls 2 and 3 return false, the fourth succeeds
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(5, 1ms, 1.0, 1ms), async, 5));
    for (std::uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    backend.run();  // the five wait already: one full batch
    EXPECT_TRUE(backend.shutdown(kPatience));
    const auto calls = log.calls();
    ASSERT_EQ(calls.size(), 4u);
    for (const Call& call : calls) EXPECT_EQ(call.events, seqs(0, 5));
    const auto s = backend.stats();
    EXPECT_EQ(s.delivered, 5u);
    EXPECT_EQ(s.failed, 0u);
    EXPECT_EQ(s.batches, 4u);
    EXPECT_EQ(s.retries, 3u);
    expect_accounting(s, 5);
  }
}

TEST(Retry, ARetryPassesTheEventsAsTheFailedAttemptLeftThem) {
  CallLog log;
  auto sink = [&](std::span<Event> events) {
    if (log.record(events) == 0) {
      for (Event& e : events) e.seq += 100;  // e.g. moved from, then the write failed
      throw std::runtime_error("failed after touching the events");
    }
  };
  buffered::BufferedBackend<Event, decltype(sink)> backend(
      sink, with_retry(exact(3, 1ms, 1.0, 1ms), false, 3));
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  backend.run();
  EXPECT_TRUE(backend.shutdown(kPatience));
  const auto calls = log.calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].events, seqs(0, 3));
  EXPECT_EQ(calls[1].events, seqs(100, 3));
}

TEST(Retry, AfterMaxAttemptsTheBatchFailsReportedOnceInsideTheLastCatch) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    std::mutex mu;
    std::exception_ptr last_thrown;
    auto sink = [&](std::span<Event> events) {
      const std::size_t i = log.record(events);
      auto error = std::make_exception_ptr(std::runtime_error("attempt " + std::to_string(i + 1)));
      {
        std::lock_guard<std::mutex> lock(mu);
        last_thrown = error;
      }
      std::rethrow_exception(error);
    };
    ReportLog reports;
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(3, 1ms, 1.0, 1ms), async), reports.handler());
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));  // failed, not abandoned
    EXPECT_EQ(log.count(), 3u);
    const auto r = reports.reports();
    ASSERT_EQ(r.size(), 1u);  // once per batch, not once per attempt
    EXPECT_EQ(r[0].kind, buffered::ErrorKind::delegate_failed);
    EXPECT_EQ(r[0].events, seqs(0, 2));
    ASSERT_NE(r[0].cause, nullptr);
    EXPECT_EQ(what(r[0].cause), "attempt 3");
    {
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_EQ(r[0].cause, last_thrown);  // the very exception object of the last attempt
    }
    const auto s = backend.stats();
    EXPECT_EQ(s.failed, 2u);
    EXPECT_EQ(s.delivered, 0u);
    EXPECT_EQ(s.batches, 3u);
    EXPECT_EQ(s.retries, 2u);
    expect_accounting(s, 2);
  }
}

TEST(Retry, ALastAttemptThatReturnsFailureIsReportedWithNoException) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    {
      // Earlier attempts threw; the last returned false.
      CallLog log;
      auto sink = [&](std::span<Event> events) -> bool {
        if (log.record(events) == 0) throw std::runtime_error("first");
        return false;
      };
      ReportLog reports;
      buffered::BufferedBackend<Event, decltype(sink)> backend(
          sink, with_retry(exact(2, 1ms, 1.0, 1ms), async), reports.handler());
      ASSERT_TRUE(backend.process_event(ev(0)));
      backend.run();
      EXPECT_TRUE(backend.shutdown(kPatience));
      EXPECT_EQ(log.count(), 2u);
      const auto r = reports.reports();
      ASSERT_EQ(r.size(), 1u);
      EXPECT_EQ(r[0].kind, buffered::ErrorKind::delegate_failed);
      EXPECT_EQ(r[0].cause, nullptr) << what(r[0].cause);
    }
    {
      // Earlier attempts threw; the last returned Outcome::retry().
      CallLog log;
      auto sink = [&](std::span<Event> events) -> buffered::Outcome {
        if (log.record(events) == 0) throw std::runtime_error("first");
        return buffered::Outcome::retry();
      };
      ReportLog reports;
      buffered::BufferedBackend<Event, decltype(sink)> backend(
          sink, with_retry(exact(2, 1ms, 1.0, 1ms), async), reports.handler());
      ASSERT_TRUE(backend.process_event(ev(0)));
      backend.run();
      EXPECT_TRUE(backend.shutdown(kPatience));
      EXPECT_EQ(log.count(), 2u);
      const auto r = reports.reports();
      ASSERT_EQ(r.size(), 1u);
      EXPECT_EQ(r[0].kind, buffered::ErrorKind::delegate_failed);
      EXPECT_EQ(r[0].cause, nullptr) << what(r[0].cause);
    }
  }
}

TEST(Retry, EveryAttemptTakesAThrottleToken) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      log.record(events);
      throw std::runtime_error("down");
    };
    buffered::BatchConfig c = with_retry(exact(3, 1ms, 1.0, 1ms), async);
    c.throttle = buffered::Throttle{10.0, 1};  // one token now, the next 100 ms later, ...
    const auto before = Clock::now();          // the bucket starts full when it is made
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c);
    ASSERT_TRUE(backend.process_event(ev(0)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
    const auto calls = log.calls();
    ASSERT_EQ(calls.size(), 3u);
    // With a 1 ms backoff and one token per batch, the three calls would come within
    // milliseconds. One token per attempt: the second no sooner than 100 ms after the bucket was
    // made, the third 200 ms (1 ms for the bucket's floating point).
    EXPECT_GE(millis(calls[1].at - before), 99.0);
    EXPECT_GE(millis(calls[2].at - before), 199.0);
    EXPECT_EQ(backend.stats().batches, 3u);
  }
}

TEST(Retry, SyncWorkerTakesNoFurtherBatchWhileOneWaitsToRetry) {
  CallLog log;
  auto sink = [&](std::span<Event> events) {
    if (log.record(events) == 0) throw std::runtime_error("down");
  };
  ReportLog reports;
  buffered::BatchConfig c = with_retry(exact(2, 1h, 1.0, 1h), false);  // the retry never comes
  c.buffer_size = 4;
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c, reports.handler());
  ASSERT_TRUE(backend.process_event(ev(0)));
  ASSERT_TRUE(backend.process_event(ev(1)));
  backend.run();
  ASSERT_TRUE(eventually([&] { return log.count() == 1; }));

  // The buffer absorbs, then refuses: the worker takes nothing while [0, 1] waits.
  std::size_t accepted = 0;
  for (std::uint64_t i = 2; i < 8; ++i) accepted += backend.process_event(ev(i)) ? 1 : 0;
  EXPECT_EQ(accepted, 4u);
  std::this_thread::sleep_for(200ms);  // max_batch_wait is 1 ms: a wrong worker would deliver
  EXPECT_EQ(log.count(), 1u);
  auto s = backend.stats();
  EXPECT_EQ(s.queued, 4u);
  EXPECT_EQ(s.pending, 2u);
  EXPECT_EQ(s.rejected_full, 2u);
  EXPECT_EQ(s.retries, 0u);

  EXPECT_FALSE(backend.shutdown(100ms));  // the retry is 1 h away: abandoned with the queue
  EXPECT_EQ(log.count(), 1u);
  s = backend.stats();
  EXPECT_EQ(s.abandoned, 6u);
  EXPECT_EQ(s.delivered, 0u);
  EXPECT_EQ(s.failed, 0u);
  expect_accounting(s, 8);
  std::vector<std::uint64_t> abandoned;
  for (const Report& r : reports.reports()) {
    EXPECT_NE(r.kind, buffered::ErrorKind::delegate_failed);
    if (r.kind != buffered::ErrorKind::abandoned) continue;
    for (const Event& e : r.events) abandoned.push_back(e.seq);
  }
  std::sort(abandoned.begin(), abandoned.end());
  EXPECT_EQ(abandoned, (std::vector<std::uint64_t>{0, 1, 2, 3, 4, 5}));
}

TEST(Retry, TheNextBatchIsDeliveredOnlyAfterTheRetriedOne) {
  // Sync, and async with one call in flight (the waiting batch holds the only slot).
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      if (log.record(events) == 0) throw std::runtime_error("down");
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(2, 300ms, 1.0, 300ms), async));
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    ASSERT_TRUE(eventually([&] { return log.count() == 1; }));
    for (std::uint64_t i = 2; i < 6; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    EXPECT_TRUE(backend.shutdown(kPatience));
    const auto calls = log.calls();
    ASSERT_GE(calls.size(), 3u);
    EXPECT_EQ(calls[0].events, seqs(0, 2));
    EXPECT_EQ(calls[1].events, seqs(0, 2));  // the retry, before anything offered after it
    EXPECT_EQ(events_of(calls, 2), seqs(2, 4));
    expect_accounting(backend.stats(), 6);
  }
}

TEST(Retry, AsyncBatchWaitingToRetryHoldsItsDispatchSlot) {
  CallLog log;
  auto sink = [&](std::span<Event> events) {
    if (log.record(events) == 0) throw std::runtime_error("down");
  };
  buffered::BatchConfig c = with_retry(exact(2, 1h, 1.0, 1h), true);  // one slot
  c.buffer_size = 4;
  c.max_batch_wait = 1h;  // batches go when full: [0, 1], [2, 3], ...
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c);
  ASSERT_TRUE(backend.process_event(ev(0)));
  ASSERT_TRUE(backend.process_event(ev(1)));
  backend.run();
  ASSERT_TRUE(eventually([&] { return log.count() == 1; }));

  // The worker takes the next batch and waits for the slot with it; then the buffer fills.
  ASSERT_TRUE(backend.process_event(ev(2)));
  ASSERT_TRUE(backend.process_event(ev(3)));
  ASSERT_TRUE(eventually([&] { return backend.stats().pending == 4; }));
  std::size_t accepted = 0;
  for (std::uint64_t i = 4; i < 10; ++i) accepted += backend.process_event(ev(i)) ? 1 : 0;
  EXPECT_EQ(accepted, 4u);
  std::this_thread::sleep_for(200ms);  // a freed slot would let [2, 3] through
  EXPECT_EQ(log.count(), 1u);
  auto s = backend.stats();
  EXPECT_EQ(s.in_flight, 0u);
  EXPECT_EQ(s.pending, 4u);
  EXPECT_EQ(s.queued, 4u);
  EXPECT_EQ(s.rejected_full, 2u);

  // What happens at the deadline to the batch that waits for the slot is the next test's.
  EXPECT_FALSE(backend.shutdown(100ms));
  ASSERT_TRUE(eventually([&] { return backend.stats().pending == 0; }));
  s = backend.stats();
  EXPECT_GE(s.abandoned, 6u);
  expect_accounting(s, 10);
}

// The same situation at a shutdown deadline: the retrying batch's wait ends at the deadline
// (abandoned) and frees the slot just then, while the worker waits for that slot with [2, 3].
// No delegate call may start past the deadline: [2, 3] must be abandoned too. Several rounds,
// since which of the two threads wakes first at the deadline is up to the scheduler.
TEST(Retry, NoCallStartsPastTheDeadlineWhenARetryFreesTheSlotThere) {
  constexpr int kRounds = 10;
  int late_calls = 0;
  int delivered_late = 0;
  int pending_after_shutdown = 0;  // rounds whose shutdown returned while such a call ran
  for (int round = 0; round < kRounds; ++round) {
    CallLog log;
    std::atomic<int> late{0};
    auto sink = [&](std::span<Event> events, const buffered::BatchContext& context) {
      if (Clock::now() >= context.deadline()) ++late;
      if (log.record(events) == 0) throw std::runtime_error("down");
    };
    buffered::BatchConfig c = with_retry(exact(2, 1h, 1.0, 1h), true);  // one slot
    c.max_batch_wait = 1h;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c);
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    ASSERT_TRUE(eventually([&] { return log.count() == 1; }));
    ASSERT_TRUE(backend.process_event(ev(2)));
    ASSERT_TRUE(backend.process_event(ev(3)));
    ASSERT_TRUE(eventually([&] { return backend.stats().pending == 4; }));
    EXPECT_FALSE(backend.shutdown(50ms));
    if (backend.stats().pending != 0) ++pending_after_shutdown;
    ASSERT_TRUE(eventually([&] { return backend.stats().pending == 0; }));
    const auto s = backend.stats();
    late_calls += late.load();
    delivered_late += static_cast<int>(s.delivered);
    expect_accounting(s, 4);
  }
  EXPECT_EQ(late_calls, 0) << "delegate calls that started past the shutdown deadline";
  EXPECT_EQ(delivered_late, 0) << "events delivered by calls that started past the deadline";
  EXPECT_EQ(pending_after_shutdown, 0) << "rounds in which shutdown returned with events pending, "
                                          "though no call ran at its deadline";
}

TEST(Retry, FlushWaitsForRetries) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      if (log.record(events) == 0) throw std::runtime_error("down");
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(3, 300ms, 1.0, 300ms), async));
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();  // one batch of both
    ASSERT_TRUE(eventually([&] { return log.count() == 1; }));
    EXPECT_TRUE(backend.flush());
    // It returned after the retry delivered the batch, not after the first attempt failed.
    EXPECT_EQ(log.count(), 2u);
    const auto s = backend.stats();
    EXPECT_EQ(s.delivered, 2u);
    EXPECT_EQ(s.retries, 1u);
    EXPECT_EQ(s.pending, 0u);
  }
}

TEST(Retry, FlushTimesOutWhileARetryIsPending) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    Gate retry_may_finish;
    auto sink = [&](std::span<Event> events) {
      if (log.record(events) == 0) throw std::runtime_error("down");
      retry_may_finish.wait();
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(3, 50ms, 1.0, 50ms), async));
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();  // one batch of both
    ASSERT_TRUE(eventually([&] { return log.count() == 1; }));
    // The batch waits for its retry, or is in it; either way it is not done.
    EXPECT_FALSE(backend.flush(100ms));
    retry_may_finish.open();
    EXPECT_TRUE(backend.flush(kPatience));
    EXPECT_EQ(backend.stats().delivered, 2u);
    EXPECT_TRUE(backend.shutdown(kPatience));
  }
}

TEST(Retry, FlushReturnsFalseWhenARetryingBatchIsAbandoned) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      log.record(events);
      throw std::runtime_error("down");
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(5, 1h, 1.0, 1h), async));
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    ASSERT_TRUE(eventually([&] { return log.count() == 1; }));
    std::atomic<bool> flushed{true};
    std::atomic<bool> returned{false};
    std::thread flusher([&] {
      flushed = backend.flush(2 * kPatience);
      returned = true;
    });
    EXPECT_FALSE(backend.shutdown(100ms));
    EXPECT_TRUE(eventually([&] { return returned.load(); }));  // at the deadline, not its own
    flusher.join();
    EXPECT_FALSE(flushed.load());
    EXPECT_EQ(backend.stats().abandoned, 2u);
  }
}

TEST(Retry, ShutdownDeadlineAbandonsABatchWaitingToRetry) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      log.record(events);
      throw std::runtime_error("down");
    };
    ReportLog reports;
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(5, 1h, 1.0, 1h), async), reports.handler());
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    ASSERT_TRUE(eventually([&] { return log.count() == 1; }));
    const auto t0 = Clock::now();
    EXPECT_FALSE(backend.shutdown(200ms));
    const double took = millis(Clock::now() - t0);
    EXPECT_GE(took, 200.0);                   // nothing ends the wait before the deadline
    EXPECT_LT(took, 200.0 + millis(kSlack));  // promptly: not after the 1 h backoff
    EXPECT_EQ(log.count(), 1u);
    const auto r = reports.reports();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, buffered::ErrorKind::abandoned);
    EXPECT_EQ(r[0].events, seqs(0, 2));
    const auto s = backend.stats();
    EXPECT_EQ(s.abandoned, 2u);
    EXPECT_EQ(s.failed, 0u);
    EXPECT_EQ(s.retries, 0u);
    EXPECT_EQ(s.batches, 1u);
    expect_accounting(s, 2);
  }
}

TEST(Retry, NoAttemptStartsAfterAShutdownDeadline) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    Gate may_fail;
    auto sink = [&](std::span<Event> events) {
      log.record(events);
      may_fail.wait();
      throw std::runtime_error("failed after the deadline");
    };
    ReportLog reports;
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(5, 1ms, 1.0, 1ms), async), reports.handler());
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    ASSERT_TRUE(eventually([&] { return log.count() == 1; }));
    EXPECT_FALSE(backend.shutdown(100ms));  // the first call outlives the deadline
    auto s = backend.stats();
    EXPECT_EQ(s.pending, 2u);
    EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.pending);

    may_fail.open();  // it fails now, past the deadline: a retry would be due in 1 ms
    ASSERT_TRUE(eventually([&] { return backend.stats().pending == 0; }));
    EXPECT_EQ(log.count(), 1u);
    s = backend.stats();
    EXPECT_EQ(s.abandoned, 2u);
    EXPECT_EQ(s.failed, 0u);
    EXPECT_EQ(s.retries, 0u);
    expect_accounting(s, 2);
    const auto r = reports.reports();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, buffered::ErrorKind::abandoned);
    EXPECT_EQ(r[0].events, seqs(0, 2));
  }
}

TEST(Retry, UnboundedShutdownWaitsForTheRetries) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      if (log.record(events) < 2) throw std::runtime_error("not yet");
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(
        sink, with_retry(exact(5, 100ms, 2.0, 1s), async));
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    EXPECT_TRUE(backend.shutdown());  // waits 100 + 200 ms of backoff for the third attempt
    EXPECT_EQ(log.count(), 3u);
    const auto s = backend.stats();
    EXPECT_EQ(s.delivered, 2u);
    EXPECT_EQ(s.retries, 2u);
    EXPECT_EQ(s.abandoned, 0u);
    expect_accounting(s, 2);
  }
}

TEST(Retry, WithoutRetryAFailedBatchIsReportedAtOnceAfterOneCall) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    for (const bool throws : {true, false}) {
      SCOPED_TRACE(throws ? "throws" : "returns false");
      CallLog log;
      auto sink = [&](std::span<Event> events) -> bool {
        if (log.record(events) != 0) return true;
        if (throws) throw std::runtime_error("down");
        return false;
      };
      std::atomic<std::size_t> calls_when_reported{0};
      ReportLog reports;
      auto on_error = [&, h = reports.handler()](buffered::ErrorKind kind,
                                                 std::span<const Event> events) {
        calls_when_reported = log.count();
        h(kind, events);
      };
      buffered::BatchConfig c;
      c.max_batch_size = 2;
      c.max_batch_wait = 1ms;
      c.async_delegate = async;
      c.max_in_flight = 1;
      ASSERT_FALSE(c.retry.has_value());
      buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c, on_error);
      for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
      backend.run();
      EXPECT_TRUE(backend.shutdown(kPatience));
      const auto calls = log.calls();
      ASSERT_EQ(calls.size(), 2u);  // no second call for [0, 1]
      EXPECT_EQ(calls[0].events, seqs(0, 2));
      EXPECT_EQ(calls[1].events, seqs(2, 2));
      const auto r = reports.reports();
      ASSERT_EQ(r.size(), 1u);
      EXPECT_EQ(r[0].kind, buffered::ErrorKind::delegate_failed);
      EXPECT_EQ(r[0].events, seqs(0, 2));
      EXPECT_EQ(what(r[0].cause), throws ? "down" : "<none>");
      EXPECT_EQ(calls_when_reported.load(), 1u);  // at once: before the next batch's call
      const auto s = backend.stats();
      EXPECT_EQ(s.failed, 2u);
      EXPECT_EQ(s.delivered, 2u);
      EXPECT_EQ(s.batches, 2u);
      EXPECT_EQ(s.retries, 0u);
      expect_accounting(s, 4);
      EXPECT_EQ(count_kind(r, buffered::ErrorKind::abandoned), 0u);
    }
  }
}

}  // namespace
