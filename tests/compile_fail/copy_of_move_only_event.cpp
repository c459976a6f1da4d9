// Must not compile: the const& overload needs a copyable Event.
#include <buffered/buffered_backend.hpp>

#include <memory>

int main() {
  auto sink = [](std::span<std::unique_ptr<int>>) {};
  buffered::BufferedBackend<std::unique_ptr<int>, decltype(sink)> backend(sink);
  const std::unique_ptr<int> event;
  backend.process_event(event);
}
