// Queue positions: 63-bit counters that wrap, with bit 63 of the tail used as the "closed" flag.
#pragma once

#include <cstdint>

namespace buffered::detail {

inline constexpr std::uint64_t kClosedBit = std::uint64_t{1} << 63;
inline constexpr std::uint64_t kPositionMask = kClosedBit - 1;

constexpr std::uint64_t position_add(std::uint64_t position, std::uint64_t n) noexcept {
  return (position + n) & kPositionMask;
}

// How far `to` is ahead of `from`, modulo 2^63.
constexpr std::uint64_t position_distance(std::uint64_t from, std::uint64_t to) noexcept {
  return (to - from) & kPositionMask;
}

// True if `position` is at or past `threshold`. Positions never drift 2^62 apart, so half the
// ring of values tells "ahead" from "behind".
constexpr bool position_reached(std::uint64_t position, std::uint64_t threshold) noexcept {
  return position_distance(threshold, position) < (std::uint64_t{1} << 62);
}

}  // namespace buffered::detail
