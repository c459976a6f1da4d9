// The quickstart: wrap a real sink (JSON lines appended to a file, one write per batch), offer
// events from several threads, shut down, print the Stats.
//
//   buffered_quickstart [path]     (default: quickstart-audit.jsonl in the current directory)
#include <buffered/buffered_backend.hpp>

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "json_lines_file.hpp"
#include "report.hpp"

using examples::AuditEvent;
using examples::JsonLinesFile;

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "quickstart-audit.jsonl";
  JsonLinesFile file(path);

  buffered::BatchConfig config;
  config.buffer_size = 1000;
  config.max_batch_size = 100;
  config.max_batch_wait = std::chrono::milliseconds(20);
  config.overflow = buffered::OverflowPolicy::block;  // lossless: a full buffer makes callers wait
  std::atomic<std::size_t> reported{0};
  auto on_error = [&reported](buffered::ErrorKind, std::span<const AuditEvent> events) {
    reported += events.size();  // refused, failed or abandoned: each reported exactly once
  };
  buffered::BufferedBackend<AuditEvent, JsonLinesFile&> backend(file, config, on_error);
  backend.run();

  constexpr unsigned kThreads = 4;
  constexpr unsigned long kPerThread = 1000;
  std::vector<std::thread> users;
  for (unsigned u = 0; u < kThreads; ++u) {
    users.emplace_back([&backend, u] {
      for (unsigned long i = 0; i < kPerThread; ++i) {
        backend.process_event(AuditEvent{u, i, i % 3 == 0 ? "create" : "get"});
      }
    });
  }
  for (auto& t : users) t.join();
  const bool clean = backend.shutdown();

  const buffered::Stats s = backend.stats();
  std::printf("%s wrote %s in %zu writes\n", backend.name().c_str(), path.c_str(), file.writes());
  examples::print_stats(s);
  std::printf("reported   %zu\n", reported.load());
  if (!clean || s.delivered != kThreads * kPerThread || reported.load() != 0) {
    std::printf("MISMATCH: expected %lu delivered\n", kThreads * kPerThread);
    return 1;
  }
  return 0;
}
