// Calling the backend from inside its own delegate or error handler does not deadlock.
#include <gtest/gtest.h>

#include <atomic>
#include <future>

#include "support.hpp"

namespace {

using namespace buffered_test;

template <class Backend>
struct Holder {
  Backend* backend = nullptr;
};

TEST(Reentrancy, DelegateOffersFollowUpEventsToItsOwnBackend) {
  for (const bool async : {false, true}) {
    using Fn = std::function<void(std::span<Event>)>;
    using Backend = buffered::BufferedBackend<Event, Fn>;
    Holder<Backend> holder;
    std::atomic<int> seen{0};
    Fn sink = [&](std::span<Event> events) {
      for (const Event& e : events) {
        ++seen;
        if (e.seq < 100) holder.backend->process_event(ev(e.seq + 100));  // one follow-up each
      }
    };
    buffered::BatchConfig c;
    c.max_batch_size = 10;
    c.max_batch_wait = 1ms;
    c.async_delegate = async;
    Backend backend(sink, c);
    holder.backend = &backend;
    backend.run();
    for (std::uint64_t i = 0; i < 100; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
    ASSERT_TRUE(eventually([&] { return seen.load() == 200; })) << "async=" << async;
    EXPECT_TRUE(backend.shutdown());
    EXPECT_EQ(backend.stats().delivered, 200u);
  }
}

TEST(Reentrancy, ErrorHandlerRetriesFailedEventsIntoTheSameBackend) {
  using Handler = std::function<void(buffered::ErrorKind, std::span<const Event>)>;
  std::atomic<int> calls{0};
  std::atomic<int> delivered{0};
  auto sink = [&](std::span<Event> events) {
    if (calls++ % 2 == 0) throw std::runtime_error("flaky");
    delivered += static_cast<int>(events.size());
  };
  using Backend = buffered::BufferedBackend<Event, decltype(sink)>;
  Backend* self = nullptr;
  Handler retry = [&](buffered::ErrorKind kind, std::span<const Event> events) {
    if (kind == buffered::ErrorKind::delegate_failed) self->process_events(events);
  };
  buffered::BatchConfig c;
  c.max_batch_size = 1;
  Backend backend(sink, c, retry);
  self = &backend;
  backend.run();
  for (std::uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  ASSERT_TRUE(eventually([&] { return delivered.load() == 20; }));
  EXPECT_TRUE(backend.shutdown());
}

TEST(Reentrancy, FlushAndShutdownFromInsideTheDelegateDoNotDeadlock) {
  for (const bool async : {false, true}) {
    using Fn = std::function<void(std::span<Event>)>;
    using Backend = buffered::BufferedBackend<Event, Fn>;
    Holder<Backend> holder;
    std::atomic<int> flush_result{-1};
    std::atomic<int> shutdown_result{-1};
    Fn sink = [&](std::span<Event> events) {
      if (events.front().seq == 1) flush_result = holder.backend->flush() ? 1 : 0;
      if (events.front().seq == 2) shutdown_result = holder.backend->shutdown() ? 1 : 0;
    };
    buffered::BatchConfig c;
    c.max_batch_size = 1;
    c.async_delegate = async;
    c.max_in_flight = 1;
    auto backend = std::make_unique<Backend>(sink, c);
    holder.backend = backend.get();
    // All five are offered before run(): once the delegate has seen event 2 the backend refuses.
    for (std::uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(backend->process_event(ev(i)));
    backend->run();
    ASSERT_TRUE(eventually([&] { return shutdown_result.load() != -1; }));
    EXPECT_EQ(flush_result.load(), 0);             // could not wait for itself
    EXPECT_EQ(shutdown_result.load(), 0);          // started the shutdown, did not wait for itself
    EXPECT_FALSE(backend->process_event(ev(99)));  // the shutdown did start
    auto destroyed = std::async(std::launch::async, [&] { backend.reset(); });
    ASSERT_EQ(destroyed.wait_for(kPatience), std::future_status::ready) << "async=" << async;
  }
}

TEST(Reentrancy, BlockingOfferFromInsideTheDelegateDoesNotWaitForItself) {
  using Fn = std::function<void(std::span<Event>)>;
  using Backend = buffered::BufferedBackend<Event, Fn>;
  Holder<Backend> holder;
  std::atomic<int> refused{0};
  Fn sink = [&](std::span<Event> events) {
    if (events.front().seq == 0) {
      // The buffer (2) is full of events only this thread would drain.
      for (std::uint64_t i = 0; i < 5; ++i) {
        if (!holder.backend->process_event(ev(1000 + i))) ++refused;
      }
    }
  };
  buffered::BatchConfig c;
  c.buffer_size = 2;
  c.max_batch_size = 1;
  c.overflow = buffered::OverflowPolicy::block;
  Backend backend(sink, c);
  holder.backend = &backend;
  backend.run();
  ASSERT_TRUE(backend.process_event(ev(0)));
  ASSERT_TRUE(eventually([&] { return refused.load() >= 3; }));
  EXPECT_TRUE(backend.shutdown());
}

}  // namespace
