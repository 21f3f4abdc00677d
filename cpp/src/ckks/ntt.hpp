// Negacyclic number-theoretic transform over Z_q[X]/(X^n + 1).
//
// Forward: Cooley-Tukey butterflies, natural-order input, bit-reversed output; inverse:
// Gentleman-Sande, bit-reversed input, natural output, with n^-1 folded into the last layer.
// Butterflies are Harvey's lazy ones (values kept in [0, 4q)), which is why primes stay below
// 2^61. Output index k holds the evaluation at psi^(2*bitrev(k)+1).
#pragma once

#include <cstddef>
#include <vector>

#include "ckks/modarith.hpp"

namespace fheprune::ckks {

// What the AVX-512 kernels (ntt_avx512.cpp) and the AVX2 integer-lane kernel (ntt_avx2.cpp)
// need of a table.
struct NttVectorView {
  u64 q;
  std::size_t n;
  bool ifma;  // 52-bit IFMA arithmetic (shoup constants are floor(w 2^52 / q)), else 64-bit
  const u64* roots;
  const u64* roots_shoup;
  const u64* inv_roots;
  const u64* inv_roots_shoup;
  u64 inv_n, inv_n_shoup, inv_n_root, inv_n_root_shoup;
};

// IFMA multiplies 52-bit operands; lazy values stay below 4q, so q must stay below 2^50.
inline constexpr u64 kIfmaPrimeBound = u64{1} << 50;

bool avx512_ntt_available();
void forward_avx512(const NttVectorView& v, u64* a);
void inverse_avx512(const NttVectorView& v, u64* a);

// The AVX2 + FMA kernels hold residues as doubles: values up to 4q and the rounding errors of
// their products stay exact integers (below 2^53) for primes below 2^50 (simd_fma.hpp).
inline constexpr u64 kFmaPrimeBound = u64{1} << 50;

// What the AVX2 + FMA kernel needs of a table (see ntt_avx2.cpp): each twiddle w as a double
// and w / q rounded.
struct NttFmaView {
  u64 q;
  std::size_t n;
  const double* roots;
  const double* roots_q;
  const double* inv_roots;
  const double* inv_roots_q;
  double inv_n, inv_n_q, inv_n_root, inv_n_root_q;
};

bool fma_ntt_available();
void forward_fma(const NttFmaView& v, u64* a);
void inverse_fma(const NttFmaView& v, u64* a);
// AVX2 64-bit integer lanes for the wider primes (64-bit Shoup constants of the view).
void forward_avx2(const NttVectorView& v, u64* a);
void inverse_avx2(const NttVectorView& v, u64* a);

class NttTables {
 public:
  NttTables(std::size_t n, const Modulus& q);

  std::size_t size() const { return n_; }
  const Modulus& modulus() const { return q_; }
  u64 root() const { return psi_; }

  void forward(u64* values) const;
  void inverse(u64* values) const;
  // Which kernel runs: AVX-512 (IFMA for primes below 2^50) where the CPU has it; else AVX2
  // (FMA in double precision for primes below 2^50, 64-bit integer lanes above); else scalar.
  enum class Kernel { kScalar, kIfma52, kAvx512, kFma52, kAvx2 };
  Kernel kernel() const { return kernel_; }
  // Tables built while this is false use the scalar kernel (for tests and comparisons).
  static void enable_vector_kernels(bool enabled);

 private:
  std::size_t n_;
  int log_n_;
  Modulus q_;
  u64 psi_;
  std::vector<u64> roots_;        // psi^bitrev(k)
  std::vector<u64> roots_shoup_;
  std::vector<u64> inv_roots_;    // psi^-bitrev(k), in the order the inverse visits them
  std::vector<u64> inv_roots_shoup_;
  // Shoup constants for 52-bit IFMA arithmetic: floor(w * 2^52 / q).
  std::vector<u64> roots_shoup52_;
  std::vector<u64> inv_roots_shoup52_;
  u64 inv_n_shoup52_ = 0;
  u64 inv_n_root_shoup52_ = 0;
  // Twiddles as doubles, and divided by q, for the AVX2 + FMA kernel.
  std::vector<double> roots_f_, roots_fq_, inv_roots_f_, inv_roots_fq_;
  Kernel kernel_ = Kernel::kScalar;
  MultiplyOperand inv_n_;
  MultiplyOperand inv_n_root_;    // n^-1 * (last inverse twiddle)

  void forward_scalar(u64* a) const;
  void inverse_scalar(u64* a) const;
  NttVectorView vector_view() const;
  NttFmaView fma_view() const;
};

// Reverse the lowest `bits` bits of x.
inline std::size_t reverse_bits(std::size_t x, int bits) {
  std::size_t r = 0;
  for (int i = 0; i < bits; ++i) {
    r = (r << 1) | (x & 1);
    x >>= 1;
  }
  return r;
}

}  // namespace fheprune::ckks
