// Quick per-operation timings of the engine from C++ alone (no Python):
//   fheprune_bench [log2 N] [threads]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>

#include "fheprune/ckks/ckks.hpp"

using namespace fheprune::ckks;

static double time_ms(const std::function<void()>& f, int reps) {
  f();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::milli>(t1 - t0).count() / reps;
}

int main(int argc, char** argv) {
  const int log_n = argc > 1 ? std::atoi(argv[1]) : 13;
  const std::size_t threads = argc > 2 ? static_cast<std::size_t>(std::atoi(argv[2])) : 1;
  Parameters p;
  p.poly_degree = std::size_t{1} << log_n;
  if (log_n == 13) {
    p.chain_bits = {60, 40, 40};
  } else {
    p.chain_bits = {60, 40, 40, 40, 40, 40, 40, 40};
  }
  p.special_bits = {60};
  auto ctx = make_context(p, threads);
  KeyGenerator kg(ctx);
  auto pk = kg.create_public_key();
  auto rk = kg.create_relin_key();
  std::vector<long> steps;
  for (long s = 1; s <= 16; ++s) steps.push_back(s);
  auto gk = kg.create_galois_keys(steps);
  Encoder enc(ctx);
  Encryptor encryptor(ctx, pk);
  Evaluator ev(ctx);
  std::vector<double> v(ctx->slots());
  std::mt19937_64 gen(1);  // test data only, not key material
  std::uniform_real_distribution<double> dist(-1, 1);
  for (auto& x : v) x = dist(gen);
  auto pt = enc.encode(v);
  auto ct = encryptor.encrypt(pt);
  auto ct2 = encryptor.encrypt(pt);
  const int reps = log_n == 13 ? 50 : 10;
  std::printf("N=2^%d threads=%zu %s kernels=%s\n", log_n, threads, p.describe().c_str(),
              vector_kernels_enabled() ? vector_kernel_set() : "none");
  std::printf("encode          %8.3f ms\n", time_ms([&] { (void)enc.encode(v); }, reps));
  std::printf("encrypt         %8.3f ms\n", time_ms([&] { (void)encryptor.encrypt(pt); }, reps));
  std::printf("add             %8.3f ms\n", time_ms([&] { (void)ev.add(ct, ct2); }, reps));
  std::printf("multiply_plain  %8.3f ms\n", time_ms([&] { (void)ev.multiply_plain(ct, pt); }, reps));
  std::printf("multiply_relin  %8.3f ms\n",
              time_ms([&] { (void)ev.multiply_relin(ct, ct2, rk); }, reps));
  auto prod = ev.multiply_plain(ct, pt);
  std::printf("rescale         %8.3f ms\n", time_ms([&] { (void)ev.rescale(prod); }, reps));
  std::printf("rotate          %8.3f ms\n", time_ms([&] { (void)ev.rotate(ct, 1, gk); }, reps));
  std::printf("hoisted16       %8.3f ms\n",
              time_ms([&] { (void)ev.rotate_hoisted(ct, steps, gk); }, reps / 5 + 1));
  // Double hoisting against single hoisting for one BSGS block structure at a middle level:
  // 12 baby rotations, 4 giant blocks of 12 products each (as a pruned conv layer's).
  const std::size_t mid = ctx->max_level() / 2 + 1;
  const Ciphertext low = ev.mod_switch_to(ct, mid);
  std::vector<long> baby(steps.begin(), steps.begin() + 12);
  std::vector<std::complex<double>> cv(v.begin(), v.end());
  std::vector<Plaintext> pts;
  std::vector<ExtendedPlaintext> epts;
  for (int i = 0; i < 12; ++i) {
    pts.push_back(enc.encode(v, std::nullopt, mid));
    epts.push_back(enc.encode_extended(cv, ctx->default_scale(), mid));
  }
  const auto single = [&] {
    const std::vector<Ciphertext> r = ev.rotate_hoisted(low, baby, gk);
    std::vector<const Ciphertext*> c;
    std::vector<const Plaintext*> q;
    for (int i = 0; i < 12; ++i) c.push_back(&r[i]), q.push_back(&pts[i]);
    for (int g = 0; g < 4; ++g) (void)ev.multiply_plain_sum(c, q);
  };
  const auto dbl = [&] {
    const std::vector<ExtendedCiphertext> r = ev.rotate_hoisted_extended(low, baby, gk);
    std::vector<const ExtendedCiphertext*> c;
    std::vector<const ExtendedPlaintext*> q;
    for (int i = 0; i < 12; ++i) c.push_back(&r[i]), q.push_back(&epts[i]);
    for (int g = 0; g < 4; ++g) (void)ev.mod_down(ev.multiply_plain_sum_extended(c, q));
  };
  // Fused sums of plaintext products as a dense conv layer runs them: 8 blocks of 12 terms
  // over the same 12 ciphertexts.
  const std::vector<Ciphertext> babies = ev.rotate_hoisted(low, baby, gk);
  std::vector<std::vector<const Ciphertext*>> block_cts(8);
  std::vector<std::vector<const Plaintext*>> block_pts(8);
  for (int g = 0; g < 8; ++g) {
    for (int i = 0; i < 12; ++i) {
      block_cts[g].push_back(&babies[i]);
      block_pts[g].push_back(&pts[i]);
    }
  }
  std::printf("level %zu: multiply_plain_sums 8 blocks x 12 terms %8.3f ms\n", mid,
              time_ms([&] { (void)ev.multiply_plain_sums(block_cts, block_pts); }, reps));
  std::printf("level %zu: single-hoisted 12 babies x 4 blocks %8.3f ms\n", mid, time_ms(single, reps));
  std::printf("level %zu: double-hoisted 12 babies x 4 blocks %8.3f ms\n", mid, time_ms(dbl, reps));
  return 0;
}
