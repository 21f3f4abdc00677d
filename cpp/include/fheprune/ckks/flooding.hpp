// Noise flooding for decryptions that leave the client.
//
// A CKKS decryption returns the message plus the ciphertext's noise, and that noise is a
// function of the secret key: whoever holds the ciphertext and sees the decrypted values can
// re-encode them and solve for the key (Li and Micciancio, EUROCRYPT 2021; the IND-CPA-D
// setting). Decrypted results must therefore stay with the client, or be flooded first.
//
// The flooding noise is Gaussian, added to every slot, with standard deviation
//     2^(s/2) * sqrt(N * k) * 6 * sigma,
// s the statistical security parameter, N the ring degree, k the number of shared decryptions
// of this ciphertext (or of ciphertexts with correlated noise: averaging k flooded copies
// shrinks the flooding by sqrt(k)), and sigma the noise measured on the plaintext, so that
// 6 sigma bounds every slot's noise with overwhelming probability. The sqrt(N) factor covers the
// N coefficients the slots mix. sigma is measured from the imaginary parts of the decoded slots:
// a real-valued computation leaves the message's imaginary parts at zero, so they hold only
// noise, with the spread of the noise in the real parts; a floor of one rounding unit
// (1 / scale) keeps a near-noiseless plaintext from going unflooded. The measurement is an
// estimate from the ciphertext itself, not a proven bound; the report's noise_std depends on
// the key and must not be shared.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "fheprune/ckks/ciphertext.hpp"
#include "fheprune/ckks/encoder.hpp"

namespace fheprune::ckks {

class SecureRandom;  // internal: the CSPRNG (cpp/src/ckks/random.hpp)

struct FloodingReport {
  double noise_std = 0.0;     // measured on the plaintext (slot domain); keep it private
  double flooding_std = 0.0;  // of the Gaussian noise added to every slot
};

class NoiseFlooder {
 public:
  // `statistical_security_bits` s (8..80) and `shared_decryptions` k (1..2^20): see above;
  // ParameterError outside. The precision cost is about s/2 + log2(sqrt(N k) * 6) bits.
  explicit NoiseFlooder(ContextPtr ctx, int statistical_security_bits = 32,
                        std::size_t shared_decryptions = 1);
  ~NoiseFlooder();
  NoiseFlooder(NoiseFlooder&&) noexcept;
  NoiseFlooder& operator=(NoiseFlooder&&) noexcept;

  int statistical_security_bits() const { return bits_; }
  std::size_t shared_decryptions() const { return queries_; }
  // The real slots of `pt` with the flooding noise added.
  std::vector<double> decode(const Plaintext& pt, FloodingReport* report = nullptr);

 private:
  ContextPtr ctx_;
  Encoder encoder_;
  int bits_;
  std::size_t queries_;
  std::unique_ptr<SecureRandom> rng_;
};

}  // namespace fheprune::ckks
