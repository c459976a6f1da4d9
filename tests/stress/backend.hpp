// The backend under test, whatever its delegate's form: the round's parts offer, flush and shut
// down through this, so that only backend.cpp instantiates the library for the six forms.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "sink.hpp"
#include "stress.hpp"

namespace buffered_stress {

using ErrorHandler = std::function<void(buffered::ErrorKind, std::span<const Event>)>;
using ByteSizeFunction = std::function<std::size_t(const Event&)>;

// A buffered::BufferedBackend<Event, Sink&> that may not be made yet, or no longer be: each call
// but the constructing ones is the library's, on the one made.
class Backend {
 public:
  virtual ~Backend() = default;

  // The delegate takes a BatchContext.
  virtual bool with_context() const = 0;
  // Makes the backend (what the constructor throws propagates); destroy() destroys it. While its
  // destructor runs the calls still reach it (the error handler re-offers into it).
  virtual void construct(const buffered::BatchConfig& config, const ErrorHandler& on_error,
                         const ByteSizeFunction& byte_size) = 0;
  virtual bool constructed() const = 0;
  virtual void destroy() noexcept = 0;
  // Makes another backend with the same delegate and destroys it at once.
  virtual void construct_and_destroy(const buffered::BatchConfig& config,
                                     const ErrorHandler& on_error,
                                     const ByteSizeFunction& byte_size) = 0;

  virtual void run() = 0;
  virtual bool process_event(const Event& event) = 0;
  virtual bool process_event(Event&& event) = 0;
  virtual std::size_t process_events(std::span<const Event> events) = 0;
  virtual bool flush(std::chrono::nanoseconds timeout) = 0;
  virtual bool shutdown(std::chrono::nanoseconds timeout) = 0;
  bool shutdown() { return shutdown(std::chrono::nanoseconds::max()); }
  virtual buffered::Stats stats() const = 0;
};

// The delegate of form `form` (0-5, as drawn) following `script`, and its backend, not made yet.
std::unique_ptr<Backend> make_backend(int form, SinkScript& script);

// A round's byte_size function: counts its calls, and those off the producers' threads.
struct ByteSizeCalls {
  std::atomic<std::uint64_t> calls{0}, off_producer{0};
};
ByteSizeFunction make_byte_size(ByteSizeCalls& counts, std::size_t spread);

}  // namespace buffered_stress
