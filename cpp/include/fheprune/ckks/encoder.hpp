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
  // Throws EncodingError unless coefficients up to max_abs fit the modulus at this level.
  void check_fits(double max_abs, std::size_t level) const;
  // The polynomial's coefficients times the scale, rounded.
  std::vector<double> coefficients(const std::vector<std::complex<double>>& values,
                                   double scale) const;
  // Coefficients (already multiplied by the scale) into RNS + NTT form.
  Plaintext from_coefficients(const std::vector<double>& coeffs, double scale,
                              std::size_t level) const;
  // The special FFT of size slots() (Cheon et al.'s HEAAN): with u_k = c_k + i c_(k + N/2)
  // for k < N/2, slot j is sum_k u_k zeta^(5^j k), because zeta^(5^j N/2) = i. Half the size
  // of a plain N-point DFT of the conjugate-extended slots, with no twist.
  // embed: u -> slots; unembed: slots -> u times slots() (the caller divides).
  void embed(std::vector<std::complex<double>>& a) const;
  void unembed(std::vector<std::complex<double>>& a) const;
  void bit_reverse(std::vector<std::complex<double>>& a) const;

  ContextPtr ctx_;
  // Butterfly roots per stage, stage h (h butterflies apart, h = 1, 2, .., slots / 2) at
  // [h - 1, 2h - 1): root j of stage h is zeta^((5^j mod 8h) N / (2h)), contiguous so that
  // the inner loop reads them in order.
  std::vector<std::complex<double>> roots_;
  std::vector<std::size_t> bitrev_;  // over log2(slots) bits
};

}  // namespace fheprune::ckks
