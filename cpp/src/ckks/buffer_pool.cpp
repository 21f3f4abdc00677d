// A cache of large scratch blocks, shared by every thread (see types.hpp).
//
// glibc serves each pool thread from its own arena, whose heaps are at most 64 MiB and are
// unmapped as soon as their blocks are free; a block of tens of megabytes (an extended
// ciphertext at N = 2^16) is then faulted in page by page on every use. Keeping freed blocks
// and handing them to whichever thread asks next removes those faults. A request takes the
// smallest cached block that holds it, if that wastes at most half of it: blocks of one level
// then serve the next level down. Past the cap, the blocks freed longest ago go back to the
// system first, so the cache follows the working set of what runs now (a server for another
// model, other levels) instead of keeping what ran before.
#include <pthread.h>

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <new>

#include "fheprune/ckks/types.hpp"

namespace fheprune::ckks::detail {
namespace {

// Smaller blocks stay with malloc, whose per-thread caches serve them well.
constexpr std::size_t kPooledBytes = std::size_t{1} << 20;
// Each pooled block starts with a header holding its capacity; 64 bytes keep the residues
// after it aligned for AVX-512.
constexpr std::size_t kHeader = 64;
constexpr std::align_val_t kAlignment{64};

struct Pool {
  const std::size_t cap = kMaxCachedScratchBytes;
  std::mutex mutex;
  // Freed blocks, oldest first, and the same blocks by capacity (header included).
  std::list<std::byte*> by_age;
  std::multimap<std::size_t, std::list<std::byte*>::iterator> by_size;
  std::size_t cached = 0;

  static Pool& instance() {
    // Never destroyed: buffers in other static objects may be freed after this file's statics.
    static Pool* pool = new Pool();
    return *pool;
  }

  void erase(std::multimap<std::size_t, std::list<std::byte*>::iterator>::iterator it) {
    cached -= it->first;
    by_age.erase(it->second);
    by_size.erase(it);
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

void free_block(std::byte* block) { ::operator delete(block, kAlignment); }

}  // namespace

void* allocate_scratch(std::size_t bytes) {
  if (bytes < kPooledBytes) return ::operator new(bytes);
  Pool& pool = Pool::instance();
  {
    std::lock_guard<std::mutex> lock(pool.mutex);
    auto it = pool.by_size.lower_bound(bytes);
    if (it != pool.by_size.end() && it->first - bytes <= bytes / 2) {
      std::byte* block = *it->second;
      pool.erase(it);
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
  std::lock_guard<std::mutex> lock(pool.mutex);
  if (capacity <= pool.cap) {
    try {
      auto age = pool.by_age.insert(pool.by_age.end(), block);
      pool.by_size.emplace(capacity, age);
      pool.cached += capacity;
      block = nullptr;
    } catch (const std::bad_alloc&) {
      // no room to remember it: give it back below
    }
    while (pool.cached > pool.cap) {  // the blocks freed longest ago go first
      std::byte* oldest = pool.by_age.front();
      auto range = pool.by_size.equal_range(capacity_of(oldest));
      for (auto it = range.first; it != range.second; ++it) {
        if (*it->second == oldest) {
          pool.erase(it);
          break;
        }
      }
      free_block(oldest);
    }
  }
  if (block != nullptr) free_block(block);
}

std::size_t cached_scratch_bytes() noexcept {
  Pool& pool = Pool::instance();
  std::lock_guard<std::mutex> lock(pool.mutex);
  return pool.cached;
}

}  // namespace fheprune::ckks::detail
