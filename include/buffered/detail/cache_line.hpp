#pragma once

#include <cstddef>

namespace buffered::detail {

// Not std::hardware_destructive_interference_size: GCC 12 warns on it and clang 14 with
// libstdc++ lacks it. 128 covers adjacent-line prefetching on x86.
inline constexpr std::size_t kCacheLine = 128;

}  // namespace buffered::detail
