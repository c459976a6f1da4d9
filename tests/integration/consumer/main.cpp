#include <buffered/buffered_backend.hpp>

#include <cstdio>

int main() {
  int seen = 0;
  auto sink = [&seen](std::span<int> batch) { seen += static_cast<int>(batch.size()); };
  {
    buffered::BufferedBackend<int, decltype(sink)&> backend(sink);
    backend.run();
    for (int i = 0; i < 100; ++i) backend.process_event(i);
  }
  std::printf("consumer of buffered %d.%d.%d delivered %d\n", BUFFERED_VERSION_MAJOR,
              BUFFERED_VERSION_MINOR, BUFFERED_VERSION_PATCH, seen);
  return seen == 100 ? 0 : 1;
}
