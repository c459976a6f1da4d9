// A full batch goes when it is full, whichever lanes its events are in: lanes that producer
// threads take after the worker went to sleep count as much as the ones it saw. The worker
// parks until some lane holds its share of what the batch lacks; a share computed from the
// lanes active when it parked must not keep a batch that new threads have filled waiting for
// max_batch_wait.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;

using Sink = RecordingSink<Event>;
using Backend = buffered::BufferedBackend<Event, Sink&>;

constexpr std::size_t kBatch = 400;
constexpr auto kLinger = 3s;  // max_batch_wait: far longer than a full batch may wait

buffered::BatchConfig lingering() {
  buffered::BatchConfig c;
  c.buffer_size = 10000;
  c.max_batch_size = kBatch;
  c.max_batch_wait = kLinger;
  return c;
}

// One event from this thread, taken by the worker into a batch that then lingers; then
// `threads` new threads, all alive at once (so each has a lane of its own, the last ones the
// shared lane), put `each` events into their lanes. Returns when the last of them was accepted.
Clock::time_point fill_from_new_threads(Backend& backend, int threads, std::uint64_t each) {
  EXPECT_TRUE(backend.process_event(ev(0)));
  // Let the worker take it and go to sleep with the batch of one (it waits for 399 more).
  EXPECT_TRUE(eventually([&] { return backend.stats().pending == 1; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(backend.stats().batches, 0u);
  std::barrier start(threads);
  std::barrier done(threads);
  std::vector<Clock::time_point> last(static_cast<std::size_t>(threads));
  std::vector<std::thread> producers;
  for (int p = 0; p < threads; ++p) {
    producers.emplace_back([&, p] {
      start.arrive_and_wait();
      const auto producer = static_cast<std::uint32_t>(p + 1);
      for (std::uint64_t i = 0; i < each; ++i) {
        EXPECT_TRUE(backend.process_event(ev(i, producer)));
      }
      last[static_cast<std::size_t>(p)] = Clock::now();
      done.arrive_and_wait();  // keep the lane until every thread has put its events in
    });
  }
  for (auto& t : producers) t.join();
  return *std::max_element(last.begin(), last.end());
}

// 1 + 8 * 100 events: two full batches of 400, each made of lanes that no single one reaches
// 400. Neither may wait for max_batch_wait (3 s); a batch that waits for it goes at about 2.9 s
// after the last event (the linger of the first event, minus the 100 ms it had waited).
TEST(LateLanes, FullBatchesFromLanesTakenAfterTheWorkerParkedGoWithoutWaitingForMaxBatchWait) {
  Sink sink;
  Backend backend(sink, lingering());
  backend.run();
  const auto last_accepted = fill_from_new_threads(backend, 8, 100);
  ASSERT_TRUE(eventually([&] { return sink.batch_count() >= 2; }, kLinger + kSlack));
  const auto times = sink.times();
  const auto batches = sink.batches();
  // "By", loosely: far below max_batch_wait, whatever the machine.
  EXPECT_LT(millis(times[0] - last_accepted), 1500.0)
      << "the first full batch waited for max_batch_wait";
  EXPECT_LT(millis(times[1] - last_accepted), 1500.0)
      << "the second full batch waited for max_batch_wait";
  EXPECT_EQ(batches[0].size(), kBatch);
  EXPECT_EQ(batches[1].size(), kBatch);
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.event_count(), 801u);
  EXPECT_EQ(sink.batches().size(), 3u);  // the last event alone, at shutdown
  const auto s = backend.stats();
  EXPECT_EQ(s.delivered, 801u);
  expect_settled(s, 801);
}

// The same with a batch of 100 lacking 99 while one lane was active: 8 new threads with 25
// events each (200 in all, no lane near 99) make two full batches of 100.
TEST(LateLanes, SmallerBatchesFromManyShortLanesAlsoGoWhenFull) {
  Sink sink;
  buffered::BatchConfig c = lingering();
  c.max_batch_size = 100;
  Backend backend(sink, c);
  backend.run();
  const auto last_accepted = fill_from_new_threads(backend, 8, 25);
  ASSERT_TRUE(eventually([&] { return sink.batch_count() >= 2; }, kLinger + kSlack));
  const auto times = sink.times();
  const auto batches = sink.batches();
  EXPECT_LT(millis(times[0] - last_accepted), 1500.0)
      << "the first full batch waited for max_batch_wait";
  EXPECT_LT(millis(times[1] - last_accepted), 1500.0)
      << "the second full batch waited for max_batch_wait";
  EXPECT_EQ(batches[0].size(), 100u);
  EXPECT_EQ(batches[1].size(), 100u);
  EXPECT_TRUE(backend.shutdown());
  const auto s = backend.stats();
  EXPECT_EQ(s.delivered, 201u);
  expect_settled(s, 201);
}

}  // namespace
