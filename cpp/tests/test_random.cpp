// The CSPRNG: independent streams in a parent and its forked child (a shared stream would give
// two encryptions the same mask and two key generations the same keys).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
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

}  // namespace
}  // namespace fheprune::ckks
