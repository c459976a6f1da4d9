// TokenBucket: deterministic with a hand-driven clock, plus the blocking calls on a real one.
#include <buffered/token_bucket.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

struct ManualClock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<ManualClock>;
  [[maybe_unused]] static constexpr bool is_steady = true;  // a Clock has it; unused here
  static inline time_point current{};
  static time_point now() noexcept { return current; }
  static void advance(duration d) { current += d; }
};

class TokenBucketManual : public ::testing::Test {
 protected:
  void SetUp() override { ManualClock::current = ManualClock::time_point{} + 1h; }
};

TEST_F(TokenBucketManual, StartsFullWithBurstTokens) {
  buffered::TokenBucket<ManualClock> bucket(1.0, 3);
  EXPECT_TRUE(bucket.try_accept());
  EXPECT_TRUE(bucket.try_accept());
  EXPECT_TRUE(bucket.try_accept());
  EXPECT_FALSE(bucket.try_accept());
}

TEST_F(TokenBucketManual, RefillsAtQps) {
  buffered::TokenBucket<ManualClock> bucket(10.0, 1);  // one token per 100 ms
  EXPECT_TRUE(bucket.try_accept());
  ManualClock::advance(99ms);
  EXPECT_FALSE(bucket.try_accept());
  ManualClock::advance(1ms);
  EXPECT_TRUE(bucket.try_accept());
  EXPECT_FALSE(bucket.try_accept());
}

TEST_F(TokenBucketManual, NeverHoldsMoreThanBurst) {
  buffered::TokenBucket<ManualClock> bucket(100.0, 2);
  ManualClock::advance(1h);
  EXPECT_TRUE(bucket.try_accept());
  EXPECT_TRUE(bucket.try_accept());
  EXPECT_FALSE(bucket.try_accept());
}

TEST_F(TokenBucketManual, SaysHowLongUntilTheNextToken) {
  buffered::TokenBucket<ManualClock> bucket(4.0, 1);  // 250 ms per token
  EXPECT_EQ(bucket.try_accept_or_wait(), ManualClock::duration::zero());
  EXPECT_EQ(bucket.try_accept_or_wait(), 250ms);
  ManualClock::advance(100ms);
  EXPECT_EQ(bucket.try_accept_or_wait(), 150ms);
  ManualClock::advance(150ms);
  EXPECT_EQ(bucket.try_accept_or_wait(), ManualClock::duration::zero());
}

TEST_F(TokenBucketManual, ClockSteppingBackAddsNothing) {
  buffered::TokenBucket<ManualClock> bucket(1.0, 1);
  EXPECT_TRUE(bucket.try_accept());
  ManualClock::advance(-10s);
  EXPECT_FALSE(bucket.try_accept());
}

TEST_F(TokenBucketManual, AcceptUntilGivesUpAtOnceWhenNoTokenCanComeInTime) {
  buffered::TokenBucket<ManualClock> bucket(1.0, 1);
  EXPECT_TRUE(bucket.accept_until(ManualClock::now()));  // a token is there: no wait needed
  EXPECT_FALSE(bucket.accept_until(ManualClock::now() + 500ms));  // next one is 1 s away
}

TEST_F(TokenBucketManual, ATinyRateWaitsLongWithoutOverflow) {
  buffered::TokenBucket<ManualClock> bucket(1e-12, 1);  // one token per 31,700 years
  EXPECT_TRUE(bucket.try_accept());
  const auto wait = bucket.try_accept_or_wait();
  EXPECT_GT(wait, 24h * 365 * 30);  // a long, positive wait (capped), not an overflowed one
  ManualClock::advance(24h * 365);
  EXPECT_GT(bucket.try_accept_or_wait(), 24h * 365 * 29);
  EXPECT_FALSE(bucket.accept_until(ManualClock::now() + 24h));  // gives up at once
}

TEST_F(TokenBucketManual, TheLargestBurstStillCountsSingleTokens) {
  constexpr std::size_t kMax = std::size_t{1} << 53;
  buffered::TokenBucket<ManualClock> bucket(1.0, kMax);
  EXPECT_EQ(bucket.burst(), kMax);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(bucket.try_accept());
  ManualClock::advance(1h);  // refills back to the burst, no further
  EXPECT_EQ(bucket.burst(), kMax);
  EXPECT_TRUE(bucket.try_accept());
}

TEST(TokenBucket, RejectsInvalidArguments) {
  EXPECT_THROW(buffered::TokenBucket<>(0.0, 1), std::invalid_argument);
  EXPECT_THROW(buffered::TokenBucket<>(-1.0, 1), std::invalid_argument);
  EXPECT_THROW(buffered::TokenBucket<>(std::numeric_limits<double>::quiet_NaN(), 1),
               std::invalid_argument);
  EXPECT_THROW(buffered::TokenBucket<>(std::numeric_limits<double>::infinity(), 1),
               std::invalid_argument);
  EXPECT_THROW(buffered::TokenBucket<>(1.0, 0), std::invalid_argument);
  // Beyond 2^53 a double cannot count single tokens: refused, not silently wrong.
  EXPECT_THROW(buffered::TokenBucket<>(1.0, (std::size_t{1} << 53) + 1), std::invalid_argument);
  EXPECT_THROW(buffered::TokenBucket<>(1.0, std::numeric_limits<std::size_t>::max()),
               std::invalid_argument);
}

TEST(TokenBucket, AcceptBlocksUntilATokenIsDue) {
  buffered::TokenBucket<> bucket(20.0, 1);  // 50 ms per token
  bucket.accept();                          // the initial token
  const auto start = std::chrono::steady_clock::now();
  bucket.accept();
  bucket.accept();
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, 95ms);  // not before: two refills
  EXPECT_LT(waited, 10s);   // by: loose
}

TEST(TokenBucket, AcceptUntilWaitsForADueToken) {
  buffered::TokenBucket<> bucket(10.0, 1);
  ASSERT_TRUE(bucket.try_accept());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(bucket.accept_until(start + 10s));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 95ms);
}

TEST(TokenBucket, ThreadSafeTokensAreNeverHandedOutTwice) {
  buffered::TokenBucket<> bucket(0.001, 100);  // effectively no refill during the test
  std::atomic<int> taken{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) {
        if (bucket.try_accept()) ++taken;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(taken.load(), 100);
}

}  // namespace
