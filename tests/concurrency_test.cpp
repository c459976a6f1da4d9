// Many producers: every event exactly once, each producer's order kept where promised.
#include <gtest/gtest.h>

#include <atomic>

#include "support.hpp"

namespace {

using namespace buffered_test;

struct Scenario {
  const char* name;
  bool async;
  std::size_t max_in_flight;
  bool order_promised;
  bool spans;
};

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

class Concurrency : public ::testing::TestWithParam<Scenario> {};

TEST_P(Concurrency, ExactlyOnceAndPerProducerOrder) {
  const Scenario sc = GetParam();
  constexpr std::uint32_t kProducers = 4;
  constexpr std::uint64_t kPerProducer = 20000;
  RecordingSink<> sink;
  buffered::BatchConfig c;
  c.buffer_size = 1000;
  c.max_batch_size = 64;
  c.max_batch_wait = 1ms;
  c.async_delegate = sc.async;
  c.max_in_flight = sc.max_in_flight;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c);
  backend.run();
  std::atomic<std::uint64_t> offered{0};
  std::vector<std::thread> producers;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      std::uint64_t i = 0;
      while (i < kPerProducer) {
        if (sc.spans) {
          // Offer up to 8 at once; the refused tail is offered again (lossless).
          std::vector<Event> chunk;
          for (std::uint64_t k = i; k < std::min(kPerProducer, i + 8); ++k)
            chunk.push_back(ev(k, p));
          const std::size_t n = backend.process_events(chunk);
          offered += chunk.size();  // refused ones count as offered and rejected
          i += n;
          if (n < chunk.size()) std::this_thread::yield();
        } else {
          ++offered;
          if (backend.process_event(ev(i, p))) {
            ++i;
          } else {
            std::this_thread::yield();
          }
        }
      }
    });
  }
  for (auto& t : producers) t.join();
  EXPECT_TRUE(backend.shutdown());
  const auto all = sink.events();
  ASSERT_EQ(all.size(), kProducers * kPerProducer);
  std::vector<std::vector<bool>> seen(kProducers, std::vector<bool>(kPerProducer, false));
  std::vector<std::uint64_t> next(kProducers, 0);
  std::size_t out_of_order = 0;
  for (const Event& e : all) {
    ASSERT_LT(e.producer, kProducers);
    ASSERT_LT(e.seq, kPerProducer);
    EXPECT_FALSE(seen[e.producer][e.seq]) << "duplicate " << e.producer << ":" << e.seq;
    seen[e.producer][e.seq] = true;
    if (e.seq != next[e.producer]) ++out_of_order;
    next[e.producer] = e.seq + 1;
  }
  if (sc.order_promised) {
    EXPECT_EQ(out_of_order, 0u);
  }
  // Inside each batch order always holds.
  for (const auto& batch : sink.batches()) {
    std::vector<std::int64_t> last(kProducers, -1);
    for (const Event& e : batch) {
      EXPECT_GT(static_cast<std::int64_t>(e.seq), last[e.producer]);
      last[e.producer] = static_cast<std::int64_t>(e.seq);
    }
  }
  expect_accounting(backend.stats(), offered.load());
}

INSTANTIATE_TEST_SUITE_P(Modes, Concurrency,
                         ::testing::Values(Scenario{"sync", false, 1, true, false},
                                           Scenario{"sync_spans", false, 1, true, true},
                                           Scenario{"async_one_in_flight", true, 1, true, false},
                                           Scenario{"async_four_in_flight", true, 4, false, false},
                                           Scenario{"async_spans", true, 3, false, true}),
                         [](const ::testing::TestParamInfo<Scenario>& tpi) {
                           return std::string(tpi.param.name);
                         });

TEST(ConcurrencyStats, StatsMayBeReadWhileEventsFlow) {
  RecordingSink<> sink;
  buffered::BatchConfig c;
  c.max_batch_wait = 1ms;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c);
  backend.run();
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    std::uint64_t last_accepted = 0;
    while (!stop.load()) {
      const auto s = backend.stats();
      EXPECT_GE(s.accepted, last_accepted);  // counters only grow
      last_accepted = s.accepted;
      EXPECT_LE(s.queued, c.buffer_size);
    }
  });
  for (std::uint64_t i = 0; i < 20000; ++i) backend.process_event(ev(i));
  stop = true;
  reader.join();
  EXPECT_TRUE(backend.shutdown());
  expect_accounting(backend.stats(), 20000);
}

}  // namespace
