// Must not compile: a delegate with neither process_events(span) nor operator()(span).
#include <buffered/buffered_backend.hpp>

struct NotASink {
  void write(int) {}
};

int main() { buffered::BufferedBackend<int, NotASink> backend(NotASink{}); }
