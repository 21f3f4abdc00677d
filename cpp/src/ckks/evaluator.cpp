// Element-wise operations, multiplication and rescaling. Key switching (relinearization and
// rotations) lives in keyswitch.cpp.
#include "fheprune/ckks/evaluator.hpp"

#include <cmath>
#include <string>

#include "ckks/context_tables.hpp"
#include "fheprune/ckks/errors.hpp"
#include "kernels.hpp"
#include "scale.hpp"

namespace fheprune::ckks {

namespace {

std::string level_hint(std::size_t a, std::size_t b) {
  return "operands are at levels " + std::to_string(a) + " and " + std::to_string(b) +
         "; bring the higher one down with mod_switch_to (or rescale it) first";
}

}  // namespace

Evaluator::Evaluator(ContextPtr ctx) : ctx_(std::move(ctx)) {}

void Evaluator::check_operand(const Ciphertext& a) const {
  if (a.params() != ctx_->fingerprint()) {
    throw MismatchError("ciphertext was made under different parameters than this evaluator");
  }
  if (a.size() < 2 || a.data().size() != a.size() * a.primes() * ctx_->poly_degree()) {
    throw FheError("ciphertext is empty or malformed");
  }
}

void Evaluator::check_pair(const Ciphertext& a, const Ciphertext& b, bool same_scale) const {
  check_operand(a);
  check_operand(b);
  if (a.key_id() != b.key_id()) {
    throw MismatchError("ciphertexts were encrypted under different keys");
  }
  if (a.level() != b.level()) throw LevelError(level_hint(a.level(), b.level()));
  if (same_scale && !scales_match(a.scale(), b.scale())) {
    throw ScaleError("operand scales differ (" + std::to_string(a.scale()) + " vs " +
                     std::to_string(b.scale()) + "); encode or rescale to a common scale");
  }
}

void Evaluator::check_plain(const Ciphertext& a, const Plaintext& p, bool same_scale) const {
  check_operand(a);
  if (p.params() != ctx_->fingerprint()) {
    throw MismatchError("plaintext was made under different parameters than this evaluator");
  }
  if (p.level() < a.level()) {
    throw LevelError("plaintext at level " + std::to_string(p.level()) +
                     " is below the ciphertext's level " + std::to_string(a.level()) +
                     "; encode it at level " + std::to_string(a.level()));
  }
  if (same_scale && !scales_match(a.scale(), p.scale())) {
    throw ScaleError("ciphertext scale " + std::to_string(a.scale()) +
                     " differs from plaintext scale " + std::to_string(p.scale()) +
                     "; encode the plaintext with scale=ciphertext.scale");
  }
}

void Evaluator::add_inplace(Ciphertext& a, const Ciphertext& b) const {
  check_pair(a, b, true);
  const std::size_t n = ctx_->poly_degree();
  const std::size_t size = std::max(a.size(), b.size());
  if (a.size() < size) {
    Ciphertext grown(*ctx_, size, a.level(), a.scale(), a.key_id());
    std::copy(a.data().begin(), a.data().end(), grown.data().begin());
    a = std::move(grown);
  }
  ctx_->tables().pool().parallel_for(a.primes(), [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    for (std::size_t k = 0; k < b.size(); ++k) {
      u64* x = a.poly(k, i);
      const u64* y = b.poly(k, i);
      for (std::size_t j = 0; j < n; ++j) x[j] = q.add(x[j], y[j]);
    }
  });
}

Ciphertext Evaluator::add(const Ciphertext& a, const Ciphertext& b) const {
  Ciphertext out = a;
  add_inplace(out, b);
  return out;
}

void Evaluator::sub_inplace(Ciphertext& a, const Ciphertext& b) const {
  add_inplace(a, negate(b));
}

Ciphertext Evaluator::sub(const Ciphertext& a, const Ciphertext& b) const {
  Ciphertext out = a;
  sub_inplace(out, b);
  return out;
}

Ciphertext Evaluator::negate(const Ciphertext& a) const {
  check_operand(a);
  Ciphertext out = a;
  const std::size_t n = ctx_->poly_degree();
  ctx_->tables().pool().parallel_for(a.primes(), [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    for (std::size_t k = 0; k < a.size(); ++k) {
      u64* x = out.poly(k, i);
      for (std::size_t j = 0; j < n; ++j) x[j] = q.neg(x[j]);
    }
  });
  return out;
}

void Evaluator::add_plain_inplace(Ciphertext& a, const Plaintext& p) const {
  check_plain(a, p, true);
  const std::size_t n = ctx_->poly_degree();
  ctx_->tables().pool().parallel_for(a.primes(), [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    u64* x = a.poly(0, i);
    const u64* y = p.prime(i);
    for (std::size_t j = 0; j < n; ++j) x[j] = q.add(x[j], y[j]);
  });
}

Ciphertext Evaluator::add_plain(const Ciphertext& a, const Plaintext& p) const {
  Ciphertext out = a;
  add_plain_inplace(out, p);
  return out;
}

Ciphertext Evaluator::sub_plain(const Ciphertext& a, const Plaintext& p) const {
  check_plain(a, p, true);
  Ciphertext out = a;
  const std::size_t n = ctx_->poly_degree();
  ctx_->tables().pool().parallel_for(a.primes(), [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    u64* x = out.poly(0, i);
    const u64* y = p.prime(i);
    for (std::size_t j = 0; j < n; ++j) x[j] = q.sub(x[j], y[j]);
  });
  return out;
}

void Evaluator::multiply_plain_inplace(Ciphertext& a, const Plaintext& p) const {
  check_plain(a, p, false);
  const std::size_t n = ctx_->poly_degree();
  ctx_->tables().pool().parallel_for(a.primes(), [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    const u64* y = p.prime(i);
    for (std::size_t k = 0; k < a.size(); ++k) {
      u64* x = a.poly(k, i);
      for (std::size_t j = 0; j < n; ++j) x[j] = q.mul(x[j], y[j]);
    }
  });
  a.set_scale(a.scale() * p.scale());
}

void Evaluator::check_sum(const std::vector<const Ciphertext*>& cts,
                          const std::vector<const Plaintext*>& pts, const char* what) const {
  if (cts.empty() || cts.size() != pts.size()) {
    throw FheError(std::string(what) + " takes as many plaintexts as ciphertexts (at least one), got " +
                   std::to_string(cts.size()) + " and " + std::to_string(pts.size()));
  }
  const Ciphertext& first = *cts[0];
  for (std::size_t i = 0; i < cts.size(); ++i) {
    check_plain(*cts[i], *pts[i], false);
    if (i) {
      check_pair(first, *cts[i], true);
      if (!scales_match(pts[0]->scale(), pts[i]->scale())) {
        throw ScaleError(std::string(what) + ": plaintext scales differ; encode them at one scale");
      }
    }
    if (cts[i]->size() != 2) {
      throw FheError(std::string(what) + " takes size-2 ciphertexts; relinearize first");
    }
  }
}

std::vector<Ciphertext> Evaluator::multiply_plain_sums(
    const std::vector<std::vector<const Ciphertext*>>& cts,
    const std::vector<std::vector<const Plaintext*>>& pts) const {
  if (cts.size() != pts.size()) {
    throw FheError("multiply_plain_sums takes one plaintext list per ciphertext list, got " +
                   std::to_string(cts.size()) + " and " + std::to_string(pts.size()));
  }
  std::vector<Ciphertext> out;
  out.reserve(cts.size());
  std::size_t primes = 0;
  for (std::size_t b = 0; b < cts.size(); ++b) {
    check_sum(cts[b], pts[b], "multiply_plain_sums");
    const Ciphertext& first = *cts[b][0];
    out.emplace_back(*ctx_, 2, first.level(), first.scale() * pts[b][0]->scale(), first.key_id());
    primes = std::max(primes, first.primes());
  }
  // A slice of 512 coefficients of every baby step of a layer (tens of ciphertexts) stays in
  // the L2 cache while all the sums that read it go by; the plaintexts stream through once.
  constexpr std::size_t kSlice = 512;
  const std::size_t n = ctx_->poly_degree();
  ctx_->tables().pool().parallel_for(primes, [&](std::size_t i) {
    std::vector<const u64*> x, c0, c1;
    for (std::size_t start = 0; start < n; start += kSlice) {
      const std::size_t len = std::min(kSlice, n - start);
      for (std::size_t b = 0; b < cts.size(); ++b) {
        if (i >= out[b].primes()) continue;
        const std::size_t terms = cts[b].size();
        x.resize(terms);
        c0.resize(terms);
        c1.resize(terms);
        for (std::size_t t = 0; t < terms; ++t) {
          x[t] = pts[b][t]->prime(i) + start;
          c0[t] = cts[b][t]->poly(0, i) + start;
          c1[t] = cts[b][t]->poly(1, i) + start;
        }
        kernels::inner_product(x.data(), c0.data(), c1.data(), terms, len,
                               ctx_->tables().modulus(i), out[b].poly(0, i) + start,
                               out[b].poly(1, i) + start);
      }
    }
  });
  return out;
}

Ciphertext Evaluator::multiply_plain_sum(const std::vector<const Ciphertext*>& cts,
                                         const std::vector<const Plaintext*>& pts) const {
  check_sum(cts, pts, "multiply_plain_sum");
  const Ciphertext& first = *cts[0];
  const std::size_t n = ctx_->poly_degree();
  const std::size_t terms = cts.size();
  Ciphertext out(*ctx_, 2, first.level(), first.scale() * pts[0]->scale(), first.key_id());
  ctx_->tables().pool().parallel_for(first.primes(), [&](std::size_t i) {
    std::vector<const u64*> x(terms), c0(terms), c1(terms);
    for (std::size_t t = 0; t < terms; ++t) {
      x[t] = pts[t]->prime(i);
      c0[t] = cts[t]->poly(0, i);
      c1[t] = cts[t]->poly(1, i);
    }
    kernels::inner_product(x.data(), c0.data(), c1.data(), terms, n, ctx_->tables().modulus(i),
                           out.poly(0, i), out.poly(1, i));
  });
  return out;
}

Ciphertext Evaluator::multiply_plain(const Ciphertext& a, const Plaintext& p) const {
  Ciphertext out = a;
  multiply_plain_inplace(out, p);
  return out;
}

Ciphertext Evaluator::multiply(const Ciphertext& a, const Ciphertext& b) const {
  check_pair(a, b, false);
  if (a.size() != 2 || b.size() != 2) {
    throw FheError("multiply takes size-2 ciphertexts; relinearize the size-3 operand first");
  }
  double modulus_bits = 0;
  for (std::size_t i = 0; i <= a.level(); ++i) modulus_bits += std::log2(ctx_->tables().modulus(i).value());
  const double product_bits = std::log2(a.scale()) + std::log2(b.scale());
  if (product_bits + 1 >= modulus_bits) {
    throw ScaleError("product scale 2^" + std::to_string(product_bits) +
                     " does not fit the modulus at level " + std::to_string(a.level()) + " (2^" +
                     std::to_string(modulus_bits) + "); rescale the operands first");
  }
  const std::size_t n = ctx_->poly_degree();
  Ciphertext out(*ctx_, 3, a.level(), a.scale() * b.scale(), a.key_id());
  const bool same = &a == &b;
  ctx_->tables().pool().parallel_for(a.primes(), [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    const u64* a0 = a.poly(0, i);
    const u64* a1 = a.poly(1, i);
    const u64* b0 = b.poly(0, i);
    const u64* b1 = b.poly(1, i);
    u64* d0 = out.poly(0, i);
    u64* d1 = out.poly(1, i);
    u64* d2 = out.poly(2, i);
    if (same) {
      for (std::size_t j = 0; j < n; ++j) {
        d0[j] = q.mul(a0[j], a0[j]);
        const u64 cross = q.mul(a0[j], a1[j]);
        d1[j] = q.add(cross, cross);
        d2[j] = q.mul(a1[j], a1[j]);
      }
    } else {
      for (std::size_t j = 0; j < n; ++j) {
        d0[j] = q.mul(a0[j], b0[j]);
        d2[j] = q.mul(a1[j], b1[j]);
        // Cross term as a 128-bit sum of two products: one reduction instead of two.
        d1[j] = q.reduce128(static_cast<u128>(a0[j]) * b1[j] + static_cast<u128>(a1[j]) * b0[j]);
      }
    }
  });
  return out;
}

Ciphertext Evaluator::square(const Ciphertext& a) const { return multiply(a, a); }

Ciphertext Evaluator::multiply_relin(const Ciphertext& a, const Ciphertext& b,
                                     const RelinKey& rk) const {
  Ciphertext out = multiply(a, b);
  relinearize_inplace(out, rk);
  return out;
}

Ciphertext Evaluator::rescale(const Ciphertext& a) const {
  check_operand(a);
  if (a.level() == 0) {
    throw LevelError("cannot rescale: the ciphertext is at level 0 (no primes left to drop); "
                     "the computation needs more levels, i.e. a longer modulus chain");
  }
  const std::size_t n = ctx_->poly_degree();
  const std::size_t l = a.level();
  const LevelData& ld = ctx_->tables().level_data(l);
  const Modulus& last = ctx_->tables().modulus(l);
  const u64 last_q = last.value();
  const u64 half = last_q >> 1;
  Ciphertext out(*ctx_, a.size(), l - 1, a.scale() / static_cast<double>(last_q), a.key_id());

  // The last residue of each component, back in coefficient form.
  std::vector<u64> tails(a.size() * n);
  ctx_->tables().pool().parallel_for(a.size(), [&](std::size_t k) {
    std::copy(a.poly(k, l), a.poly(k, l) + n, tails.begin() + static_cast<std::ptrdiff_t>(k * n));
    ctx_->tables().ntt(l).inverse(tails.data() + k * n);
  });
  // (c_i - [c_l]_centered) * q_l^-1 mod q_i: exact division by q_l, rounded.
  ctx_->tables().pool().parallel_for(a.size() * l, [&](std::size_t task) {
    const std::size_t k = task / l;
    const std::size_t i = task % l;
    const Modulus& q = ctx_->tables().modulus(i);
    const u64* tail = tails.data() + k * n;
    std::vector<u64> t(n);
    const u64 last_mod_q = ld.last_mod[i];
    const u64 qv = q.value();
    // Residue of the centred tail r (or r - q_l above half) modulo q_i; a branch-free form
    // when q_l < 2 q_i, so the loop vectorizes.
    if (last_q < 2 * qv) {
      for (std::size_t j = 0; j < n; ++j) {
        const u64 r = tail[j];
        u64 v = r >= qv ? r - qv : r;
        const u64 shifted = v >= last_mod_q ? v - last_mod_q : v + qv - last_mod_q;
        t[j] = r > half ? shifted : v;
      }
    } else {
      for (std::size_t j = 0; j < n; ++j) {
        const u64 r = tail[j];
        t[j] = r > half ? q.sub(q.reduce(r), last_mod_q) : q.reduce(r);
      }
    }
    ctx_->tables().ntt(i).forward(t.data());
    kernels::sub_scale(a.poly(k, i), t.data(), ld.inv_last_mod[i], qv, out.poly(k, i), n,
                       /*accumulate=*/false);
  });
  return out;
}

Ciphertext Evaluator::mod_switch_to(const Ciphertext& a, std::size_t level) const {
  check_operand(a);
  if (level > a.level()) {
    throw LevelError("cannot switch up from level " + std::to_string(a.level()) + " to " +
                     std::to_string(level));
  }
  const std::size_t n = ctx_->poly_degree();
  Ciphertext out(*ctx_, a.size(), level, a.scale(), a.key_id());
  for (std::size_t k = 0; k < a.size(); ++k) {
    std::copy(a.poly(k, 0), a.poly(k, 0) + (level + 1) * n, out.poly(k, 0));
  }
  return out;
}

Plaintext Evaluator::mod_switch_to(const Plaintext& p, std::size_t level) const {
  if (p.params() != ctx_->fingerprint()) {
    throw MismatchError("plaintext was made under different parameters than this evaluator");
  }
  if (level > p.level()) {
    throw LevelError("cannot switch up from level " + std::to_string(p.level()) + " to " +
                     std::to_string(level));
  }
  Plaintext out(*ctx_, level, p.scale());
  std::copy(p.data().begin(),
            p.data().begin() + static_cast<std::ptrdiff_t>((level + 1) * ctx_->poly_degree()),
            out.data().begin());
  return out;
}

}  // namespace fheprune::ckks
