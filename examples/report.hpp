// Printing a backend's Stats, for the examples.
#pragma once

#include <buffered/buffered_backend.hpp>

#include <cstdio>

namespace examples {

inline void print_stats(const buffered::Stats& s) {
  const auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
  std::printf("accepted   %llu\n", u(s.accepted));
  std::printf("delivered  %llu\n", u(s.delivered));
  std::printf("failed     %llu\n", u(s.failed));
  std::printf("abandoned  %llu\n", u(s.abandoned));
  std::printf("refused    %llu\n", u(s.rejected_full + s.rejected_shut_down));
  std::printf("batches    %llu\n", u(s.batches));
}

}  // namespace examples
