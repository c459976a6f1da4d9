#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "workloads.hpp"

namespace buffered_stress {
namespace {

// A forked child must have exited this long after the fork.
constexpr auto kForkChildLimit = 10s;

}  // namespace

// The child, with only this thread, destroys the inherited backend(s) at once and exits; the
// parent waits for it (SIGKILL after kForkChildLimit), checks its exit status, and reads back
// through a pipe how many delegate calls the child made (none allowed) and how many events it
// reported.
void ForkProbe::fork_and_check(bool use_exit) {
  int fds[2];
  if (::pipe(fds) != 0) {
    violation_("fork: pipe() failed");
    return;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid == 0) be_the_child(fds, use_exit);
  ::close(fds[1]);
  if (pid < 0) {
    ::close(fds[0]);
    violation_("fork: fork() failed");
    return;
  }
  const bool exited = wait_for(pid, use_exit);
  read_counts(fds[0], exited);
}

void ForkProbe::be_the_child(const int fds[2], bool use_exit) {
  in_fork_child = true;
  ::close(fds[0]);
  backend_.destroy();
  second_.destroy_in_child();
  const std::uint64_t counts[2] = {child_delegate_calls.load(), child_reported.load()};
  const ssize_t written = ::write(fds[1], counts, sizeof counts);
  ::close(fds[1]);
  const int code = written == static_cast<ssize_t>(sizeof counts) ? 0 : 4;
  if (use_exit) std::exit(code);
  ::_exit(code);
}

bool ForkProbe::wait_for(pid_t pid, bool use_exit) {
  int status = 0;
  bool exited = false;
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < kForkChildLimit) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      exited = true;
      break;
    }
    std::this_thread::sleep_for(1ms);
  }
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    violation_(
        "fork: the child (" + std::string(use_exit ? "exit" : "_exit") +
        ") had not destroyed the inherited backend(s) and exited " +
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kForkChildLimit).count()) +
        " s after the fork: killed");
  } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    violation_("fork: the child ended with " +
               (WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                  : "signal " + std::to_string(WTERMSIG(status))));
  }
  return exited;
}

void ForkProbe::read_counts(int fd, bool exited) {
  std::uint64_t counts[2] = {0, 0};
  const ssize_t got = ::read(fd, counts, sizeof counts);
  ::close(fd);
  if (got == static_cast<ssize_t>(sizeof counts)) {
    if (counts[0] != 0)
      violation_("fork: the child made " + std::to_string(counts[0]) + " delegate call(s)");
    child_reports_ += counts[1];
  } else if (exited) {
    violation_("fork: no counts from the child");
  }
}

}  // namespace buffered_stress

// LeakSanitizer: a forked child exits with the parent's threads gone, so what only they
// referenced would look leaked. No leak check in a child.
#if defined(__SANITIZE_ADDRESS__)
extern "C" int __lsan_is_turned_off() { return buffered_stress::in_fork_child.load() ? 1 : 0; }
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
extern "C" int __lsan_is_turned_off() { return buffered_stress::in_fork_child.load() ? 1 : 0; }
#endif
#endif
