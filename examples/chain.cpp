// A chain: one BufferedBackend feeding another. The front one never blocks request threads
// (drop_newest) and hands batches on at once; the back one batches for the file and writes from
// its own dispatch thread. outer.run() starts the inner backend, outer.shutdown() drains the
// outer into the inner, then shuts the inner down, which drains it into the file.
//
//   buffered_chain [path]
#include <buffered/buffered_backend.hpp>

#include <cstdio>
#include <string>
#include <thread>

#include "json_lines_file.hpp"
#include "report.hpp"

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "chain.jsonl";
  examples::JsonLinesFile file(path);

  buffered::BatchConfig back_config;  // the file side: big batches, written asynchronously
  back_config.max_batch_size = 500;
  back_config.max_batch_wait = std::chrono::milliseconds(100);
  back_config.async_delegate = true;
  back_config.max_in_flight = 1;  // one writer keeps the file in order
  back_config.overflow = buffered::OverflowPolicy::block;
  using Back = buffered::BufferedBackend<examples::AuditEvent, examples::JsonLinesFile&>;
  Back back(file, back_config);

  buffered::BatchConfig front_config;  // the request side: small, quick hand-offs
  front_config.buffer_size = 2000;
  front_config.max_batch_size = 50;
  front_config.max_batch_wait = std::chrono::milliseconds(5);
  buffered::BufferedBackend<examples::AuditEvent, Back&> front(back, front_config);

  std::printf("%s\n", front.name().c_str());
  front.run();  // runs `back` too
  for (unsigned long i = 0; i < 3000; ++i) {
    while (!front.process_event(examples::AuditEvent{0, i, "get"})) std::this_thread::yield();
  }
  const bool clean = front.shutdown();  // shuts `back` down after the front's drain
  std::printf("front:\n");
  examples::print_stats(front.stats());
  std::printf("back:\n");
  examples::print_stats(back.stats());
  const bool ok = clean && back.stats().delivered == 3000 && file.writes() > 0;
  if (!ok) std::printf("MISMATCH\n");
  return ok ? 0 : 1;
}
