// Delegate failures and error-handler failures: caught, counted, reported, never fatal.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>

#include "support.hpp"

namespace {

using namespace buffered_test;

buffered::BatchConfig small_batches(bool async) {
  buffered::BatchConfig c;
  c.max_batch_size = 2;
  c.max_batch_wait = 1ms;
  c.async_delegate = async;
  return c;
}

TEST(Failures, ThrowingDelegateIsCaughtReportedInsideTheCatchAndCounted) {
  for (const bool async : {false, true}) {
    std::atomic<int> calls{0};
    std::atomic<int> delivered{0};
    auto sink = [&](std::span<Event> events) {
      if (calls++ == 0) throw std::runtime_error("disk full");
      delivered += static_cast<int>(events.size());
    };
    std::mutex mu;
    std::vector<std::string> causes;
    std::vector<Event> failed_events;
    auto on_error = [&](buffered::ErrorKind kind, std::span<const Event> events) {
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_EQ(kind, buffered::ErrorKind::delegate_failed);
      failed_events.insert(failed_events.end(), events.begin(), events.end());
      try {
        std::rethrow_exception(std::current_exception());
      } catch (const std::runtime_error& e) {
        causes.emplace_back(e.what());
      } catch (...) {
        causes.emplace_back("?");
      }
    };
    buffered::BatchConfig c = small_batches(async);
    c.max_batch_wait = 1h;
    c.max_in_flight = 1;  // so "the first call" is the first batch
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c, on_error);
    for (std::uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    backend.run();
    EXPECT_TRUE(backend.shutdown());  // nothing abandoned; the failure is reported, not fatal
    EXPECT_EQ(causes, std::vector<std::string>{"disk full"}) << "async=" << async;
    EXPECT_EQ(failed_events, (std::vector<Event>{ev(0), ev(1)}));
    EXPECT_EQ(delivered.load(), 4);  // the thread survived and kept delivering
    const auto s = backend.stats();
    EXPECT_EQ(s.failed, 2u);
    EXPECT_EQ(s.delivered, 4u);
    EXPECT_EQ(s.batches, 3u);
    expect_accounting(s, 6);
  }
}

TEST(Failures, FalseResultFailsTheBatchWithNoException) {
  for (const bool async : {false, true}) {
    auto sink = [](std::span<Event> events) { return events.front().seq % 2 == 0; };
    ErrorLog<> errors;
    std::atomic<bool> had_exception{false};
    auto on_error = [&, h = errors.handler()](buffered::ErrorKind k, std::span<const Event> e) {
      if (std::current_exception()) had_exception = true;
      h(k, e);
    };
    buffered::BatchConfig c;
    c.max_batch_size = 1;
    c.async_delegate = async;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c, on_error);
    backend.run();
    for (std::uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    EXPECT_TRUE(backend.shutdown());
    EXPECT_FALSE(had_exception.load());
    EXPECT_EQ(errors.count(buffered::ErrorKind::delegate_failed), 5u);
    const auto s = backend.stats();
    EXPECT_EQ(s.failed, 5u);
    EXPECT_EQ(s.delivered, 5u);
    expect_accounting(s, 10);
  }
}

TEST(Failures, ThrowingErrorHandlerIsContained) {
  auto sink = [](std::span<Event>) { throw std::logic_error("bad batch"); };
  std::atomic<int> handler_calls{0};
  auto on_error = [&](buffered::ErrorKind, std::span<const Event>) {
    ++handler_calls;
    throw std::runtime_error("handler broke too");
  };
  buffered::BatchConfig c;
  c.buffer_size = 3;
  c.max_batch_size = 1;
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c, on_error);
  for (std::uint64_t i = 0; i < 5; ++i) backend.process_event(ev(i));  // 2 refused: handler throws
  backend.run();
  EXPECT_TRUE(backend.shutdown());
  backend.process_event(ev(9));  // refused after shutdown: handler throws again
  EXPECT_EQ(handler_calls.load(), 2 + 3 + 1);
  const auto s = backend.stats();
  EXPECT_EQ(s.failed, 3u);
  expect_accounting(s, 6);
}

TEST(Failures, ThrowingDelegateShutdownIsContained) {
  struct Sink {
    void process_events(std::span<Event>) {}
    void shutdown() { throw std::runtime_error("close failed"); }
  };
  buffered::BufferedBackend<Event, Sink> backend(Sink{});
  backend.run();
  ASSERT_TRUE(backend.process_event(ev(1)));
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(backend.stats().delivered, 1u);
}

TEST(Failures, ThrowingCopyLeavesTheBackendUnchanged) {
  struct Fragile {
    int value = 0;
    bool throw_on_copy = false;
    Fragile() = default;
    Fragile(int v, bool t) : value(v), throw_on_copy(t) {}
    Fragile(const Fragile& other) : value(other.value), throw_on_copy(other.throw_on_copy) {
      if (throw_on_copy) throw std::runtime_error("copy failed");
    }
    Fragile(Fragile&&) noexcept = default;
    Fragile& operator=(const Fragile&) = default;
    Fragile& operator=(Fragile&&) noexcept = default;
  };
  std::atomic<int> delivered{0};
  auto sink = [&](std::span<Fragile> events) { delivered += static_cast<int>(events.size()); };
  buffered::BufferedBackend<Fragile, decltype(sink)> backend(sink);
  const Fragile good(1, false);
  const Fragile bad(2, true);
  EXPECT_TRUE(backend.process_event(good));
  EXPECT_THROW(backend.process_event(bad), std::runtime_error);
  const std::vector<Fragile> span_events{Fragile(3, false), Fragile(4, false)};
  // A vector copy would throw on the second element's flag; build the span by moves instead.
  std::vector<Fragile> mixed;
  mixed.push_back(Fragile(5, false));
  mixed.push_back(Fragile(6, true));
  EXPECT_THROW(backend.process_events(mixed), std::runtime_error);  // the first is accepted
  auto s = backend.stats();
  EXPECT_EQ(s.accepted, 2u);
  EXPECT_EQ(s.rejected_full + s.rejected_shut_down, 0u);
  EXPECT_EQ(s.queued, 2u);
  backend.run();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(delivered.load(), 2);
  EXPECT_EQ(span_events.size(), 2u);
}

TEST(Failures, NothingIsPrintedByDefault) {
  auto sink = [](std::span<Event>) { throw std::runtime_error("boom"); };
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  {
    buffered::BatchConfig c;
    c.buffer_size = 1;
    buffered::BufferedBackend<Event, decltype(sink)> backend(sink, c);  // no error handler
    backend.process_event(ev(1));
    backend.process_event(ev(2));  // refused
    backend.run();
    backend.shutdown();
    EXPECT_EQ(backend.stats().failed, 1u);
  }
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
}

}  // namespace
