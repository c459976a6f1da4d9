#include <optional>
#include <string>
#include <unordered_map>

#include "workloads.hpp"

namespace buffered_stress {
namespace {

constexpr std::uint32_t kSecondProducer = 0x1000;  // its ids: producer kSecondProducer + p

struct SecondLedger {
  std::mutex mu;
  std::unordered_map<std::uint64_t, int> delivered, reported, accepted;  // guarded by mu
  std::vector<std::uint64_t> refused;                                    // guarded by mu
};

struct SecondSink {
  SecondLedger* ledger;
  void operator()(std::span<Event> batch) const {
    if (in_fork_child.load()) {
      child_delegate_calls.fetch_add(1);
      return;
    }
    std::lock_guard<std::mutex> lock(ledger->mu);
    for (const Event& e : batch) ++ledger->delivered[e.id];
  }
};

}  // namespace

struct SecondBackend::Parts {
  SecondLedger ledger;
  std::optional<buffered::BufferedBackend<Event, SecondSink>> backend;
};

SecondBackend::SecondBackend(const RoundPlan& plan, Violations& violation)
    : plan_(plan),
      violation_(violation),
      seqs_(plan.producers, 0),
      settled_(plan.second_mode == 0) {}

SecondBackend::~SecondBackend() = default;

void SecondBackend::start() {
  if (plan_.second_mode == 0) return;
  parts_ = std::make_unique<Parts>();
  buffered::BatchConfig sc;
  sc.buffer_size = 256;
  sc.max_batch_size = 16;
  sc.max_batch_wait = 200us;
  SecondLedger& ledger = parts_->ledger;
  parts_->backend.emplace(SecondSink{&ledger}, sc,
                          [&ledger](buffered::ErrorKind, std::span<const Event> events) {
                            if (in_fork_child.load()) {
                              child_reported.fetch_add(events.size());
                              return;
                            }
                            std::lock_guard<std::mutex> lock(ledger.mu);
                            for (const Event& e : events) ++ledger.reported[e.id];
                          });
  parts_->backend->run();
}

void SecondBackend::thread_starts(std::uint32_t p) {
  if (plan_.second_mode == 0) return;
  offer(p, 1 + p % 3);
  offered_.fetch_add(1);
}

void SecondBackend::offer(std::uint32_t p, std::uint32_t n) {
  SecondLedger& ledger = parts_->ledger;
  for (std::uint32_t k = 0; k < n; ++k) {
    const std::uint64_t id = make_id(kSecondProducer + p, seqs_[p]++);
    const bool ok = parts_->backend->process_event(Event{id, payload_for(id)});
    std::lock_guard<std::mutex> lock(ledger.mu);
    if (ok) {
      ++ledger.accepted[id];
    } else {
      ledger.refused.push_back(id);
    }
  }
}

void SecondBackend::settle() {
  if (plan_.second_mode == 0) return;
  const auto until = Clock::now() + 10s;
  while (offered_.load() < plan_.producers && Clock::now() < until)
    std::this_thread::sleep_for(100us);
  if (plan_.second_mode == 1) destroy_and_check();  // the threads still hold lanes of it
  settled_ = true;
}

void SecondBackend::wait_settled() {
  // With second_mode 1 a producer thread ends only once the second backend is gone.
  const auto until = Clock::now() + 30s;
  while (!settled_.load() && Clock::now() < until) std::this_thread::sleep_for(200us);
}

void SecondBackend::finish() {
  if (plan_.second_mode == 2) destroy_and_check();
}

void SecondBackend::destroy_in_child() {
  if (parts_) parts_->backend.reset();
}

// Each accepted id delivered or reported once, each refused one reported once.
void SecondBackend::destroy_and_check() {
  parts_->backend.reset();
  SecondLedger& ledger = parts_->ledger;
  std::lock_guard<std::mutex> lock(ledger.mu);
  for (const auto& [id, n] : ledger.accepted) {
    const int times = times_in(ledger.delivered, id) + times_in(ledger.reported, id);
    if (n != 1 || times != 1)
      violation_("second backend: accepted id " + std::to_string(id) + " ended " +
                 std::to_string(times) + " times");
  }
  for (const std::uint64_t id : ledger.refused) {
    if (times_in(ledger.reported, id) != 1 || times_in(ledger.delivered, id) != 0)
      violation_("second backend: refused id " + std::to_string(id) + " not reported once");
  }
  for (const auto& [id, n] : ledger.delivered) {
    if (ledger.accepted.count(id) == 0)
      violation_("second backend: delivered id " + std::to_string(id) + " never accepted");
  }
}

}  // namespace buffered_stress
