// How many threads this process has now: the stress tool and the fuzzer check that a failed
// run() leaves none behind.
#pragma once

#include <dirent.h>

#include <cstddef>

namespace buffered_test {

// Threads in this process now (Linux: /proc/self/task); 0 if unknown.
inline std::size_t count_threads() {
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return 0;
  std::size_t n = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n;
}

}  // namespace buffered_test
