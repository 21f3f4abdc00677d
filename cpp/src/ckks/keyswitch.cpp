// Key switching with hybrid decomposition: relinearization, rotations, conjugation.
//
// A component c (under s') is split into digits of `alpha` chain primes, each digit raised to
// the other primes of its level and to the special primes P (ModUp), multiplied by the key and
// summed, then divided by P (ModDown). Rotations of one ciphertext share the ModUp: in NTT
// form an automorphism only permutes slots, so each extra rotation costs the inner product,
// the ModDown and one permutation.
#include <cstring>
#include <functional>
#include <optional>
#include <string>

#include "ckks/context_tables.hpp"
#include "fheprune/ckks/errors.hpp"
#include "fheprune/ckks/evaluator.hpp"
#include "kernels.hpp"
#include "scale.hpp"

namespace fheprune::ckks {

Decomposition Evaluator::decompose(const Ciphertext& a, std::size_t component) const {
  check_operand(a);
  if (component >= a.size()) throw FheError("ciphertext has no such component");
  const std::size_t n = ctx_->poly_degree();
  const std::size_t l = a.level();
  const std::size_t alpha = ctx_->digit_size();
  const LevelData& ld = ctx_->tables().level_data(l);
  Decomposition dec;
  dec.level = l;
  dec.digits = ctx_->digit_count(l);
  dec.extended = l + 1 + ctx_->special_size();
  dec.data.resize(dec.digits * dec.extended * n);

  // Coefficient form of the component, one prime at a time, already scaled for its digit's
  // base conversion (the part of ModUp that every target prime shares).
  ScratchBuffer coef(a.primes() * n);
  ctx_->tables().pool().parallel_for(a.primes(), [&](std::size_t i) {
    u64* c = coef.data() + i * n;
    std::memcpy(c, a.poly(component, i), n * sizeof(u64));
    ctx_->tables().ntt(i).inverse(c);
    ld.mod_up[i / alpha].scale_source(i % alpha, c, c, n);
  });

  // Extended-prime slot e of a key-prime index: chain primes keep theirs, special primes follow.
  auto slot_of = [&](std::size_t key_index) {
    return key_index < ctx_->chain_size() ? key_index : l + 1 + (key_index - ctx_->chain_size());
  };
  // One task per (digit, extended prime): either copy the digit's own NTT residue or convert
  // and transform.
  ctx_->tables().pool().parallel_for(dec.digits * dec.extended, [&](std::size_t task) {
    const std::size_t d = task / dec.extended;
    const std::size_t e = task % dec.extended;
    const std::size_t begin = d * alpha;
    const std::size_t end = std::min(begin + alpha, l + 1);
    u64* out = dec.data.data() + (d * dec.extended + e) * n;
    if (e >= begin && e < end) {
      std::memcpy(out, a.poly(component, e), n * sizeof(u64));
      return;
    }
    const std::vector<std::size_t>& targets = ld.mod_up_targets[d];
    std::size_t t = 0;
    while (slot_of(targets[t]) != e) ++t;
    std::vector<const u64*> sources(end - begin);
    for (std::size_t j = begin; j < end; ++j) sources[j - begin] = coef.data() + j * n;
    ld.mod_up[d].combine_to(sources.data(), out, t, n);
    ctx_->tables().ntt(targets[t]).forward(out);
  });
  return dec;
}

ScratchBuffer Evaluator::key_products(const Decomposition& dec, const KeySwitchKey& key) const {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t l = dec.level;
  // Inner products <digits, key> at every extended prime, reduced to [0, q).
  ScratchBuffer prod(2 * dec.extended * n);
  ctx_->tables().pool().parallel_for(dec.extended, [&](std::size_t e) {
    const std::size_t ki = key_prime(e, l);
    std::vector<const u64*> x(dec.digits), b(dec.digits), a(dec.digits);
    for (std::size_t d = 0; d < dec.digits; ++d) {
      x[d] = dec.data.data() + (d * dec.extended + e) * n;
      b[d] = key.b(d, ki);
      a[d] = key.a(d, ki);
    }
    kernels::inner_product(x.data(), b.data(), a.data(), dec.digits, n, ctx_->tables().modulus(ki),
                           prod.data() + (0 * dec.extended + e) * n,
                           prod.data() + (1 * dec.extended + e) * n);
  });
  return prod;
}

void Evaluator::mod_down_accumulate(ScratchBuffer& prod, std::size_t l,
                                    const std::vector<std::uint32_t>* perm,
                                    Ciphertext& out) const {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t chain = ctx_->chain_size();
  const std::size_t specials = ctx_->special_size();
  const std::size_t extended = l + 1 + specials;
  const LevelData& ld = ctx_->tables().level_data(l);
  // ModDown: bring the special-prime part to coefficient form (scaled for the conversion)...
  ctx_->tables().pool().parallel_for(2 * specials, [&](std::size_t task) {
    const std::size_t k = task / specials;
    const std::size_t s = task % specials;
    u64* r = prod.data() + (k * extended + l + 1 + s) * n;
    ctx_->tables().ntt(chain + s).inverse(r);
    ld.mod_down.scale_source(s, r, r, n);
  });
  // ...then out_k += (r_k - BaseConv_P->q_i(r_k)) * P^-1 at each chain prime, read through the
  // automorphism's permutation when there is one (the key was stored pre-permuted).
  ctx_->tables().pool().parallel_for(2 * (l + 1), [&](std::size_t task) {
    const std::size_t k = task / (l + 1);
    const std::size_t i = task % (l + 1);
    const Modulus& q = ctx_->tables().modulus(i);
    std::vector<const u64*> sources(specials);
    for (std::size_t s = 0; s < specials; ++s) {
      sources[s] = prod.data() + (k * extended + l + 1 + s) * n;
    }
    ScratchBuffer t(n);
    ld.mod_down.combine_to(sources.data(), t.data(), i, n);
    ctx_->tables().ntt(i).forward(t.data());
    const u64* r = prod.data() + (k * extended + i) * n;
    u64* o = out.poly(k, i);
    const MultiplyOperand& inv = ld.inv_special_mod[i];
    const u64 qv = q.value();
    if (!perm) {
      kernels::sub_scale(r, t.data(), inv, qv, o, n, /*accumulate=*/true);
    } else {
      // The scaled difference is element-wise, so it runs in order (vector kernels) and only
      // the addition into the output reads through the permutation.
      kernels::sub_scale(r, t.data(), inv, qv, t.data(), n, /*accumulate=*/false);
      const std::uint32_t* p = perm->data();
      for (std::size_t j = 0; j < n; ++j) o[j] = q.add(o[j], t[p[j]]);
    }
  });
}

void Evaluator::key_switch_accumulate(const Decomposition& dec,
                                      const std::vector<std::uint32_t>* perm,
                                      const KeySwitchKey& key, Ciphertext& out) const {
  ScratchBuffer prod = key_products(dec, key);
  mod_down_accumulate(prod, dec.level, perm, out);
}

void Evaluator::relinearize_inplace(Ciphertext& a, const RelinKey& rk) const {
  check_operand(a);
  if (a.size() != 3) {
    throw FheError("relinearize takes a size-3 ciphertext; got size " + std::to_string(a.size()));
  }
  if (rk.params() != ctx_->fingerprint()) {
    throw MismatchError("relinearization key was made under different parameters");
  }
  if (rk.id() != a.key_id()) {
    throw MismatchError("relinearization key belongs to a different secret key than the ciphertext");
  }
  const Decomposition dec = decompose(a, 2);
  Ciphertext out(*ctx_, 2, a.level(), a.scale(), a.key_id());
  std::copy(a.poly(0, 0), a.poly(0, 0) + 2 * a.primes() * ctx_->poly_degree(), out.poly(0, 0));
  key_switch_accumulate(dec, nullptr, rk.key(), out);
  a = std::move(out);
}

Ciphertext Evaluator::switch_key(const Ciphertext& a, const KeySwitchKey& key) const {
  check_operand(a);
  if (a.size() != 2) throw FheError("switch_key takes a size-2 ciphertext; relinearize first");
  if (key.digits() != ctx_->digit_count(ctx_->max_level()) || key.key_primes() != ctx_->key_size()) {
    throw MismatchError("switching key does not span these parameters' primes (" +
                        std::to_string(key.key_primes()) + " key primes, " +
                        std::to_string(ctx_->key_size()) + " expected)");
  }
  const Decomposition dec = decompose(a, 1);
  Ciphertext out(*ctx_, 2, a.level(), a.scale(), a.key_id());
  std::copy(a.poly(0, 0), a.poly(0, 0) + a.primes() * ctx_->poly_degree(), out.poly(0, 0));
  key_switch_accumulate(dec, nullptr, key, out);
  return out;
}

Ciphertext Evaluator::relinearize(const Ciphertext& a, const RelinKey& rk) const {
  Ciphertext out = a;
  relinearize_inplace(out, rk);
  return out;
}

const KeySwitchKey& Evaluator::galois_key(const Ciphertext& a, std::uint64_t g, long step,
                                          const GaloisKeys& gk) const {
  if (gk.params() != ctx_->fingerprint()) {
    throw MismatchError("Galois keys were made under different parameters");
  }
  if (gk.id() != a.key_id()) {
    throw MismatchError("Galois keys belong to a different secret key than the ciphertext");
  }
  if (!gk.has(g)) {
    const std::string what = g == ctx_->conjugation_element()
                                 ? std::string("conjugation")
                                 : "rotation step " + std::to_string(step);
    throw MissingKeyError("no Galois key for " + what + " (Galois element " + std::to_string(g) +
                          "); generate Galois keys that include it");
  }
  return gk.key(g);
}

Ciphertext Evaluator::apply_galois(const Ciphertext& a, const Decomposition& c1, std::uint64_t g,
                                   const GaloisKeys& gk) const {
  const KeySwitchKey& key = galois_key(a, g, 0, gk);
  const std::size_t n = ctx_->poly_degree();
  const auto perm = ctx_->tables().galois_permutation(g);
  Ciphertext out(*ctx_, 2, a.level(), a.scale(), a.key_id());
  ctx_->tables().pool().parallel_for(a.primes(), [&](std::size_t i) {
    const u64* c0 = a.poly(0, i);
    u64* o = out.poly(0, i);
    const std::uint32_t* p = perm->data();
    for (std::size_t j = 0; j < n; ++j) o[j] = c0[p[j]];
  });
  key_switch_accumulate(c1, perm.get(), key, out);
  return out;
}

Ciphertext Evaluator::rotate(const Ciphertext& a, long step, const GaloisKeys& gk) const {
  return rotate_hoisted(a, {step}, gk).front();
}

void Evaluator::for_each_hoisted(
    const Ciphertext& a, const std::vector<long>& steps, const GaloisKeys& gk,
    const std::function<void(std::size_t, std::uint64_t, const Decomposition*)>& one) const {
  check_operand(a);
  if (a.size() != 2) throw FheError("rotate takes a size-2 ciphertext; relinearize first");
  // Check every key before doing any work, so a missing one fails fast.
  std::vector<std::uint64_t> elements;
  for (long step : steps) {
    const std::uint64_t g = ctx_->galois_element(step);
    if (g != 1) galois_key(a, g, step, gk);
    elements.push_back(g);
  }
  // One decomposition for all steps; then the rotations are independent, so with several
  // threads each takes whole rotations (better balanced than splitting every rotation).
  bool needs_switch = false;
  for (std::uint64_t g : elements) needs_switch |= g != 1;
  const std::optional<Decomposition> dec =
      needs_switch ? std::optional<Decomposition>(decompose(a, 1)) : std::nullopt;
  auto run = [&](std::size_t i) { one(i, elements[i], dec ? &*dec : nullptr); };
  if (elements.size() >= ctx_->threads()) {
    ctx_->tables().pool().parallel_for(elements.size(), run);
  } else {
    for (std::size_t i = 0; i < elements.size(); ++i) run(i);
  }
}

std::vector<Ciphertext> Evaluator::rotate_hoisted(const Ciphertext& a,
                                                  const std::vector<long>& steps,
                                                  const GaloisKeys& gk) const {
  std::vector<Ciphertext> out(steps.size());
  for_each_hoisted(a, steps, gk, [&](std::size_t i, std::uint64_t g, const Decomposition* dec) {
    out[i] = g == 1 ? a : apply_galois(a, *dec, g, gk);
  });
  return out;
}

Ciphertext Evaluator::conjugate(const Ciphertext& a, const GaloisKeys& gk) const {
  check_operand(a);
  if (a.size() != 2) throw FheError("conjugate takes a size-2 ciphertext; relinearize first");
  const std::uint64_t g = ctx_->conjugation_element();
  galois_key(a, g, 0, gk);
  return apply_galois(a, decompose(a, 1), g, gk);
}

// ---- Double hoisting: ciphertexts kept multiplied by P over the extended primes ----

std::size_t Evaluator::key_prime(std::size_t e, std::size_t level) const {
  return e <= level ? e : ctx_->chain_size() + (e - (level + 1));
}

ExtendedCiphertext Evaluator::extended_like(const Ciphertext& a) const {
  ExtendedCiphertext out;
  out.level = a.level();
  out.extended = a.level() + 1 + ctx_->special_size();
  out.n = ctx_->poly_degree();
  out.scale = a.scale();
  out.key_id = a.key_id();
  out.data.resize(2 * out.extended * out.n);
  return out;
}

void Evaluator::galois_extended(const Ciphertext& a, const Decomposition* c1, std::uint64_t g,
                                const GaloisKeys& gk, ExtendedCiphertext& out,
                                bool accumulate) const {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t l = a.level();
  const std::size_t chain = ctx_->chain_size();
  const std::size_t specials = ctx_->special_size();
  // P mod q_i: the chain residues of P * c0 (P * anything is 0 at the special primes).
  std::vector<MultiplyOperand> p_mod(l + 1);
  for (std::size_t i = 0; i <= l; ++i) {
    const Modulus& q = ctx_->tables().modulus(i);
    u64 v = 1;
    for (std::size_t s = 0; s < specials; ++s) {
      v = q.mul(v, q.reduce(ctx_->tables().modulus(chain + s).value()));
    }
    p_mod[i] = MultiplyOperand(v, q);
  }
  ScratchBuffer prod;
  std::shared_ptr<const std::vector<std::uint32_t>> perm;
  if (g != 1) {
    prod = key_products(*c1, galois_key(a, g, 0, gk));
    perm = ctx_->tables().galois_permutation(g);
  }
  // out[k][e][j] (+)= prod[k][e][perm j] + (k = 0, e a chain prime: P * c0[perm j]); for
  // g = 1, P * (c0, c1) at the chain primes.
  ctx_->tables().pool().parallel_for(2 * out.extended, [&](std::size_t task) {
    const std::size_t k = task / out.extended;
    const std::size_t e = task % out.extended;
    const Modulus& q = ctx_->tables().modulus(key_prime(e, l));
    const u64 qv = q.value();
    u64* o = out.poly(k, e);
    const std::uint32_t* p = perm ? perm->data() : nullptr;
    const u64* r = p ? prod.data() + (k * out.extended + e) * n : nullptr;
    const bool with_c = e <= l && (k == 0 || !p);
    const u64* c = with_c ? a.poly(k, e) : nullptr;
    for (std::size_t j = 0; j < n; ++j) {
      const std::size_t src = p ? p[j] : j;
      u64 v = r ? r[src] : 0;
      if (c) v = q.add(v, mul_shoup(c[src], p_mod[e].value, p_mod[e].shoup, qv));
      o[j] = accumulate ? q.add(o[j], v) : v;
    }
  });
}

std::vector<ExtendedCiphertext> Evaluator::rotate_hoisted_extended(const Ciphertext& a,
                                                                   const std::vector<long>& steps,
                                                                   const GaloisKeys& gk) const {
  std::vector<ExtendedCiphertext> out(steps.size());
  for_each_hoisted(a, steps, gk, [&](std::size_t i, std::uint64_t g, const Decomposition* dec) {
    out[i] = extended_like(a);
    galois_extended(a, dec, g, gk, out[i], /*accumulate=*/false);
  });
  return out;
}

ExtendedCiphertext Evaluator::multiply_plain_sum_extended(
    const std::vector<const ExtendedCiphertext*>& cts,
    const std::vector<const ExtendedPlaintext*>& pts) const {
  if (cts.empty() || cts.size() != pts.size()) {
    throw FheError(
        "multiply_plain_sum_extended takes as many plaintexts as ciphertexts, at least one; got " +
                   std::to_string(cts.size()) + " and " + std::to_string(pts.size()));
  }
  const ExtendedCiphertext& first = *cts[0];
  for (std::size_t t = 0; t < cts.size(); ++t) {
    if (cts[t]->level != first.level || cts[t]->key_id != first.key_id ||
        cts[t]->scale != first.scale) {
      throw MismatchError("multiply_plain_sum_extended: extended ciphertexts differ in level, scale or key");
    }
    if (pts[t]->params != ctx_->fingerprint()) {
      throw MismatchError("multiply_plain_sum_extended: plaintext was made under different parameters");
    }
    if (pts[t]->level != first.level || pts[t]->scale != pts[0]->scale) {
      throw LevelError("multiply_plain_sum_extended: extended plaintexts must share the ciphertexts' level (" +
                       std::to_string(first.level) + ") and one scale");
    }
  }
  const std::size_t n = ctx_->poly_degree();
  const std::size_t l = first.level;
  const std::size_t terms = cts.size();
  ExtendedCiphertext out;
  out.level = l;
  out.extended = first.extended;
  out.n = n;
  out.scale = first.scale * pts[0]->scale;
  out.key_id = first.key_id;
  out.data.resize(2 * out.extended * n);
  ctx_->tables().pool().parallel_for(out.extended, [&](std::size_t e) {
    std::vector<const u64*> x(terms), c0(terms), c1(terms);
    for (std::size_t t = 0; t < terms; ++t) {
      x[t] = pts[t]->prime(e);
      c0[t] = cts[t]->poly(0, e);
      c1[t] = cts[t]->poly(1, e);
    }
    const Modulus& q = ctx_->tables().modulus(key_prime(e, l));
    kernels::inner_product(x.data(), c0.data(), c1.data(), terms, n, q, out.poly(0, e),
                           out.poly(1, e));
  });
  return out;
}

void Evaluator::rotate_accumulate(const Ciphertext& a, long step, const GaloisKeys& gk,
                                  ExtendedCiphertext& acc) const {
  check_operand(a);
  if (a.size() != 2) throw FheError("rotate takes a size-2 ciphertext; relinearize first");
  if (!acc.data.empty() && (a.level() != acc.level || a.key_id() != acc.key_id)) {
    throw MismatchError("rotate_accumulate: ciphertext level " + std::to_string(a.level()) +
                        " or key differs from the accumulator's (level " +
                        std::to_string(acc.level) + ")");
  }
  if (!acc.data.empty() && !scales_match(a.scale(), acc.scale)) {
    throw MismatchError("rotate_accumulate: ciphertext scale " + std::to_string(a.scale()) +
                        " differs from the accumulator's " + std::to_string(acc.scale) +
                        "; rescale or multiply by a constant to match them first");
  }
  const std::uint64_t g = ctx_->galois_element(step);
  if (g != 1) galois_key(a, g, step, gk);
  const std::optional<Decomposition> dec =
      g != 1 ? std::optional<Decomposition>(decompose(a, 1)) : std::nullopt;
  const bool start = acc.data.empty();
  if (start) acc = extended_like(a);
  galois_extended(a, dec ? &*dec : nullptr, g, gk, acc, /*accumulate=*/!start);
}

void Evaluator::add_extended_inplace(ExtendedCiphertext& a, const ExtendedCiphertext& b) const {
  if (a.level != b.level || a.extended != b.extended || a.key_id != b.key_id) {
    throw MismatchError("adding extended ciphertexts of different levels or keys");
  }
  if (!scales_match(a.scale, b.scale)) {
    throw MismatchError("adding extended ciphertexts of different scales (" +
                        std::to_string(a.scale) + " and " + std::to_string(b.scale) + ")");
  }
  const std::size_t n = ctx_->poly_degree();
  const std::size_t l = a.level;
  ctx_->tables().pool().parallel_for(2 * a.extended, [&](std::size_t task) {
    const std::size_t e = task % a.extended;
    const Modulus& q = ctx_->tables().modulus(key_prime(e, l));
    u64* x = a.poly(task / a.extended, e);
    const u64* y = b.poly(task / b.extended, e);
    for (std::size_t j = 0; j < n; ++j) x[j] = q.add(x[j], y[j]);
  });
}

Ciphertext Evaluator::mod_down(const ExtendedCiphertext& a) const {
  if (a.n != ctx_->poly_degree() || a.extended != a.level + 1 + ctx_->special_size() ||
      a.level > ctx_->max_level() || a.data.size() != 2 * a.extended * a.n) {
    throw MismatchError("extended ciphertext does not match these parameters");
  }
  ScratchBuffer work(a.data.begin(), a.data.end());
  Ciphertext out(*ctx_, 2, a.level, a.scale, a.key_id);
  mod_down_accumulate(work, a.level, nullptr, out);
  return out;
}

}  // namespace fheprune::ckks
