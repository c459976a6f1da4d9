// A producer pre-empted in the middle of a push, after it took its slot and before it published
// it (held there by a test-only hook): the worker must not spin a core or lose the event, other
// producers' events must go past it (they are in other lanes), and shutdown must wait for it and
// still drain it.
#include <gtest/gtest.h>

#include <time.h>

#include <atomic>
#include <future>

#include "support.hpp"

namespace {

using namespace buffered_test;
namespace hooks = buffered::detail::test_hooks;

std::atomic<std::uint64_t> g_stall_at{~std::uint64_t{0}};
std::atomic<bool> g_stalled{false};
std::atomic<bool> g_release{false};
std::atomic<std::thread::id> g_stall_thread{};

// `position` counts the pushes of the calling thread's lane.
void stall_hook(std::uint64_t position) {
  if (std::this_thread::get_id() != g_stall_thread.load() || position != g_stall_at.load()) return;
  g_stalled = true;
  while (!g_release.load()) std::this_thread::sleep_for(1ms);
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

class StalledProducer : public ::testing::Test {
 protected:
  void SetUp() override {
    g_stall_at = 10;
    g_stalled = false;
    g_release = false;
    hooks::before_publish = &stall_hook;
  }
  void TearDown() override {
    g_release = true;
    hooks::before_publish = nullptr;
  }
};

// Starts a producer that offers ev(0..10, 1); it stalls between claiming the slot of ev(10) and
// publishing it until g_release. Returns once it is stalled.
template <class Backend>
std::thread stall_a_producer(Backend& backend) {
  std::thread slow([&backend] {
    g_stall_thread = std::this_thread::get_id();
    for (std::uint64_t i = 0; i <= 10; ++i) EXPECT_TRUE(backend.process_event(ev(i, 1)));
  });
  EXPECT_TRUE(eventually([] { return g_stalled.load(); }));
  return slow;
}

buffered::BatchConfig config() {
  buffered::BatchConfig c;
  c.buffer_size = 64;
  c.max_batch_size = 8;
  c.max_batch_wait = 1ms;
  return c;
}

TEST_F(StalledProducer, WorkerDoesNotSpinOthersGoPastItNothingIsLost) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, config(), errors.handler());
  backend.run();
  std::thread slow = stall_a_producer(backend);
  ASSERT_TRUE(eventually([&] { return sink.event_count() == 10; }));  // all before the stall

  // Another producer is not held up by the stalled one: its events are delivered meanwhile
  // (a few may be refused if it outruns the worker; never blocked).
  std::uint64_t accepted = 0;
  std::uint64_t refused = 0;
  const auto t0 = Clock::now();
  for (std::uint64_t i = 0; i < 200; ++i) {
    (backend.process_event(ev(i, 2)) ? accepted : refused)++;
    if (i % 32 == 31) std::this_thread::sleep_for(2ms);
  }
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_GT(accepted, 0u);
  EXPECT_EQ(errors.count(buffered::ErrorKind::buffer_full), refused);
  EXPECT_TRUE(eventually([&] { return sink.event_count() == 10 + accepted; }));

  // The worker does not burn a core while the push is under way.
  const double cpu0 = process_cpu_seconds();
  std::this_thread::sleep_for(500ms);
  const double cpu_ms = (process_cpu_seconds() - cpu0) * 1000;
  EXPECT_LT(cpu_ms, 200.0) << "the worker spun while waiting";
  EXPECT_EQ(sink.event_count(), 10 + accepted);

  g_release = true;
  slow.join();
  EXPECT_TRUE(backend.shutdown());
  const auto all = sink.events();
  ASSERT_EQ(all.size(), 11 + accepted);
  EXPECT_EQ(all.back(), ev(10, 1));  // the stalled event, last, after its own producer's others
  std::uint64_t next = 0;
  for (const Event& e : all) {
    if (e.producer != 2) continue;
    EXPECT_GE(e.seq, next) << "one producer's order";
    next = e.seq + 1;
  }
  expect_accounting(backend.stats(), 11 + 200);
}

TEST_F(StalledProducer, ShutdownDrainsTheStalledEventOnceItIsPublished) {
  RecordingSink<> sink;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, config());
  backend.run();
  std::thread slow = stall_a_producer(backend);
  auto done = std::async(std::launch::async, [&] { return backend.shutdown(); });
  EXPECT_EQ(done.wait_for(200ms), std::future_status::timeout);  // it waits for the claim
  EXPECT_FALSE(backend.process_event(ev(99, 3)));                // but refuses new events
  g_release = true;
  slow.join();
  ASSERT_EQ(done.wait_for(kPatience), std::future_status::ready);
  EXPECT_TRUE(done.get());
  EXPECT_EQ(sink.event_count(), 11u);
  EXPECT_EQ(sink.events().back(), ev(10, 1));
}

// Regression (found by buffered_stress under ThreadSanitizer): when a shutdown deadline passes,
// the shutdown caller takes what is queued out of the queue itself, while the worker, waiting for
// the stalled push, must not look at the queue without the lock that hand-over uses.
TEST_F(StalledProducer, ShutdownDeadlinePassesWhileTheWorkerWaitsForTheStalledSlot) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, config(), errors.handler());
  backend.run();
  std::thread slow = stall_a_producer(backend);
  ASSERT_TRUE(eventually([&] { return sink.event_count() == 10; }));
  std::thread release([] {
    std::this_thread::sleep_for(150ms);
    g_release = true;
  });
  EXPECT_FALSE(backend.shutdown(50ms));  // the stalled event is abandoned once it is published
  release.join();
  slow.join();
  backend.shutdown();
  EXPECT_EQ(sink.event_count(), 10u);
  const auto abandoned = errors.entries();
  ASSERT_EQ(abandoned.size(), 1u);
  EXPECT_EQ(abandoned[0].first, buffered::ErrorKind::abandoned);
  EXPECT_EQ(abandoned[0].second, std::vector<Event>{ev(10, 1)});
  expect_accounting(backend.stats(), 11);
}

}  // namespace
