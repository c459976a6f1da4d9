// Fault injection for the tests: make the Nth allocation (global operator new) or the Nth thread
// creation (pthread_create) fail, the way SQLite tests out-of-memory.
//
// allocation_faults.cpp replaces every global operator new/delete; thread_faults.cpp interposes
// pthread_create. Link a binary with the one(s) it needs; each may be linked at most once.
#pragma once

#include <cstdint>

namespace buffered_test::fault {

enum class Mode {
  once,          // only the Nth fails
  from_then_on,  // the Nth and every later one fail, until disarmed
};

// ---- allocations (allocation_faults.cpp) ----

// Counts operator new calls on every thread from now on and fails the `nth` (1-based) with
// std::bad_alloc (nullptr for the nothrow forms). Replaces any earlier arming.
void fail_allocation(std::uint64_t nth, Mode mode);
// Counts without failing (to learn how many allocations a scenario makes).
void count_allocations();
// Stops counting and failing; returns how many allocations were counted since arming.
std::uint64_t disarm_allocations();
// How many allocations were failed since the last arming.
std::uint64_t failed_allocations();
// This thread only: the next allocation it makes fails (once). Independent of the global arming.
void fail_next_allocation_on_this_thread();
// Cancels fail_next_allocation_on_this_thread(); true if it had not fired yet.
bool cancel_next_allocation_failure_on_this_thread();

// RAII: disarms the global allocation fault when the scope ends, even on a failed assertion.
class AllocationFaultScope {
 public:
  AllocationFaultScope(std::uint64_t nth, Mode mode) { fail_allocation(nth, mode); }
  ~AllocationFaultScope() { disarm_allocations(); }
  AllocationFaultScope(const AllocationFaultScope&) = delete;
  AllocationFaultScope& operator=(const AllocationFaultScope&) = delete;
};

// ---- thread creation (thread_faults.cpp) ----

// Counts pthread_create calls on every thread from now on and fails the `nth` (1-based) with
// EAGAIN, as the system does at its thread limit.
void fail_thread_creation(std::uint64_t nth, Mode mode);
// Stops failing; returns how many pthread_create calls were counted since arming.
std::uint64_t disarm_thread_creation();
// Threads created successfully since the process started.
std::uint64_t threads_created();

class ThreadFaultScope {
 public:
  ThreadFaultScope(std::uint64_t nth, Mode mode) { fail_thread_creation(nth, mode); }
  ~ThreadFaultScope() { disarm_thread_creation(); }
  ThreadFaultScope(const ThreadFaultScope&) = delete;
  ThreadFaultScope& operator=(const ThreadFaultScope&) = delete;
};

}  // namespace buffered_test::fault
