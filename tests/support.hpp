// Shared helpers for the tests: recording sinks, gates, and polling with generous limits.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <ostream>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include <gtest/gtest.h>
#include <buffered/buffered_backend.hpp>

namespace buffered_test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// "By" limits are loose: these machines are shared, 2-core and noisy.
inline constexpr auto kPatience = 20s;
// Slack for "it happened by" checks on timed waits (a backoff, a deadline): seconds, not
// milliseconds, for the same reason. "Not before" checks take no slack.
inline constexpr auto kSlack = 5s;

// A duration in milliseconds, for readable comparisons and failure messages.
inline double millis(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Called right after a wait that should end at `deadline`: it did not return before it, and
// returned by kSlack after it.
inline void expect_returned_at(Clock::time_point deadline) {
  const auto back = Clock::now();
  EXPECT_GE(back, deadline) << "returned " << millis(deadline - back) << " ms before its deadline";
  EXPECT_LT(back, deadline + kSlack) << "returned " << millis(back - deadline) << " ms after it";
}

// An event that carries its own byte size (the byte-bound and drop_oldest tests).
struct Item {
  std::uint32_t producer = 0;
  std::uint64_t seq = 0;
  std::size_t bytes = 0;
  friend bool operator==(const Item&, const Item&) = default;
  friend std::ostream& operator<<(std::ostream& os, const Item& i) {
    return os << "{p" << i.producer << " #" << i.seq << " " << i.bytes << "B}";
  }
};

inline std::size_t item_bytes(const Item& item) { return item.bytes; }

// After an unbounded shutdown: every accepted event is done (the identity, with `evicted`) and
// every offered one counted once.
inline void expect_settled(const buffered::Stats& s, std::uint64_t offered) {
  EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.evicted + s.pending);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(offered, s.accepted + s.rejected_full + s.rejected_shut_down + s.rejected_too_large);
  EXPECT_EQ(s.queued, 0u);
  EXPECT_EQ(s.queued_bytes, 0u);
  EXPECT_EQ(s.in_flight, 0u);
}

// An event that says who produced it and in what order.
struct Event {
  std::uint32_t producer = 0;
  std::uint64_t seq = 0;
  friend bool operator==(const Event&, const Event&) = default;
};

// Context switches of the whole process so far (voluntary and involuntary): a thread that wakes
// up in a loop shows here, whatever the machine's speed.
inline std::uint64_t context_switches() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::uint64_t>(usage.ru_nvcsw) + static_cast<std::uint64_t>(usage.ru_nivcsw);
}

// Polls `pred` until it holds or `limit` passes.
template <class Pred>
bool eventually(Pred pred, Clock::duration limit = kPatience) {
  const auto deadline = Clock::now() + limit;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// A one-shot gate: wait() blocks until open().
class Gate {
 public:
  void open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return open_; });
  }
  bool is_open() {
    std::lock_guard<std::mutex> lock(mu_);
    return open_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Records every batch it is given, with the time it arrived.
template <class E = Event>
class RecordingSink {
 public:
  void process_events(std::span<E> events) {
    std::lock_guard<std::mutex> lock(mu_);
    batches_.emplace_back(events.begin(), events.end());
    times_.push_back(Clock::now());
  }
  std::vector<std::vector<E>> batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  std::vector<Clock::time_point> times() const {
    std::lock_guard<std::mutex> lock(mu_);
    return times_;
  }
  std::vector<E> events() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<E> all;
    for (const auto& b : batches_) all.insert(all.end(), b.begin(), b.end());
    return all;
  }
  std::size_t event_count() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t n = 0;
    for (const auto& b : batches_) n += b.size();
    return n;
  }
  std::size_t batch_count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_.size();
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::vector<E>> batches_;
  std::vector<Clock::time_point> times_;
};

// Collects what the error handler was given.
template <class E = Event>
class ErrorLog {
 public:
  using Entry = std::pair<buffered::ErrorKind, std::vector<E>>;
  std::function<void(buffered::ErrorKind, std::span<const E>)> handler() {
    return [this](buffered::ErrorKind kind, std::span<const E> events) {
      std::lock_guard<std::mutex> lock(mu_);
      entries_.emplace_back(kind, std::vector<E>(events.begin(), events.end()));
    };
  }
  std::vector<Entry> entries() const {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_;
  }
  std::size_t count(buffered::ErrorKind kind) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::size_t n = 0;
    for (const auto& e : entries_) {
      if (e.first == kind) n += e.second.size();
    }
    return n;
  }
  std::size_t calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_.size();
  }

 private:
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
};

inline Event ev(std::uint64_t seq, std::uint32_t producer = 0) { return Event{producer, seq}; }

// What a test delegate saw in one call: the events, BatchContext::attempt() (0 if it takes no
// context), and when the call began.
struct Call {
  std::vector<Event> events;
  std::size_t attempt = 0;
  Clock::time_point at{};
};

// A thread-safe record of delegate calls, for delegates that decide what to do call by call.
class CallLog {
 public:
  // Records a call and returns its index (0 for the first call).
  std::size_t record(std::span<const Event> events, std::size_t attempt = 0) {
    const auto now = Clock::now();
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back(Call{std::vector<Event>(events.begin(), events.end()), attempt, now});
    return calls_.size() - 1;
  }
  std::vector<Call> calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  std::size_t count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_.size();
  }

 private:
  mutable std::mutex mu_;
  std::vector<Call> calls_;
};

// One error-handler call, with the exception being handled when it was made.
struct Report {
  buffered::ErrorKind kind;
  std::vector<Event> events;
  std::exception_ptr cause;  // std::current_exception() inside the handler
};

// Collects error-handler calls with their std::current_exception().
class ReportLog {
 public:
  std::function<void(buffered::ErrorKind, std::span<const Event>)> handler() {
    return [this](buffered::ErrorKind kind, std::span<const Event> events) {
      std::lock_guard<std::mutex> lock(mu_);
      reports_.push_back(
          Report{kind, std::vector<Event>(events.begin(), events.end()), std::current_exception()});
    };
  }
  std::vector<Report> reports() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reports_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Report> reports_;
};

// The message of the exception `p` holds; "<none>" for a null one, "<not a std::exception>".
inline std::string what(const std::exception_ptr& p) {
  if (!p) return "<none>";
  try {
    std::rethrow_exception(p);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "<not a std::exception>";
  }
}

// Events seq first, first + 1, ..., first + n - 1 (producer 0).
inline std::vector<Event> seqs(std::uint64_t first, std::uint64_t n) {
  std::vector<Event> events;
  for (std::uint64_t i = 0; i < n; ++i) events.push_back(Event{0, first + i});
  return events;
}

// After an unbounded shutdown: accepted == delivered + failed + abandoned (nothing pending), and
// everything offered was counted once.
inline void expect_accounting(const buffered::Stats& s, std::uint64_t offered) {
  EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.pending);
  EXPECT_EQ(s.pending, 0u);
  EXPECT_EQ(offered, s.accepted + s.rejected_full + s.rejected_shut_down);
  EXPECT_EQ(s.queued, 0u);
  EXPECT_EQ(s.in_flight, 0u);
}

// A delegate that records each batch as its call begins, then waits for the gate (what is
// offered meanwhile stays queued behind the held call).
class GatedItemSink {
 public:
  void process_events(std::span<Item> batch) {
    record_.process_events(batch);
    gate_.wait();
  }
  void open() { gate_.open(); }
  std::size_t calls() const { return record_.batch_count(); }
  const RecordingSink<Item>& record() const { return record_; }

 private:
  RecordingSink<Item> record_;
  Gate gate_;
};

// Opens a sink's gate when it goes out of scope: a failed assertion must not leave the
// backend's destructor (or a thread the test waits for) stuck behind the delegate.
template <class Sink>
struct OpenGateAtExit {
  Sink& sink;
  ~OpenGateAtExit() { sink.open(); }
};

}  // namespace buffered_test
