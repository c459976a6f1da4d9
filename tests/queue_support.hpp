// Pushing into a ShardedQueue the way Admission does (tests of the queue on its own).
#pragma once

#include <buffered/detail/sharded_queue.hpp>

#include <cstdint>
#include <utility>

namespace buffered_test {

// This thread's lane (registering it), then one push counting `bytes` (kSized: a sized queue);
// `lane` receives the lane.
template <bool kSized, class Queue, class... Args>
buffered::detail::PushResult push_into_lane(Queue& q, typename Queue::LaneHandle& lane,
                                            std::uint64_t bytes, Args&&... args) {
  lane = q.lane_of_thread();
  if (lane == nullptr) return buffered::detail::PushResult::closed;
  return q.template push<kSized>(lane, bytes, std::forward<Args>(args)...);
}

template <class Queue, class... Args>
buffered::detail::PushResult try_push(Queue& q, typename Queue::LaneHandle& lane, Args&&... args) {
  return push_into_lane<false>(q, lane, 0, std::forward<Args>(args)...);
}

template <class Queue, class... Args>
buffered::detail::PushResult try_push_sized(Queue& q, typename Queue::LaneHandle& lane,
                                            std::uint64_t bytes, Args&&... args) {
  return push_into_lane<true>(q, lane, bytes, std::forward<Args>(args)...);
}

}  // namespace buffered_test
