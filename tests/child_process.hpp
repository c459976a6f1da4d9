// Running a scenario in a forked child with a deadline: for scenarios that may hang or crash
// (the child is killed at the deadline and the test fails instead of the suite hanging), and for
// fork() itself. POSIX only.
#pragma once

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>

#include <fcntl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.hpp"

namespace buffered_test {

// What became of a child: how it ended and what it wrote to its pipe.
struct ChildResult {
  bool timed_out = false;  // still running at the deadline: killed with SIGKILL
  int status = 0;          // from waitpid
  std::string output;      // everything the child wrote to child_output_fd()
  Clock::duration took{};  // from fork() to its end (or to the kill)

  bool exited_zero() const { return !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

  std::string describe() const {
    std::string s;
    if (timed_out) {
      s = "did not end within its deadline (killed)";
    } else if (WIFEXITED(status)) {
      s = "exited with status " + std::to_string(WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
      s = "killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
          strsignal(WTERMSIG(status)) + ")";
    } else {
      s = "ended with wait status " + std::to_string(status);
    }
    s += " after " + std::to_string(static_cast<long long>(millis(took))) + " ms";
    if (!output.empty()) s += "; it wrote: " + output;
    return s;
  }
};

// In the child: the write end of the pipe the parent reads (-1 elsewhere).
inline int& child_output_fd() {
  static int fd = -1;
  return fd;
}

// In the child: writes `text` to the parent (all of it, or as much as the pipe takes).
inline void write_to_parent(const std::string& text) {
  const int fd = child_output_fd();
  if (fd < 0) return;
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

// True in a child made by run_in_child (the leak check is off there: see fork_test.cpp).
inline bool& in_forked_child() {
  static bool forked = false;
  return forked;
}

// Forks; the child runs `body()` (returning what to tell the parent: "" when all went well),
// writes its result to the pipe and ends with _exit: 0 if the result is empty, 1 if not, 2 if
// `body` threw. The body may also end the process itself (exit(), _exit()). The parent waits
// up to `limit`, then kills the child with SIGKILL, and returns what became of it.
//
// Call it from a single-threaded moment of the test (ThreadSanitizer allows threads in a child
// only after a single-threaded fork); the body must not use gtest assertions (they would count
// in the child only).
template <class Body>
ChildResult run_in_child(Clock::duration limit, Body body) {
  ChildResult result;
  int fds[2];
  if (::pipe(fds) != 0) {
    result.output = std::string("pipe failed: ") + std::strerror(errno);
    result.status = -1;
    return result;
  }
  const auto start = Clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    result.output = std::string("fork failed: ") + std::strerror(errno);
    result.status = -1;
    return result;
  }
  if (pid == 0) {
    in_forked_child() = true;
    ::close(fds[0]);
    child_output_fd() = fds[1];
    int code = 0;
    try {
      const std::string verdict = body();
      write_to_parent(verdict);
      code = verdict.empty() ? 0 : 1;
    } catch (const std::exception& e) {
      write_to_parent(std::string("exception: ") + e.what());
      code = 2;
    } catch (...) {
      write_to_parent("exception");
      code = 2;
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  ::fcntl(fds[0], F_SETFL, ::fcntl(fds[0], F_GETFL) | O_NONBLOCK);
  const auto drain = [&] {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fds[0], buf, sizeof buf);
      if (n > 0) {
        result.output.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      return;  // EAGAIN (nothing yet) or EOF
    }
  };
  const auto deadline = start + limit;
  for (;;) {
    drain();
    const pid_t done = ::waitpid(pid, &result.status, WNOHANG);
    if (done == pid) break;
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &result.status, 0);
      result.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  result.took = Clock::now() - start;
  // The child is gone: read what is left up to EOF.
  ::fcntl(fds[0], F_SETFL, ::fcntl(fds[0], F_GETFL) & ~O_NONBLOCK);
  drain();
  ::close(fds[0]);
  return result;
}

}  // namespace buffered_test
