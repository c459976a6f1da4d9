// The config check on its own (detail/config_check.hpp): each field is accepted at its edge and
// refused just past it with a message naming the field; a valid config comes back unchanged;
// max_event_bytes is the smaller byte bound. (config_validation_test.cpp checks the same through
// the constructor.)
#include <gtest/gtest.h>
#include <buffered/detail/config_check.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using buffered::BatchConfig;
using buffered::detail::checked_config;
using namespace std::chrono_literals;

// The message of the std::invalid_argument checked_config throws, or "" if it accepts.
std::string rejection(const BatchConfig& c) {
  try {
    (void)checked_config(c);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

struct Edge {
  const char* field;                      // what the message must name
  std::function<void(BatchConfig&)> ok;   // the last value accepted
  std::function<void(BatchConfig&)> bad;  // the first value refused
};

TEST(ConfigCheck, EachFieldIsAcceptedAtItsEdgeAndRefusedPastItByName) {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<Edge> edges = {
      {"buffer_size", [](BatchConfig& c) { c.buffer_size = 1; },
       [](BatchConfig& c) { c.buffer_size = 0; }},
      {"buffer_size", [](BatchConfig& c) { c.buffer_size = std::size_t{1} << 40; },
       [](BatchConfig& c) { c.buffer_size = (std::size_t{1} << 40) + 1; }},
      {"max_batch_size", [](BatchConfig& c) { c.max_batch_size = 1; },
       [](BatchConfig& c) { c.max_batch_size = 0; }},
      {"max_batch_wait", [](BatchConfig& c) { c.max_batch_wait = 1ns; },
       [](BatchConfig& c) { c.max_batch_wait = 0ns; }},
      {"max_in_flight", [](BatchConfig& c) { c.max_in_flight = 4096; },
       [](BatchConfig& c) { c.max_in_flight = 4097; }},
      {"max_in_flight", [](BatchConfig& c) { c.max_in_flight = 1; },
       [](BatchConfig& c) { c.max_in_flight = 0; }},
      {"throttle.qps",
       [](BatchConfig& c) {
         c.throttle = buffered::Throttle{1e-9, 1};
       },
       [](BatchConfig& c) {
         c.throttle = buffered::Throttle{0.0, 1};
       }},
      {"throttle.qps",
       [](BatchConfig& c) {
         c.throttle = buffered::Throttle{1e300, 1};
       },
       [inf](BatchConfig& c) {
         c.throttle = buffered::Throttle{inf, 1};
       }},
      {"throttle.burst",
       [](BatchConfig& c) {
         c.throttle = buffered::Throttle{1, 1};
       },
       [](BatchConfig& c) {
         c.throttle = buffered::Throttle{1, 0};
       }},
      {"throttle.burst",
       [](BatchConfig& c) {
         c.throttle = buffered::Throttle{1, std::size_t{1} << 53};
       },
       [](BatchConfig& c) {
         c.throttle = buffered::Throttle{1, (std::size_t{1} << 53) + 1};
       }},
      {"retry.max_attempts", [](BatchConfig& c) { c.retry = buffered::Retry{.max_attempts = 1}; },
       [](BatchConfig& c) { c.retry = buffered::Retry{.max_attempts = 0}; }},
      {"retry.initial_backoff",
       [](BatchConfig& c) { c.retry = buffered::Retry{.initial_backoff = 1ns}; },
       [](BatchConfig& c) { c.retry = buffered::Retry{.initial_backoff = 0ns}; }},
      {"retry.multiplier", [](BatchConfig& c) { c.retry = buffered::Retry{.multiplier = 1.0}; },
       [](BatchConfig& c) { c.retry = buffered::Retry{.multiplier = std::nextafter(1.0, 0.0)}; }},
      {"retry.max_backoff",
       [](BatchConfig& c) {
         c.retry = buffered::Retry{.initial_backoff = 5ms, .max_backoff = 5ms};
       },
       [](BatchConfig& c) {
         c.retry = buffered::Retry{.initial_backoff = 5ms, .max_backoff = 4ms};
       }},
      {"retry.jitter", [](BatchConfig& c) { c.retry = buffered::Retry{.jitter = 1.0}; },
       [](BatchConfig& c) { c.retry = buffered::Retry{.jitter = std::nextafter(1.0, 2.0)}; }},
      {"retry.jitter", [](BatchConfig& c) { c.retry = buffered::Retry{.jitter = 0.0}; },
       [](BatchConfig& c) { c.retry = buffered::Retry{.jitter = -0.0001}; }},
      {"overflow", [](BatchConfig& c) { c.overflow = buffered::OverflowPolicy::drop_oldest; },
       [](BatchConfig& c) { c.overflow = static_cast<buffered::OverflowPolicy>(7); }},
      {"max_batch_bytes",
       [](BatchConfig& c) {
         c.max_buffer_bytes = 100;
         c.max_batch_bytes = 100;
       },
       [](BatchConfig& c) {
         c.max_buffer_bytes = 100;
         c.max_batch_bytes = 101;
       }},
  };
  for (const Edge& e : edges) {
    BatchConfig ok;
    e.ok(ok);
    EXPECT_EQ(rejection(ok), "") << e.field;
    BatchConfig bad;
    e.bad(bad);
    const std::string message = rejection(bad);
    EXPECT_NE(message.find(std::string("BatchConfig::") + e.field), std::string::npos)
        << e.field << ": " << message;
  }
}

TEST(ConfigCheck, AValidConfigComesBackUnchanged) {
  BatchConfig c;
  c.buffer_size = 123;
  c.max_batch_size = 1;
  c.max_batch_wait = 0ns;  // allowed: no batching, so no linger
  c.retry = buffered::Retry{.max_attempts = 3, .jitter = 0.5};
  c.max_batch_bytes = 64;  // a batch bound alone needs no buffer bound
  const BatchConfig out = checked_config(c);
  EXPECT_EQ(out.buffer_size, 123u);
  EXPECT_EQ(out.max_batch_wait, 0ns);
  ASSERT_TRUE(out.retry.has_value());
  EXPECT_EQ(out.retry->max_attempts, 3u);
  EXPECT_EQ(out.retry->jitter, 0.5);
  EXPECT_EQ(out.max_batch_bytes, 64u);
}

TEST(ConfigCheck, TheLargestEventIsTheSmallerByteBound) {
  BatchConfig c;
  EXPECT_EQ(buffered::detail::max_event_bytes(c), ~std::uint64_t{0}) << "no bound: any size";
  c.max_buffer_bytes = 1000;
  EXPECT_EQ(buffered::detail::max_event_bytes(c), 1000u);
  c.max_batch_bytes = 300;
  EXPECT_EQ(buffered::detail::max_event_bytes(c), 300u);
  c.max_buffer_bytes = 0;
  EXPECT_EQ(buffered::detail::max_event_bytes(c), 300u);
}

}  // namespace
