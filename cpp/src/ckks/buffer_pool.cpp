// A cache of large scratch blocks, shared by every thread (see types.hpp).
//
// glibc serves each pool thread from its own arena, whose heaps are at most 64 MiB and are
// unmapped as soon as their blocks are free; a block of tens of megabytes (an extended
// ciphertext at N = 2^16) is then faulted in page by page on every use. Keeping freed blocks
// and handing them to whichever thread asks next removes those faults. A request takes the
// smallest cached block that holds it, if that wastes at most half of it: blocks of one level
// then serve the next level down, so the cache stays near the engine's working set.
#include <pthread.h>

#include <cstddef>
#include <map>
#include <mutex>
#include <new>

#include "fheprune/ckks/types.hpp"

namespace fheprune::ckks::detail {
namespace {

// Smaller blocks stay with malloc, whose per-thread caches serve them well.
constexpr std::size_t kPooledBytes = std::size_t{1} << 20;
// The most freed bytes kept: beyond it a freed block goes back to the system.
constexpr std::size_t kMaxCachedBytes = std::size_t{2} << 30;
// Each pooled block starts with a header holding its capacity; 64 bytes keep the residues
// after it aligned for AVX-512.
constexpr std::size_t kHeader = 64;
constexpr std::align_val_t kAlignment{64};

struct Pool {
  std::mutex mutex;
  std::multimap<std::size_t, std::byte*> free_blocks;  // capacity -> block (header included)
  std::size_t cached = 0;

  static Pool& instance() {
    // Never destroyed: buffers in other static objects may be freed after this file's statics.
    static Pool* pool = new Pool();
    return *pool;
  }

 private:
  Pool() {
    // A fork() while another thread holds the lock would leave the child's copy locked
    // forever: the forking thread takes it around every fork and releases it on both sides.
    pthread_atfork([] { instance().mutex.lock(); }, [] { instance().mutex.unlock(); },
                   [] { instance().mutex.unlock(); });
  }
};

// Built while the library loads, before any thread can use or fork around it: a child forked
// while another thread was still constructing it would wait on that construction forever.
[[maybe_unused]] const Pool& kEagerPool = Pool::instance();

std::size_t& capacity_of(std::byte* block) { return *reinterpret_cast<std::size_t*>(block); }

}  // namespace

void* allocate_scratch(std::size_t bytes) {
  if (bytes < kPooledBytes) return ::operator new(bytes);
  Pool& pool = Pool::instance();
  {
    std::lock_guard<std::mutex> lock(pool.mutex);
    auto it = pool.free_blocks.lower_bound(bytes);
    if (it != pool.free_blocks.end() && it->first - bytes <= bytes / 2) {
      std::byte* block = it->second;
      pool.cached -= it->first;
      pool.free_blocks.erase(it);
      return block + kHeader;
    }
  }
  auto* block = static_cast<std::byte*>(::operator new(kHeader + bytes, kAlignment));
  capacity_of(block) = bytes;
  return block + kHeader;
}

void release_scratch(void* residues, std::size_t bytes) noexcept {
  if (residues == nullptr) return;
  if (bytes < kPooledBytes) {
    ::operator delete(residues);
    return;
  }
  std::byte* block = static_cast<std::byte*>(residues) - kHeader;
  const std::size_t capacity = capacity_of(block);
  Pool& pool = Pool::instance();
  {
    std::lock_guard<std::mutex> lock(pool.mutex);
    if (pool.cached + capacity <= kMaxCachedBytes) {
      try {
        pool.free_blocks.emplace(capacity, block);
        pool.cached += capacity;
        return;
      } catch (const std::bad_alloc&) {
        // no room to remember it: give it back below
      }
    }
  }
  ::operator delete(block, kAlignment);
}

std::size_t cached_scratch_bytes() noexcept {
  Pool& pool = Pool::instance();
  std::lock_guard<std::mutex> lock(pool.mutex);
  return pool.cached;
}

}  // namespace fheprune::ckks::detail
