// The consumer's 64-bit positions wrap: start a backend just below the wrap point (a test-only
// hook) and push several buffer capacities through it.
#include <gtest/gtest.h>

#include <atomic>

#include "support.hpp"

namespace {

using namespace buffered_test;
namespace hooks = buffered::detail::test_hooks;

class CounterWrap : public ::testing::Test {
 protected:
  void SetUp() override { hooks::initial_position = ~std::uint64_t{0} - 100; }
  void TearDown() override { hooks::initial_position = 0; }
};

TEST_F(CounterWrap, EveryEventExactlyOnceAndInOrderAcrossTheWrap) {
  for (const bool async : {false, true}) {
    RecordingSink<> sink;
    ErrorLog<> errors;
    buffered::BatchConfig c;
    c.buffer_size = 64;
    c.max_batch_size = 16;
    c.max_batch_wait = 1ms;
    c.async_delegate = async;
    c.max_in_flight = 1;
    buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c, errors.handler());
    for (std::uint64_t i = 0; i < 50; ++i) ASSERT_TRUE(backend.process_event(ev(i)));  // before run
    backend.run();
    std::uint64_t offered = 50;
    for (std::uint64_t i = 50; i < 64 * 6; ++i) {
      while (!backend.process_event(ev(i))) {
        ++offered;
        std::this_thread::yield();
      }
      ++offered;
      if (i % 100 == 0) {
        EXPECT_TRUE(backend.flush(kPatience));  // the watermark across the wrap
      }
    }
    EXPECT_TRUE(backend.shutdown());
    const auto all = sink.events();
    ASSERT_EQ(all.size(), 64u * 6) << "async=" << async;
    for (std::uint64_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].seq, i);
    const auto s = backend.stats();
    EXPECT_EQ(s.accepted, 64u * 6);
    EXPECT_EQ(errors.count(buffered::ErrorKind::buffer_full), s.rejected_full);
    expect_accounting(s, offered);
  }
}

TEST_F(CounterWrap, ShutdownAbandonsAcrossTheWrap) {
  RecordingSink<> sink;
  ErrorLog<> errors;
  buffered::BatchConfig c;
  c.buffer_size = 300;
  buffered::BufferedBackend<Event, RecordingSink<>&> backend(sink, c, errors.handler());
  for (std::uint64_t i = 0; i < 250; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  EXPECT_FALSE(backend.shutdown());  // never ran
  EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), 250u);
  expect_accounting(backend.stats(), 250);
}

}  // namespace
