// Invalid configurations are refused by the constructor, naming the field.
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "support.hpp"

namespace {

using namespace buffered_test;
struct NullSink {
  void process_events(std::span<Event>) {}
};
using Backend = buffered::BufferedBackend<Event, NullSink>;

// Returns the message of the std::invalid_argument the constructor throws, or "" if none.
std::string rejection(const buffered::BatchConfig& config) {
  try {
    Backend backend(NullSink{}, config);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigValidation, DefaultsAreValid) {
  EXPECT_EQ(rejection({}), "");
  const buffered::BatchConfig c;
  EXPECT_EQ(c.buffer_size, 10000u);
  EXPECT_EQ(c.max_batch_size, 400u);
  EXPECT_EQ(c.max_batch_wait, std::chrono::seconds(30));
  EXPECT_FALSE(c.throttle.has_value());
  EXPECT_FALSE(c.async_delegate);
  EXPECT_EQ(c.max_in_flight, 4u);
  EXPECT_EQ(c.overflow, buffered::OverflowPolicy::drop_newest);
  EXPECT_EQ(c.block_timeout, std::chrono::nanoseconds::max());
}

TEST(ConfigValidation, BufferSizeZero) {
  buffered::BatchConfig c;
  c.buffer_size = 0;
  EXPECT_NE(rejection(c).find("buffer_size"), std::string::npos);
}

TEST(ConfigValidation, MaxBatchSizeZero) {
  buffered::BatchConfig c;
  c.max_batch_size = 0;
  EXPECT_NE(rejection(c).find("max_batch_size"), std::string::npos);
}

TEST(ConfigValidation, NonPositiveMaxBatchWaitWithBatching) {
  buffered::BatchConfig c;
  c.max_batch_wait = std::chrono::nanoseconds::zero();
  EXPECT_NE(rejection(c).find("max_batch_wait"), std::string::npos);
  c.max_batch_wait = std::chrono::milliseconds(-5);
  EXPECT_NE(rejection(c).find("max_batch_wait"), std::string::npos);
}

TEST(ConfigValidation, ZeroMaxBatchWaitIsFineWithoutBatching) {
  buffered::BatchConfig c;
  c.max_batch_size = 1;
  c.max_batch_wait = std::chrono::nanoseconds::zero();
  EXPECT_EQ(rejection(c), "");
}

TEST(ConfigValidation, MaxInFlightZero) {
  buffered::BatchConfig c;
  c.max_in_flight = 0;
  EXPECT_NE(rejection(c).find("max_in_flight"), std::string::npos);
}

TEST(ConfigValidation, ThrottleQpsAndBurst) {
  buffered::BatchConfig c;
  c.throttle = buffered::Throttle{0.0, 1};
  EXPECT_NE(rejection(c).find("throttle.qps"), std::string::npos);
  c.throttle = buffered::Throttle{-3.0, 1};
  EXPECT_NE(rejection(c).find("throttle.qps"), std::string::npos);
  c.throttle = buffered::Throttle{10.0, 0};
  EXPECT_NE(rejection(c).find("throttle.burst"), std::string::npos);
  c.throttle = buffered::Throttle{10.0, std::numeric_limits<std::size_t>::max()};
  EXPECT_NE(rejection(c).find("throttle.burst"), std::string::npos);
  c.throttle = buffered::Throttle{10.0, 15};
  EXPECT_EQ(rejection(c), "");
  c.throttle = buffered::Throttle{1e-12, 1};  // slow, but it works (see throttle_test)
  EXPECT_EQ(rejection(c), "");
}

TEST(ConfigValidation, MaxInFlightBeyondWhatThreadsCanBe) {
  buffered::BatchConfig c;
  c.async_delegate = true;
  c.max_in_flight = std::numeric_limits<std::size_t>::max();  // + 1 would wrap
  EXPECT_NE(rejection(c).find("max_in_flight"), std::string::npos);
  c.max_in_flight = 4097;
  EXPECT_NE(rejection(c).find("max_in_flight"), std::string::npos);
  c.max_in_flight = 4096;
  EXPECT_EQ(rejection(c), "");
}

TEST(ConfigValidation, MaxBatchSizeAboveTheBufferIsAcceptedAndClamped) {
  buffered::BatchConfig c;
  c.buffer_size = 16;
  c.max_batch_size = std::numeric_limits<std::size_t>::max();
  EXPECT_EQ(rejection(c), "");  // batches hold at most buffer_size (batch_larger_than_buffer_test)
}

TEST(ConfigValidation, RetryDefaults) {
  const buffered::BatchConfig c;
  EXPECT_FALSE(c.retry.has_value());  // no retry unless asked for
  const buffered::Retry r;
  EXPECT_EQ(r.max_attempts, 5u);
  EXPECT_EQ(r.initial_backoff, std::chrono::milliseconds(100));
  EXPECT_EQ(r.max_backoff, std::chrono::seconds(30));
  EXPECT_DOUBLE_EQ(r.multiplier, 2.0);
  EXPECT_DOUBLE_EQ(r.jitter, 0.2);
  buffered::BatchConfig with_retry;
  with_retry.retry = buffered::Retry{};
  EXPECT_EQ(rejection(with_retry), "");
}

// The message of the constructor's rejection of `c` with `retry` set to `r`.
std::string retry_rejection(const buffered::Retry& r) {
  buffered::BatchConfig c;
  c.retry = r;
  return rejection(c);
}

TEST(ConfigValidation, RetryMaxAttemptsZero) {
  buffered::Retry r;
  r.max_attempts = 0;
  EXPECT_NE(retry_rejection(r).find("retry.max_attempts"), std::string::npos);
  r.max_attempts = 1;  // one call, no retry: allowed
  EXPECT_EQ(retry_rejection(r), "");
}

TEST(ConfigValidation, RetryInitialBackoffNotPositive) {
  buffered::Retry r;
  r.initial_backoff = std::chrono::nanoseconds::zero();
  EXPECT_NE(retry_rejection(r).find("retry.initial_backoff"), std::string::npos);
  r.initial_backoff = std::chrono::milliseconds(-1);
  EXPECT_NE(retry_rejection(r).find("retry.initial_backoff"), std::string::npos);
  r.initial_backoff = std::chrono::nanoseconds::min();
  EXPECT_NE(retry_rejection(r).find("retry.initial_backoff"), std::string::npos);
  r.initial_backoff = std::chrono::nanoseconds(1);
  EXPECT_EQ(retry_rejection(r), "");
}

TEST(ConfigValidation, RetryMultiplierBelowOneOrNotFinite) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (const double m : {0.999, 0.5, 0.0, -2.0, nan, inf, -inf}) {
    buffered::Retry r;
    r.multiplier = m;
    EXPECT_NE(retry_rejection(r).find("retry.multiplier"), std::string::npos) << m;
  }
  buffered::Retry r;
  r.multiplier = 1.0;  // a constant backoff
  EXPECT_EQ(retry_rejection(r), "");
  r.multiplier = 1000.0;
  EXPECT_EQ(retry_rejection(r), "");
}

TEST(ConfigValidation, RetryMaxBackoffBelowInitialBackoff) {
  buffered::Retry r;
  r.initial_backoff = std::chrono::milliseconds(100);
  r.max_backoff = std::chrono::milliseconds(99);
  EXPECT_NE(retry_rejection(r).find("retry.max_backoff"), std::string::npos);
  r.initial_backoff = std::chrono::minutes(1);  // above the default max_backoff of 30 s
  r.max_backoff = buffered::Retry{}.max_backoff;
  EXPECT_NE(retry_rejection(r).find("retry.max_backoff"), std::string::npos);
  r.max_backoff = std::chrono::nanoseconds::zero();
  EXPECT_NE(retry_rejection(r).find("retry.max_backoff"), std::string::npos);
  r.max_backoff = r.initial_backoff;  // equal: a constant backoff
  EXPECT_EQ(retry_rejection(r), "");
  r.max_backoff = std::chrono::nanoseconds::max();
  EXPECT_EQ(retry_rejection(r), "");
}

TEST(ConfigValidation, RetryJitterOutsideZeroToOne) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (const double j : {-0.001, -1.0, 1.001, 2.0, nan, inf, -inf}) {
    buffered::Retry r;
    r.jitter = j;
    EXPECT_NE(retry_rejection(r).find("retry.jitter"), std::string::npos) << j;
  }
  for (const double j : {0.0, 0.5, 1.0}) {
    buffered::Retry r;
    r.jitter = j;
    EXPECT_EQ(retry_rejection(r), "") << j;
  }
}

TEST(ConfigValidation, MaxBatchBytesAboveMaxBufferBytes) {
  buffered::BatchConfig c;
  c.max_buffer_bytes = 1000;
  c.max_batch_bytes = 1001;
  EXPECT_NE(rejection(c).find("max_batch_bytes"), std::string::npos);
  c.max_buffer_bytes = 1;
  c.max_batch_bytes = std::numeric_limits<std::size_t>::max();
  EXPECT_NE(rejection(c).find("max_batch_bytes"), std::string::npos);
}

TEST(ConfigValidation, ByteBoundsThatAreValid) {
  EXPECT_EQ(buffered::BatchConfig{}.max_buffer_bytes, 0u);  // off unless asked for
  EXPECT_EQ(buffered::BatchConfig{}.max_batch_bytes, 0u);
  buffered::BatchConfig c;
  c.max_batch_bytes = 1000;  // alone: no buffer byte bound to stay under
  EXPECT_EQ(rejection(c), "");
  c.max_batch_bytes = std::numeric_limits<std::size_t>::max();
  EXPECT_EQ(rejection(c), "");
  c.max_buffer_bytes = c.max_batch_bytes;  // equal
  EXPECT_EQ(rejection(c), "");
  c.max_buffer_bytes = 1000;
  c.max_batch_bytes = 1000;
  EXPECT_EQ(rejection(c), "");
  c.max_batch_bytes = 1;
  EXPECT_EQ(rejection(c), "");
  c.max_batch_bytes = 0;  // max_buffer_bytes alone
  EXPECT_EQ(rejection(c), "");
}

TEST(ConfigValidation, DropOldestIsValid) {
  buffered::BatchConfig c;
  c.overflow = buffered::OverflowPolicy::drop_oldest;
  EXPECT_EQ(rejection(c), "");
  c.max_buffer_bytes = 4096;
  c.max_batch_bytes = 1024;
  EXPECT_EQ(rejection(c), "");
}

TEST(ConfigValidation, ConfigIsKeptAsGiven) {
  buffered::BatchConfig c;
  c.buffer_size = 7;
  c.max_batch_size = 3;
  Backend backend(NullSink{}, c);
  EXPECT_EQ(backend.config().buffer_size, 7u);
  EXPECT_EQ(backend.config().max_batch_size, 3u);
}

}  // namespace
