// The producer's path alone, for instruction counts (bench/instructions.sh runs it under
// callgrind): one thread offers `count` 64-byte events to a backend that is not running, then
// the process _exits without the shutdown's abandonment. The difference between two counts,
// divided by the difference in events, is the cost of one process_event.
//
// Usage: buffered_producer_path COUNT [sized]
#include <buffered/buffered_backend.hpp>

#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>

namespace {

struct Event {
  std::array<char, 64> bytes{};
};

struct NullSink {
  void process_events(std::span<Event>) {}
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s COUNT [sized]\n", argv[0]);
    return 2;
  }
  const std::size_t count = std::strtoull(argv[1], nullptr, 10);
  const bool sized = argc > 2 && std::strcmp(argv[2], "sized") == 0;
  buffered::BatchConfig config;
  config.buffer_size = count + 1;
  if (sized) {
    config.max_buffer_bytes = (count + 1) * 2 * sizeof(Event);
    config.max_batch_bytes = config.max_batch_size * 2 * sizeof(Event);
  }
  auto* backend = new buffered::BufferedBackend<Event, NullSink>(
      NullSink{}, config, {},
      sized ? [](const Event&) { return sizeof(Event); }
            : buffered::BufferedBackend<Event, NullSink>::byte_size_function{});
  Event event;
  std::size_t accepted = 0;
  for (std::size_t i = 0; i < count; ++i) {
    event.bytes[0] = static_cast<char>(i);
    accepted += backend->process_event(event) ? 1 : 0;
  }
  if (accepted != count) {
    std::fprintf(stderr, "accepted %zu of %zu\n", accepted, count);
    return 1;
  }
  _exit(0);  // no shutdown: its abandonment would be counted too
}
