// libFuzzer harness: the input is a configuration followed by a sequence of operations on one
// backend with a deterministic sink. After the sequence (and a final shutdown) it checks the
// same invariants as the stress tool: every accepted event delivered, failed or abandoned
// exactly once; every refused event reported exactly once; order where promised; Stats exact.
// Any violation aborts, which libFuzzer reports with the input that caused it.
//
// Build: cmake --preset fuzz && cmake --build --preset fuzz
// Run:   build/fuzz/tests/fuzz/buffered_fuzz -max_total_time=60 <corpus copy> tests/fuzz/corpus
#include <buffered/buffered_backend.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace {

using namespace std::chrono_literals;

struct Event {
  std::uint64_t id;
};

class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "buffered_fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

struct Ledger {
  std::mutex mu;
  std::vector<int> delivered, failed, reported_failed, abandoned, refused_reports;
  std::vector<std::uint64_t> call_order;  // ids in the order the delegate saw them
  std::uint64_t calls = 0;
  void grow(std::size_t n) {
    delivered.resize(n);
    failed.resize(n);
    reported_failed.resize(n);
    abandoned.resize(n);
    refused_reports.resize(n);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in(data, size);
  buffered::BatchConfig c;
  c.buffer_size = in.byte() % 33;  // 0 is invalid on purpose
  c.max_batch_size = in.byte() % 9;
  c.max_batch_wait = std::chrono::microseconds(in.byte() % 200);
  c.async_delegate = (in.byte() & 1) != 0;
  c.max_in_flight = in.byte() % 4;
  c.overflow =
      (in.byte() & 1) ? buffered::OverflowPolicy::block : buffered::OverflowPolicy::drop_newest;
  c.block_timeout = std::chrono::microseconds(in.byte() % 100);  // bounded: an input never hangs
  const std::uint8_t throttle = in.byte();
  if (throttle % 8 == 0)
    c.throttle = buffered::Throttle{100000.0, static_cast<std::size_t>(throttle % 4)};
  const std::uint8_t fail_mask = in.byte();

  constexpr std::size_t kMaxEvents = 4096;
  Ledger ledger;
  ledger.grow(kMaxEvents);
  auto sink = [&](std::span<Event> batch) -> bool {
    std::lock_guard<std::mutex> lock(ledger.mu);
    const std::uint64_t call = ledger.calls++;
    const bool fails = ((fail_mask >> (call % 8)) & 1) != 0;
    for (const Event& e : batch) {
      ledger.call_order.push_back(e.id);
      (fails ? ledger.failed : ledger.delivered)[e.id]++;
    }
    if (fails && call % 2 == 0) throw std::runtime_error("fuzz");
    return !fails;
  };
  auto on_error = [&](buffered::ErrorKind kind, std::span<const Event> events) {
    std::lock_guard<std::mutex> lock(ledger.mu);
    for (const Event& e : events) {
      switch (kind) {
        case buffered::ErrorKind::buffer_full:
        case buffered::ErrorKind::shut_down:
          ledger.refused_reports[e.id]++;
          break;
        case buffered::ErrorKind::delegate_failed:
          ledger.reported_failed[e.id]++;
          break;
        case buffered::ErrorKind::abandoned:
          ledger.abandoned[e.id]++;
          break;
      }
    }
  };

  const bool valid = c.buffer_size != 0 && c.max_batch_size != 0 && c.max_in_flight != 0 &&
                     (c.max_batch_size == 1 || c.max_batch_wait > 0ns) &&
                     (!c.throttle || c.throttle->burst != 0);
  using Backend = buffered::BufferedBackend<Event, decltype(sink)&>;
  std::unique_ptr<Backend> backend;
  try {
    backend = std::make_unique<Backend>(sink, c, on_error);
  } catch (const std::invalid_argument&) {
    require(!valid, "a valid configuration was refused");
    return 0;
  }
  require(valid, "an invalid configuration was accepted");

  std::vector<bool> accepted;
  std::uint64_t next_id = 0;
  std::uint64_t last_accepted_count = 0;
  auto offer_one = [&](bool by_move) {
    if (next_id >= kMaxEvents) return;
    Event e{next_id++};
    accepted.push_back(by_move ? backend->process_event(std::move(e)) : backend->process_event(e));
  };
  while (!in.empty()) {
    const std::uint8_t op = in.byte();
    switch (op % 8) {
      case 0:
      case 1:
        offer_one(false);
        break;
      case 2:
        offer_one(true);
        break;
      case 3: {
        std::vector<Event> span;
        for (int k = 0; k < 1 + op / 8 % 8 && next_id < kMaxEvents; ++k)
          span.push_back(Event{next_id++});
        const std::size_t n = backend->process_events(span);
        for (std::size_t k = 0; k < span.size(); ++k) accepted.push_back(k < n);
        break;
      }
      case 4:
        try {
          backend->run();
        } catch (const std::logic_error&) {
          // run() after shutdown: refused, as documented.
        }
        break;
      case 5:
        backend->flush(std::chrono::microseconds(in.byte() % 50));
        break;
      case 6:
        if (op & 8)
          backend->shutdown(std::chrono::microseconds(in.byte() % 50));
        else
          backend->shutdown();
        break;
      default: {
        const buffered::Stats s = backend->stats();
        require(s.accepted >= last_accepted_count, "Stats.accepted went down");
        require(s.accepted >= s.delivered + s.failed + s.abandoned, "more done than accepted");
        last_accepted_count = s.accepted;
        break;
      }
    }
  }
  backend->shutdown();
  backend->shutdown(0ns);  // idempotent
  const buffered::Stats s = backend->stats();
  backend.reset();  // the destructor waits for anything still running

  std::uint64_t n_accepted = 0, n_delivered = 0, n_failed = 0, n_abandoned = 0, n_refused = 0;
  for (std::uint64_t id = 0; id < next_id; ++id) {
    const int done = ledger.delivered[id] + ledger.failed[id] + ledger.abandoned[id];
    if (accepted[id]) {
      ++n_accepted;
      require(done == 1, "an accepted event was not handled exactly once");
      require(ledger.refused_reports[id] == 0, "an accepted event was reported refused");
      require(ledger.failed[id] == ledger.reported_failed[id],
              "a failed event was not reported once");
    } else {
      ++n_refused;
      require(done == 0, "a refused event reached the delegate");
      require(ledger.refused_reports[id] == 1, "a refused event was not reported exactly once");
    }
    n_delivered += static_cast<std::uint64_t>(ledger.delivered[id]);
    n_failed += static_cast<std::uint64_t>(ledger.failed[id]);
    n_abandoned += static_cast<std::uint64_t>(ledger.abandoned[id]);
  }
  require(s.accepted == n_accepted, "Stats.accepted");
  require(s.delivered == n_delivered, "Stats.delivered");
  require(s.failed == n_failed, "Stats.failed");
  require(s.abandoned == n_abandoned, "Stats.abandoned");
  require(s.rejected_full + s.rejected_shut_down == n_refused, "Stats.rejected_*");
  require(s.batches == ledger.calls, "Stats.batches");
  require(s.queued == 0 && s.in_flight == 0, "work left after shutdown");
  if (!c.async_delegate || c.max_in_flight == 1) {
    for (std::size_t i = 1; i < ledger.call_order.size(); ++i) {
      require(ledger.call_order[i - 1] < ledger.call_order[i], "order broken");
    }
  }
  return 0;
}
