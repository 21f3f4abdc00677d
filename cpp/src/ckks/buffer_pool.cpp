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
#include <sys/mman.h>

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

// Blocks of this size and more are mapped on their own, 2 MiB aligned, and marked for
// transparent huge pages. Faulting a fresh block in 4 KiB pages cost this VM about 12 us a
// page: the first training step of a process (850 MB of new blocks) took 2.7 s longer than the
// next. Huge pages fault 512 times less often. Smaller blocks stay with operator new, where
// rounding to 2 MiB would waste more than it saves.
constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kMappedBytes = 2 * kHugePage;

std::size_t mapped_size(std::size_t capacity) {
  return (kHeader + capacity + kHugePage - 1) / kHugePage * kHugePage;
}

std::byte* new_block(std::size_t capacity) {
  if (capacity < kMappedBytes) {
    return static_cast<std::byte*>(::operator new(kHeader + capacity, kAlignment));
  }
  // Over-map by one huge page and trim both ends, so the block starts on a 2 MiB boundary.
  const std::size_t size = mapped_size(capacity);
  void* raw = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) munmap(raw, aligned - start);
  const std::uintptr_t end = start + size + kHugePage;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - aligned - size);
  auto* block = reinterpret_cast<std::byte*>(aligned);
  madvise(block, size, MADV_HUGEPAGE);  // advice only: without THP the block still works
  return block;
}

void free_block(std::byte* block) {
  const std::size_t capacity = capacity_of(block);
  if (capacity < kMappedBytes) {
    ::operator delete(block, kAlignment);
  } else {
    munmap(block, mapped_size(capacity));
  }
}

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
  std::byte* block = new_block(bytes);
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
