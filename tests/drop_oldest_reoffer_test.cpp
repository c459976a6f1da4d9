// drop_oldest with an error handler that offers each evicted event again (calling the backend
// from inside its handler is allowed): every process_event still returns, evicting a bounded
// number of events, while nothing frees space (the backend not running, or its delegate held).
// The slot or bytes an eviction frees must not go to the handler's offer in a way that makes the
// evicting offer evict again without end.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;
using buffered::ErrorKind;

using HeldSink = GatedItemSink;
using OpenAtExit = OpenGateAtExit<HeldSink>;

using Backend = buffered::BufferedBackend<Item, HeldSink&>;

// How many offers into a full buffer the test makes (each evicts), and how many evictions in
// all it allows them: "a few" each. An offer that evicts without end evicts millions.
constexpr std::uint64_t kOffers = 5;
constexpr std::uint64_t kMaxEvictions = 4 * kOffers;

// The handler: offers every evicted event again, from inside the report, until `stop` (the
// test's way to end an offer that never returns on its own, so that it can fail, not hang).
struct Reoffer {
  std::atomic<Backend*> backend{nullptr};
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> evicted_reports{0};
  std::atomic<std::uint64_t> reoffers{0};
  std::atomic<std::uint64_t> reoffers_accepted{0};

  Backend::error_handler handler() {
    return [this](ErrorKind kind, std::span<const Item> items) {
      if (kind != ErrorKind::evicted) return;
      evicted_reports.fetch_add(items.size());
      Backend* b = backend.load();
      if (b == nullptr || stop.load()) return;
      for (const Item& item : items) {
        reoffers.fetch_add(1);
        if (b->process_event(item)) reoffers_accepted.fetch_add(1);
      }
    };
  }
};

// Offers `item` on a helper thread; fails the test if it has not returned by the deadline, and
// then makes the handler stop offering again so that the offer ends and the thread can be
// joined. Returns what process_event returned (nullopt if it had to be stopped).
std::optional<bool> offer_within_deadline(Backend& backend, Reoffer& reoffer, const Item& item) {
  std::promise<bool> returned;
  auto result = returned.get_future();
  std::thread producer([&] { returned.set_value(backend.process_event(item)); });
  const bool in_time = result.wait_for(kSlack) == std::future_status::ready;
  if (!in_time) reoffer.stop = true;
  producer.join();
  const bool value = result.get();
  if (!in_time) {
    ADD_FAILURE() << "process_event(" << item << ") did not return within " << millis(kSlack)
                  << " ms: " << backend.stats().evicted << " evictions so far, "
                  << reoffer.reoffers.load() << " events offered again by the handler";
    return std::nullopt;
  }
  return value;
}

buffered::BatchConfig dropping(std::size_t buffer_size, std::size_t max_buffer_bytes) {
  buffered::BatchConfig c;
  c.buffer_size = buffer_size;
  c.max_batch_size = 100;
  c.max_batch_wait = 5ms;
  c.overflow = buffered::OverflowPolicy::drop_oldest;
  c.max_buffer_bytes = max_buffer_bytes;
  return c;
}

// Fills the buffer (with `n` events of `bytes` each), then offers kOffers more, each from a
// helper thread with a deadline, with a handler that offers every evicted event again.
void offers_return_with_bounded_evictions(buffered::BatchConfig config, std::uint64_t n,
                                          std::size_t bytes, bool running) {
  HeldSink sink;
  OpenAtExit open_at_exit{sink};
  Reoffer reoffer;
  Backend backend(sink, config, reoffer.handler(), item_bytes);
  std::uint64_t offered = 0;
  std::uint64_t seq = 0;
  if (running) {
    // One event taken into a delegate call that is held: nothing is consumed from here on.
    backend.run();
    ASSERT_TRUE(backend.process_event(Item{0, seq++, bytes}));
    ++offered;
    ASSERT_TRUE(eventually([&] { return sink.record().batch_count() == 1; }));
  }
  for (std::uint64_t i = 0; i < n; ++i) {
    ASSERT_TRUE(backend.process_event(Item{0, seq++, bytes}));
    ++offered;
  }
  ASSERT_EQ(backend.stats().evicted, 0u);
  ASSERT_EQ(backend.stats().queued, n);
  reoffer.backend = &backend;
  for (std::uint64_t k = 0; k < kOffers && !reoffer.stop; ++k) {
    const auto accepted = offer_within_deadline(backend, reoffer, Item{1, k, bytes});
    ++offered;
    if (accepted) {
      EXPECT_TRUE(*accepted) << "drop_oldest accepts the new event";
    }
  }
  reoffer.backend = nullptr;
  offered += reoffer.reoffers.load();
  auto s = backend.stats();
  EXPECT_LE(s.evicted, kMaxEvictions) << "evictions for " << kOffers << " offers";
  EXPECT_EQ(s.evicted, reoffer.evicted_reports.load()) << "each eviction reported once";
  EXPECT_LE(s.queued, config.buffer_size);
  sink.open();
  if (!running) backend.run();
  EXPECT_TRUE(backend.shutdown());
  s = backend.stats();
  expect_settled(s, offered);
  EXPECT_EQ(sink.record().event_count(), s.delivered);
  EXPECT_EQ(s.abandoned, 0u);
}

TEST(DropOldestReoffer, CountBoundNotRunningEveryOfferReturnsAfterAFewEvictions) {
  offers_return_with_bounded_evictions(dropping(4, 0), 4, 1, false);
}

TEST(DropOldestReoffer, CountBoundDelegateHeldEveryOfferReturnsAfterAFewEvictions) {
  offers_return_with_bounded_evictions(dropping(4, 0), 4, 1, true);
}

TEST(DropOldestReoffer, ByteBoundNotRunningEveryOfferReturnsAfterAFewEvictions) {
  // 4 events of 25 bytes fill 100 bytes; the slots (1000) never bind.
  offers_return_with_bounded_evictions(dropping(1000, 100), 4, 25, false);
}

TEST(DropOldestReoffer, ByteBoundDelegateHeldEveryOfferReturnsAfterAFewEvictions) {
  offers_return_with_bounded_evictions(dropping(1000, 100), 4, 25, true);
}

}  // namespace
