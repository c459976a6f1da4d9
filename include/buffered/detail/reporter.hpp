// Handing refused, failed and abandoned events to the user's error handler.
#pragma once

#include <functional>
#include <span>

#include "../config.hpp"
#include "owner.hpp"

namespace buffered::detail {

// Calls the handler, if any, marked as a call of `owner` (so the handler may call back into its
// backend without waiting for itself), and swallows what it throws. Thread-safe if the handler
// is; never allocates.
template <class Event>
class Reporter {
 public:
  using Handler = std::function<void(ErrorKind, std::span<const Event>)>;

  Reporter(Handler handler, const void* owner) : handler_(std::move(handler)), owner_(owner) {}

  void operator()(ErrorKind kind, std::span<const Event> events) const noexcept {
    if (!handler_ || events.empty()) return;
    const OwnerScope scope(owner_);
    try {
      handler_(kind, events);
    } catch (...) {
      // The contract: an error handler that throws is ignored.
    }
  }

 private:
  const Handler handler_;
  const void* const owner_;
};

}  // namespace buffered::detail
