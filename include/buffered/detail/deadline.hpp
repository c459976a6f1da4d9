// The clock every wait uses, and turning a timeout into a deadline without overflow.
#pragma once

#include <chrono>
#include <optional>

namespace buffered::detail {

using SteadyClock = std::chrono::steady_clock;

// nullopt means "no deadline": nanoseconds::max(), or anything too far away to represent.
// A timeout <= 0 is a deadline of now.
inline std::optional<SteadyClock::time_point> deadline_after(SteadyClock::time_point now,
                                                             std::chrono::nanoseconds timeout) {
  if (timeout <= std::chrono::nanoseconds::zero()) return now;
  const auto room = SteadyClock::time_point::max() - now;
  if (timeout >= room) return std::nullopt;
  return now + std::chrono::duration_cast<SteadyClock::duration>(timeout);
}

}  // namespace buffered::detail
