// Every kind of delegate: member process_events, callables, references, chains, move-only events.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>

#include "support.hpp"

namespace {

using namespace buffered_test;

struct NamedSink {
  std::string label;
  std::atomic<int> runs{0};
  std::atomic<int> shutdowns{0};
  std::atomic<int> flushes{0};
  std::atomic<int> events{0};
  explicit NamedSink(std::string l) : label(std::move(l)) {}
  void process_events(std::span<Event> batch) { events += static_cast<int>(batch.size()); }
  void run() { ++runs; }
  void shutdown() { ++shutdowns; }
  void flush() { ++flushes; }
  const std::string& name() const { return label; }
};

struct PlainSink {
  int events = 0;
  void process_events(std::span<Event> batch) { events += static_cast<int>(batch.size()); }
};

using Lambda = decltype([](std::span<Event>) {});

static_assert(buffered::Sink<PlainSink, Event>);
static_assert(buffered::Sink<NamedSink, Event>);
static_assert(buffered::Sink<Lambda, Event>);
static_assert(buffered::Sink<std::function<bool(std::span<Event>)>, Event>);
static_assert(buffered::Sink<buffered::BufferedBackend<Event, PlainSink>, Event>);
static_assert(!buffered::Sink<int, Event>);
static_assert(!buffered::Sink<std::function<void(int)>, Event>);
static_assert(!buffered::Sink<std::function<std::string(std::span<Event>)>, Event>);
static_assert(!std::is_copy_constructible_v<buffered::BufferedBackend<Event, PlainSink>>);
static_assert(!std::is_move_constructible_v<buffered::BufferedBackend<Event, PlainSink>>);

TEST(Delegates, OwnedMemberSinkWithoutOptionalMembers) {
  buffered::BufferedBackend<Event, PlainSink> backend(PlainSink{});
  EXPECT_EQ(backend.name(), "buffered");
  backend.run();
  for (std::uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  EXPECT_TRUE(backend.flush());
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(backend.delegate().events, 10);
}

TEST(Delegates, OptionalMembersAreDetectedAndCalled) {
  NamedSink sink("file");
  buffered::BufferedBackend<Event, NamedSink&> backend(sink);
  EXPECT_EQ(backend.name(), "buffered<file>");
  EXPECT_EQ(&backend.delegate(), &sink);  // a reference delegate is not copied
  backend.run();
  EXPECT_EQ(sink.runs.load(), 1);
  ASSERT_TRUE(backend.process_event(ev(1)));
  EXPECT_TRUE(backend.flush());
  EXPECT_EQ(sink.flushes.load(), 1);
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(sink.shutdowns.load(), 1);
  EXPECT_EQ(sink.events.load(), 1);
}

TEST(Delegates, LambdaReturningBool) {
  std::atomic<int> seen{0};
  auto sink = [&](std::span<Event> batch) {
    seen += static_cast<int>(batch.size());
    return true;
  };
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink);
  backend.run();
  for (std::uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(backend.process_event(ev(i)));
  EXPECT_TRUE(backend.shutdown());
  EXPECT_EQ(seen.load(), 5);
  EXPECT_EQ(backend.stats().delivered, 5u);
}

TEST(Delegates, ABufferedBackendCanBeTheDelegateOfAnother) {
  NamedSink sink("file");
  using Inner = buffered::BufferedBackend<Event, NamedSink&>;
  using Outer = buffered::BufferedBackend<Event, Inner&>;
  buffered::BatchConfig inner_config;
  inner_config.max_batch_size = 7;
  Inner inner(sink, inner_config);
  Outer outer(inner);
  EXPECT_EQ(outer.name(), "buffered<buffered<file>>");
  outer.run();  // starts the inner backend too: a wrapped sink is never left unstarted
  EXPECT_EQ(sink.runs.load(), 1);
  for (std::uint64_t i = 0; i < 100; ++i) ASSERT_TRUE(outer.process_event(ev(i)));
  EXPECT_TRUE(outer.flush());  // flushes through to the inner backend and the sink
  EXPECT_EQ(sink.events.load(), 100);
  EXPECT_EQ(sink.flushes.load(), 1);
  EXPECT_TRUE(outer.shutdown());  // shuts the inner backend down after the outer drain
  EXPECT_EQ(sink.shutdowns.load(), 1);
  EXPECT_EQ(outer.stats().delivered, 100u);
  EXPECT_EQ(inner.stats().delivered, 100u);
}

TEST(Delegates, InnerRefusalsFailTheOuterBatch) {
  NamedSink sink("x");
  using Inner = buffered::BufferedBackend<Event, NamedSink&>;
  Inner inner(sink);
  inner.shutdown();  // refuses everything: process_events returns 0, which is false
  ErrorLog<> errors;
  buffered::BufferedBackend<Event, Inner&> outer(inner, {}, errors.handler());
  ASSERT_TRUE(outer.process_event(ev(1)));
  EXPECT_THROW(outer.run(), std::logic_error);  // inner.run() after its shutdown throws
  EXPECT_FALSE(outer.shutdown());               // so the outer never ran: abandoned
  EXPECT_EQ(errors.count(buffered::ErrorKind::abandoned), 1u);
}

TEST(Delegates, MoveOnlyEventsAndADelegateThatMovesOutOfTheBatch) {
  std::vector<std::unique_ptr<int>> kept;
  std::mutex mu;
  auto sink = [&](std::span<std::unique_ptr<int>> batch) {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& p : batch) kept.push_back(std::move(p));
  };
  buffered::BatchConfig c;
  c.max_batch_size = 4;
  c.max_batch_wait = 1ms;
  c.async_delegate = true;
  std::size_t refused_reported = 0;
  auto on_error = [&](buffered::ErrorKind, std::span<const std::unique_ptr<int>> events) {
    refused_reported += events.size();
    EXPECT_NE(events.front(), nullptr);  // the refused event is reported intact
  };
  buffered::BufferedBackend<std::unique_ptr<int>, decltype(sink)> backend(sink, c, on_error);
  backend.run();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(backend.process_event(std::make_unique<int>(i)));
  EXPECT_TRUE(backend.shutdown());
  auto late = std::make_unique<int>(99);
  EXPECT_FALSE(backend.process_event(std::move(late)));
  ASSERT_NE(late, nullptr);  // refused: not moved from
  EXPECT_EQ(*late, 99);
  EXPECT_EQ(refused_reported, 1u);
  ASSERT_EQ(kept.size(), 20u);
  int sum = 0;
  for (const auto& p : kept) sum += *p;
  EXPECT_EQ(sum, 190);
}

}  // namespace
