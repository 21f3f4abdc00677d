// Noise flooding for decryptions that leave the client.
//
// A CKKS decryption returns the message plus the ciphertext's noise, and that noise is a
// function of the secret key: whoever holds the ciphertext and sees the decrypted values can
// re-encode them and solve for the key (Li and Micciancio, EUROCRYPT 2021; the IND-CPA-D
// setting). Decrypted results must therefore stay with the client, or be flooded first: here,
// Gaussian noise 2^(s/2) times the noise measured on the very plaintext is added to every slot,
// so that the shared values carry (statistically) nothing of the ciphertext noise.
//
// The noise is measured from the imaginary parts of the decoded slots: a real-valued
// computation leaves the message's imaginary parts at zero, so they hold only noise, with the
// same spread as the noise in the real parts. A floor of one rounding unit (1 / scale) keeps a
// near-noiseless plaintext from going unflooded.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "fheprune/ckks/ciphertext.hpp"
#include "fheprune/ckks/encoder.hpp"

namespace fheprune::ckks {

class SecureRandom;  // internal: the CSPRNG (cpp/src/ckks/random.hpp)

struct FloodingReport {
  double noise_std = 0.0;     // measured on the plaintext (slot domain)
  double flooding_std = 0.0;  // of the Gaussian noise added to every slot
};

class NoiseFlooder {
 public:
  // `statistical_security_bits` s: the flooding noise is 2^(s/2) times the measured noise, and
  // costs about s/2 bits of precision. 8 <= s <= 80 (ParameterError otherwise).
  explicit NoiseFlooder(ContextPtr ctx, int statistical_security_bits = 32);
  ~NoiseFlooder();
  NoiseFlooder(NoiseFlooder&&) noexcept;
  NoiseFlooder& operator=(NoiseFlooder&&) noexcept;

  int statistical_security_bits() const { return bits_; }
  // The real slots of `pt` with the flooding noise added.
  std::vector<double> decode(const Plaintext& pt, FloodingReport* report = nullptr);

 private:
  ContextPtr ctx_;
  Encoder encoder_;
  int bits_;
  std::unique_ptr<SecureRandom> rng_;
};

}  // namespace fheprune::ckks
