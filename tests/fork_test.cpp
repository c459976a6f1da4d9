// fork() after run(): the child has a copy of the backend but none of its threads. Destroying
// that copy in the child (explicitly, or by exit() for a static backend) must end at once,
// without waiting for a worker or pool thread that does not exist there and without
// delivering anything (the parent delivers its events; the child delivering its copies would
// deliver them twice). The parent's backend goes on as if nothing happened.
//
// Each child runs under a deadline: one that does not end in time is killed and the test fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include <unistd.h>

#include "child_process.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define BUFFERED_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BUFFERED_TEST_ASAN 1
#endif
#endif
#ifndef BUFFERED_TEST_ASAN
#define BUFFERED_TEST_ASAN 0
#endif
#include "support.hpp"

namespace {

using namespace buffered_test;

constexpr char kDeliveredMark = '#';  // one per event delivered in a child

// Counts the events it is given. A call made in another process than the one that made it (a
// forked child) also tells the parent, one kDeliveredMark per event.
class ForkAwareSink {
 public:
  ForkAwareSink() = default;
  ForkAwareSink(ForkAwareSink&& other) noexcept
      : creator_(other.creator_), delivered_(other.delivered_.load()) {}
  void process_events(std::span<Event> batch) {
    delivered_.fetch_add(batch.size());
    if (::getpid() != creator_) write_to_parent(std::string(batch.size(), kDeliveredMark));
  }
  std::uint64_t delivered() const { return delivered_.load(); }

 private:
  const pid_t creator_ = ::getpid();
  std::atomic<std::uint64_t> delivered_{0};
};

// ForkAwareSink whose calls wait for a gate (events then stay queued behind the held call).
class HeldSink {
 public:
  void process_events(std::span<Event> batch) {
    calls_.fetch_add(1);
    gate_.wait();
    sink_.process_events(batch);
  }
  void open() { gate_.open(); }
  std::uint64_t calls() const { return calls_.load(); }
  std::uint64_t delivered() const { return sink_.delivered(); }

 private:
  ForkAwareSink sink_;
  std::atomic<std::uint64_t> calls_{0};
  Gate gate_;
};

struct OpenAtExit {
  HeldSink& sink;
  ~OpenAtExit() { sink.open(); }
};

std::size_t delivered_in_child(const ChildResult& child) {
  return static_cast<std::size_t>(
      std::count(child.output.begin(), child.output.end(), kDeliveredMark));
}

buffered::BatchConfig config(bool async) {
  buffered::BatchConfig c;
  c.max_batch_size = 100;
  c.max_batch_wait = 5ms;
  c.async_delegate = async;
  c.max_in_flight = async ? 4 : 1;
  return c;
}

// The parent's backend ran and delivered 100 events; the child destroys its copy and ends.
// The parent's backend then delivers 100 more.
void child_destroys_a_backend_that_ran(bool async) {
  ForkAwareSink sink;
  using Backend = buffered::BufferedBackend<Event, ForkAwareSink&>;
  auto backend = std::make_unique<Backend>(sink, config(async));
  backend->run();
  for (std::uint64_t i = 0; i < 100; ++i) ASSERT_TRUE(backend->process_event(ev(i)));
  ASSERT_TRUE(backend->flush());
  ASSERT_EQ(sink.delivered(), 100u);
  const ChildResult child = run_in_child(kSlack, [&] {
    backend.reset();  // the copy: its worker (and pool) threads are the parent's only
    return std::string();
  });
  EXPECT_TRUE(child.exited_zero()) << "the child " << child.describe();
  EXPECT_EQ(delivered_in_child(child), 0u) << "events delivered by the child";
  for (std::uint64_t i = 100; i < 200; ++i) EXPECT_TRUE(backend->process_event(ev(i)));
  EXPECT_TRUE(backend->shutdown());
  EXPECT_EQ(sink.delivered(), 200u);
  expect_settled(backend->stats(), 200);
}

TEST(Fork, AChildDestroysASyncBackendThatRanAndExitsAtOnce) {
  child_destroys_a_backend_that_ran(false);
}

TEST(Fork, AChildDestroysAnAsyncBackendThatRanAndExitsAtOnce) {
  child_destroys_a_backend_that_ran(true);
}

// Events are queued at the fork (behind a delegate call the parent holds): the child destroys
// its copy without delivering any of them; the parent delivers every one.
TEST(Fork, AChildDestroysABackendWithEventsQueuedWithoutDeliveringThem) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    HeldSink sink;
    OpenAtExit open_at_exit{sink};
    using Backend = buffered::BufferedBackend<Event, HeldSink&>;
    buffered::BatchConfig c = config(async);
    c.max_in_flight = 1;  // async: the one slot is held, so the rest stays queued
    auto backend = std::make_unique<Backend>(sink, c);
    backend->run();
    ASSERT_TRUE(backend->process_event(ev(0)));
    ASSERT_TRUE(eventually([&] { return sink.calls() == 1; }));
    for (std::uint64_t i = 1; i < 300; ++i) ASSERT_TRUE(backend->process_event(ev(i)));
    ASSERT_GT(backend->stats().queued + backend->stats().pending, 1u);
    const ChildResult child = run_in_child(kSlack, [&] {
      backend.reset();
      return std::string();
    });
    EXPECT_TRUE(child.exited_zero()) << "the child " << child.describe();
    EXPECT_EQ(delivered_in_child(child), 0u) << "events delivered by the child";
    sink.open();
    EXPECT_TRUE(backend->shutdown());
    EXPECT_EQ(sink.delivered(), 300u);
    expect_settled(backend->stats(), 300);
  }
}

// A function-local static backend, as a program would keep its audit log: it ran in the parent;
// a child that calls exit() destroys its copy there, and must still end.
using StaticBackend = buffered::BufferedBackend<Event, ForkAwareSink>;

StaticBackend& static_backend() {
  static StaticBackend backend(ForkAwareSink{}, config(false));
  return backend;
}

// In the child the inherited backend is closed: offers are refused (and reported shut_down),
// flush() and shutdown() return false at once, run() throws. A backend the child makes runs as
// any other, also while and after the inherited one is destroyed (its threads may reuse the
// parent threads' descriptors: the inherited handles must not touch them).
TEST(Fork, AChildRunsABackendOfItsOwnWhileTheInheritedOneIsClosed) {
#if BUFFERED_TSAN
  GTEST_SKIP() << "ThreadSanitizer cannot start threads in a child of a multi-threaded process";
#endif
#if BUFFERED_TEST_ASAN
  // GCC 12's AddressSanitizer does not lock its allocator around fork(): a child that allocates
  // may wait for ever on a lock a parent thread held (seen once under load in CI).
  GTEST_SKIP() << "AddressSanitizer's allocator is not fork-safe in a multi-threaded process";
#endif
  ForkAwareSink sink;
  std::atomic<std::uint64_t> refused{0};
  using Backend = buffered::BufferedBackend<Event, ForkAwareSink&>;
  auto backend = std::make_unique<Backend>(
      sink, config(true), [&](buffered::ErrorKind kind, std::span<const Event> events) {
        if (kind == buffered::ErrorKind::shut_down) refused += events.size();
      });
  backend->run();
  for (std::uint64_t i = 0; i < 100; ++i) ASSERT_TRUE(backend->process_event(ev(i)));
  ASSERT_TRUE(backend->flush());
  const ChildResult child = run_in_child(kSlack, [&]() -> std::string {
    if (backend->process_event(ev(1000))) return "an offer to the inherited backend was accepted";
    if (refused != 1) return "the refused offer was not reported shut_down";
    if (backend->flush()) return "flush() on the inherited backend returned true";
    if (backend->shutdown(1s)) return "shutdown() on the inherited backend returned true";
    try {
      backend->run();
      return "run() on the inherited backend did not throw";
    } catch (const std::logic_error&) {
    }
    ForkAwareSink own_sink;
    Backend own(own_sink, config(true));
    own.run();
    for (std::uint64_t i = 0; i < 100; ++i) {
      if (!own.process_event(ev(i))) return "the child's own backend refused an event";
    }
    backend.reset();  // the inherited one, while the child's own threads run
    for (std::uint64_t i = 100; i < 200; ++i) {
      if (!own.process_event(ev(i))) return "the child's own backend refused an event";
    }
    if (!own.shutdown()) return "the child's own backend did not shut down cleanly";
    if (own_sink.delivered() != 200) return "the child's own backend lost events";
    return std::string();
  });
  EXPECT_TRUE(child.exited_zero()) << "the child " << child.describe();
  EXPECT_EQ(delivered_in_child(child), 0u) << "events delivered by the child";
  for (std::uint64_t i = 100; i < 200; ++i) EXPECT_TRUE(backend->process_event(ev(i)));
  EXPECT_TRUE(backend->shutdown());
  EXPECT_EQ(sink.delivered(), 200u);
  EXPECT_EQ(refused.load(), 0u) << "the parent refused nothing";
  expect_settled(backend->stats(), 200);
}

TEST(Fork, AChildThatCallsExitWithAStaticBackendThatRanEnds) {
  StaticBackend& backend = static_backend();
  backend.run();
  const std::uint64_t before = backend.stats().accepted;
  for (std::uint64_t i = 0; i < 50; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  ASSERT_TRUE(backend.flush());
  const ChildResult child = run_in_child(kSlack, [] {
    std::exit(0);  // static destructors: the backend's copy among them
    return std::string();
  });
  EXPECT_TRUE(child.exited_zero()) << "the child " << child.describe();
  EXPECT_EQ(delivered_in_child(child), 0u) << "events delivered by the child";
  for (std::uint64_t i = 50; i < 100; ++i) EXPECT_TRUE(backend.process_event(ev(i)));
  // Shut down now, not at the parent's exit: later tests fork from a single-threaded parent.
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(backend.delegate().delivered(), before + 100);
  EXPECT_EQ(backend.stats().delivered, before + 100);
  expect_settled(backend.stats(), before + 100);
}

}  // namespace

// LeakSanitizer: a forked child exits with the parent's threads gone, so what only they
// referenced (a worker's batch) looks leaked, and so do the thread handles the library keeps
// there on purpose. No leak check in a child.
#if BUFFERED_TEST_ASAN
extern "C" int __lsan_is_turned_off() { return buffered_test::in_forked_child() ? 1 : 0; }
#endif
