// Outcomes: a delegate may return buffered::Outcome (delivered, retry, retry after a delay,
// permanent failure) or throw buffered::permanent_error; permanent failures are never retried,
// anything else that fails (another exception, `false`, Outcome::retry) is. Without
// BatchConfig::retry every failure is final.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>

#include "support.hpp"

namespace {

using namespace buffered_test;
using buffered::Outcome;

buffered::BatchConfig config(bool async, std::optional<buffered::Retry> retry) {
  buffered::BatchConfig c;
  c.max_batch_size = 2;
  c.max_batch_wait = 1ms;
  c.async_delegate = async;
  c.max_in_flight = 1;
  c.retry = retry;
  return c;
}

buffered::Retry quick_retry(std::size_t attempts = 5) {
  buffered::Retry r;
  r.max_attempts = attempts;
  r.initial_backoff = 1ms;
  r.multiplier = 1.0;
  r.max_backoff = 1ms;
  r.jitter = 0.0;
  return r;
}

TEST(Outcomes, ValuesSayWhatTheyAre) {
  EXPECT_EQ(Outcome::delivered().kind(), Outcome::Kind::delivered);
  EXPECT_EQ(Outcome::retry().kind(), Outcome::Kind::retry);
  EXPECT_EQ(Outcome::retry().retry_after().count(), 0);
  EXPECT_EQ(Outcome::retry(250ms).retry_after().count(), std::chrono::nanoseconds(250ms).count());
  EXPECT_EQ(Outcome::permanent_failure().kind(), Outcome::Kind::permanent_failure);
  EXPECT_TRUE(Outcome::retry(5ms) == Outcome::retry(5ms));
  EXPECT_FALSE(Outcome::retry(5ms) == Outcome::retry(6ms));
  EXPECT_FALSE(Outcome::delivered() == Outcome::permanent_failure());
  const buffered::permanent_error e("400 bad request");
  const std::runtime_error& base = e;  // a runtime_error: catch sites that know it still work
  EXPECT_STREQ(base.what(), "400 bad request");
}

TEST(Outcomes, DeliveredCountsDelivered) {
  for (const bool async : {false, true}) {
    for (const bool with_retry : {false, true}) {
      SCOPED_TRACE(std::string(async ? "async" : "sync") + (with_retry ? " retry" : ""));
      CallLog log;
      auto sink = [&](std::span<Event> events) {
        log.record(events);
        return Outcome::delivered();
      };
      ReportLog reports;
      buffered::BufferedBackend<Event, decltype(sink)> backend(
          sink, config(async, with_retry ? std::optional(quick_retry()) : std::nullopt),
          reports.handler());
      for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
      backend.run();
      EXPECT_TRUE(backend.shutdown(kPatience));
      EXPECT_EQ(log.count(), 2u);
      EXPECT_TRUE(reports.reports().empty());
      const auto s = backend.stats();
      EXPECT_EQ(s.delivered, 4u);
      EXPECT_EQ(s.failed, 0u);
      EXPECT_EQ(s.batches, 2u);
      EXPECT_EQ(s.retries, 0u);
      expect_accounting(s, 4);
    }
  }
}

TEST(Outcomes, RetryIsRetried) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      return log.record(events) < 2 ? Outcome::retry() : Outcome::delivered();
    };
    ReportLog reports;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, quick_retry()),
                                                             reports.handler());
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
    const auto calls = log.calls();
    ASSERT_EQ(calls.size(), 3u);
    for (const Call& call : calls) EXPECT_EQ(call.events, seqs(0, 2));
    EXPECT_TRUE(reports.reports().empty());
    const auto s = backend.stats();
    EXPECT_EQ(s.delivered, 2u);
    EXPECT_EQ(s.retries, 2u);
    EXPECT_EQ(s.batches, 3u);
    expect_accounting(s, 2);
  }
}

TEST(Outcomes, RetryAfterWaitsAtLeastThatLong) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    std::mutex mu;
    Clock::time_point first_returned{};
    auto sink = [&](std::span<Event> events) {
      if (log.record(events) != 0) return Outcome::delivered();
      std::lock_guard<std::mutex> lock(mu);
      first_returned = Clock::now();
      return Outcome::retry(300ms);  // e.g. HTTP 503 with Retry-After
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, quick_retry()));
    ASSERT_TRUE(backend.process_event(ev(0)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
    const auto calls = log.calls();
    ASSERT_EQ(calls.size(), 2u);
    std::lock_guard<std::mutex> lock(mu);
    const double waited = millis(calls[1].at - first_returned);
    EXPECT_GE(waited, 300.0) << "the 1 ms backoff was used instead of retry(300ms)";
    EXPECT_LT(waited, 300.0 + millis(kSlack));
    EXPECT_EQ(backend.stats().delivered, 1u);
  }
}

TEST(Outcomes, RetryAfterReplacesTheBackoff) {
  // The backoff is 1 h; retry(1ms) asks for 1 ms instead, so the batch is delivered long before
  // the shutdown's deadline (with the backoff it would be abandoned there).
  CallLog log;
  auto sink = [&](std::span<Event> events) {
    return log.record(events) == 0 ? Outcome::retry(1ms) : Outcome::delivered();
  };
  buffered::Retry r = quick_retry();
  r.initial_backoff = 1h;
  r.max_backoff = 1h;
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(false, r));
  ASSERT_TRUE(backend.process_event(ev(0)));
  backend.run();
  EXPECT_TRUE(backend.shutdown(kPatience));
  EXPECT_EQ(log.count(), 2u);
  EXPECT_EQ(backend.stats().delivered, 1u);
}

TEST(Outcomes, PermanentFailureIsNeverRetried) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      log.record(events);
      return Outcome::permanent_failure();
    };
    ReportLog reports;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, quick_retry()),
                                                             reports.handler());
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
    EXPECT_EQ(log.count(), 1u);
    const auto r = reports.reports();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].kind, buffered::ErrorKind::delegate_failed);
    EXPECT_EQ(r[0].events, seqs(0, 2));
    EXPECT_EQ(r[0].cause, nullptr);
    const auto s = backend.stats();
    EXPECT_EQ(s.failed, 2u);
    EXPECT_EQ(s.batches, 1u);
    EXPECT_EQ(s.retries, 0u);
    expect_accounting(s, 2);
  }
}

struct BadRequest : buffered::permanent_error {
  using buffered::permanent_error::permanent_error;
};

TEST(Outcomes, ThrowingPermanentErrorIsNeverRetried) {
  for (const bool async : {false, true}) {
    for (const bool derived : {false, true}) {
      SCOPED_TRACE(std::string(async ? "async" : "sync") + (derived ? " derived" : ""));
      CallLog log;
      auto sink = [&](std::span<Event> events) {
        log.record(events);
        if (derived) throw BadRequest("400 bad request");
        throw buffered::permanent_error("400 bad request");
      };
      ReportLog reports;
      buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, quick_retry()),
                                                               reports.handler());
      ASSERT_TRUE(backend.process_event(ev(0)));
      ASSERT_TRUE(backend.process_event(ev(1)));
      backend.run();
      EXPECT_TRUE(backend.shutdown(kPatience));
      EXPECT_EQ(log.count(), 1u);
      const auto r = reports.reports();
      ASSERT_EQ(r.size(), 1u);
      EXPECT_EQ(r[0].kind, buffered::ErrorKind::delegate_failed);
      EXPECT_EQ(r[0].events, seqs(0, 2));
      EXPECT_EQ(what(r[0].cause), "400 bad request");  // reported inside the catch
      bool is_permanent = false;
      try {
        std::rethrow_exception(r[0].cause);
      } catch (const buffered::permanent_error&) {
        is_permanent = true;
      } catch (...) {
      }
      EXPECT_TRUE(is_permanent);
      const auto s = backend.stats();
      EXPECT_EQ(s.failed, 2u);
      EXPECT_EQ(s.retries, 0u);
      expect_accounting(s, 2);
    }
  }
}

TEST(Outcomes, OtherExceptionsAndFalseAreRetryable) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) -> bool {
      switch (log.record(events)) {
        case 0:
          throw std::runtime_error("connection refused");
        case 1:
          throw 42;  // not even a std::exception
        case 2:
          return false;
        case 3:
          throw std::logic_error("server bug");
        default:
          return true;
      }
    };
    ReportLog reports;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, quick_retry(5)),
                                                             reports.handler());
    ASSERT_TRUE(backend.process_event(ev(0)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
    EXPECT_EQ(log.count(), 5u);
    EXPECT_TRUE(reports.reports().empty());
    const auto s = backend.stats();
    EXPECT_EQ(s.delivered, 1u);
    EXPECT_EQ(s.failed, 0u);
    EXPECT_EQ(s.retries, 4u);
    expect_accounting(s, 1);
  }
}

TEST(Outcomes, WithoutRetryConfiguredRetryAndPermanentFailureBothJustFail) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      log.record(events);
      switch (events.front().seq) {
        case 0:
          return Outcome::retry();
        case 2:
          return Outcome::retry(1ms);
        case 4:
          return Outcome::permanent_failure();
        default:
          return Outcome::delivered();
      }
    };
    ReportLog reports;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, std::nullopt),
                                                             reports.handler());
    for (std::uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    backend.run();  // batches [0, 1], [2, 3], [4, 5], [6, 7]
    EXPECT_TRUE(backend.shutdown(kPatience));
    const auto calls = log.calls();
    ASSERT_EQ(calls.size(), 4u);  // one call per batch
    const auto r = reports.reports();
    ASSERT_EQ(r.size(), 3u);
    for (std::size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(r[i].kind, buffered::ErrorKind::delegate_failed);
      EXPECT_EQ(r[i].events, seqs(2 * i, 2));
      EXPECT_EQ(r[i].cause, nullptr);
    }
    const auto s = backend.stats();
    EXPECT_EQ(s.failed, 6u);
    EXPECT_EQ(s.delivered, 2u);
    EXPECT_EQ(s.batches, 4u);
    EXPECT_EQ(s.retries, 0u);
    expect_accounting(s, 8);
  }
}

TEST(Outcomes, MemberFormReturningOutcome) {
  struct Sink {
    CallLog* log;
    Outcome process_events(std::span<Event> events) {
      return log->record(events) == 0 ? Outcome::retry() : Outcome::delivered();
    }
  };
  static_assert(buffered::Sink<Sink, Event>);
  CallLog log;
  buffered::BufferedBackend<Event, Sink> backend(Sink{&log}, config(false, quick_retry()));
  ASSERT_TRUE(backend.process_event(ev(0)));
  backend.run();
  EXPECT_TRUE(backend.shutdown(kPatience));
  EXPECT_EQ(log.count(), 2u);
  EXPECT_EQ(backend.stats().delivered, 1u);
}

}  // namespace
