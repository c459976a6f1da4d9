// The memory bound on a real workload: an audit log of request bodies from 100 bytes to 1 MiB
// (most of them small, 3% of them 1 MiB), appended as JSON lines to a slow file by four request
// threads. An audit log loses nothing, so the threads offer with OverflowPolicy::block: a full
// buffer makes them wait (drop_newest would lose exactly the large requests an audit needs).
// The same workload runs twice, each run in its own child process so that its peak RSS
// (getrusage's ru_maxrss, which only grows) is its own:
//
//   count   buffer_size 8000 events and nothing else: the memory held is 8000 times whatever the
//           events weigh, here about 320 MiB;
//   bytes   the same plus max_buffer_bytes 64 MiB and max_batch_bytes 8 MiB.
//
// Each run prints its peak RSS above a baseline (taken after run(), before the first event), the
// largest Stats::queued_bytes seen and the largest batch in bytes, then reads the file back and
// checks that every event is in it exactly once (MISMATCH otherwise). The bytes run must stay
// under its bound plus a stated overhead:
//
//     max_buffer_bytes                the queued events (Stats::queued_bytes)
//   + max_batch_bytes                 the batch the worker has taken out of the buffer (one:
//                                     the delegate runs on the worker, so one batch in flight)
//   + kThreads * kMaxBody             each request thread's event in hand while it waits
//   + kSlack (16 MiB)                 the rest: malloc's headers, mmapped bodies rounded up to
//                                     pages, what malloc keeps of freed small bodies, thread
//                                     stacks, the sink's headers (about 64 bytes an event), stdio
//
// An event's byte size is sizeof(Request) + body.capacity(): its slot plus the heap block its
// body owns (malloc's 16-byte header per block is not counted; kSlack covers it).
//
// The allocator matters as much as the buffer. glibc's malloc serves a block of 128 KiB or more
// with mmap and gives it back on free -- until the first such free: then it raises that
// threshold to the freed size (up to 32 MiB), and from there on 1 MiB bodies come from one arena
// per thread, which keeps the memory of freed ones. With four producer threads the bytes run then
// peaked 96 to 118 MiB above baseline here, different every run, against 76 MiB for the first
// three terms above (81 to 84 MiB with the fix below). So each run first fixes the threshold at
// 128 KiB with mallopt(M_MMAP_THRESHOLD) (the environment's MALLOC_MMAP_THRESHOLD_=131072 does the
// same); --default-malloc leaves glibc's default and prints the figures without checking them.
//
// Under AddressSanitizer or ThreadSanitizer RSS is mostly shadow memory and quarantine, so the
// RSS check is skipped (the verdict says so) and the workload is scaled down 8x (large bodies,
// bounds, disk speed); every event is still checked to be delivered exactly once.
//
// The file is removed after it is checked (it is several hundred MiB).
//
//   buffered_memory_bound [path] [events-per-thread] [--default-malloc]
#include <buffered/buffered_backend.hpp>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "report.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MEMORY_BOUND_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MEMORY_BOUND_SANITIZED 1
#endif
#endif

namespace {

#ifdef MEMORY_BOUND_SANITIZED
constexpr bool kSanitized = true;
constexpr std::size_t kScale = 8;
#else
constexpr bool kSanitized = false;
constexpr std::size_t kScale = 1;
#endif

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr unsigned kThreads = 4;
constexpr std::size_t kMinBody = 100;
constexpr std::size_t kMaxBody = kMiB / kScale;
constexpr std::size_t kBufferSize = 8000;   // events, both runs
constexpr std::size_t kMaxBatchSize = 400;  // events, both runs
constexpr std::size_t kMaxBufferBytes = 64 * kMiB / kScale;
constexpr std::size_t kMaxBatchBytes = 8 * kMiB / kScale;
constexpr std::size_t kSlack = 16 * kMiB;
constexpr double kDiskBytesPerSecond = 200.0 * kMiB / kScale;
constexpr auto kDiskLatency = std::chrono::milliseconds(2);  // per batch
constexpr std::uint64_t kSeed = 20240611;

struct Request {
  std::uint64_t id = 0;
  std::string body;  // on the heap: every body is longer than the small-string buffer
};

std::size_t byte_size(const Request& r) { return sizeof(Request) + r.body.capacity(); }

// 85% from 100 B to 4 KiB, 12% from 4 KiB to 256 KiB (both log-uniform), 3% exactly 1 MiB: a
// mean near 40 KiB. Raw mt19937_64 output only, so the sizes are the same with every standard
// library (its distributions are not).
std::size_t body_size(std::mt19937_64& rng) {
  const std::uint64_t pick = rng() % 1000;
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
  const auto log_uniform = [u](double lo, double hi) {
    return static_cast<std::size_t>(lo * std::pow(hi / lo, u));
  };
  if (pick < 850) return log_uniform(100, 4096);
  if (pick < 970) return std::max(kMinBody, log_uniform(4096, 256 * 1024) / kScale);
  return kMaxBody;
}

char body_char(std::uint64_t id) { return static_cast<char>('a' + id % 26); }

double mib(double bytes) { return bytes / static_cast<double>(kMiB); }

long max_rss_kib() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;  // KiB on Linux
}

// The sink: a batch appended with writev(2) -- a small header per event, the body itself, no
// copy of it -- then as slow as a disk of kDiskBytesPerSecond with kDiskLatency per batch, so
// that the buffer fills. (A real audit log would also fdatasync, as audit_log.cpp does; a
// simulated disk makes the run take the same time on every machine.) Bodies are [a-z]: no JSON
// escaping needed.
class SlowAuditFile {
 public:
  explicit SlowAuditFile(std::string path)
      : path_(std::move(path)),
        fd_(::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "open " + path_);
    headers_.reserve(kMaxBatchSize * 64);
    ends_.reserve(kMaxBatchSize);
    iov_.reserve(kMaxBatchSize * 3);
  }
  ~SlowAuditFile() { ::close(fd_); }
  SlowAuditFile(const SlowAuditFile&) = delete;
  SlowAuditFile& operator=(const SlowAuditFile&) = delete;

  bool process_events(std::span<Request> batch) {
    const auto start = std::chrono::steady_clock::now();
    headers_.clear();
    ends_.clear();
    std::size_t bytes = 0;
    for (const Request& r : batch) {
      headers_ += "{\"id\":" + std::to_string(r.id) + ",\"size\":" + std::to_string(r.body.size()) +
                  ",\"body\":\"";
      ends_.push_back(headers_.size());
      bytes += byte_size(r);
    }
    static constexpr char kTail[] = "\"}\n";
    iov_.clear();
    std::size_t begin = 0;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      iov_.push_back({headers_.data() + begin, ends_[i] - begin});
      iov_.push_back({batch[i].body.data(), batch[i].body.size()});
      iov_.push_back({const_cast<char*>(kTail), sizeof kTail - 1});
      begin = ends_[i];
    }
    if (!write_all()) return false;
    max_batch_bytes_ = std::max(max_batch_bytes_, bytes);
    std::this_thread::sleep_until(
        start + kDiskLatency +
        std::chrono::duration<double>(static_cast<double>(bytes) / kDiskBytesPerSecond));
    return true;
  }
  std::string name() const { return "slow-jsonl:" + path_; }
  std::size_t max_batch_bytes() const { return max_batch_bytes_; }

 private:
  bool write_all() {
    std::size_t i = 0;
    while (i < iov_.size()) {
      const int n = static_cast<int>(std::min<std::size_t>(iov_.size() - i, 1020));
      const ssize_t written = ::writev(fd_, &iov_[i], n);
      if (written < 0 && errno == EINTR) continue;
      if (written <= 0) return false;
      auto left = static_cast<std::size_t>(written);
      while (i < iov_.size() && left >= iov_[i].iov_len) left -= iov_[i++].iov_len;
      if (left > 0) {
        iov_[i].iov_base = static_cast<char*>(iov_[i].iov_base) + left;
        iov_[i].iov_len -= left;
      }
    }
    return true;
  }

  std::string path_;
  int fd_;
  std::string headers_;            // reused
  std::vector<std::size_t> ends_;  // where each event's header ends in headers_
  std::vector<iovec> iov_;
  std::size_t max_batch_bytes_ = 0;
};

struct RunResult {  // sent from the child through a pipe
  bool ok = false;
  bool byte_bound = false;
  unsigned long long offered = 0;
  unsigned long long delivered = 0;
  double body_mib = 0;         // what the requests carried in all
  double baseline_mib = 0;     // peak RSS before the first event
  double peak_mib = 0;         // peak RSS after shutdown
  double max_queued_mib = 0;   // largest Stats::queued_bytes seen
  std::size_t max_queued = 0;  // largest Stats::queued seen
  double max_batch_mib = 0;    // largest batch the sink got, in byte sizes
};

// Every line {"id":N,"size":S,"body":"..."} with S letters body_char(N); every id once. C stdio
// and memcmp: fast even in the -O0 builds.
bool read_back(const std::string& path, std::uint64_t events) {
  std::FILE* in = std::fopen(path.c_str(), "r");
  if (in == nullptr) return false;
  std::vector<unsigned char> seen(events, 0);
  std::string expected;
  char* line = nullptr;
  std::size_t capacity = 0;
  ssize_t length = 0;
  bool ok = true;
  while ((length = ::getline(&line, &capacity, in)) > 0) {
    unsigned long long id = 0;
    std::size_t size = 0;
    int header = 0;
    if (std::sscanf(line, "{\"id\":%llu,\"size\":%zu,\"body\":\"%n", &id, &size, &header) != 2 ||
        header == 0 || id >= events) {
      ok = false;
      continue;
    }
    const auto h = static_cast<std::size_t>(header);
    expected.assign(size, body_char(id));
    expected += "\"}\n";
    const bool line_ok = static_cast<std::size_t>(length) == h + expected.size() &&
                         std::memcmp(line + h, expected.data(), expected.size()) == 0;
    if (!line_ok || seen[id]++ != 0) ok = false;
  }
  std::free(line);
  std::fclose(in);
  return ok && std::all_of(seen.begin(), seen.end(), [](unsigned char n) { return n == 1; });
}

RunResult run(bool byte_bound, const std::string& path, unsigned long per_thread) {
  SlowAuditFile file(path);
  buffered::BatchConfig config;
  config.buffer_size = kBufferSize;
  config.max_batch_size = kMaxBatchSize;
  config.max_batch_wait = std::chrono::milliseconds(50);
  config.overflow = buffered::OverflowPolicy::block;  // an audit log drops nothing
  if (byte_bound) {
    config.max_buffer_bytes = kMaxBufferBytes;
    config.max_batch_bytes = kMaxBatchBytes;
  }
  std::atomic<unsigned long long> refused{0};
  buffered::BufferedBackend<Request, SlowAuditFile&> backend(
      file, config,
      [&refused](buffered::ErrorKind, std::span<const Request> events) {
        refused.fetch_add(events.size());
      },
      byte_size);
  backend.run();

  RunResult result;
  result.byte_bound = byte_bound;
  result.baseline_mib = static_cast<double>(max_rss_kib()) / 1024;
  std::atomic<unsigned> running{kThreads};
  std::atomic<unsigned long long> body_bytes{0};
  std::vector<std::thread> requests;
  for (unsigned t = 0; t < kThreads; ++t) {
    requests.emplace_back([&, t] {
      std::mt19937_64 rng(kSeed + t);
      unsigned long long bytes = 0;
      for (unsigned long i = 0; i < per_thread; ++i) {
        const std::uint64_t id = std::uint64_t{t} * per_thread + i;
        Request r{id, std::string(body_size(rng), body_char(id))};
        bytes += r.body.size();
        backend.process_event(std::move(r));
      }
      body_bytes += bytes;
      --running;
    });
  }
  std::size_t max_queued_bytes = 0;
  while (running.load() != 0) {  // sample what the buffer holds
    const buffered::Stats s = backend.stats();
    max_queued_bytes = std::max(max_queued_bytes, s.queued_bytes);
    result.max_queued = std::max(result.max_queued, s.queued);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (auto& t : requests) t.join();
  const bool clean = backend.shutdown();
  result.peak_mib = static_cast<double>(max_rss_kib()) / 1024;

  const buffered::Stats s = backend.stats();
  result.offered = std::uint64_t{kThreads} * per_thread;
  result.delivered = s.delivered;
  result.body_mib = mib(static_cast<double>(body_bytes.load()));
  result.max_queued_mib = mib(static_cast<double>(max_queued_bytes));
  result.max_batch_mib = mib(static_cast<double>(file.max_batch_bytes()));
  std::printf("%s: %s\n", byte_bound ? "bytes" : "count", backend.name().c_str());
  examples::print_stats(s);
  const bool counts_ok =
      clean && refused.load() == 0 && s.accepted == result.offered && s.delivered == result.offered;
  const bool file_ok = read_back(path, result.offered);
  if (!counts_ok || !file_ok) {
    std::printf("MISMATCH: expected %llu events delivered and in %s exactly once (%s)\n",
                result.offered, path.c_str(), counts_ok ? "the file differs" : "see the counts");
  }
  if (byte_bound && file.max_batch_bytes() > kMaxBatchBytes) {
    std::printf("MISMATCH: a batch of %zu bytes, above max_batch_bytes\n", file.max_batch_bytes());
  }
  if (byte_bound && max_queued_bytes > kMaxBufferBytes) {
    std::printf("MISMATCH: %zu bytes queued, above max_buffer_bytes\n", max_queued_bytes);
  }
  result.ok = counts_ok && file_ok &&
              (!byte_bound ||
               (file.max_batch_bytes() <= kMaxBatchBytes && max_queued_bytes <= kMaxBufferBytes));
  ::unlink(path.c_str());
  return result;
}

// Runs run() in a child process: its ru_maxrss is then this run's alone.
RunResult run_in_child(bool byte_bound, const std::string& path, unsigned long per_thread) {
  RunResult result;
  int fds[2];
  if (::pipe(fds) != 0) return result;
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid < 0) return result;
  if (pid == 0) {
    ::close(fds[0]);
    const RunResult r = run(byte_bound, path, per_thread);
    const bool sent = ::write(fds[1], &r, sizeof r) == static_cast<ssize_t>(sizeof r);
    std::fflush(stdout);
    std::exit(sent ? 0 : 1);
  }
  ::close(fds[1]);
  RunResult received;
  std::size_t got = 0;
  while (got < sizeof received) {
    const ssize_t n =
        ::read(fds[0], reinterpret_cast<char*>(&received) + got, sizeof received - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (got != sizeof received || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::printf("MISMATCH: the %s run's child process failed (status %d)\n",
                byte_bound ? "bytes" : "count", status);
    return result;
  }
  return received;
}

void print_run(const char* label, const RunResult& r) {
  char queued_bytes[32] = "";  // Stats::queued_bytes is 0 without a byte bound
  if (r.byte_bound)
    std::snprintf(queued_bytes, sizeof queued_bytes, ", %.1f MiB", r.max_queued_mib);
  std::printf(
      "%s: %llu events (%.0f MiB of bodies), %llu delivered; peak RSS %.1f MiB above a baseline of "
      "%.1f MiB; queued at most %zu events%s; largest batch %.1f MiB\n",
      label, r.offered, r.body_mib, r.delivered, r.peak_mib - r.baseline_mib, r.baseline_mib,
      r.max_queued, queued_bytes, r.max_batch_mib);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const auto flag = std::find(args.begin(), args.end(), "--default-malloc");
  const bool default_malloc = flag != args.end();
  if (default_malloc) args.erase(flag);
  const std::string path = !args.empty() ? args[0] : "memory_bound.jsonl";
  const unsigned long per_thread = args.size() > 1 ? std::stoul(args[1]) : 3000;
#if defined(__GLIBC__)
  if (!default_malloc) ::mallopt(M_MMAP_THRESHOLD, 128 * 1024);  // inherited by the children
#endif

  const double limit =
      mib(static_cast<double>(kMaxBufferBytes + kMaxBatchBytes + kThreads * kMaxBody + kSlack));
  std::printf(
      "%u threads x %lu requests, bodies %zu B to %.2f MiB; a disk of %.0f MiB/s + %lld ms a batch"
      "%s\n",
      kThreads, per_thread, kMinBody, mib(static_cast<double>(kMaxBody)), mib(kDiskBytesPerSecond),
      static_cast<long long>(kDiskLatency.count()),
      kSanitized ? " (scaled down 8x under a sanitizer)" : "");
  std::printf(
      "bytes bound: peak RSS above baseline <= max_buffer_bytes %.1f + max_batch_bytes %.1f + "
      "%u threads x max body %.2f + slack %.0f = %.1f MiB\n",
      mib(static_cast<double>(kMaxBufferBytes)), mib(static_cast<double>(kMaxBatchBytes)), kThreads,
      mib(static_cast<double>(kMaxBody)), mib(static_cast<double>(kSlack)), limit);

  const RunResult count = run_in_child(false, path, per_thread);
  const RunResult bytes = run_in_child(true, path, per_thread);
  std::printf("\n");
  print_run("count (buffer_size only)        ", count);
  print_run("bytes (+ max_buffer/batch_bytes)", bytes);

  if (!count.ok || !bytes.ok) {
    std::printf("verdict: MISMATCH (see above)\n");
    return 1;
  }
  const double peak = bytes.peak_mib - bytes.baseline_mib;
  const double count_peak = count.peak_mib - count.baseline_mib;
  if (kSanitized || default_malloc) {
    std::printf(
        "verdict: OK: every event delivered exactly once in both runs; RSS not checked %s (bytes "
        "run %.1f MiB, count run %.1f MiB above baseline)\n",
        kSanitized ? "under a sanitizer" : "with --default-malloc", peak, count_peak);
    return 0;
  }
  if (peak > limit) {
    std::printf(
        "verdict: OVER BOUND: the bytes run peaked %.1f MiB above baseline, limit %.1f MiB\n", peak,
        limit);
    return 1;
  }
  std::printf(
      "verdict: OK: the bytes run peaked %.1f MiB above baseline <= %.1f MiB (bound + overhead); "
      "the count run %.1f MiB (%.1fx)\n",
      peak, limit, count_peak, count_peak / peak);
  return 0;
}
