// Pushing into a ShardedQueue the way Admission does (tests of the queue on its own).
#pragma once

#include <buffered/detail/sharded_queue.hpp>

#include <cstdint>
#include <utility>

namespace buffered_test {

// This thread's lane (registering it), then one push; `lane` receives the lane.
template <class Queue, class... Args>
buffered::detail::PushResult try_push(Queue& q, typename Queue::LaneHandle& lane, Args&&... args) {
  lane = q.lane_of_thread();
  if (lane == nullptr) return buffered::detail::PushResult::closed;
  return q.template push<false>(lane, 0, std::forward<Args>(args)...);
}

// The same for a sized queue: the element counts `bytes`.
template <class Queue, class... Args>
buffered::detail::PushResult try_push_sized(Queue& q, typename Queue::LaneHandle& lane,
                                            std::uint64_t bytes, Args&&... args) {
  lane = q.lane_of_thread();
  if (lane == nullptr) return buffered::detail::PushResult::closed;
  return q.template push<true>(lane, bytes, std::forward<Args>(args)...);
}

}  // namespace buffered_test
