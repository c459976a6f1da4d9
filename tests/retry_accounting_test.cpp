// Accounting under retry: Stats::retries counts the repeated calls (Stats::batches every call),
// Stats::pending includes a batch waiting for a retry, and after every shutdown
// accepted == delivered + failed + abandoned + pending, with pending == 0 after an unbounded one.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <stdexcept>
#include <thread>

#include "support.hpp"

namespace {

using namespace buffered_test;
using buffered::BatchContext;
using buffered::Outcome;

buffered::Retry retry(std::size_t attempts, std::chrono::nanoseconds backoff) {
  buffered::Retry r;
  r.max_attempts = attempts;
  r.initial_backoff = backoff;
  r.multiplier = 1.0;
  r.max_backoff = backoff;
  r.jitter = 0.0;
  return r;
}

buffered::BatchConfig config(bool async, buffered::Retry r) {
  buffered::BatchConfig c;
  c.max_batch_size = 2;
  c.max_batch_wait = 1ms;
  c.async_delegate = async;
  c.max_in_flight = 1;
  c.retry = r;
  return c;
}

void expect_identity(const buffered::Stats& s) {
  EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.pending);
  EXPECT_EQ(s.queued, 0u);
}

TEST(RetryAccounting, RetriesCountRepeatedCallsBatchesCountEveryCall) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    // [0, 1] succeeds on its third attempt, [2, 3] on its first, [4, 5] never (3 attempts).
    auto sink = [](std::span<Event> events, const BatchContext& context) {
      switch (events.front().seq) {
        case 0:
          return context.attempt() == 3;
        case 2:
          return true;
        default:
          return false;
      }
    };
    buffered::BatchConfig c = config(async, retry(3, 1ms));
    c.max_in_flight = 2;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c);
    for (std::uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    backend.run();
    EXPECT_TRUE(backend.shutdown(kPatience));
    const auto s = backend.stats();
    EXPECT_EQ(s.batches, 3u + 1u + 3u);
    EXPECT_EQ(s.retries, 2u + 0u + 2u);
    EXPECT_EQ(s.delivered, 4u);
    EXPECT_EQ(s.failed, 2u);
    expect_accounting(s, 6);
  }
}

TEST(RetryAccounting, PendingIncludesABatchWaitingToRetry) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    CallLog log;
    auto sink = [&](std::span<Event> events) {
      log.record(events);
      throw std::runtime_error("down");
    };
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, retry(5, 1h)));
    ASSERT_TRUE(backend.process_event(ev(0)));
    ASSERT_TRUE(backend.process_event(ev(1)));
    backend.run();
    ASSERT_TRUE(eventually([&] { return log.count() == 1; }));
    ASSERT_TRUE(eventually([&] { return backend.stats().in_flight == 0; }));  // call returned
    auto s = backend.stats();
    EXPECT_EQ(s.pending, 2u);  // taken from the buffer, not settled: waiting 1 h for the retry
    EXPECT_EQ(s.queued, 0u);
    EXPECT_EQ(s.delivered + s.failed + s.abandoned, 0u);
    EXPECT_EQ(s.batches, 1u);
    EXPECT_EQ(s.retries, 0u);
    expect_identity(s);

    EXPECT_FALSE(backend.shutdown(100ms));
    s = backend.stats();
    EXPECT_EQ(s.abandoned, 2u);
    expect_accounting(s, 2);  // pending 0: the waiting batch was settled before shutdown returned
  }
}

TEST(RetryAccounting, PendingWhileARetryAttemptOutlivesTheDeadline) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    for (const bool retry_succeeds : {true, false}) {
      SCOPED_TRACE(retry_succeeds ? "the late attempt succeeds" : "the late attempt fails");
      CallLog log;
      Gate release;
      auto sink = [&](std::span<Event> events) -> bool {
        if (log.record(events) == 0) return false;
        release.wait();  // the second attempt outlives the deadline
        return retry_succeeds;
      };
      buffered::BufferedBackend<Event, decltype(sink)> backend(sink, config(async, retry(5, 1ms)));
      ASSERT_TRUE(backend.process_event(ev(0)));
      ASSERT_TRUE(backend.process_event(ev(1)));
      backend.run();
      ASSERT_TRUE(eventually([&] { return log.count() == 2; }));
      EXPECT_FALSE(backend.shutdown(100ms));
      auto s = backend.stats();
      EXPECT_EQ(s.pending, 2u);
      EXPECT_EQ(s.in_flight, 1u);
      expect_identity(s);

      release.open();
      ASSERT_TRUE(eventually([&] { return backend.stats().pending == 0; }));
      s = backend.stats();
      EXPECT_EQ(log.count(), 2u);  // no third attempt past the deadline
      EXPECT_EQ(s.delivered, retry_succeeds ? 2u : 0u);
      EXPECT_EQ(s.abandoned, retry_succeeds ? 0u : 2u);
      EXPECT_EQ(s.failed, 0u);
      EXPECT_EQ(s.retries, 1u);
      expect_accounting(s, 2);
    }
  }
}

TEST(RetryAccounting, UnboundedShutdownLeavesNothingPending) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    // Each batch fails on its first attempt and succeeds on its second.
    auto sink = [](std::span<Event>, const BatchContext& context) {
      if (context.attempt() == 1) throw std::runtime_error("first attempt");
    };
    buffered::BatchConfig c = config(async, retry(3, 20ms));
    c.max_in_flight = 2;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c);
    backend.run();
    for (std::uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    EXPECT_TRUE(backend.shutdown());
    const auto s = backend.stats();
    EXPECT_EQ(s.delivered, 10u);
    EXPECT_EQ(s.retries, s.batches / 2);  // one retry per batch
    expect_accounting(s, 10);
  }
}

// Mixed outcomes from a producer thread, a bounded shutdown that lands among retries, and the
// books checked twice: right after shutdown returns (with pending) and once everything has
// settled. Every accepted event ends exactly once: delivered (in a call that succeeded),
// reported delegate_failed, or reported abandoned.
TEST(RetryAccounting, EveryEventEndsExactlyOnceAfterABoundedShutdown) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    std::mutex mu;
    std::vector<std::uint64_t> delivered;
    auto sink = [&](std::span<Event> events, const BatchContext& context) {
      std::this_thread::sleep_for(
          std::chrono::microseconds(static_cast<std::int64_t>(200 * (events.front().seq % 3))));
      bool ok = false;
      switch (events.front().seq % 6) {
        case 0:
          throw std::runtime_error("always fails");
        case 1:
          ok = context.attempt() >= 2;
          break;
        case 2:
          return Outcome::permanent_failure();
        case 3:
          throw buffered::permanent_error("bad request");
        case 4:
          if (context.attempt() < 3) return Outcome::retry(2ms);
          ok = true;
          break;
        default:
          ok = true;
          break;
      }
      if (!ok) return Outcome::retry();
      std::lock_guard<std::mutex> lock(mu);
      for (const Event& e : events) delivered.push_back(e.seq);
      return Outcome::delivered();
    };
    ErrorLog<> errors;
    buffered::BatchConfig c = config(async, retry(3, 5ms));
    c.max_batch_size = 3;
    c.buffer_size = 64;
    c.max_in_flight = 3;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c, errors.handler());
    backend.run();
    constexpr std::uint64_t kOffered = 400;
    std::thread producer([&] {
      for (std::uint64_t i = 0; i < kOffered; ++i) {
        backend.process_event(ev(i));
        if (i % 16 == 0) std::this_thread::sleep_for(1ms);
      }
    });
    producer.join();
    const bool clean = backend.shutdown(30ms);
    auto s = backend.stats();
    EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.pending);
    EXPECT_EQ(s.queued, 0u);
    EXPECT_EQ(kOffered, s.accepted + s.rejected_full + s.rejected_shut_down);
    if (clean) {
      EXPECT_EQ(s.pending, 0u);
    }

    ASSERT_TRUE(eventually([&] { return backend.stats().pending == 0; }));
    s = backend.stats();
    expect_accounting(s, kOffered);

    std::map<std::uint64_t, int> endings;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (std::uint64_t seq : delivered) ++endings[seq];
      EXPECT_EQ(delivered.size(), s.delivered);
    }
    std::size_t refused = 0;
    for (const auto& [kind, events] : errors.entries()) {
      if (kind == buffered::ErrorKind::buffer_full || kind == buffered::ErrorKind::shut_down) {
        refused += events.size();
        continue;
      }
      for (const Event& e : events) ++endings[e.seq];
    }
    EXPECT_EQ(refused, s.rejected_full + s.rejected_shut_down);
    EXPECT_EQ(errors.count(buffered::ErrorKind::delegate_failed), s.failed);
    EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), s.abandoned);
    EXPECT_EQ(endings.size(), s.accepted);
    for (const auto& [seq, n] : endings) EXPECT_EQ(n, 1) << "event " << seq;
  }
}

}  // namespace
