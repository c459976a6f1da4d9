#include "backend.hpp"

#include <optional>
#include <utility>

#include "../delegate_forms.hpp"

namespace buffered_stress {
namespace {

using buffered_test::Form;
using buffered_test::Result;

template <class F>
using Sink = buffered_test::FormSink<F, SinkBase, Event>;

template <class SinkType>
class FormBackend final : public Backend {
 public:
  explicit FormBackend(SinkScript& script) : sink_{SinkBase(script)} {}

  bool with_context() const override { return SinkType::form::context; }

  void construct(const buffered::BatchConfig& config, const ErrorHandler& on_error,
                 const ByteSizeFunction& byte_size) override {
    backend_.emplace(sink_, config, on_error, byte_size);
    live_ = &*backend_;
  }
  bool constructed() const override { return backend_.has_value(); }
  void destroy() noexcept override {
    backend_.reset();
    live_ = nullptr;
  }
  void construct_and_destroy(const buffered::BatchConfig& config, const ErrorHandler& on_error,
                             const ByteSizeFunction& byte_size) override {
    const Library other(sink_, config, on_error, byte_size);
  }

  void run() override { live_->run(); }
  bool process_event(const Event& event) override { return live_->process_event(event); }
  bool process_event(Event&& event) override { return live_->process_event(std::move(event)); }
  std::size_t process_events(std::span<const Event> events) override {
    return live_->process_events(events);
  }
  bool flush(std::chrono::nanoseconds timeout) override { return live_->flush(timeout); }
  bool shutdown(std::chrono::nanoseconds timeout) override { return live_->shutdown(timeout); }
  buffered::Stats stats() const override { return live_->stats(); }

 private:
  using Library = buffered::BufferedBackend<Event, SinkType&>;

  SinkType sink_;
  std::optional<Library> backend_;
  Library* live_ = nullptr;  // the one made, until destroy() returns
};

template <class F>
std::unique_ptr<Backend> backend_of(SinkScript& script) {
  return std::make_unique<FormBackend<Sink<F>>>(script);
}

}  // namespace

std::unique_ptr<Backend> make_backend(int form, SinkScript& script) {
  switch (form) {
    case 0:
      return backend_of<Form<Result::boolean, false, false>>(script);
    case 1:
      return backend_of<Form<Result::outcome, true, false>>(script);
    case 2:
      return backend_of<Form<Result::none, false, true>>(script);
    case 3:
      return backend_of<Form<Result::outcome, false, true>>(script);
    case 4:
      return backend_of<Form<Result::boolean, true, true>>(script);
    default:
      return backend_of<Form<Result::none, true, false>>(script);
  }
}

ByteSizeFunction make_byte_size(ByteSizeCalls& counts, std::size_t spread) {
  // Three words, as std::function stores them on the heap: the constructor's copy of the
  // function is one of the allocations a fault round fails in turn.
  struct Counters {
    std::atomic<std::uint64_t>* calls;
    std::atomic<std::uint64_t>* off_producer;
  };
  return [counters = Counters{&counts.calls, &counts.off_producer}, spread](const Event& e) {
    counters.calls->fetch_add(1, std::memory_order_relaxed);
    if (!on_producer_thread) counters.off_producer->fetch_add(1, std::memory_order_relaxed);
    return e.payload.size() + ByteSizes::extra(e.id, spread);
  };
}

}  // namespace buffered_stress
