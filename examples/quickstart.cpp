// The quickstart: wrap a real sink (JSON lines appended to a file, one write per batch), offer
// events from several threads, shut down, print the Stats.
//
//   buffered_quickstart [path]     (default: quickstart-audit.jsonl in the current directory)
#include <buffered/buffered_backend.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

struct AuditEvent {
  unsigned user = 0;
  unsigned long seq = 0;
  std::string verb;
};

// A sink that appends a batch as JSON lines with a single write(2).
class JsonLinesFile {
 public:
  explicit JsonLinesFile(const std::string& path)
      : path_(path), fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "open " + path);
  }
  ~JsonLinesFile() { ::close(fd_); }
  JsonLinesFile(const JsonLinesFile&) = delete;
  JsonLinesFile& operator=(const JsonLinesFile&) = delete;

  bool process_events(std::span<AuditEvent> batch) {
    buffer_.clear();
    for (const AuditEvent& e : batch) {
      buffer_ += "{\"user\":" + std::to_string(e.user) + ",\"seq\":" + std::to_string(e.seq) +
                 ",\"verb\":\"" + e.verb + "\"}\n";
    }
    std::size_t done = 0;
    while (done < buffer_.size()) {
      const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return false;  // the batch is reported as failed
      done += static_cast<std::size_t>(n);
    }
    ++writes_;
    return true;
  }
  std::string name() const { return "jsonl:" + path_; }
  std::size_t writes() const { return writes_; }

 private:
  std::string path_;
  int fd_;
  std::string buffer_;  // reused: one allocation grows to the largest batch
  std::size_t writes_ = 0;
};

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
  std::printf("accepted   %llu\n", static_cast<unsigned long long>(s.accepted));
  std::printf("delivered  %llu\n", static_cast<unsigned long long>(s.delivered));
  std::printf("failed     %llu\n", static_cast<unsigned long long>(s.failed));
  std::printf("abandoned  %llu\n", static_cast<unsigned long long>(s.abandoned));
  std::printf("refused    %llu\n", static_cast<unsigned long long>(s.rejected_full + s.rejected_shut_down));
  std::printf("batches    %llu\n", static_cast<unsigned long long>(s.batches));
  std::printf("reported   %zu\n", reported.load());
  if (!clean || s.delivered != kThreads * kPerThread || reported.load() != 0) {
    std::printf("MISMATCH: expected %lu delivered\n", kThreads * kPerThread);
    return 1;
  }
  return 0;
}
