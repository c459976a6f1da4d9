// Detecting what a delegate can do, and calling it.
#pragma once

#include <concepts>
#include <functional>
#include <span>
#include <string>
#include <type_traits>

#include "../outcome.hpp"

namespace buffered::detail {

template <class D, class Event>
concept HasProcessEventsWithContext = requires(D& d, std::span<Event> events,
                                               const BatchContext& context) {
  d.process_events(events, context);
};
template <class D, class Event>
concept HasProcessEvents = requires(D& d, std::span<Event> events) {
  d.process_events(events);
};
template <class D, class Event>
concept CallableSinkWithContext = std::invocable < D&,
        std::span<Event>,
const BatchContext& > ;
template <class D, class Event>
concept CallableSink = std::invocable<D&, std::span<Event>>;

// void, Outcome, or something a bool can be made from.
template <class R>
concept SinkResult = std::is_void_v<R> || std::is_same_v<std::remove_cvref_t<R>, Outcome> ||
    std::is_constructible_v<bool, R>;

// The result type of the form invoke_sink() uses: the first of process_events(span, context),
// process_events(span), d(span, context), d(span) that the delegate has.
template <class D, class Event>
struct SinkCall {
  static constexpr bool kValid = false;
};
template <class D, class Event>
requires HasProcessEventsWithContext<D, Event>
struct SinkCall<D, Event> {
  static constexpr bool kValid = true;
  using Result = decltype(std::declval<D&>().process_events(std::declval<std::span<Event>>(),
                                                            std::declval<const BatchContext&>()));
};
template <class D, class Event>
requires(!HasProcessEventsWithContext<D, Event> &&
         HasProcessEvents<D, Event>) struct SinkCall<D, Event> {
  static constexpr bool kValid = true;
  using Result = decltype(std::declval<D&>().process_events(std::declval<std::span<Event>>()));
};
template <class D, class Event>
requires(!HasProcessEventsWithContext<D, Event> && !HasProcessEvents<D, Event> &&
         CallableSinkWithContext<D, Event>) struct SinkCall<D, Event> {
  static constexpr bool kValid = true;
  using Result = std::invoke_result_t<D&, std::span<Event>, const BatchContext&>;
};
template <class D, class Event>
requires(!HasProcessEventsWithContext<D, Event> && !HasProcessEvents<D, Event> &&
         !CallableSinkWithContext<D, Event> && CallableSink<D, Event>) struct SinkCall<D, Event> {
  static constexpr bool kValid = true;
  using Result = std::invoke_result_t<D&, std::span<Event>>;
};

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

template <class R>
Outcome to_outcome(R&& result) {
  if constexpr (std::is_same_v<std::remove_cvref_t<R>, Outcome>) {
    return result;
  } else {
    return static_cast<bool>(result) ? Outcome::delivered() : Outcome::retry();
  }
}

// Calls the delegate with a batch, in the first form it has (see SinkCall); says how it went:
// void is delivered, false is a retryable failure. Exceptions pass through.
template <class D, class Event>
Outcome invoke_sink(D& delegate, std::span<Event> events, const BatchContext& context) {
  using R = typename SinkCall<D, Event>::Result;
  const auto call = [&]() -> R {
    if constexpr (HasProcessEventsWithContext<D, Event>) {
      return delegate.process_events(events, context);
    } else if constexpr (HasProcessEvents<D, Event>) {
      return delegate.process_events(events);
    } else if constexpr (CallableSinkWithContext<D, Event>) {
      return std::invoke(delegate, events, context);
    } else {
      return std::invoke(delegate, events);
    }
  };
  if constexpr (std::is_void_v<R>) {
    call();
    return Outcome::delivered();
  } else {
    return to_outcome(call());
  }
}

}  // namespace buffered::detail
