#include "fheprune/ckks/encoder.hpp"

#include <cmath>
#include <numbers>
#include <string>

#include "ckks/context_tables.hpp"
#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

namespace {

using cd = std::complex<double>;

// Residue of an integer-valued double (any magnitude) modulo q.
u64 residue_of(double c, const Modulus& q) {
  const bool negative = c < 0;
  const double a = std::fabs(c);
  u64 r;
  if (a < 9.2e18) {
    r = q.reduce(static_cast<u64>(a));
  } else {
    int exponent = 0;
    const double mantissa = std::frexp(a, &exponent);  // a = mantissa * 2^exponent, mantissa in [.5,1)
    const auto m = static_cast<u64>(std::ldexp(mantissa, 53));
    r = q.mul(q.reduce(m), q.pow(2, static_cast<u64>(exponent - 53)));
  }
  return negative ? q.neg(r) : r;
}

}  // namespace

Encoder::Encoder(ContextPtr ctx) : ctx_(std::move(ctx)) {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t slots = n / 2;
  const std::uint64_t two_n = 2 * n;
  slot_index_.resize(slots);
  std::uint64_t e = 1;
  for (std::size_t j = 0; j < slots; ++j) {
    slot_index_[j] = static_cast<std::size_t>((e - 1) / 2);
    e = e * 5 % two_n;
  }
  twist_.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    twist_[i] = std::polar(1.0, std::numbers::pi * static_cast<double>(i) / static_cast<double>(n));
  }
  fft_roots_.resize(n);
  for (std::size_t k = 0; k < n; ++k) {
    fft_roots_[k] =
        std::polar(1.0, 2 * std::numbers::pi * static_cast<double>(k) / static_cast<double>(n));
  }
  fft_bitrev_.resize(n);
  for (std::size_t k = 0; k < n; ++k) fft_bitrev_[k] = reverse_bits(k, ctx_->log_n());
}

// In-place radix-2 DFT: a_l <- sum_i a_i omega^(+-i l).
void Encoder::fft(std::vector<cd>& a, bool inverse) const {
  const std::size_t n = a.size();
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t j = fft_bitrev_[i];
    if (i < j) std::swap(a[i], a[j]);
  }
  for (std::size_t len = 2; len <= n; len <<= 1) {
    const std::size_t stride = n / len;
    const std::size_t half = len / 2;
    for (std::size_t start = 0; start < n; start += len) {
      for (std::size_t k = 0; k < half; ++k) {
        const cd w = fft_roots_[k * stride];
        const double wi = inverse ? -w.imag() : w.imag();
        const cd u = a[start + k];
        const cd b = a[start + k + half];
        // The product written out: std::complex's operator* calls __muldc3 (its inf/NaN
        // recovery) for every butterfly, most of an encoding's time; the values are finite.
        const cd v(b.real() * w.real() - b.imag() * wi, b.real() * wi + b.imag() * w.real());
        a[start + k] = u + v;
        a[start + k + half] = u - v;
      }
    }
  }
}

void Encoder::check(double scale, std::size_t level) const {
  if (!std::isfinite(scale) || scale < 1.0) {
    throw ScaleError("scale must be finite and >= 1; got " + std::to_string(scale));
  }
  if (level > ctx_->max_level()) {
    throw LevelError("level " + std::to_string(level) + " exceeds the maximum level " +
                     std::to_string(ctx_->max_level()));
  }
}

Plaintext Encoder::from_coefficients(const std::vector<double>& coeffs, double scale,
                                     std::size_t level) const {
  const std::size_t n = ctx_->poly_degree();
  double modulus_bits = 0;
  for (std::size_t i = 0; i <= level; ++i) modulus_bits += std::log2(ctx_->tables().modulus(i).value());
  double max_abs = 0;
  for (double c : coeffs) max_abs = std::max(max_abs, std::fabs(c));
  if (max_abs > 0 && std::log2(max_abs) + 1 >= modulus_bits) {
    throw EncodingError("values times scale reach 2^" + std::to_string(std::log2(max_abs)) +
                        ", beyond the modulus at level " + std::to_string(level) + " (2^" +
                        std::to_string(modulus_bits) + "); use a smaller scale or values");
  }
  Plaintext pt(*ctx_, level, scale);
  ctx_->tables().pool().parallel_for(level + 1, [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    u64* out = pt.prime(i);
    for (std::size_t k = 0; k < n; ++k) out[k] = residue_of(coeffs[k], q);
    ctx_->tables().ntt(i).forward(out);
  });
  return pt;
}

std::vector<double> Encoder::coefficients(const std::vector<cd>& values, double scale) const {
  const std::size_t n = ctx_->poly_degree();
  if (values.size() > n / 2) {
    throw EncodingError("got " + std::to_string(values.size()) + " values but there are only " +
                        std::to_string(n / 2) + " slots");
  }
  std::vector<cd> y(n, cd{0, 0});
  for (std::size_t j = 0; j < values.size(); ++j) {
    if (!std::isfinite(values[j].real()) || !std::isfinite(values[j].imag())) {
      throw EncodingError("value " + std::to_string(j) + " is not finite");
    }
    y[slot_index_[j]] = values[j];
    y[n - 1 - slot_index_[j]] = std::conj(values[j]);
  }
  fft(y, /*inverse=*/true);
  std::vector<double> coeffs(n);
  const double factor = scale / static_cast<double>(n);
  for (std::size_t i = 0; i < n; ++i) {
    // Re(y * conj(twist)), written out (see fft).
    const double re = y[i].real() * twist_[i].real() + y[i].imag() * twist_[i].imag();
    coeffs[i] = std::round(re * factor);
  }
  return coeffs;
}

Plaintext Encoder::encode(const std::vector<cd>& values, std::optional<double> scale_opt,
                          std::optional<std::size_t> level_opt) const {
  const double scale = scale_opt.value_or(ctx_->default_scale());
  const std::size_t level = level_opt.value_or(ctx_->max_level());
  check(scale, level);
  return from_coefficients(coefficients(values, scale), scale, level);
}

ExtendedPlaintext Encoder::encode_extended(const std::vector<cd>& values, double scale,
                                           std::size_t level) const {
  check(scale, level);
  const std::vector<double> coeffs = coefficients(values, scale);
  Plaintext chain_part = from_coefficients(coeffs, scale, level);  // checks the size
  const std::size_t n = ctx_->poly_degree();
  const std::size_t chain = ctx_->chain_size();
  ExtendedPlaintext pt;
  pt.level = level;
  pt.extended = level + 1 + ctx_->special_size();
  pt.n = n;
  pt.scale = scale;
  pt.params = ctx_->fingerprint();
  pt.data.resize(pt.extended * n);
  std::copy(chain_part.data().begin(), chain_part.data().end(), pt.data.begin());
  ctx_->tables().pool().parallel_for(ctx_->special_size(), [&](std::size_t s) {
    const Modulus& q = ctx_->tables().modulus(chain + s);
    u64* out = pt.data.data() + (level + 1 + s) * n;
    for (std::size_t k = 0; k < n; ++k) out[k] = residue_of(coeffs[k], q);
    ctx_->tables().ntt(chain + s).forward(out);
  });
  return pt;
}

Plaintext Encoder::encode(const std::vector<double>& values, std::optional<double> scale,
                          std::optional<std::size_t> level) const {
  return encode(std::vector<cd>(values.begin(), values.end()), scale, level);
}

Plaintext Encoder::encode_constant(double value, std::optional<double> scale_opt,
                                   std::optional<std::size_t> level_opt) const {
  const double scale = scale_opt.value_or(ctx_->default_scale());
  const std::size_t level = level_opt.value_or(ctx_->max_level());
  check(scale, level);
  if (!std::isfinite(value)) throw EncodingError("constant is not finite");
  std::vector<double> coeffs(ctx_->poly_degree(), 0.0);
  coeffs[0] = std::round(value * scale);
  return from_coefficients(coeffs, scale, level);
}

std::vector<cd> Encoder::decode_complex(const Plaintext& pt) const {
  if (pt.params() != ctx_->fingerprint()) {
    throw MismatchError("plaintext was made under different parameters");
  }
  const std::size_t n = ctx_->poly_degree();
  const std::size_t primes = pt.primes();
  const LevelData& ld = ctx_->tables().level_data(pt.level());

  Residues coef(pt.data());
  ctx_->tables().pool().parallel_for(primes, [&](std::size_t i) { ctx_->tables().ntt(i).inverse(&coef[i * n]); });

  // Garner's mixed-radix reconstruction, then centre: values above Q/2 are negative. With
  // digits v_i, Q - 1 - v has digits q_i - 1 - v_i, so the comparison and the negation are
  // exact digit by digit.
  std::vector<long double> value(n);
  const std::size_t chunks = std::min<std::size_t>(ctx_->threads() * 4, n);
  ctx_->tables().pool().parallel_for(chunks, [&](std::size_t chunk) {
    std::vector<u64> digits(primes);
    const std::size_t begin = n * chunk / chunks;
    const std::size_t end = n * (chunk + 1) / chunks;
    for (std::size_t k = begin; k < end; ++k) {
      for (std::size_t i = 0; i < primes; ++i) {
        const Modulus& q = ctx_->tables().modulus(i);
        u64 t = coef[i * n + k];
        for (std::size_t j = 0; j < i; ++j) {
          const MultiplyOperand& inv = ld.garner_inv[i][j];
          t = mul_shoup(q.sub(t, q.reduce(digits[j])), inv.value, inv.shoup, q.value());
        }
        digits[i] = t;
      }
      bool negative = false;
      for (std::size_t i = primes; i-- > 0;) {
        const u64 complement = ctx_->tables().modulus(i).value() - 1 - digits[i];
        if (digits[i] != complement) {
          negative = digits[i] > complement;
          break;
        }
      }
      long double v = 0;
      for (std::size_t i = primes; i-- > 0;) {
        const u64 d = negative ? ctx_->tables().modulus(i).value() - 1 - digits[i] : digits[i];
        v = v * static_cast<long double>(ctx_->tables().modulus(i).value()) + static_cast<long double>(d);
      }
      value[k] = negative ? -(v + 1) : v;
    }
  });

  std::vector<cd> y(n);
  const long double inv_scale = 1.0L / static_cast<long double>(pt.scale());
  for (std::size_t i = 0; i < n; ++i) {
    y[i] = static_cast<double>(value[i] * inv_scale) * twist_[i];
  }
  fft(y, /*inverse=*/false);
  std::vector<cd> slots(n / 2);
  for (std::size_t j = 0; j < n / 2; ++j) slots[j] = y[slot_index_[j]];
  return slots;
}

std::vector<double> Encoder::decode(const Plaintext& pt) const {
  const std::vector<cd> c = decode_complex(pt);
  std::vector<double> out(c.size());
  for (std::size_t j = 0; j < c.size(); ++j) out[j] = c[j].real();
  return out;
}

}  // namespace fheprune::ckks
