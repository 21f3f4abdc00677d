#include "fheprune/ckks/keygen.hpp"

#include <sodium.h>

#include <algorithm>
#include <set>
#include <string>

#include "ckks/context_tables.hpp"
#include "ckks/random.hpp"
#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

SecretKey::~SecretKey() {
  if (!data_.empty()) sodium_memzero(data_.data(), data_.size() * sizeof(u64));
}

std::vector<std::uint64_t> GaloisKeys::elements() const {
  std::vector<std::uint64_t> out;
  for (const auto& [g, _] : keys_) out.push_back(g);
  return out;
}

std::size_t GaloisKeys::byte_size() const {
  std::size_t total = 0;
  for (const auto& [_, k] : keys_) total += k.byte_size();
  return total;
}

KeyGenerator::KeyGenerator(ContextPtr ctx)
    : ctx_(std::move(ctx)), rng_(std::make_unique<SecureRandom>()) {
  std::vector<std::int8_t> s(ctx_->poly_degree());
  rng_->ternary(s.data(), s.size());
  set_secret(s);
}

KeyGenerator::KeyGenerator(ContextPtr ctx, std::size_t hamming_weight)
    : ctx_(std::move(ctx)), rng_(std::make_unique<SecureRandom>()) {
  std::vector<std::int8_t> s = sparse_ternary(hamming_weight);
  set_secret(s);
}

std::vector<std::int8_t> KeyGenerator::sparse_ternary(std::size_t hamming_weight) {
  const std::size_t n = ctx_->poly_degree();
  if (hamming_weight == 0 || hamming_weight > n) {
    throw ParameterError("a secret's Hamming weight must be in [1, " + std::to_string(n) +
                         "], got " + std::to_string(hamming_weight));
  }
  // The first `hamming_weight` places of a uniform random permutation (partial Fisher-Yates
  // with unbiased indices), each +1 or -1.
  std::vector<std::uint32_t> places(n);
  for (std::size_t i = 0; i < n; ++i) places[i] = static_cast<std::uint32_t>(i);
  std::vector<std::int8_t> s(n, 0);
  for (std::size_t i = 0; i < hamming_weight; ++i) {
    const u64 range = n - i;
    const u64 limit = ~u64{0} - (~u64{0} % range);  // reject the biased tail
    u64 r = 0;
    do {
      r = rng_->next_u64();
    } while (r >= limit);
    std::swap(places[i], places[i + r % range]);
    s[places[i]] = (rng_->next_u64() & 1) ? 1 : -1;
  }
  sodium_memzero(places.data(), places.size() * sizeof(std::uint32_t));
  return s;
}

std::vector<u64> KeyGenerator::to_ntt(const std::vector<std::int8_t>& s) const {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t primes = ctx_->key_size();
  std::vector<u64> out(primes * n);
  ctx_->tables().pool().parallel_for(primes, [&](std::size_t i) {
    const Modulus& q = ctx_->tables().modulus(i);
    u64* o = out.data() + i * n;
    for (std::size_t k = 0; k < n; ++k) o[k] = lift_signed(s[k], q.value());
    ctx_->tables().ntt(i).forward(o);
  });
  return out;
}

void KeyGenerator::set_secret(std::vector<std::int8_t>& s) {
  secret_.n_ = ctx_->poly_degree();
  secret_.params_ = ctx_->fingerprint();
  rng_->fill(secret_.id_.data(), secret_.id_.size());
  secret_.data_ = to_ntt(s);
  sodium_memzero(s.data(), s.size());
}

KeyGenerator::KeyGenerator(ContextPtr ctx, const SecretKey& secret)
    : ctx_(std::move(ctx)), secret_(secret), rng_(std::make_unique<SecureRandom>()) {
  if (secret_.params() != ctx_->fingerprint()) {
    throw MismatchError("secret key was made under different parameters");
  }
}

KeyGenerator::~KeyGenerator() = default;
KeyGenerator::KeyGenerator(KeyGenerator&&) noexcept = default;
KeyGenerator& KeyGenerator::operator=(KeyGenerator&&) noexcept = default;

PublicKey KeyGenerator::create_public_key() {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t level = ctx_->max_level();
  PublicKey pk;
  pk.data_ = Ciphertext(*ctx_, 2, level, 1.0, secret_.id());
  std::vector<std::int64_t> e(n);
  rng_->gaussian(e.data(), n);
  for (std::size_t i = 0; i <= level; ++i) {
    const Modulus& q = ctx_->tables().modulus(i);
    u64* b = pk.data_.poly(0, i);
    u64* a = pk.data_.poly(1, i);
    rng_->uniform_mod(q, a, n);
    for (std::size_t k = 0; k < n; ++k) b[k] = lift_signed(e[k], q.value());
    ctx_->tables().ntt(i).forward(b);
    const u64* s = secret_.prime(i);
    for (std::size_t k = 0; k < n; ++k) b[k] = q.sub(b[k], q.mul(a[k], s[k]));
  }
  sodium_memzero(e.data(), e.size() * sizeof(std::int64_t));  // the error would reveal s
  return pk;
}

KeySwitchKey KeyGenerator::make_switch_key(const std::vector<u64>& source) {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t primes = ctx_->key_size();
  const std::size_t chain = ctx_->chain_size();
  const std::size_t alpha = ctx_->digit_size();
  KeySwitchKey key;
  key.n_ = n;
  key.key_primes_ = primes;
  key.digits_ = ctx_->digit_count(ctx_->max_level());
  key.data_.assign(key.digits_ * 2 * primes * n, 0);
  std::vector<std::int64_t> e(n);
  for (std::size_t d = 0; d < key.digits_; ++d) {
    rng_->gaussian(e.data(), n);
    for (std::size_t i = 0; i < primes; ++i) {
      const Modulus& q = ctx_->tables().modulus(i);
      u64* b = key.data_.data() + ((d * 2 + 0) * primes + i) * n;
      u64* a = key.data_.data() + ((d * 2 + 1) * primes + i) * n;
      rng_->uniform_mod(q, a, n);
      for (std::size_t k = 0; k < n; ++k) b[k] = lift_signed(e[k], q.value());
      ctx_->tables().ntt(i).forward(b);
      const u64* s = secret_.prime(i);
      for (std::size_t k = 0; k < n; ++k) b[k] = q.sub(b[k], q.mul(a[k], s[k]));
      // The gadget: P * s' on the digit's own primes (P * g_d = P mod q_i there, 0 elsewhere).
      if (i < chain && i / alpha == d) {
        u64 p_mod = 1;
        for (std::size_t sp = chain; sp < primes; ++sp) {
          p_mod = q.mul(p_mod, q.reduce(ctx_->tables().modulus(sp).value()));
        }
        const u64* src = source.data() + i * n;
        for (std::size_t k = 0; k < n; ++k) b[k] = q.add(b[k], q.mul(p_mod, src[k]));
      }
    }
  }
  sodium_memzero(e.data(), e.size() * sizeof(std::int64_t));
  return key;
}

RelinKey KeyGenerator::create_relin_key() {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t primes = ctx_->key_size();
  std::vector<u64> s2(primes * n);
  for (std::size_t i = 0; i < primes; ++i) {
    const Modulus& q = ctx_->tables().modulus(i);
    const u64* s = secret_.prime(i);
    for (std::size_t k = 0; k < n; ++k) s2[i * n + k] = q.mul(s[k], s[k]);
  }
  RelinKey rk;
  rk.key_ = make_switch_key(s2);
  rk.id_ = secret_.id();
  rk.params_ = ctx_->fingerprint();
  sodium_memzero(s2.data(), s2.size() * sizeof(u64));
  return rk;
}

GaloisKeys KeyGenerator::create_galois_keys(const std::vector<long>& steps, bool conjugation) {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t primes = ctx_->key_size();
  std::set<std::uint64_t> elements;
  for (long step : steps) {
    const std::uint64_t g = ctx_->galois_element(step);
    if (g != 1) elements.insert(g);
  }
  if (conjugation) elements.insert(ctx_->conjugation_element());
  GaloisKeys gk;
  gk.id_ = secret_.id();
  gk.params_ = ctx_->fingerprint();
  std::vector<u64> rotated(primes * n);
  for (std::uint64_t g : elements) {
    const auto perm = ctx_->tables().galois_permutation(g);
    for (std::size_t i = 0; i < primes; ++i) {
      const u64* s = secret_.prime(i);
      u64* out = rotated.data() + i * n;
      for (std::size_t k = 0; k < n; ++k) out[k] = s[(*perm)[k]];
    }
    KeySwitchKey key = make_switch_key(rotated);
    // Stored pre-permuted by the inverse automorphism (K'[perm[j]] = K[j]), so a rotation's
    // inner product runs over contiguous digits and only its two outputs are permuted.
    std::vector<u64> scratch(n);
    const std::size_t polys = key.digits_ * 2 * primes;
    for (std::size_t poly = 0; poly < polys; ++poly) {
      u64* data = key.data_.data() + poly * n;
      for (std::size_t j = 0; j < n; ++j) scratch[(*perm)[j]] = data[j];
      std::copy(scratch.begin(), scratch.end(), data);
    }
    gk.keys_.emplace(g, std::move(key));
  }
  sodium_memzero(rotated.data(), rotated.size() * sizeof(u64));
  return gk;
}

EvaluationKeys KeyGenerator::create_evaluation_keys(const std::vector<long>& steps,
                                                    bool conjugation,
                                                    std::size_t ephemeral_weight) {
  EvaluationKeys keys{create_public_key(), create_relin_key(),
                      create_galois_keys(steps, conjugation), {}};
  if (ephemeral_weight > 0) keys.encapsulation = create_encapsulation_keys(ephemeral_weight);
  return keys;
}

EncapsulationKeys KeyGenerator::create_encapsulation_keys(std::size_t hamming_weight) {
  const std::size_t n = ctx_->poly_degree();
  const std::size_t chain = ctx_->chain_size();
  if (ctx_->special_size() == 0) {
    throw ParameterError("encapsulation keys need a special prime; these parameters have none");
  }
  std::vector<std::int8_t> sparse = sparse_ternary(hamming_weight);
  std::vector<u64> sparse_ntt = to_ntt(sparse);
  sodium_memzero(sparse.data(), sparse.size());
  EncapsulationKeys out;
  out.hamming_weight_ = hamming_weight;
  out.id_ = secret_.id();
  // s' -> s: an ordinary switching key (an encryption of P s' under s).
  out.from_sparse_ = make_switch_key(sparse_ntt);
  // s -> s' modulo q0 * p: b = -a s' + e + p s, at q0 (key prime 0) and p (key prime 1).
  KeySwitchKey& k = out.to_sparse_;
  k.n_ = n;
  k.digits_ = 1;
  k.key_primes_ = 2;
  k.data_.assign(2 * 2 * n, 0);
  std::vector<std::int64_t> e(n);
  rng_->gaussian(e.data(), n);
  const Modulus& q0 = ctx_->tables().modulus(0);
  const u64 p_mod_q0 = q0.reduce(ctx_->tables().modulus(chain).value());
  for (std::size_t slot = 0; slot < 2; ++slot) {
    const std::size_t i = slot == 0 ? 0 : chain;
    const Modulus& q = ctx_->tables().modulus(i);
    u64* b = k.data_.data() + (0 * 2 + slot) * n;
    u64* a = k.data_.data() + (1 * 2 + slot) * n;
    rng_->uniform_mod(q, a, n);
    for (std::size_t c = 0; c < n; ++c) b[c] = lift_signed(e[c], q.value());
    ctx_->tables().ntt(i).forward(b);
    const u64* s_sparse = sparse_ntt.data() + i * n;
    for (std::size_t c = 0; c < n; ++c) b[c] = q.sub(b[c], q.mul(a[c], s_sparse[c]));
    if (slot == 0) {  // p s vanishes modulo p
      const u64* s = secret_.prime(0);
      for (std::size_t c = 0; c < n; ++c) b[c] = q.add(b[c], q.mul(p_mod_q0, s[c]));
    }
  }
  sodium_memzero(e.data(), e.size() * sizeof(std::int64_t));
  sodium_memzero(sparse_ntt.data(), sparse_ntt.size() * sizeof(u64));
  return out;
}

}  // namespace fheprune::ckks
