// An event that alone exceeds max_buffer_bytes or max_batch_bytes is refused at once with
// ErrorKind::too_large, under every overflow policy: drop_newest, block (no waiting, even with an
// infinite block_timeout) and drop_oldest (nothing evicted). An event of exactly the bound fits.
#include <gtest/gtest.h>

#include <future>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;
using buffered::ErrorKind;
using buffered::OverflowPolicy;

using Sink = RecordingSink<Item>;
using Backend = buffered::BufferedBackend<Item, Sink&>;

struct Bounds {
  const char* name;
  std::size_t buffer_bytes;
  std::size_t batch_bytes;
  std::size_t limit;  // the largest event accepted: the smaller of the non-zero bounds
};

constexpr Bounds kBounds[] = {
    {"max_buffer_bytes alone", 100, 0, 100},
    {"max_batch_bytes alone", 0, 100, 100},
    {"max_batch_bytes below max_buffer_bytes", 1000, 100, 100},
    {"both equal", 100, 100, 100},
};

constexpr OverflowPolicy kPolicies[] = {OverflowPolicy::drop_newest, OverflowPolicy::block,
                                        OverflowPolicy::drop_oldest};

std::string name(OverflowPolicy policy) {
  switch (policy) {
    case OverflowPolicy::drop_newest:
      return "drop_newest";
    case OverflowPolicy::block:
      return "block";
    case OverflowPolicy::drop_oldest:
      return "drop_oldest";
  }
  return "?";
}

buffered::BatchConfig config(const Bounds& b, OverflowPolicy policy, std::size_t buffer_size) {
  buffered::BatchConfig c;
  c.buffer_size = buffer_size;
  c.max_batch_size = 100;
  c.max_batch_wait = 5ms;
  c.overflow = policy;
  c.block_timeout = std::chrono::nanoseconds::max();
  c.max_buffer_bytes = b.buffer_bytes;
  c.max_batch_bytes = b.batch_bytes;
  return c;
}

// Runs `offer` on another thread and returns its result. If it has not returned within
// kPatience (it waits, wrongly), fails and shuts the backend down, which releases it.
template <class Offer>
bool at_once(Backend& backend, Offer offer) {
  auto result = std::async(std::launch::async, std::move(offer));
  if (result.wait_for(kPatience) != std::future_status::ready) {
    ADD_FAILURE() << "process_event waits instead of refusing at once";
    backend.shutdown();
  }
  return result.get();
}

// The buffer is full (by count, and by bytes when max_buffer_bytes is set) and not running:
// nothing will make room. A too-large event must still be refused at once, as too_large, and
// nothing evicted.
TEST(TooLarge, RefusedAtOnceUnderEveryPolicyEvenWhenTheBufferIsFull) {
  for (const OverflowPolicy policy : kPolicies) {
    for (const Bounds& b : kBounds) {
      SCOPED_TRACE(name(policy) + ", " + b.name);
      Sink sink;
      ErrorLog<Item> errors;
      Backend backend(sink, config(b, policy, 5), errors.handler(), item_bytes);
      std::vector<Item> queued;
      for (std::uint64_t i = 0; i < 5; ++i) {
        queued.push_back(Item{0, i, 20});  // 5 of 5 events, 100 bytes
        ASSERT_TRUE(backend.process_event(queued.back()));
      }
      const Item over{0, 5, b.limit + 1};
      const Item huge{0, 6, std::numeric_limits<std::size_t>::max()};  // no sum may wrap
      EXPECT_FALSE(at_once(backend, [&] { return backend.process_event(over); }));
      EXPECT_FALSE(at_once(backend, [&backend, item = huge]() mutable {
        return backend.process_event(std::move(item));  // refused: left intact, reported
      }));

      const auto entries = errors.entries();
      ASSERT_EQ(entries.size(), 2u);  // no evicted, no buffer_full
      EXPECT_EQ(entries[0].first, ErrorKind::too_large);
      EXPECT_EQ(entries[0].second, std::vector<Item>{over});
      EXPECT_EQ(entries[1].first, ErrorKind::too_large);
      EXPECT_EQ(entries[1].second, std::vector<Item>{huge});
      auto s = backend.stats();
      EXPECT_EQ(s.rejected_too_large, 2u);
      EXPECT_EQ(s.rejected_full, 0u);
      EXPECT_EQ(s.evicted, 0u);
      EXPECT_EQ(s.accepted, 5u);
      EXPECT_EQ(s.queued, 5u);
      if (b.buffer_bytes != 0) {
        EXPECT_EQ(s.queued_bytes, 100u);
      }

      backend.run();
      EXPECT_TRUE(backend.shutdown());
      EXPECT_EQ(sink.events(), queued);  // all that was queued, nothing evicted
      expect_settled(backend.stats(), 7);
    }
  }
}

TEST(TooLarge, AnEventOfExactlyTheBoundIsAccepted) {
  for (const OverflowPolicy policy : kPolicies) {
    for (const Bounds& b : kBounds) {
      SCOPED_TRACE(name(policy) + ", " + b.name);
      Sink sink;
      ErrorLog<Item> errors;
      Backend backend(sink, config(b, policy, 5), errors.handler(), item_bytes);
      const Item exact{0, 0, b.limit};
      EXPECT_TRUE(backend.process_event(exact));
      EXPECT_EQ(errors.calls(), 0u);
      if (b.buffer_bytes != 0) {
        EXPECT_EQ(backend.stats().queued_bytes, b.limit);
      }
      backend.run();
      EXPECT_TRUE(backend.shutdown());
      EXPECT_EQ(sink.batches(), std::vector<std::vector<Item>>{{exact}});
      EXPECT_EQ(errors.calls(), 0u);
      const auto s = backend.stats();
      EXPECT_EQ(s.rejected_too_large, 0u);
      EXPECT_EQ(s.delivered, 1u);
      expect_settled(s, 1);
    }
  }
}

// process_events stops at the too-large event; it and every event after it are reported
// too_large in one call and counted so, even those that would fit.
TEST(TooLarge, SpanStopsAtItAndReportsItAndTheRestTooLarge) {
  for (const OverflowPolicy policy : kPolicies) {
    for (const Bounds& b : kBounds) {
      SCOPED_TRACE(name(policy) + ", " + b.name);
      Sink sink;
      ErrorLog<Item> errors;
      Backend backend(sink, config(b, policy, 100), errors.handler(), item_bytes);
      const std::vector<Item> five{
          {0, 0, 10}, {0, 1, 10}, {0, 2, b.limit + 1}, {0, 3, 10}, {0, 4, 10}};
      EXPECT_EQ(backend.process_events(five), 2u);
      const auto entries = errors.entries();
      ASSERT_EQ(entries.size(), 1u);
      EXPECT_EQ(entries[0].first, ErrorKind::too_large);
      EXPECT_EQ(entries[0].second, (std::vector<Item>{five[2], five[3], five[4]}));
      auto s = backend.stats();
      EXPECT_EQ(s.rejected_too_large, 3u);
      EXPECT_EQ(s.rejected_full, 0u);
      EXPECT_EQ(s.evicted, 0u);
      EXPECT_EQ(s.accepted, 2u);
      backend.run();
      EXPECT_TRUE(backend.shutdown());
      EXPECT_EQ(sink.events(), (std::vector<Item>{five[0], five[1]}));
      expect_settled(backend.stats(), 5);
    }
  }
}

// A running backend refuses it the same way, and goes on delivering the others.
TEST(TooLarge, RunningBackendRefusesItAndDeliversTheRest) {
  for (const OverflowPolicy policy : kPolicies) {
    SCOPED_TRACE(name(policy));
    Sink sink;
    ErrorLog<Item> errors;
    // Bytes bound the batches only and the buffer takes all 300: nothing is full or evicted.
    Backend backend(sink, config(kBounds[1], policy, 1000), errors.handler(), item_bytes);
    backend.run();
    std::vector<Item> fit;
    std::vector<Item> over;
    for (std::uint64_t i = 0; i < 300; ++i) {
      const Item item{0, i, i % 7 == 3 ? 101 + i : 1 + i % 100};
      const bool accepted = backend.process_event(item);
      EXPECT_EQ(accepted, item.bytes <= 100) << item;
      (accepted ? fit : over).push_back(item);
    }
    ASSERT_TRUE(backend.flush(kPatience));
    EXPECT_EQ(sink.events(), fit);
    EXPECT_TRUE(backend.shutdown());
    std::vector<Item> too_large;
    for (const auto& [kind, items] : errors.entries()) {
      EXPECT_EQ(kind, ErrorKind::too_large);
      too_large.insert(too_large.end(), items.begin(), items.end());
    }
    EXPECT_EQ(too_large, over);
    const auto s = backend.stats();
    EXPECT_EQ(s.rejected_too_large, over.size());
    expect_settled(s, 300);
  }
}

TEST(TooLarge, NothingIsTooLargeWithoutAByteBound) {
  Sink sink;
  ErrorLog<Item> errors;
  Backend backend(sink, config(Bounds{"none", 0, 0, 0}, OverflowPolicy::drop_newest, 5),
                  errors.handler(), item_bytes);
  const Item huge{0, 0, std::numeric_limits<std::size_t>::max()};
  EXPECT_TRUE(backend.process_event(huge));
  backend.run();
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.events(), std::vector<Item>{huge});
  EXPECT_EQ(errors.calls(), 0u);
  EXPECT_EQ(backend.stats().rejected_too_large, 0u);
}

}  // namespace
