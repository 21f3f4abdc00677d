// CKKS encoding through the canonical embedding.
//
// Slot j of a plaintext is the evaluation of its polynomial at zeta^(5^j mod 2N), zeta a
// primitive 2N-th complex root of unity; the conjugate slots at zeta^-(5^j) keep the polynomial
// real. A rotation by k (Galois element 5^k) therefore shifts slots left by k.
#pragma once

#include <complex>
#include <cstddef>
#include <optional>
#include <vector>

#include "fheprune/ckks/ciphertext.hpp"

namespace fheprune::ckks {

class Encoder {
 public:
  explicit Encoder(ContextPtr ctx);

  std::size_t slots() const { return ctx_->slots(); }

  // Values beyond the given count are zero. Scale defaults to the context's default scale;
  // level defaults to the top level.
  Plaintext encode(const std::vector<std::complex<double>>& values,
                   std::optional<double> scale = std::nullopt,
                   std::optional<std::size_t> level = std::nullopt) const;
  Plaintext encode(const std::vector<double>& values, std::optional<double> scale = std::nullopt,
                   std::optional<std::size_t> level = std::nullopt) const;
  // The same value in every slot (a constant polynomial: no FFT needed).
  Plaintext encode_constant(double value, std::optional<double> scale = std::nullopt,
                            std::optional<std::size_t> level = std::nullopt) const;

  // Over the chain primes of `level` and the special primes, for products with
  // ExtendedCiphertexts (double hoisting).
  ExtendedPlaintext encode_extended(const std::vector<std::complex<double>>& values, double scale,
                                    std::size_t level) const;

  std::vector<std::complex<double>> decode_complex(const Plaintext& pt) const;
  std::vector<double> decode(const Plaintext& pt) const;

 private:
  void check(double scale, std::size_t level) const;
  // The polynomial's coefficients times the scale, rounded.
  std::vector<double> coefficients(const std::vector<std::complex<double>>& values,
                                   double scale) const;
  // Coefficients (already multiplied by the scale) into RNS + NTT form.
  Plaintext from_coefficients(const std::vector<double>& coeffs, double scale,
                              std::size_t level) const;
  void fft(std::vector<std::complex<double>>& a, bool inverse) const;

  ContextPtr ctx_;
  std::vector<std::size_t> slot_index_;           // l_j with 5^j = 2 l_j + 1 (mod 2N)
  std::vector<std::complex<double>> twist_;       // zeta^i
  std::vector<std::complex<double>> fft_roots_;   // omega^k, omega = e^(2 pi i / N)
  std::vector<std::size_t> fft_bitrev_;
};

}  // namespace fheprune::ckks
