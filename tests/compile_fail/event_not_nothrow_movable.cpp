// Must not compile: an Event whose move constructor may throw.
#include <buffered/buffered_backend.hpp>

struct Event {
  Event() = default;
  Event(Event&&) {}  // not noexcept
};

int main() {
  auto sink = [](std::span<Event>) {};
  buffered::BufferedBackend<Event, decltype(sink)> backend(sink);
}
