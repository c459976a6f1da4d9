// A round's random description. The overflow policy is drop_newest, block or drop_oldest, a
// third each. About one round in five has max_batch_size above buffer_size (up to SIZE_MAX): a
// batch holds at most buffer_size events and a full buffer must go at once, not wait for
// max_batch_wait. About three rounds in ten set BatchConfig::max_buffer_bytes and/or
// max_batch_bytes, tiny (some events alone are too large), binding long before buffer_size or
// max_batch_size, or loose, and give events variable byte sizes (the payload's length plus a
// spread derived from the id, so the checker can recompute them; in some rounds no byte_size
// function: sizeof(Event)); a few of them first try max_batch_bytes > max_buffer_bytes, which the
// constructor must refuse, naming max_batch_bytes. Some rounds race a shutdown from another
// thread against a slow delegate.run(), or have delegate.run() call flush() and stats() on its
// own backend.
//
// Every draw is made here, in one order: the same seed makes the same rounds.
#include <algorithm>
#include <limits>
#include <random>

#include "stress.hpp"

namespace buffered_stress {
namespace {

// The byte sizes of a round's ids.
struct SizeRange {
  std::size_t smallest = std::numeric_limits<std::size_t>::max(), largest = 0, mean = 1;
};

SizeRange size_range(const ByteSizes& sizes, std::uint32_t producers, std::uint32_t per_producer) {
  SizeRange range;
  std::size_t total = 0;
  for (std::uint32_t p = 0; p < producers; ++p) {
    for (std::uint32_t s = 0; s < per_producer; ++s) {
      const std::size_t bytes = sizes.of(make_id(p, s));
      range.smallest = std::min(range.smallest, bytes);
      range.largest = std::max(range.largest, bytes);
      total += bytes;
    }
  }
  range.mean = std::max<std::size_t>(1, total / (std::size_t{producers} * per_producer));
  return range;
}

class RoundDice {
 public:
  explicit RoundDice(std::uint64_t seed) : rng_(seed), shape_rng_(seed ^ 0x5851f42d4c957f2dull) {}

  RoundPlan draw(std::uint64_t seed) {
    RoundPlan plan;
    plan.seed = seed;
    plan.config = random_config();
    plan.retry = random_retry(plan.config);
    plan.form = static_cast<int>(pick(0, 5));
    draw_load(plan);
    draw_run(plan);
    draw_faults(plan);
    draw_probes(plan);
    draw_shapes(plan);
    draw_seeds(plan);
    // In a round without byte bounds sometimes a byte_size function anyway, which must then
    // never be called.
    plan.with_byte_size = plan.byte_round ? plan.sizes.custom : chance(0.5);
    if (plan.try_invalid_bytes) plan.invalid_excess = pick(1, 1000);
    return plan;
  }

 private:
  std::uint32_t pick(std::uint32_t lo, std::uint32_t hi) {
    return lo + static_cast<std::uint32_t>(rng_() % (hi - lo + 1));
  }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  std::uint32_t shape_pick(std::uint32_t lo, std::uint32_t hi) {
    return lo + static_cast<std::uint32_t>(shape_rng_() % (hi - lo + 1));
  }
  bool shape_chance(double p) {
    return std::uniform_real_distribution<double>(0, 1)(shape_rng_) < p;
  }

  buffered::BatchConfig random_config();
  bool random_byte_bounds(buffered::BatchConfig& c, ByteSizes& sizes, std::uint32_t producers,
                          std::uint32_t per_producer);
  std::size_t random_buffer_bytes(const buffered::BatchConfig& c, const SizeRange& range);
  std::size_t random_batch_bytes(const buffered::BatchConfig& c, const SizeRange& range);
  std::size_t tiny(const SizeRange& range) {
    return static_cast<std::size_t>(pick(static_cast<std::uint32_t>(range.smallest),
                                         static_cast<std::uint32_t>(range.largest)));
  }
  std::size_t upto(std::size_t n) {
    return static_cast<std::size_t>(pick(
        1, static_cast<std::uint32_t>(std::max<std::size_t>(1, std::min<std::size_t>(n, 100000)))));
  }
  RetryPlan random_retry(buffered::BatchConfig& c);
  void draw_load(RoundPlan& plan);
  void draw_run(RoundPlan& plan);
  void draw_faults(RoundPlan& plan);
  void draw_probes(RoundPlan& plan);
  void draw_shapes(RoundPlan& plan);
  void draw_seeds(RoundPlan& plan);

  std::mt19937_64 rng_;
  std::mt19937_64 shape_rng_;  // the shapes': a round draws the rest as it would without them
};

buffered::BatchConfig RoundDice::random_config() {
  buffered::BatchConfig c;
  c.buffer_size = chance(0.3) ? pick(1, 8) : pick(9, 2000);
  c.max_batch_size = chance(0.2) ? 1 : pick(2, 64);
  if (chance(0.2)) {
    // Larger than the buffer: a batch then holds at most buffer_size events.
    switch (pick(0, 3)) {
      case 0:
        c.max_batch_size = c.buffer_size + 1;
        break;
      case 1:
        c.max_batch_size = c.buffer_size + pick(2, 5000);
        break;
      case 2:
        c.max_batch_size = std::numeric_limits<std::size_t>::max();
        break;
      default:
        c.max_batch_size = std::numeric_limits<std::size_t>::max() - pick(1, 1000);
        break;
    }
  }
  c.max_batch_wait = std::chrono::microseconds(pick(50, 20000));
  c.async_delegate = chance(0.5);
  c.max_in_flight = pick(1, 4);
  const buffered::OverflowPolicy policies[] = {buffered::OverflowPolicy::drop_newest,
                                               buffered::OverflowPolicy::block,
                                               buffered::OverflowPolicy::drop_oldest};
  c.overflow = policies[pick(0, 2)];
  c.block_timeout = chance(0.5)
                        ? std::chrono::nanoseconds::max()
                        : std::chrono::nanoseconds(std::chrono::microseconds(pick(0, 3000)));
  // Fast enough that an unbounded drain still ends within a second or so.
  if (chance(0.15))
    c.throttle = buffered::Throttle{static_cast<double>(pick(4000, 50000)), pick(1, 20)};
  return c;
}

// Sets max_buffer_bytes and/or max_batch_bytes against the byte sizes of the round's ids, and
// the sizes: tiny bounds (some events alone are too large), ones that bind long before the
// event counts, loose ones (up to SIZE_MAX). Returns whether the round first tries a
// max_batch_bytes above max_buffer_bytes.
bool RoundDice::random_byte_bounds(buffered::BatchConfig& c, ByteSizes& sizes,
                                   std::uint32_t producers, std::uint32_t per_producer) {
  sizes.custom = !chance(0.15);
  const std::size_t spreads[] = {1, 8, 64, 1000};
  sizes.spread = spreads[pick(0, 3)];
  const SizeRange range = size_range(sizes, producers, per_producer);
  const bool buffer_bound = chance(0.75);
  const bool batch_bound = !buffer_bound || chance(0.5);
  if (buffer_bound) c.max_buffer_bytes = random_buffer_bytes(c, range);
  if (batch_bound) {
    c.max_batch_bytes = random_batch_bytes(c, range);
    if (c.max_buffer_bytes != 0)
      c.max_batch_bytes = std::min(c.max_batch_bytes, c.max_buffer_bytes);
  }
  return c.max_buffer_bytes != 0 && c.max_batch_bytes != 0 &&
         c.max_buffer_bytes < std::numeric_limits<std::size_t>::max() - 1000 && chance(0.2);
}

std::size_t RoundDice::random_buffer_bytes(const buffered::BatchConfig& c, const SizeRange& range) {
  switch (pick(0, 4)) {
    case 0:
      return tiny(range);
    case 1:  // binds long before buffer_size
      return range.mean * upto(std::min<std::size_t>(c.buffer_size, 32));
    case 2: {
      const std::size_t events = upto(c.buffer_size);
      return range.mean * events + upto(range.largest);
    }
    case 3:  // buffer_size binds first
      return range.largest * c.buffer_size + upto(range.largest);
    default:
      return std::numeric_limits<std::size_t>::max() - upto(1000);
  }
}

std::size_t RoundDice::random_batch_bytes(const buffered::BatchConfig& c, const SizeRange& range) {
  const std::size_t batch_events = std::min(c.max_batch_size, c.buffer_size);
  switch (pick(0, 3)) {
    case 0:
      return tiny(range);
    case 1:  // binds long before max_batch_size
      return range.mean * upto(std::min<std::size_t>(batch_events, 16));
    case 2: {
      const std::size_t events = upto(batch_events);
      return range.mean * events + upto(range.largest);
    }
    default:
      return c.max_buffer_bytes != 0 ? c.max_buffer_bytes : std::numeric_limits<std::size_t>::max();
  }
}

// Half the rounds retry. Short backoffs (microseconds) keep rounds short; long ones (ms) make
// a deadline shutdown land while batches wait. Some rounds without retry fail too: permanent
// errors and Outcome::retry are then failures like any other.
RetryPlan RoundDice::random_retry(buffered::BatchConfig& c) {
  RetryPlan plan;
  const double rates[] = {0.0, 0.05, 0.2, 0.4};
  plan.fail_rate = rates[pick(0, 3)];
  plan.permanent_share =
      chance(0.3) ? 0.0 : 0.1 + 0.3 * std::uniform_real_distribution<double>(0, 1)(rng_);
  plan.after_share = chance(0.5) ? 0.0 : 0.5;
  if (!chance(0.5)) {
    plan.after_max = std::chrono::microseconds(pick(1, 300));
    return plan;
  }
  buffered::Retry r;
  r.max_attempts = pick(1, 6);
  const double multipliers[] = {1.0, 1.5, 2.0, 3.0};
  r.multiplier = multipliers[pick(0, 3)];
  const double jitters[] = {0.0, 0.1, 0.5, 1.0};
  r.jitter = jitters[pick(0, 3)];
  plan.long_backoff = chance(0.2);
  if (plan.long_backoff) {
    r.initial_backoff = std::chrono::microseconds(pick(1000, 10000));
    r.max_backoff = r.initial_backoff + std::chrono::microseconds(pick(0, 20000));
    r.max_attempts = pick(2, 6);
    plan.fail_rate = 0.5;
    plan.after_max = std::chrono::microseconds(pick(1000, 20000));
  } else {
    r.initial_backoff = std::chrono::microseconds(pick(1, 200));
    r.max_backoff = r.initial_backoff + std::chrono::microseconds(pick(0, 2000));
    plan.after_max = std::chrono::microseconds(pick(1, 500));
  }
  c.retry = r;
  return plan;
}

// The producers, and byte bounds (and event sizes) against their ids.
void RoundDice::draw_load(RoundPlan& plan) {
  plan.producers = pick(1, 4);
  plan.per_producer = pick(50, 3000);
  plan.byte_round = chance(0.3);
  if (plan.byte_round) {
    plan.try_invalid_bytes =
        random_byte_bounds(plan.config, plan.sizes, plan.producers, plan.per_producer);
  }
}

void RoundDice::draw_run(RoundPlan& plan) {
  plan.run_late = chance(0.1);
  plan.never_run = chance(0.03);
  // Not the destructor alone for a backend that never runs (it shuts down after the producers
  // finish, and its blocked producers would wait for a shutdown that only comes after them).
  // Long backoffs: a deadline shutdown, so that it lands while batches wait to retry (and an
  // unbounded drain would take long).
  plan.shutdown_style = plan.retry.long_backoff ? static_cast<int>(pick(1, 2))
                                                : static_cast<int>(pick(0, plan.never_run ? 2 : 3));
  plan.shutdown_after = std::chrono::microseconds(pick(0, 30000));
  plan.deadline = std::chrono::microseconds(pick(0, 20000));
}

void RoundDice::draw_faults(RoundPlan& plan) {
  plan.fault_rate = chance(0.5) ? 0.0 : 0.1;
  // One delegate call outlives any shutdown deadline: pending, and flush() after shutdown.
  if (plan.shutdown_style == 1 || plan.shutdown_style == 2) {
    if (chance(0.05)) plan.stuck_call = pick(0, 8);
  }
  plan.fault_round = chance(0.2);
  FaultPlan& f = plan.faults;
  if (plan.fault_round) {
    f.construct = chance(0.5);
    f.run = chance(0.5);
    f.offers = chance(0.6);
    f.flush = chance(0.5);
    f.shutdown = chance(0.5);
    f.library_threads = chance(0.5);
    f.delegate_run_throws = chance(0.2);
  }
}

void RoundDice::draw_probes(RoundPlan& plan) {
  buffered::BatchConfig& c = plan.config;
  plan.big_batch = c.max_batch_size > c.buffer_size;
  // A full buffer is a full batch: with a long max_batch_wait, blocked producers must still
  // move at full speed. (Not with a buffer bound by bytes: a buffer full by bytes need not be a
  // full batch.)
  plan.stall_probe = plan.big_batch && !plan.run_late && !plan.never_run && !c.throttle &&
                     c.max_buffer_bytes == 0 && plan.retry.fail_rate == 0 &&
                     c.overflow == buffered::OverflowPolicy::block &&
                     c.block_timeout == std::chrono::nanoseconds::max() && chance(0.5);
  if (plan.stall_probe) c.max_batch_wait = 5s;
  plan.race_run = plan.run_late && !plan.never_run && chance(0.3);
  if (plan.race_run) plan.run_nap = std::chrono::microseconds(pick(0, 3000));
  plan.race_after = std::chrono::microseconds(pick(0, 4000));
  plan.race_deadline = plan.retry.long_backoff || chance(0.5);
  plan.reenter_run = chance(0.2);
}

void RoundDice::draw_shapes(RoundPlan& plan) {
  buffered::BatchConfig& c = plan.config;
  plan.exit_round = !plan.fault_round && shape_chance(0.15);
  plan.second_mode = plan.exit_round ? static_cast<int>(shape_pick(0, 2)) : 0;
  plan.linger_probe = !plan.run_late && !plan.never_run && !plan.stall_probe && !plan.big_batch &&
                      !plan.byte_round && !c.throttle && !plan.retry.long_backoff &&
                      !plan.fault_round && shape_chance(0.1);
  plan.linger_batches = shape_pick(1, 2);
  plan.linger_lanes = shape_pick(2 * plan.linger_batches, 6);
  if (plan.linger_probe) {
    c.max_batch_size = shape_pick(8, 64);
    c.buffer_size = std::max<std::size_t>(c.buffer_size, 4 * c.max_batch_size + 16);
    c.max_batch_wait = std::chrono::seconds(shape_pick(2, 4));
  }
  // Evicted events (reported on the producer's thread, inside its offer), and with
  // reoffer_others every other kind too (delegate_failed and abandoned on the library's threads
  // or a shutdown's caller).
  plan.reoffer_round = !plan.fault_round && !plan.stall_probe && shape_chance(0.15);
  plan.reoffer_others = plan.reoffer_round && shape_chance(0.5);
  plan.reoffer_generations = shape_pick(1, 3);
  if (plan.reoffer_round) c.overflow = buffered::OverflowPolicy::drop_oldest;
  plan.fork_probe = kForkSupported && !plan.run_late && !plan.never_run && shape_chance(0.08);
  plan.fork_exit = shape_chance(0.5);
  plan.shapes = (plan.exit_round ? kExitOffers : 0u) | (plan.linger_probe ? kLinger : 0u) |
                (plan.reoffer_round ? kReoffer : 0u) | (plan.fork_probe ? kFork : 0u);
  plan.linger_slot = plan.producers;
  plan.reoffer_slot = plan.producers + 1 + plan.linger_lanes;
  plan.id_slots = plan.reoffer_slot + 1;
  plan.one_thread = plan.producers == 1 && !plan.linger_probe && !plan.reoffer_others;
}

void RoundDice::draw_seeds(RoundPlan& plan) {
  plan.sink_seed = rng_();
  for (std::uint32_t p = 0; p < plan.producers; ++p) plan.producer_seeds.push_back(rng_());
  for (std::uint32_t p = 0; p < plan.producers; ++p) plan.exit_seeds.push_back(shape_rng_());
}

}  // namespace

RoundPlan draw_round(std::uint64_t seed) { return RoundDice(seed).draw(seed); }

}  // namespace buffered_stress
