// What a round does to its backend while it runs: the producers (1 to 4 threads mixing
// process_event, process_events and flush), and four more shapes, drawn from a generator of their
// own (so a seed's other draws stay as they were); the watchdog and every violation name the
// round's shapes with its seed:
//   - exit_offers: every producer thread owns a thread_local, made before its first offer, whose
//     destructor (run after the library's thread_locals of that thread are gone) offers 1-12 more
//     of the thread's ids by all three calls; with a second backend the thread first offers into
//     it too, and that backend is destroyed before the thread ends, or alive then and offered
//     into by the destructor as well (its ids are checked delivered or reported exactly once);
//   - linger: max_batch_wait of 2-4 s, one event queued, then 2-6 NEW threads, a lane each, fill
//     one or two full batches between them: those must reach the delegate within half of
//     max_batch_wait, else a violation;
//   - reoffer: drop_oldest, and the error handler re-offers the evicted events (with
//     reoffer_others every kind), each up to 1-3 times, nested at most four deep. A re-offer is a
//     new offer of the same id: the bookkeeping counts by tag (id | offer << 48), so each offer
//     ends exactly once; the order checks leave re-offers out. No offer may take over 2 s;
//   - fork (not under TSan, which does not support fork with threads well): while producers
//     offer, the process forks; the child destroys the inherited backend(s) at once and exits
//     (exit(0) or _exit(0)); the parent kills it after 10 s (a violation), checks its exit status
//     and that it made no delegate call (counted back through a pipe), then goes on with the
//     round, which must still be exactly-once.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "backend.hpp"
#include "faults.hpp"
#include "stress.hpp"

namespace buffered_stress {

// The second backend of an exit_offers round (second_mode 1 or 2): its own ids, a plain sink
// and error handler that count what they see per id, checked once it is gone.
class SecondBackend {
 public:
  SecondBackend(const RoundPlan& plan, Violations& violation);
  ~SecondBackend();
  SecondBackend(const SecondBackend&) = delete;
  SecondBackend& operator=(const SecondBackend&) = delete;

  void start();                                  // made and run at once
  void thread_starts(std::uint32_t p);           // on producer p's thread: it takes a lane
  void offer(std::uint32_t p, std::uint32_t n);  // n more of producer p's ids, on its thread
  void settle();                                 // after the producers took their lanes
  void wait_settled();                           // on a producer thread, before it ends
  void finish();                                 // after the producers ended
  void destroy_in_child();                       // in a forked child

 private:
  struct Parts;
  void destroy_and_check();

  const RoundPlan& plan_;
  Violations& violation_;
  std::unique_ptr<Parts> parts_;     // with a second backend
  std::vector<std::uint32_t> seqs_;  // [p]: written on producer p's thread only
  std::atomic<std::uint32_t> offered_{0};
  std::atomic<bool> settled_;
};

// The thread_local destructors that offer (exit_offers).
class ExitOffers {
 public:
  ExitOffers(const RoundPlan& plan, Backend& backend, Ledger& ledger, SecondBackend& second);

  // On producer p's thread before its first offer, so that what it makes is destroyed after the
  // library's thread_locals of that thread.
  void thread_starts(std::uint32_t p);
  std::uint64_t offered() const { return offered_.load(); }

 private:
  void offer_at_exit(std::uint32_t p);
  void offer_span(std::uint32_t p, std::uint32_t seq, std::uint32_t m);
  void offer_one(std::uint32_t p, std::uint32_t seq, unsigned how);

  const RoundPlan& plan_;
  Backend& backend_;
  Ledger& ledger_;
  SecondBackend& second_;
  std::vector<std::mt19937_64> rngs_;  // [p]: what producer p's destructor offers
  std::atomic<std::uint64_t> offered_{0};
};

// The producer threads.
class Producers {
 public:
  Producers(const RoundPlan& plan, Backend& backend, Ledger& ledger, Observed& obs,
            Violations& violation, FaultCounters& faults, ExitOffers& exit_offers,
            SecondBackend& second);

  void start();
  void stop() { stop_ = true; }  // each makes three more offers, then ends
  void join();
  std::uint32_t done() const { return done_.load(); }
  std::uint64_t slow_offers() const { return slow_offers_.load(); }  // reoffer rounds

 private:
  struct Thread;

  void produce(std::uint32_t p);
  void offer_copy(Thread& t, bool inject);
  bool offer_moved(Thread& t, bool inject);
  void offer_span(Thread& t, bool inject);
  bool flush(Thread& t);

  const RoundPlan& plan_;
  Backend& backend_;
  Ledger& ledger_;
  Observed& obs_;
  Violations& violation_;
  FaultCounters& faults_;
  ExitOffers& exit_offers_;
  SecondBackend& second_;
  std::vector<std::mt19937_64> rngs_;  // [p]: producer p's
  std::atomic<bool> stop_{false};
  std::atomic<std::uint32_t> done_{0};
  std::atomic<std::uint64_t> slow_offers_{0};  // offers past kOfferLimit
  std::vector<std::thread> threads_;
};

// The linger probe: full batches from new lanes must not wait for max_batch_wait.
class Linger {
 public:
  Linger(const RoundPlan& plan, Backend& backend, Ledger& ledger, Violations& violation);

  void run();
  std::uint64_t waited_ms() const { return waited_ms_; }

 private:
  void offer_first();
  void fill_lane(std::uint32_t slot, std::uint64_t count);
  void wait_dispatched();

  const RoundPlan& plan_;
  Backend& backend_;
  Ledger& ledger_;
  Violations& violation_;
  std::atomic<std::uint32_t> lanes_offered_{0};
  std::atomic<bool> release_{false};
  std::uint64_t waited_ms_ = 0;
};

// The reoffer round's error handler offers what it is given again.
class Reoffers {
 public:
  Reoffers(const RoundPlan& plan, Backend& backend, Ledger& ledger);

  // From the error handler, with no lock held, after it recorded the report.
  void offer_again(buffered::ErrorKind kind, std::span<const Event> events);
  std::uint64_t reoffered() const;
  std::chrono::nanoseconds slowest() const;

 private:
  const RoundPlan& plan_;
  Backend& backend_;
  Ledger& ledger_;  // its re-offer slot, under mu_
  mutable std::mutex mu_;
  std::uint64_t reoffered_ = 0;          // guarded by mu_
  std::chrono::nanoseconds slowest_{0};  // guarded by mu_
};

// fork() while the backend runs (and producers offer).
class ForkProbe {
 public:
  ForkProbe(Backend& backend, SecondBackend& second, Violations& violation)
      : backend_(backend), second_(second), violation_(violation) {}

  void fork_and_check(bool use_exit);
  std::uint64_t child_reports() const { return child_reports_; }

 private:
  [[noreturn]] void be_the_child(const int fds[2], bool use_exit);
  bool wait_for(pid_t pid, bool use_exit);  // true if it exited in time
  void read_counts(int fd, bool exited);

  Backend& backend_;
  SecondBackend& second_;
  Violations& violation_;
  std::uint64_t child_reports_ = 0;
};

// Sleeps, sampling Stats::queued_bytes: never above max_buffer_bytes, and 0 without a byte bound.
class QueuedBytesWatch {
 public:
  QueuedBytesWatch(const buffered::BatchConfig& config, Backend& backend, Violations& violation)
      : config_(config), backend_(backend), violation_(violation) {}

  void sleep(std::chrono::microseconds d);

 private:
  const buffered::BatchConfig& config_;
  Backend& backend_;
  Violations& violation_;
  bool reported_ = false;
};

// A full buffer is a full batch: with max_batch_size above buffer_size and a long
// max_batch_wait, blocked producers must still move at full speed.
void check_no_stall(const buffered::BatchConfig& config, Backend& backend,
                    const Producers& producers, std::uint32_t count, Violations& violation);

}  // namespace buffered_stress
