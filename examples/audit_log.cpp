// An audit log: JSON lines appended to a file, one write(2) plus one fdatasync(2) per batch, so
// every delivered event is on disk before the delegate call returns. Several request threads
// log; then the file is read back and every event checked to be there exactly once.
//
//   buffered_audit_log [path] [events-per-thread]
#include <buffered/buffered_backend.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "json_lines_file.hpp"
#include "report.hpp"

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "audit.jsonl";
  const unsigned long per_thread = argc > 2 ? std::stoul(argv[2]) : 5000;
  constexpr unsigned kThreads = 4;

  examples::JsonLinesFile file(path, /*durable=*/true);
  buffered::BatchConfig config;
  config.max_batch_size = 400;
  config.max_batch_wait = std::chrono::milliseconds(50);
  config.overflow = buffered::OverflowPolicy::block;  // an audit log drops nothing
  buffered::BufferedBackend<examples::AuditEvent, examples::JsonLinesFile&> backend(file, config);
  backend.run();

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> requests;
  for (unsigned u = 0; u < kThreads; ++u) {
    requests.emplace_back([&backend, u, per_thread] {
      for (unsigned long i = 0; i < per_thread; ++i) {
        backend.process_event(examples::AuditEvent{u, i, i % 2 ? "update" : "get"});
      }
    });
  }
  for (auto& t : requests) t.join();
  const bool clean = backend.shutdown();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Read the log back: every (user, seq) exactly once.
  std::ifstream in(path);
  std::set<std::pair<unsigned, unsigned long>> seen;
  std::string line;
  std::size_t lines = 0;
  while (std::getline(in, line)) {
    ++lines;
    unsigned user = 0;
    unsigned long seq = 0;
    if (std::sscanf(line.c_str(), "{\"user\":%u,\"seq\":%lu", &user, &seq) == 2)
      seen.insert({user, seq});
  }
  const buffered::Stats s = backend.stats();
  std::printf("%s: %zu lines, %zu write+fdatasync calls, %.0f events/s durable\n",
              backend.name().c_str(), lines, file.writes(), static_cast<double>(lines) / seconds);
  examples::print_stats(s);
  const std::size_t expected = kThreads * per_thread;
  if (!clean || lines != expected || seen.size() != expected) {
    std::printf("MISMATCH: expected %zu distinct lines\n", expected);
    return 1;
  }
  return 0;
}
