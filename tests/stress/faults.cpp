#include "faults.hpp"

namespace buffered_stress {
namespace {

std::atomic<std::uint64_t> library_faults_fired{0};

struct LibraryThreadFault {
  bool armed = false;
  void arm() {
    armed = true;
    fault::fail_next_allocation_on_this_thread();
  }
  void settle() {
    if (!armed) return;
    armed = false;
    if (!fault::cancel_next_allocation_failure_on_this_thread()) {
      library_faults_fired.fetch_add(1);
    }
  }
  ~LibraryThreadFault() { settle(); }
};
thread_local LibraryThreadFault library_thread_fault;

}  // namespace

std::uint64_t library_thread_faults_fired() { return library_faults_fired.load(); }
void arm_library_thread_fault() { library_thread_fault.arm(); }
void settle_library_thread_fault() { library_thread_fault.settle(); }

}  // namespace buffered_stress
