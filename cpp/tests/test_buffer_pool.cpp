// The scratch-block cache (buffer_pool.cpp): freed large blocks are reused by any thread,
// value-initialized storage still reads zero, small blocks and the oldest blocks past the cap
// go back to the system, and fork() never leaves the child's cache locked.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "fheprune/ckks/types.hpp"

namespace fheprune::ckks {
namespace {

// Sizes no other part of the test binary uses, so that the blocks seen are this test's.
constexpr std::size_t kWords = (std::size_t{3} << 17) + 24;  // just over 3 MiB

TEST(BufferPool, ReusesAFreedBlockOfTheSameSize) {
  const u64* first = nullptr;
  {
    ScratchBuffer a(kWords);
    first = a.data();
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(first) % 64, 0u);  // AVX-512 alignment
  }
  const std::size_t cached = detail::cached_scratch_bytes();
  EXPECT_GE(cached, kWords * sizeof(u64));
  ScratchBuffer b(kWords);
  EXPECT_EQ(b.data(), first);
  EXPECT_EQ(detail::cached_scratch_bytes(), cached - kWords * sizeof(u64));
}

TEST(BufferPool, SmallerRequestsTakeABlockOnlyIfItWastesAtMostHalf) {
  const u64* block = nullptr;
  {
    ScratchBuffer a(kWords);
    block = a.data();
  }
  {
    ScratchBuffer too_small(kWords / 2 - 1024);  // would leave more than half of it unused
    EXPECT_NE(too_small.data(), block);
  }
  ScratchBuffer fits(kWords * 3 / 4);
  EXPECT_EQ(fits.data(), block);
}

TEST(BufferPool, RecycledResiduesReadZero) {
  const u64* block = nullptr;
  {
    ScratchBuffer dirty(kWords);
    for (u64& w : dirty) w = ~u64{0};
    block = dirty.data();
  }
  const Residues clean(kWords);  // a ciphertext's storage: value-initialized
  EXPECT_EQ(clean.data(), block);
  for (u64 w : clean) ASSERT_EQ(w, 0u);
}

TEST(BufferPool, ABlockFreedOnOneThreadServesAnother) {
  const u64* freed = nullptr;
  std::thread([&] {
    ScratchBuffer a(kWords);
    freed = a.data();
  }).join();
  const u64* taken = nullptr;
  std::thread([&] {
    ScratchBuffer b(kWords);
    taken = b.data();
  }).join();
  EXPECT_EQ(taken, freed);
}

TEST(BufferPool, SmallBlocksStayWithMalloc) {
  const std::size_t before = detail::cached_scratch_bytes();
  { ScratchBuffer small(1000); }
  EXPECT_EQ(detail::cached_scratch_bytes(), before);
}

TEST(BufferPool, PastTheCapTheBlocksFreedLongestAgoGoFirst) {
  // Never touched (uninitialized storage), so no memory is faulted in.
  const std::size_t words = detail::kMaxCachedScratchBytes / sizeof(u64) * 3 / 5;
  const u64* newer = nullptr;
  {
    ScratchBuffer older_block(words), newer_block(words);
    newer = newer_block.data();
    older_block = ScratchBuffer();  // freed first
  }  // newer_block freed last: the two no longer fit the cap together
  EXPECT_LE(detail::cached_scratch_bytes(), detail::kMaxCachedScratchBytes);
  ScratchBuffer again(words);
  EXPECT_EQ(again.data(), newer);
}

TEST(BufferPool, ForkWhileAnotherThreadAllocatesLeavesTheChildUsable) {
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    while (!stop.load()) ScratchBuffer a(kWords);
  });
  for (int round = 0; round < 20; ++round) {
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(10);  // a child stuck on the cache's lock dies instead of hanging the test
      { ScratchBuffer b(kWords); }
      ScratchBuffer c(kWords);
      _exit(c.size() == kWords ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "round " << round;
  }
  stop = true;
  churn.join();
}

}  // namespace
}  // namespace fheprune::ckks
