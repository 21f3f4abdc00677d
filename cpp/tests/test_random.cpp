// The CSPRNG: independent streams in a parent and its forked child (a shared stream would give
// two encryptions the same mask and two key generations the same keys).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "ckks/random.hpp"
#include "test_util.hpp"

namespace fheprune::ckks {
namespace {

// Runs `child` in a forked process and returns the bytes it wrote (up to `size`).
template <class F>
std::vector<unsigned char> in_child(std::size_t size, F child) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const std::vector<unsigned char> out = child();
    const ssize_t written = write(fds[1], out.data(), out.size());
    _exit(written == static_cast<ssize_t>(out.size()) ? 0 : 1);
  }
  close(fds[1]);
  std::vector<unsigned char> got(size);
  std::size_t have = 0;
  while (have < size) {
    const ssize_t n = read(fds[0], got.data() + have, size - have);
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  got.resize(have);
  return got;
}

TEST(SecureRandom, ForkedChildDoesNotContinueTheParentsStream) {
  SecureRandom rng;
  unsigned char warm[32];
  rng.fill(warm, sizeof warm);  // keyed, with buffered bytes left that a child would inherit
  const auto child = in_child(64, [&] {
    std::vector<unsigned char> v(64);
    rng.fill(v.data(), v.size());
    return v;
  });
  std::vector<unsigned char> parent(64);
  rng.fill(parent.data(), parent.size());
  ASSERT_EQ(child.size(), 64u);
  EXPECT_NE(child, parent);
}

TEST(SecureRandom, ForkedEncryptionsHaveIndependentMasks) {
  testing::Fixture f(testing::small_params());
  const Plaintext pt = f.encoder.encode(testing::random_reals(f.ctx->slots(), 3));
  (void)f.encryptor.encrypt(pt);  // the stream is in use before the fork
  const std::size_t n = f.ctx->poly_degree();
  const auto child = in_child(n * sizeof(u64), [&] {
    const Ciphertext ct = f.encryptor.encrypt(pt);
    std::vector<unsigned char> v(n * sizeof(u64));
    std::memcpy(v.data(), ct.poly(1, 0), v.size());  // the mask component, first prime
    return v;
  });
  const Ciphertext ct = f.encryptor.encrypt(pt);
  std::vector<unsigned char> parent(n * sizeof(u64));
  std::memcpy(parent.data(), ct.poly(1, 0), parent.size());
  ASSERT_EQ(child.size(), parent.size());
  EXPECT_NE(child, parent);
}

TEST(SecureRandom, ForkedKeyGenerationsDiffer) {
  testing::Fixture f(testing::small_params());
  const std::size_t size = Serializer::save(*f.ctx, f.keygen.create_public_key()).size();
  const auto child = in_child(size, [&] {
    const Bytes b = Serializer::save(*f.ctx, f.keygen.create_public_key());
    return std::vector<unsigned char>(b.begin(), b.end());
  });
  const Bytes parent = Serializer::save(*f.ctx, f.keygen.create_public_key());
  ASSERT_EQ(child.size(), parent.size());
  EXPECT_NE(std::vector<unsigned char>(parent.begin(), parent.end()), child);
}

TEST(SecureRandom, AForkedChildComputesWithAThreadedContext) {
  // The child has none of the parent's worker threads: the pool must run inline there, not
  // wait for workers that do not exist (a pre-fork server would hang on its first request).
  testing::Fixture f(testing::small_params(), /*threads=*/2);
  const Plaintext pt = f.encoder.encode(testing::random_reals(f.ctx->slots(), 9));
  const Ciphertext ct = f.encryptor.encrypt(pt);
  const auto child = in_child(8, [&] {
    alarm(30);  // a hang kills the child, and the parent sees it did not exit cleanly
    const Ciphertext sq = f.evaluator.rescale(f.evaluator.multiply_relin(ct, ct, f.rk));
    const auto out = f.encoder.decode(f.decryptor.decrypt(sq));
    std::vector<unsigned char> v(8);
    std::memcpy(v.data(), &out[0], 8);
    return v;
  });
  ASSERT_EQ(child.size(), 8u);
  double first = 0.0;
  std::memcpy(&first, child.data(), 8);
  const auto x = testing::random_reals(f.ctx->slots(), 9);
  EXPECT_NEAR(first, x[0] * x[0], 1e-4);
}

// The samplers' distributions. Bounds are several standard errors wide (failure odds far
// below 1e-9 for a correct sampler) and far narrower than any plausible bug: a biased reduction,
// a skipped rejection, a wrong sigma, a repeated stream.

TEST(SecureRandom, UniformModIsBelowQAndUniformEvenWhenHalfTheDrawsAreRejected) {
  SecureRandom rng;
  // 2^31 + 11 rejects almost half of all 32-bit draws; a 38-bit NTT prime almost none.
  for (const u64 q : {(u64{1} << 31) + 11, u64{274877562881}}) {
    const Modulus mod(q);
    constexpr std::size_t n = 1 << 16;
    std::vector<u64> v(n);
    rng.uniform_mod(mod, v.data(), n);
    constexpr int buckets = 16;
    std::vector<double> count(buckets, 0.0);
    for (const u64 x : v) {
      ASSERT_LT(x, q);
      count[static_cast<std::size_t>(static_cast<long double>(x) / q * buckets)] += 1;
    }
    double chi2 = 0;
    for (const double c : count) chi2 += (c - n / buckets) * (c - n / buckets) / (n / buckets);
    EXPECT_LT(chi2, 60.0) << "q = " << q;  // 15 degrees of freedom: P(chi2 > 60) ~ 1e-7
  }
}

TEST(SecureRandom, GaussianHasTheStandardSigmaAndTailCut) {
  SecureRandom rng;
  constexpr std::size_t n = 1 << 18;
  std::vector<std::int64_t> v(n);
  rng.gaussian(v.data(), n);
  double sum = 0, squares = 0;
  std::int64_t largest = 0;
  for (const std::int64_t x : v) {
    sum += static_cast<double>(x);
    squares += static_cast<double>(x * x);
    largest = std::max(largest, x < 0 ? -x : x);
  }
  const double mean = sum / n;
  const double sigma = std::sqrt(squares / n - mean * mean);
  EXPECT_LT(std::abs(mean), 0.05);  // standard error 3.19 / 512 = 0.006
  EXPECT_NEAR(sigma, SecureRandom::kErrorSigma, 0.05);  // standard error about 0.0044
  EXPECT_LE(largest, 19);
  EXPECT_GE(largest, 12);  // |x| >= 12 has probability 1.8e-4 per sample: seen here for sure
}

TEST(SecureRandom, TernaryIsUniformOverMinusOneZeroOne) {
  SecureRandom rng;
  constexpr std::size_t n = 1 << 16;
  std::vector<std::int8_t> v(n);
  rng.ternary(v.data(), n);
  std::array<double, 3> count{};
  for (const std::int8_t x : v) {
    ASSERT_TRUE(x >= -1 && x <= 1);
    count[static_cast<std::size_t>(x + 1)] += 1;
  }
  for (const double c : count) EXPECT_NEAR(c / n, 1.0 / 3.0, 0.01);  // standard error 0.0018
}

TEST(SecureRandom, DrawsOfAnySizeNeverRepeatTheStream) {
  // Small draws go through the buffer, large ones straight from the stream; mixing sizes must
  // never hand out the same bytes twice (compared in 16-byte pieces).
  SecureRandom rng;
  std::vector<std::vector<unsigned char>> draws;
  for (const std::size_t size : {7, 16384, 5, 100000, 16384 + 3, 64, 1 << 20}) {
    draws.emplace_back(size);
    rng.fill(draws.back().data(), size);
  }
  std::vector<std::string> pieces;
  for (const auto& d : draws) {
    for (std::size_t i = 0; i + 16 <= d.size(); i += 16) {
      pieces.emplace_back(reinterpret_cast<const char*>(d.data() + i), 16);
    }
  }
  std::sort(pieces.begin(), pieces.end());
  EXPECT_EQ(std::adjacent_find(pieces.begin(), pieces.end()), pieces.end());
  // And the bytes look uniform: about half the bits set.
  std::size_t ones = 0, bits = 0;
  for (const auto& d : draws) {
    for (const unsigned char b : d) ones += static_cast<std::size_t>(std::popcount(b));
    bits += 8 * d.size();
  }
  EXPECT_NEAR(static_cast<double>(ones) / static_cast<double>(bits), 0.5, 0.002);
}

}  // namespace
}  // namespace fheprune::ckks
