// Every form a delegate may take, for the randomized tools (stress, fuzz) to draw from: its
// result (bool, void or Outcome), whether it takes a BatchContext, member or callable.
#pragma once

#include <chrono>
#include <span>
#include <type_traits>

#include <buffered/buffered_backend.hpp>

namespace buffered_test {

enum class Result { boolean, none, outcome };

template <Result R, bool WithContext, bool IsCallable>
struct Form {
  static constexpr Result result = R;
  static constexpr bool context = WithContext, callable = IsCallable;
};

// How a call ends, for the form's result type to express.
struct Ending {
  enum class How { delivered, returns_false, returns_retry, returns_permanent } how;
  std::chrono::nanoseconds after{0};  // for returns_retry
};

// Gives `Base` the delegate form F. Base does the work in
//   Ending handle(std::span<Event>, const buffered::BatchContext* (null without one), Result);
// FormSink only turns its Ending into F's result. An aggregate: initialize it as {Base{...}}.
template <class F, class Base, class Event>
struct FormSink : Base {
  using form = F;
  using R =
      std::conditional_t<F::result == Result::boolean, bool,
                         std::conditional_t<F::result == Result::none, void, buffered::Outcome>>;

  R process_events(std::span<Event> batch) requires(!F::context && !F::callable) {
    return convert(this->handle(batch, nullptr, F::result));
  }
  R process_events(std::span<Event> batch,
                   const buffered::BatchContext& context) requires(F::context && !F::callable) {
    return convert(this->handle(batch, &context, F::result));
  }
  R operator()(std::span<Event> batch) requires(!F::context && F::callable) {
    return convert(this->handle(batch, nullptr, F::result));
  }
  R operator()(std::span<Event> batch,
               const buffered::BatchContext& context) requires(F::context&& F::callable) {
    return convert(this->handle(batch, &context, F::result));
  }

  static R convert(Ending ending) {
    if constexpr (F::result == Result::none) {
      (void)ending;
    } else if constexpr (F::result == Result::boolean) {
      return ending.how == Ending::How::delivered;
    } else {
      switch (ending.how) {
        case Ending::How::delivered:
          return buffered::Outcome::delivered();
        case Ending::How::returns_permanent:
          return buffered::Outcome::permanent_failure();
        default:
          return buffered::Outcome::retry(ending.after);
      }
    }
  }
};

}  // namespace buffered_test
