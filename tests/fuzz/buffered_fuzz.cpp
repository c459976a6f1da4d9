// libFuzzer harness: the input is a configuration followed by a sequence of operations on one
// backend with a deterministic sink. After the sequence (and a final shutdown) it checks the
// same invariants as the stress tool: every accepted event delivered, failed or abandoned
// exactly once; every refused event reported exactly once; order where promised; Stats exact.
// Any violation aborts, which libFuzzer reports with the input that caused it.
//
// One operation injects an allocation failure (tests/fault replaces global operator new) into
// the next library call the input makes: this thread's next allocation, or the Nth allocation on
// any thread (once, or from it on), disarmed when that call returns. The harness itself does not
// allocate between its setup and the final checks, so every failure lands in the library. Only
// run() may fail then (std::bad_alloc, std::system_error), and it must leave no thread behind;
// process_event(s), flush(), shutdown() and stats() must neither throw nor allocate.
//
// Build: cmake --preset fuzz && cmake --build --preset fuzz
// Run:   build/fuzz/tests/fuzz/buffered_fuzz -max_total_time=60 <corpus copy> tests/fuzz/corpus
#include <buffered/buffered_backend.hpp>

#include <dirent.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "../fault/fault_injection.hpp"

namespace {

using namespace std::chrono_literals;
namespace fault = buffered_test::fault;

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

// Thrown by the sink: unlike std::runtime_error it allocates nothing (an injected failure must
// land in the library, not here).
struct SinkFailure {};

// Threads in this process now (Linux); 0 if unknown.
std::size_t count_threads() {
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return 0;
  std::size_t n = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n;
}

// An allocation failure for the next library call: none, this thread's next allocation, or the
// Nth allocation on any thread.
struct PendingFault {
  enum class Kind { none, this_thread, nth } kind = Kind::none;
  std::uint64_t nth = 0;
  fault::Mode mode = fault::Mode::once;
};

// Arms `f` for one library call; disarm() (right after the call) says whether it fired.
class ArmedFault {
 public:
  explicit ArmedFault(PendingFault& f) : kind_(f.kind) {
    f.kind = PendingFault::Kind::none;
    if (kind_ == PendingFault::Kind::this_thread) fault::fail_next_allocation_on_this_thread();
    if (kind_ == PendingFault::Kind::nth) fault::fail_allocation(f.nth, f.mode);
  }
  bool disarm() {
    const PendingFault::Kind kind = kind_;
    kind_ = PendingFault::Kind::none;
    if (kind == PendingFault::Kind::this_thread)
      return !fault::cancel_next_allocation_failure_on_this_thread();
    if (kind == PendingFault::Kind::nth) {
      fault::disarm_allocations();
      return fault::failed_allocations() != 0;
    }
    return false;
  }
  ~ArmedFault() { disarm(); }
  ArmedFault(const ArmedFault&) = delete;
  ArmedFault& operator=(const ArmedFault&) = delete;

 private:
  PendingFault::Kind kind_;
};

struct Ledger {
  std::mutex mu;
  std::vector<int> delivered, failed, reported_failed, abandoned, refused_reports;
  std::vector<std::uint64_t> call_order;  // ids in the order the delegate saw them
  std::vector<std::size_t> call_sizes;    // events per delegate call
  std::uint64_t calls = 0;
  void grow(std::size_t n) {
    call_order.reserve(n);  // the sink never allocates
    call_sizes.reserve(n);
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
  c.buffer_size = in.byte() % 33;             // 0 is invalid on purpose
  const std::uint8_t batch_byte = in.byte();  // 250..255: near SIZE_MAX, beyond any buffer
  c.max_batch_size = batch_byte >= 250
                         ? std::numeric_limits<std::size_t>::max() - (255u - batch_byte)
                         : std::size_t{batch_byte} % 9;
  c.max_batch_wait = std::chrono::microseconds(in.byte() % 200);
  c.async_delegate = (in.byte() & 1) != 0;
  c.max_in_flight = in.byte() % 4;
  c.overflow =
      (in.byte() & 1) ? buffered::OverflowPolicy::block : buffered::OverflowPolicy::drop_newest;
  c.block_timeout = std::chrono::microseconds(in.byte() % 100);  // bounded: an input never hangs
  const std::uint8_t throttle = in.byte();
  if (throttle % 8 == 0)  // burst 0 (invalid) to 3
    c.throttle = buffered::Throttle{100000.0, static_cast<std::size_t>((throttle >> 3) % 4)};
  const std::uint8_t fail_mask = in.byte();

  constexpr std::size_t kMaxEvents = 4096;
  Ledger ledger;
  ledger.grow(kMaxEvents);
  auto sink = [&](std::span<Event> batch) -> bool {
    std::lock_guard<std::mutex> lock(ledger.mu);
    const std::uint64_t call = ledger.calls++;
    ledger.call_sizes.push_back(batch.size());
    const bool fails = ((fail_mask >> (call % 8)) & 1) != 0;
    for (const Event& e : batch) {
      ledger.call_order.push_back(e.id);
      (fails ? ledger.failed : ledger.delivered)[e.id]++;
    }
    if (fails && call % 2 == 0) throw SinkFailure{};
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
  accepted.reserve(kMaxEvents);  // nothing below allocates until the final checks
  std::uint64_t next_id = 0;
  std::uint64_t last_accepted_count = 0;
  PendingFault pending_fault;
  // A call that must neither throw nor allocate, with the pending fault armed around it.
  auto no_alloc = [&](const char* what, auto&& call) {
    ArmedFault armed(pending_fault);
    bool threw = false;
    decltype(call()) result{};
    try {
      result = call();
    } catch (...) {
      threw = true;
    }
    const bool fired = armed.disarm();
    if (threw) {
      std::fprintf(stderr, "buffered_fuzz: %s threw\n", what);
      std::abort();
    }
    if (fired) {
      std::fprintf(stderr, "buffered_fuzz: %s allocated\n", what);
      std::abort();
    }
    return result;
  };
  // After a shutdown returned: accepted == delivered + failed + abandoned + pending, at once if it
  // returned true (nothing is pending then), otherwise once the calls still running settle.
  auto check_shut_down = [&](bool returned_true) {
    buffered::Stats s = backend->stats();
    auto holds = [&s] { return s.accepted == s.delivered + s.failed + s.abandoned + s.pending; };
    if (returned_true) {
      require(s.pending == 0 && s.queued == 0, "shutdown() returned true with work left");
      require(holds(), "accounting identity broken after shutdown() returned true");
      return;
    }
    for (int i = 0; !holds() && i < 5000; ++i) {
      std::this_thread::sleep_for(1ms);
      s = backend->stats();
    }
    require(holds(), "accounting identity broken after shutdown()");
  };
  auto offer_one = [&](bool by_move) {
    if (next_id >= kMaxEvents) return;
    Event e{next_id++};
    const bool ok = no_alloc("process_event", [&] {
      return by_move ? backend->process_event(std::move(e)) : backend->process_event(e);
    });
    accepted.push_back(ok);
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
        std::array<Event, 8> events{};
        std::size_t count = 0;
        for (int k = 0; k < 1 + op / 8 % 8 && next_id < kMaxEvents; ++k)
          events[count++] = Event{next_id++};
        const std::span<const Event> span(events.data(), count);
        const std::size_t n =
            no_alloc("process_events", [&] { return backend->process_events(span); });
        for (std::size_t k = 0; k < count; ++k) accepted.push_back(k < n);
        break;
      }
      case 4: {
        // May fail with an injected fault: then nothing it started may be left running.
        const std::size_t threads_before = count_threads();
        ArmedFault armed(pending_fault);
        bool failed = false;
        try {
          backend->run();
        } catch (const std::logic_error&) {
          // run() after shutdown: refused, as documented.
        } catch (const std::bad_alloc&) {
          failed = true;
        } catch (const std::system_error&) {
          failed = true;
        }
        const bool fired = armed.disarm();
        require(!failed || fired, "run() failed without an injected fault");
        if (failed && threads_before != 0) {
          std::size_t now = count_threads();
          for (int i = 0; now > threads_before && i < 2000; ++i) {
            std::this_thread::sleep_for(1ms);  // a joined thread may linger briefly in /proc
            now = count_threads();
          }
          require(now <= threads_before, "a failed run() left a thread running");
        }
        break;
      }
      case 5: {
        const auto timeout = std::chrono::microseconds(in.byte() % 50);
        no_alloc("flush", [&] { return backend->flush(timeout); });
        break;
      }
      case 6:
        if (op & 8) {
          const auto timeout = std::chrono::microseconds(in.byte() % 50);
          check_shut_down(no_alloc("shutdown", [&] { return backend->shutdown(timeout); }));
        } else {
          check_shut_down(no_alloc("shutdown", [&] { return backend->shutdown(); }));
        }
        break;
      default: {
        if (op & 8) {
          // Fail an allocation in the next library call: 0 = this thread's next one, otherwise
          // the Nth (1..16) on any thread, once (even) or from then on (odd).
          const std::uint8_t how = in.byte();
          if (how == 0) {
            pending_fault.kind = PendingFault::Kind::this_thread;
          } else {
            pending_fault.kind = PendingFault::Kind::nth;
            pending_fault.nth = 1 + (how >> 1) % 16;
            pending_fault.mode = (how & 1) ? fault::Mode::from_then_on : fault::Mode::once;
          }
          break;
        }
        const buffered::Stats s = no_alloc("stats", [&] { return backend->stats(); });
        require(s.accepted >= last_accepted_count, "Stats.accepted went down");
        require(s.accepted >= s.delivered + s.failed + s.abandoned, "more done than accepted");
        last_accepted_count = s.accepted;
        break;
      }
    }
  }
  check_shut_down(no_alloc("shutdown", [&] { return backend->shutdown(); }));
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
  require(s.pending == 0, "Stats.pending after an unbounded shutdown");
  require(s.accepted == s.delivered + s.failed + s.abandoned + s.pending, "accounting identity");
  require(s.rejected_full + s.rejected_shut_down == n_refused, "Stats.rejected_*");
  require(s.batches == ledger.calls, "Stats.batches");
  require(s.queued == 0 && s.in_flight == 0, "work left after shutdown");
  const std::size_t batch_limit = std::min(c.max_batch_size, c.buffer_size);
  for (const std::size_t events_in_call : ledger.call_sizes) {
    require(events_in_call >= 1 && events_in_call <= batch_limit, "a batch of the wrong size");
  }
  if (!c.async_delegate || c.max_in_flight == 1) {
    for (std::size_t i = 1; i < ledger.call_order.size(); ++i) {
      require(ledger.call_order[i - 1] < ledger.call_order[i], "order broken");
    }
  }
  return 0;
}
