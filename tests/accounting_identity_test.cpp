// The accounting identity with everything at once: drop_oldest evicting, byte bounds refusing
// too-large events, a delegate that fails some batches, and a shutdown whose deadline abandons
// what is queued while one delegate call outlives it. After shutdown:
//   accepted == delivered + failed + abandoned + evicted + pending
//   offered  == accepted + rejected_full + rejected_shut_down + rejected_too_large
// and each event ends exactly one way, matching what the error handler was told.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace buffered_test;
using buffered::ErrorKind;

using Key = std::pair<std::uint32_t, std::uint64_t>;
Key key(const Item& item) { return {item.producer, item.seq}; }

constexpr std::size_t kBatchBytes = 200;
constexpr std::size_t kMaxBatch = 16;

// Holds every call until start() (so the buffer overflows and drop_oldest evicts), fails every
// second call, and, once asked to, holds one call until release() (to outlive a shutdown
// deadline).
class MixedSink {
 public:
  void process_events(std::span<Item> batch) {
    start_.wait();
    std::size_t bytes = 0;
    for (const Item& item : batch) bytes += item.bytes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (batch.empty() || batch.size() > kMaxBatch || bytes > kBatchBytes) ++bad_batches_;
    }
    if (stall_.load() && !stalled_.exchange(true)) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        stalled_batch_ = batch.size();
      }
      release_.wait();
    } else if (calls_++ % 2 == 1) {
      throw std::runtime_error("the sink refused the batch");
    }
    std::lock_guard<std::mutex> lock(mu_);
    delivered_.insert(delivered_.end(), batch.begin(), batch.end());
  }
  void start() { start_.open(); }
  void stall_next_call() { stall_ = true; }
  bool stalled() const { return stalled_.load(); }
  void release() { release_.open(); }
  std::size_t stalled_batch() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stalled_batch_;
  }
  std::vector<Item> delivered() const {
    std::lock_guard<std::mutex> lock(mu_);
    return delivered_;
  }
  int bad_batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return bad_batches_;
  }

 private:
  Gate start_;
  Gate release_;
  std::atomic<bool> stall_{false};
  std::atomic<bool> stalled_{false};
  std::atomic<std::uint64_t> calls_{0};  // calls not held by stall_next_call()
  mutable std::mutex mu_;
  std::size_t stalled_batch_ = 0;
  std::vector<Item> delivered_;
  int bad_batches_ = 0;
};

// Opens both of the sink's gates when it goes out of scope, so that a failed assertion cannot
// leave the backend's destructor waiting for a held call.
struct ReleaseAtExit {
  MixedSink& sink;
  ~ReleaseAtExit() {
    sink.start();
    sink.release();
  }
};

// The events each error kind was reported with.
class KindLog {
 public:
  std::function<void(ErrorKind, std::span<const Item>)> handler() {
    return [this](ErrorKind kind, std::span<const Item> items) {
      std::lock_guard<std::mutex> lock(mu_);
      auto& to = by_kind_[kind];
      to.insert(to.end(), items.begin(), items.end());
    };
  }
  std::map<ErrorKind, std::vector<Item>> by_kind() const {
    std::lock_guard<std::mutex> lock(mu_);
    return by_kind_;
  }

 private:
  mutable std::mutex mu_;
  std::map<ErrorKind, std::vector<Item>> by_kind_;
};

void expect_identity(const buffered::Stats& s, std::uint64_t offered) {
  EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.evicted + s.pending);
  EXPECT_EQ(offered, s.accepted + s.rejected_full + s.rejected_shut_down + s.rejected_too_large);
  EXPECT_EQ(s.queued, 0u);
  EXPECT_EQ(s.queued_bytes, 0u);
}

TEST(AccountingIdentity, DropOldestByteBoundsFailuresAndADeadlineShutdown) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async" : "sync");
    MixedSink sink;
    KindLog log;
    buffered::BatchConfig c;
    c.buffer_size = 128;
    c.max_batch_size = kMaxBatch;
    c.max_batch_wait = 1ms;
    c.overflow = buffered::OverflowPolicy::drop_oldest;
    c.max_buffer_bytes = 2000;
    c.max_batch_bytes = kBatchBytes;
    c.async_delegate = async;
    c.max_in_flight = 1;  // the held call holds the only slot
    buffered::BufferedBackend<Item, MixedSink&> backend(sink, c, log.handler(), item_bytes);
    const ReleaseAtExit release_at_exit{sink};
    backend.run();

    std::mutex offers_mu;
    std::map<Key, bool> offers;  // every event offered: accepted?
    const auto offer = [&](const Item& item) {
      const bool accepted = backend.process_event(item);
      std::lock_guard<std::mutex> lock(offers_mu);
      offers[key(item)] = accepted;
      return accepted;
    };
    // Every 97th event is larger than max_batch_bytes: too_large.
    const auto make = [](std::uint32_t p, std::uint64_t i) {
      return Item{p, i, i % 97 == 5 ? 2 * kBatchBytes : 1 + (i * 31 + p) % 60};
    };

    // 1. Producers while every call is held: the buffer overflows, the oldest are evicted.
    constexpr std::uint32_t kProducers = 3;
    constexpr std::uint64_t kEach = 3000;
    std::atomic<std::uint64_t> offered{0};
    std::vector<std::thread> producers;
    for (std::uint32_t p = 0; p < kProducers; ++p) {
      producers.emplace_back([&, p] {
        for (std::uint64_t i = 0; i < kEach; ++i) {
          offer(make(p, i));
          ++offered;
        }
      });
    }
    EXPECT_TRUE(eventually([&] { return offered.load() >= kProducers * kEach / 4; }));
    sink.start();  // calls go through now; some fail
    for (auto& t : producers) t.join();
    // The full buffer they left takes several calls (a batch holds at most 200 of 2000 bytes or
    // 16 of 128 events), so some of them failed.
    EXPECT_TRUE(backend.flush(kPatience));

    // 2. One call is held past the shutdown deadline; what queues behind it is abandoned.
    sink.stall_next_call();
    constexpr std::uint32_t kLate = kProducers;
    std::uint64_t seq = 0;
    for (; !sink.stalled() && seq < 100000; ++seq) {
      offer(make(kLate, seq));
      std::this_thread::sleep_for(1ms);
    }
    ASSERT_TRUE(sink.stalled());
    for (std::uint64_t end = seq + 300; seq < end; ++seq) offer(make(kLate, seq));
    EXPECT_FALSE(backend.shutdown(50ms));
    auto s = backend.stats();
    const std::uint64_t total = offers.size() + 1;  // and one more below
    EXPECT_EQ(s.pending, sink.stalled_batch());
    EXPECT_GT(s.pending, 0u);
    EXPECT_GT(s.evicted, 0u);
    EXPECT_GT(s.failed, 0u);
    EXPECT_GT(s.abandoned, 0u);
    EXPECT_GT(s.rejected_too_large, 0u);
    EXPECT_EQ(s.accepted, s.delivered + s.failed + s.abandoned + s.evicted + s.pending);

    // 3. After shutdown: refused, shut_down.
    EXPECT_FALSE(offer(make(kLate, seq++)));
    s = backend.stats();
    EXPECT_EQ(s.rejected_shut_down, 1u);
    expect_identity(s, total);

    // 4. The held call returns: its events are delivered, nothing is pending.
    sink.release();
    ASSERT_TRUE(eventually([&] { return backend.stats().pending == 0; }));
    s = backend.stats();
    expect_identity(s, total);
    EXPECT_EQ(s.in_flight, 0u);
    EXPECT_EQ(sink.bad_batches(), 0);

    // Each event ended exactly one way, and the counters say what the handler was told.
    const auto reported = log.by_kind();
    const auto events = [&](ErrorKind kind) {
      const auto it = reported.find(kind);
      return it == reported.end() ? std::vector<Item>{} : it->second;
    };
    const std::vector<Item> delivered = sink.delivered();
    EXPECT_EQ(s.delivered, delivered.size());
    EXPECT_EQ(s.failed, events(ErrorKind::delegate_failed).size());
    EXPECT_EQ(s.abandoned, events(ErrorKind::abandoned).size());
    EXPECT_EQ(s.evicted, events(ErrorKind::evicted).size());
    EXPECT_EQ(s.rejected_full, events(ErrorKind::buffer_full).size());
    EXPECT_EQ(s.rejected_shut_down, events(ErrorKind::shut_down).size());
    EXPECT_EQ(s.rejected_too_large, events(ErrorKind::too_large).size());
    std::map<Key, int> ends;
    for (const Item& item : delivered) ++ends[key(item)];
    for (const ErrorKind kind :
         {ErrorKind::delegate_failed, ErrorKind::abandoned, ErrorKind::evicted}) {
      for (const Item& item : events(kind)) ++ends[key(item)];
    }
    std::map<Key, int> refusals;
    for (const ErrorKind kind :
         {ErrorKind::buffer_full, ErrorKind::shut_down, ErrorKind::too_large}) {
      for (const Item& item : events(kind)) ++refusals[key(item)];
    }
    for (const Item& item : events(ErrorKind::too_large)) EXPECT_GT(item.bytes, kBatchBytes);
    std::uint64_t accepted = 0;
    for (const auto& [k, was_accepted] : offers) {
      const int ended = ends.count(k) != 0 ? ends.at(k) : 0;
      const int refused = refusals.count(k) != 0 ? refusals.at(k) : 0;
      EXPECT_EQ(ended, was_accepted ? 1 : 0) << "producer " << k.first << " event " << k.second;
      EXPECT_EQ(refused, was_accepted ? 0 : 1) << "producer " << k.first << " event " << k.second;
      accepted += was_accepted ? 1 : 0;
    }
    EXPECT_EQ(s.accepted, accepted);
    EXPECT_EQ(offers.size(), total);
  }
}

}  // namespace
