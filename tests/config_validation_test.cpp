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

TEST(ConfigValidation, ConfigIsKeptAsGiven) {
  buffered::BatchConfig c;
  c.buffer_size = 7;
  c.max_batch_size = 3;
  Backend backend(NullSink{}, c);
  EXPECT_EQ(backend.config().buffer_size, 7u);
  EXPECT_EQ(backend.config().max_batch_size, 3u);
}

}  // namespace
