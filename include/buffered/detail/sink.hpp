// Detecting what a delegate can do, and calling it.
#pragma once

#include <concepts>
#include <functional>
#include <span>
#include <string>
#include <type_traits>

namespace buffered::detail {

template <class D, class Event>
concept HasProcessEvents = requires(D& d, std::span<Event> events) {
  d.process_events(events);
};

template <class D, class Event>
concept CallableSink = std::invocable<D&, std::span<Event>>;

// void, or something a bool can be made from.
template <class R>
concept SinkResult = std::is_void_v<R> || std::is_constructible_v<bool, R>;

template <class D>
concept HasRun = requires(D& d) {
  d.run();
};
template <class D>
concept HasShutdown = requires(D& d) {
  d.shutdown();
};
template <class D>
concept HasFlush = requires(D& d) {
  d.flush();
};
template <class D>
concept HasName = requires(const D& d) {
  std::string(d.name());
};

// Calls the delegate with a batch; returns false if it reported failure. Exceptions pass through.
template <class D, class Event>
bool invoke_sink(D& delegate, std::span<Event> events) {
  if constexpr (HasProcessEvents<D, Event>) {
    using R = decltype(delegate.process_events(events));
    if constexpr (std::is_void_v<R>) {
      delegate.process_events(events);
      return true;
    } else {
      return static_cast<bool>(delegate.process_events(events));
    }
  } else {
    using R = std::invoke_result_t<D&, std::span<Event>>;
    if constexpr (std::is_void_v<R>) {
      std::invoke(delegate, events);
      return true;
    } else {
      return static_cast<bool>(std::invoke(delegate, events));
    }
  }
}

}  // namespace buffered::detail
