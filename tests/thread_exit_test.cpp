// Offers from a thread_local destructor. A thread_local object made before the thread's first
// offer (a logger, say) is destroyed after the library's record of the lanes that thread holds;
// when its destructor offers, the offer must be taken like any other (accepted, delivered
// once, in the thread's order), and must neither reuse the thread's old lanes and credits
// (given back when the record was destroyed) nor read a backend's record freed since.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "support.hpp"

namespace {

using namespace buffered_test;

using Sink = RecordingSink<Event>;
using Backend = buffered::BufferedBackend<Event, Sink&>;

// Every offer the test makes, by producer, in the order each producer made them, with whether
// it was accepted.
class Ledger {
 public:
  bool offer(Backend& backend, Event e, bool from_destructor = false) {
    const bool ok = backend.process_event(e);
    std::lock_guard<std::mutex> lock(mu_);
    ++offered_;
    if (ok) accepted_[e.producer].push_back(e.seq);
    if (from_destructor) {
      ++destructor_offered_;
      destructor_accepted_ += ok ? 1 : 0;
    }
    return ok;
  }
  std::uint64_t offered() const {
    std::lock_guard<std::mutex> lock(mu_);
    return offered_;
  }
  std::uint64_t accepted() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::uint64_t n = 0;
    for (const auto& [p, seqs] : accepted_) n += seqs.size();
    return n;
  }
  std::uint64_t destructor_offered() const {
    std::lock_guard<std::mutex> lock(mu_);
    return destructor_offered_;
  }
  std::uint64_t destructor_accepted() const {
    std::lock_guard<std::mutex> lock(mu_);
    return destructor_accepted_;
  }
  // "" if `delivered` holds every accepted event exactly once and each producer's in the order
  // it offered them (and nothing else); else what is wrong.
  std::string check(const std::vector<Event>& delivered) const {
    std::map<std::uint32_t, std::vector<std::uint64_t>> got;
    for (const Event& e : delivered) got[e.producer].push_back(e.seq);
    std::lock_guard<std::mutex> lock(mu_);
    std::ostringstream out;
    int wrong = 0;
    for (const auto& [p, want] : accepted_) {
      const auto it = got.find(p);
      const std::vector<std::uint64_t> none;
      const auto& have = it == got.end() ? none : it->second;
      if (have != want && wrong++ < 5) {
        out << "producer " << p << ": " << want.size() << " accepted, " << have.size()
            << " delivered" << (have.size() == want.size() ? " (order or ids differ)" : "") << "; ";
      }
    }
    for (const auto& [p, have] : got) {
      if (accepted_.count(p) == 0 && wrong++ < 5) {
        out << "producer " << p << ": " << have.size() << " delivered, none accepted; ";
      }
    }
    if (wrong > 5) out << "and " << wrong - 5 << " more producers wrong";
    return out.str();
  }

 private:
  mutable std::mutex mu_;
  std::map<std::uint32_t, std::vector<std::uint64_t>> accepted_;
  std::uint64_t offered_ = 0;
  std::uint64_t destructor_offered_ = 0;
  std::uint64_t destructor_accepted_ = 0;
};

// The logger-like thread_local: made before the thread's first offer (so destroyed after the
// library's per-thread record), its destructor offers `count` events.
struct ExitLogger {
  Backend* backend = nullptr;
  Ledger* ledger = nullptr;
  std::uint32_t producer = 0;
  std::uint64_t first_seq = 0;
  std::uint64_t count = 0;
  std::function<void()> before_offers;  // called by the destructor first, if set
  ExitLogger() = default;
  ExitLogger(const ExitLogger&) = delete;
  ExitLogger& operator=(const ExitLogger&) = delete;
  ~ExitLogger() {
    if (backend == nullptr) return;
    if (before_offers) before_offers();
    for (std::uint64_t i = 0; i < count; ++i) {
      ledger->offer(*backend, Event{producer, first_seq + i}, true);
    }
  }
};

// This thread's logger, made on first use.
ExitLogger& exit_logger() {
  thread_local ExitLogger logger;
  return logger;
}

// Makes this thread's logger (before anything is offered) and sets it to offer `count`
// events of `producer` into `backend` when the thread ends.
void log_at_exit(Backend& backend, Ledger& ledger, std::uint32_t producer, std::uint64_t first_seq,
                 std::uint64_t count, std::function<void()> before_offers = {}) {
  ExitLogger& logger = exit_logger();
  logger.before_offers = std::move(before_offers);
  logger.backend = &backend;
  logger.ledger = &ledger;
  logger.producer = producer;
  logger.first_seq = first_seq;
  logger.count = count;
}

buffered::BatchConfig config(std::size_t buffer_size) {
  buffered::BatchConfig c;
  c.buffer_size = buffer_size;
  c.max_batch_size = 100;
  c.max_batch_wait = 5ms;
  return c;
}

// (a) This thread offers one event; then eight threads, alive at once (so in lanes of their
// own, the last in the shared lane), each with such a logger: offer 10 events, end; each
// destructor offers one more. Nothing is consumed (run() not called). This thread then fills
// the buffer: as the one producer left, it must be refused exactly at buffer_size, so no lane
// or credit taken by a destructor's offer may be lost. Then every accepted event is delivered
// once, each thread's in its order.
TEST(ThreadExit, OffersFromThreadLocalDestructorsLoseNoCapacityAndAreDelivered) {
  constexpr std::size_t kBuffer = 10000;
  Sink sink;
  Ledger ledger;
  Backend backend(sink, config(kBuffer));
  ASSERT_TRUE(ledger.offer(backend, Event{0, 0}));
  std::atomic<int> offered{0};
  std::vector<std::thread> threads;
  for (std::uint32_t t = 1; t <= 8; ++t) {
    threads.emplace_back([&, t] {
      log_at_exit(backend, ledger, t, 10, 1);
      for (std::uint64_t i = 0; i < 10; ++i) EXPECT_TRUE(ledger.offer(backend, Event{t, i}));
      ++offered;
      while (offered < 8) std::this_thread::yield();  // all alive at once
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ledger.destructor_offered(), 8u);
  EXPECT_EQ(ledger.destructor_accepted(), 8u) << "offers from thread_local destructors refused";
  EXPECT_EQ(backend.stats().queued, 1u + 8u * 11u);
  std::uint64_t filled = 0;
  while (filled <= kBuffer && ledger.offer(backend, Event{0, 1 + filled})) ++filled;
  const auto s = backend.stats();
  EXPECT_EQ(s.queued, kBuffer) << "one producer refused at " << s.queued << " of " << kBuffer
                               << " events: capacity taken by destructors' offers not given back";
  EXPECT_EQ(s.accepted, ledger.accepted());
  backend.run();
  EXPECT_TRUE(backend.shutdown());
  const auto done = backend.stats();
  EXPECT_EQ(done.delivered, ledger.accepted());
  EXPECT_EQ(sink.event_count(), ledger.accepted());
  EXPECT_EQ(ledger.check(sink.events()), "");
  expect_settled(done, ledger.offered());
}

// (b) A thread offered into backend A, which was destroyed while the thread lived; when the
// thread ends, its logger offers into another backend, B, alive: accepted and delivered (today
// the offer reads A's freed lane record: heap-use-after-free under ASan). In a child process,
// so that a crash or a hang fails this test only.
TEST(ThreadExit, AnOfferFromADestructorAfterAnotherBackendWasDestroyedIsDelivered) {
  const ChildResult child = run_in_child(kPatience, []() -> std::string {
    Sink sink_a;
    Sink sink_b;
    Ledger ledger;
    Backend b(sink_b, config(1000));
    b.run();
    auto a = std::make_unique<Backend>(sink_a, config(1000));
    std::atomic<bool> offered{false};
    std::atomic<bool> a_destroyed{false};
    std::thread producer([&] {
      log_at_exit(b, ledger, 2, 0, 3);
      for (std::uint64_t i = 0; i < 5; ++i) a->process_event(Event{1, i});
      offered = true;
      while (!a_destroyed) std::this_thread::yield();
    });
    while (!offered) std::this_thread::yield();
    a.reset();  // never ran: its 5 events are abandoned
    a_destroyed = true;
    producer.join();
    if (ledger.destructor_accepted() != 3) {
      return "destructor's offers accepted: " + std::to_string(ledger.destructor_accepted()) +
             " of 3";
    }
    if (!b.shutdown()) return "B's shutdown returned false";
    const auto s = b.stats();
    if (s.delivered != 3 || sink_b.event_count() != 3) {
      return "B delivered " + std::to_string(s.delivered) + " of 3";
    }
    return ledger.check(sink_b.events());
  });
  EXPECT_TRUE(child.exited_zero()) << "the scenario's process " << child.describe();
}

// (c) Threads whose thread_local destructors offer while new threads start and offer, into a
// running backend, round after round: every accepted event is delivered exactly once, each
// thread's in its order. The new threads make their first offer once the ending threads' lane
// records are gone (their destructors wait for that before offering), so they take the lanes
// those threads gave back. (Today a destructor's offer writes into the lane it gave back, which
// a new thread has taken meanwhile: two producers in one single-producer lane.) In a child
// process, so that a crash or a hang fails this test only.
constexpr int kRounds = 150;
constexpr int kEnding = 4;    // threads per round whose destructors offer
constexpr int kStarting = 4;  // threads per round that start meanwhile
constexpr std::uint64_t kEach = 2000;

TEST(ThreadExit, DestructorsOfferingWhileNewThreadsStartLoseAndDuplicateNothing) {
  const ChildResult child = run_in_child(kPatience + kPatience, []() -> std::string {
    Sink sink;
    Ledger ledger;
    buffered::BatchConfig c = config(1 << 20);  // never full: every offer is accepted
    Backend backend(sink, c);
    backend.run();
    for (int round = 0; round < kRounds; ++round) {
      std::atomic<int> registered{0};  // ending threads that made their first offer
      std::atomic<int> ending{0};      // ending threads whose logger's destructor has begun
      std::atomic<int> started{0};     // new threads that made their first offer
      std::vector<std::thread> threads;
      const auto id = [round](int t) { return static_cast<std::uint32_t>(round * 100 + t + 1); };
      const auto spin_until = [](const std::atomic<int>& n, int value) {
        const auto give_up = Clock::now() + kPatience;  // never wait for ever on a broken run
        while (n < value && Clock::now() < give_up) std::this_thread::yield();
      };
      for (int t = 0; t < kEnding; ++t) {
        threads.emplace_back([&, t] {
          log_at_exit(backend, ledger, id(t), 1, kEach, [&] {
            ++ending;  // this thread's lane record is gone
            spin_until(started, kStarting);
          });
          ledger.offer(backend, Event{id(t), 0});  // registers: a lane of its own
          ++registered;
        });  // ends: its lane is given back, then the logger offers kEach more
      }
      spin_until(registered, kEnding);
      for (int t = kEnding; t < kEnding + kStarting; ++t) {
        threads.emplace_back([&, t] {
          spin_until(ending, kEnding);
          ledger.offer(backend, Event{id(t), 0});  // registers
          ++started;
          for (std::uint64_t i = 1; i < kEach; ++i) ledger.offer(backend, Event{id(t), i});
        });
      }
      for (auto& th : threads) th.join();
    }
    if (!backend.shutdown()) return "shutdown returned false";
    const auto s = backend.stats();
    std::string verdict = ledger.check(sink.events());
    if (s.accepted != ledger.accepted() || s.delivered != ledger.accepted()) {
      if (!verdict.empty() && verdict.back() != ' ') verdict += "; ";
      verdict += "accepted " + std::to_string(ledger.accepted()) +
                 " (Stats: " + std::to_string(s.accepted) + "), delivered " +
                 std::to_string(s.delivered) + " (sink: " + std::to_string(sink.event_count()) +
                 ")";
    }
    return verdict;
  });
  EXPECT_TRUE(child.exited_zero()) << "the scenario's process " << child.describe();
}

}  // namespace
