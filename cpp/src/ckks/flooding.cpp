#include "fheprune/ckks/flooding.hpp"

#include <cmath>
#include <numbers>
#include <string>

#include "ckks/random.hpp"
#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

NoiseFlooder::NoiseFlooder(ContextPtr ctx, int statistical_security_bits,
                           std::size_t shared_decryptions)
    : ctx_(std::move(ctx)), encoder_(ctx_), bits_(statistical_security_bits),
      queries_(shared_decryptions), rng_(std::make_unique<SecureRandom>()) {
  if (bits_ < 8 || bits_ > 80) {
    throw ParameterError("the statistical security of noise flooding must be 8 to 80 bits, got " +
                         std::to_string(bits_));
  }
  if (queries_ < 1 || queries_ > (std::size_t{1} << 20)) {
    throw ParameterError("the number of shared decryptions must be 1 to 2^20, got " +
                         std::to_string(queries_));
  }
}

NoiseFlooder::~NoiseFlooder() = default;
NoiseFlooder::NoiseFlooder(NoiseFlooder&&) noexcept = default;
NoiseFlooder& NoiseFlooder::operator=(NoiseFlooder&&) noexcept = default;

std::vector<double> NoiseFlooder::decode(const Plaintext& pt, FloodingReport* report) {
  const std::vector<std::complex<double>> slots = encoder_.decode_complex(pt);
  double sum_sq = 0.0;
  for (const auto& z : slots) sum_sq += z.imag() * z.imag();
  const double measured = std::sqrt(sum_sq / static_cast<double>(slots.size()));
  const double floor = 1.0 / pt.scale();
  const double spread = std::sqrt(static_cast<double>(ctx_->poly_degree()) *
                                  static_cast<double>(queries_));
  const double sigma = std::exp2(0.5 * bits_) * spread * 6.0 * std::max(measured, floor);

  // Box-Muller on 53-bit uniforms from the CSPRNG: two normals per pair of draws.
  auto uniform = [&] {
    return (static_cast<double>(rng_->next_u64() >> 11) + 0.5) * 0x1p-53;  // in (0, 1)
  };
  std::vector<double> out(slots.size());
  for (std::size_t j = 0; j < out.size(); j += 2) {
    const double radius = sigma * std::sqrt(-2.0 * std::log(uniform()));
    const double angle = 2.0 * std::numbers::pi * uniform();
    out[j] = slots[j].real() + radius * std::cos(angle);
    if (j + 1 < out.size()) out[j + 1] = slots[j + 1].real() + radius * std::sin(angle);
  }
  if (report) *report = {measured, sigma};
  return out;
}

}  // namespace fheprune::ckks
