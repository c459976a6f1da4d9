// The queue's storage: fixed-size blocks of element slots, allocated once, linked into lanes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

#include "spin_lock.hpp"

namespace buffered::detail {

// `blocks` blocks of `block_size` slots for T, and (when `sized`) a byte size per slot, all
// allocated by the constructor (std::bad_alloc reaches the caller) and never again. Blocks
// [0, reserved) start out given away (one per lane); the rest wait in the free list.
//
// A lane is a chain of blocks: its producer takes a free block when its tail block is full and
// links it behind (link()); the consumer follows the link (next()) and frees the block it left.
//
// Thread-safe: acquire() and release() under a spin lock held for one vector operation; slot(),
// size_at(), link() and next() touch only what the caller owns. Never allocates after
// construction: the free list has room for every block.
//
// Memory ordering: link() and next() are relaxed. The producer links a block before it
// publishes (release) the count that reaches into it, and the consumer acquires that count
// before it follows the link. A block goes back through the lock, so the destruction of an
// element happens-before the construction of the next one in its slot.
template <class T>
class BlockPool {
 public:
  BlockPool(std::size_t blocks, std::size_t block_size, bool sized, std::size_t reserved)
      : block_(block_size),
        slots_(new Slot[blocks * block_size]),  // not zeroed: pages are touched as lanes fill
        next_(std::make_unique<std::atomic<std::size_t>[]>(blocks)) {
    if (sized) sizes_.reset(new std::uint64_t[blocks * block_size]);
    free_.reserve(blocks);
    for (std::size_t b = blocks; b-- > reserved;) free_.push_back(b);
  }

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  std::size_t block_size() const noexcept { return block_; }

  T* slot(std::size_t block, std::size_t index) noexcept {
    return std::launder(reinterpret_cast<T*>(slots_[block * block_ + index].storage));
  }
  T* end_of(std::size_t block) noexcept { return slot(block, 0) + block_; }

  // The byte size stored beside a slot (sized pools).
  std::uint64_t* size_at(std::size_t block, std::size_t index) noexcept {
    return &sizes_[block * block_ + index];
  }
  std::uint64_t& size_of(const T* element) noexcept {
    return sizes_[static_cast<std::size_t>(element - slot(0, 0))];
  }

  // A free block, or false if none is left (not reached: the queue sizes the pool for every
  // lane's worst case).
  bool acquire(std::size_t& block) noexcept {
    lock_.lock();
    const bool got = !free_.empty();
    if (got) {
      block = free_.back();
      free_.pop_back();
    }
    lock_.unlock();
    return got;
  }

  void release(std::size_t block) noexcept {
    lock_.lock();
    free_.push_back(block);  // reserved for every block: never allocates
    lock_.unlock();
  }

  void link(std::size_t from, std::size_t to) noexcept {
    next_[from].store(to, std::memory_order_relaxed);
  }
  std::size_t next(std::size_t block) const noexcept {
    return next_[block].load(std::memory_order_relaxed);
  }

  void reset_lock_in_child() noexcept { lock_.reset_in_child(); }

 private:
  struct Slot {
    alignas(T) unsigned char storage[sizeof(T)];
  };

  const std::size_t block_;
  std::unique_ptr<Slot[]> slots_;
  std::unique_ptr<std::uint64_t[]> sizes_;
  std::unique_ptr<std::atomic<std::size_t>[]> next_;
  SpinLock lock_;
  std::vector<std::size_t> free_;  // guarded by lock_
};

}  // namespace buffered::detail
