#include <algorithm>
#include <string>
#include <thread>

#include "workloads.hpp"

namespace buffered_stress {

void QueuedBytesWatch::sleep(std::chrono::microseconds d) {
  const auto until = Clock::now() + d;
  for (;;) {
    const buffered::Stats s = backend_.stats();
    const bool bounded = config_.max_buffer_bytes != 0 || config_.max_batch_bytes != 0;
    if (!reported_ &&
        (bounded ? config_.max_buffer_bytes != 0 && s.queued_bytes > config_.max_buffer_bytes
                 : s.queued_bytes != 0)) {
      reported_ = true;
      violation_("Stats::queued_bytes " + std::to_string(s.queued_bytes) +
                 " while the round ran, max_buffer_bytes " +
                 std::to_string(config_.max_buffer_bytes));
    }
    const auto now = Clock::now();
    if (now >= until) return;
    std::this_thread::sleep_for(std::min<Clock::duration>(until - now, 300us));
  }
}

// Accepted events beyond two buffers' worth mean full batches went out without waiting. Probed
// before the shutdown (producers do not flush in this round).
void check_no_stall(const buffered::BatchConfig& config, Backend& backend,
                    const Producers& producers, std::uint32_t count, Violations& violation) {
  const std::uint64_t want = 2 * config.buffer_size + 1;
  const auto until = Clock::now() + 1500ms;
  while (backend.stats().accepted < want && producers.done() < count && Clock::now() < until) {
    std::this_thread::sleep_for(1ms);
  }
  if (backend.stats().accepted < want && producers.done() < count) {
    violation("max_batch_size " + std::to_string(config.max_batch_size) + " > buffer_size " +
              std::to_string(config.buffer_size) + ": producers stalled (accepted " +
              std::to_string(backend.stats().accepted) + ", batches " +
              std::to_string(backend.stats().batches) + " after 1.5 s)");
  }
}

}  // namespace buffered_stress
