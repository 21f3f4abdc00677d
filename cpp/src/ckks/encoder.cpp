#include "fheprune/ckks/encoder.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "ckks/context_tables.hpp"
#include "ckks/ntt.hpp"
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
  const std::size_t slots = ctx_->slots();
  const std::uint64_t two_n = 2 * ctx_->poly_degree();
  // 5^j mod 2N for j < slots / 2: stage h needs them modulo 8h, which divides 2N.
  std::vector<std::uint64_t> powers(std::max<std::size_t>(slots / 2, 1));
  std::uint64_t e = 1;
  for (auto& p : powers) {
    p = e;
    e = e * 5 % two_n;
  }
  roots_.resize(slots > 1 ? slots - 1 : 0);
  for (std::size_t h = 1; h < slots; h <<= 1) {
    const std::uint64_t period = 8 * h;
    for (std::size_t j = 0; j < h; ++j) {
      const double angle = 2 * std::numbers::pi * static_cast<double>(powers[j] % period) /
                           static_cast<double>(period);
      roots_[h - 1 + j] = std::polar(1.0, angle);
    }
  }
  bitrev_.resize(slots);
  for (std::size_t k = 0; k < slots; ++k) bitrev_[k] = reverse_bits(k, ctx_->log_n() - 1);
}

void Encoder::bit_reverse(std::vector<cd>& a) const {
  for (std::size_t i = 0; i < a.size(); ++i) {
    const std::size_t j = bitrev_[i];
    if (i < j) std::swap(a[i], a[j]);
  }
}

// Products written out: std::complex's operator* calls __muldc3 (its inf/NaN recovery) for
// every butterfly, most of an encoding's time; the values are finite.
void Encoder::embed(std::vector<cd>& a) const {
  const std::size_t size = a.size();
  bit_reverse(a);
  for (std::size_t h = 1; h < size; h <<= 1) {
    const cd* w = roots_.data() + (h - 1);
    for (std::size_t start = 0; start < size; start += 2 * h) {
      cd* lo = a.data() + start;
      cd* hi = lo + h;
      for (std::size_t j = 0; j < h; ++j) {
        const cd u = lo[j];
        const cd v(hi[j].real() * w[j].real() - hi[j].imag() * w[j].imag(),
                   hi[j].real() * w[j].imag() + hi[j].imag() * w[j].real());
        lo[j] = u + v;
        hi[j] = u - v;
      }
    }
  }
}

void Encoder::unembed(std::vector<cd>& a) const {
  const std::size_t size = a.size();
  for (std::size_t h = size / 2; h >= 1; h >>= 1) {
    const cd* w = roots_.data() + (h - 1);
    for (std::size_t start = 0; start < size; start += 2 * h) {
      cd* lo = a.data() + start;
      cd* hi = lo + h;
      for (std::size_t j = 0; j < h; ++j) {
        const cd u = lo[j] + hi[j];
        const cd d = lo[j] - hi[j];
        // d times the conjugate root: the inverse butterfly.
        lo[j] = u;
        hi[j] = cd(d.real() * w[j].real() + d.imag() * w[j].imag(),
                   d.imag() * w[j].real() - d.real() * w[j].imag());
      }
    }
  }
  bit_reverse(a);
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

void Encoder::check_fits(double max_abs, std::size_t level) const {
  double modulus_bits = 0;
  for (std::size_t i = 0; i <= level; ++i) modulus_bits += std::log2(ctx_->tables().modulus(i).value());
  if (max_abs > 0 && std::log2(max_abs) + 1 >= modulus_bits) {
    throw EncodingError("values times scale reach 2^" + std::to_string(std::log2(max_abs)) +
                        ", beyond the modulus at level " + std::to_string(level) + " (2^" +
                        std::to_string(modulus_bits) + "); use a smaller scale or values");
  }
}

Plaintext Encoder::from_coefficients(const std::vector<double>& coeffs, double scale,
                                     std::size_t level) const {
  const std::size_t n = ctx_->poly_degree();
  double max_abs = 0;
  for (double c : coeffs) max_abs = std::max(max_abs, std::fabs(c));
  check_fits(max_abs, level);
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
  const std::size_t slots = n / 2;
  std::vector<cd> u(slots, cd{0, 0});
  for (std::size_t j = 0; j < values.size(); ++j) {
    if (!std::isfinite(values[j].real()) || !std::isfinite(values[j].imag())) {
      throw EncodingError("value " + std::to_string(j) + " is not finite");
    }
    u[j] = values[j];
  }
  unembed(u);
  std::vector<double> coeffs(n);
  const double factor = scale / static_cast<double>(slots);
  for (std::size_t k = 0; k < slots; ++k) {
    coeffs[k] = std::round(u[k].real() * factor);
    coeffs[k + slots] = std::round(u[k].imag() * factor);
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
  const double c = std::round(value * scale);
  check_fits(std::fabs(c), level);
  // The constant polynomial c takes the value c at every root of unity, so its NTT form is c
  // in every position: no transform needed. A training step or a refresh multiplies by
  // hundreds of constants, and each NTT pass cost as much as the product itself.
  const std::size_t n = ctx_->poly_degree();
  Plaintext pt(*ctx_, level, scale);
  for (std::size_t i = 0; i <= level; ++i) {
    const u64 r = residue_of(c, ctx_->tables().modulus(i));
    std::fill_n(pt.prime(i), n, r);
  }
  return pt;
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

  const std::size_t half = n / 2;
  std::vector<cd> slots(half);
  const long double inv_scale = 1.0L / static_cast<long double>(pt.scale());
  for (std::size_t k = 0; k < half; ++k) {
    slots[k] = cd(static_cast<double>(value[k] * inv_scale),
                  static_cast<double>(value[k + half] * inv_scale));
  }
  embed(slots);
  return slots;
}

std::vector<double> Encoder::decode(const Plaintext& pt) const {
  const std::vector<cd> c = decode_complex(pt);
  std::vector<double> out(c.size());
  for (std::size_t j = 0; j < c.size(); ++j) out[j] = c[j].real();
  return out;
}

}  // namespace fheprune::ckks
