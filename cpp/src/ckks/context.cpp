#include "ckks/context_tables.hpp"

#include <sodium.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <bit>
#include <cmath>
#include <algorithm>
#include <cstring>

#include "ckks/primes.hpp"
#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

BaseConverter::BaseConverter(std::vector<Modulus> from, std::vector<Modulus> to)
    : from_(std::move(from)), to_(std::move(to)) {
  const std::size_t m = from_.size();
  // A sum of k products y * f (y < b_j, f < c) plus a reduced part (< c) stays below c * 2^64,
  // what Modulus::reduce128 takes, while k * max b_j < 2^64 - 1.
  u64 widest = 1;
  for (const Modulus& b : from_) widest = std::max(widest, b.value());
  lazy_terms_ = std::max<std::size_t>(1, (~u64{0} / widest) - 1);
  inv_punctured_.resize(m);
  punctured_mod_target_.assign(to_.size(), std::vector<u64>(m));
  for (std::size_t j = 0; j < m; ++j) {
    u64 punctured = 1;  // (B / b_j) mod b_j
    for (std::size_t i = 0; i < m; ++i) {
      if (i != j) punctured = from_[j].mul(punctured, from_[j].reduce(from_[i].value()));
    }
    inv_punctured_[j] = MultiplyOperand(from_[j].inv(punctured), from_[j]);
    for (std::size_t t = 0; t < to_.size(); ++t) {
      u64 prod = 1;
      for (std::size_t i = 0; i < m; ++i) {
        if (i != j) prod = to_[t].mul(prod, to_[t].reduce(from_[i].value()));
      }
      punctured_mod_target_[t][j] = prod;
    }
  }
}

void BaseConverter::convert(const u64* const* in, u64* const* out, std::size_t n) const {
  for (std::size_t t = 0; t < to_.size(); ++t) convert_to(in, out[t], t, n);
}

void BaseConverter::convert_to(const u64* const* in, u64* out, std::size_t t,
                               std::size_t n) const {
  const std::size_t m = from_.size();
  std::vector<u64> scaled(m * n);
  std::vector<const u64*> ptrs(m);
  for (std::size_t j = 0; j < m; ++j) {
    scale_source(j, in[j], scaled.data() + j * n, n);
    ptrs[j] = scaled.data() + j * n;
  }
  combine_to(ptrs.data(), out, t, n);
}

void BaseConverter::scale_source(std::size_t j, const u64* in, u64* out, std::size_t n) const {
  if (from_.size() == 1) {  // (B/b_0)^-1 = 1: the residue itself
    if (out != in) std::memcpy(out, in, n * sizeof(u64));
    return;
  }
  const u64 q = from_[j].value();
  const MultiplyOperand& w = inv_punctured_[j];
  for (std::size_t k = 0; k < n; ++k) out[k] = mul_shoup(in[k], w.value, w.shoup, q);
}

void BaseConverter::combine_to(const u64* const* scaled, u64* out, std::size_t t,
                               std::size_t n) const {
  const Modulus& c = to_[t];
  const std::size_t m = from_.size();
  if (m == 1) {
    // One source prime: the residue itself is the (exact) integer lift.
    if (from_[0].value() <= c.value()) {
      if (out != scaled[0]) std::memcpy(out, scaled[0], n * sizeof(u64));
    } else {
      for (std::size_t k = 0; k < n; ++k) out[k] = c.reduce(scaled[0][k]);
    }
    return;
  }
  // Blocks keep the 128-bit sums in L1 while the sources stream through.
  constexpr std::size_t kBlock = 256;
  u128 acc[kBlock];
  const std::vector<u64>& factors = punctured_mod_target_[t];
  for (std::size_t start = 0; start < n; start += kBlock) {
    const std::size_t len = std::min(kBlock, n - start);
    std::fill(acc, acc + len, 0);
    for (std::size_t j = 0; j < m; ++j) {
      const u64 f = factors[j];
      const u64* __restrict y = scaled[j] + start;
      for (std::size_t k = 0; k < len; ++k) acc[k] += static_cast<u128>(y[k]) * f;
      if ((j + 1) % lazy_terms_ == 0 && j + 1 < m) {
        for (std::size_t k = 0; k < len; ++k) acc[k] = c.reduce128(acc[k]);
      }
    }
    for (std::size_t k = 0; k < len; ++k) out[start + k] = c.reduce128(acc[k]);
  }
}

namespace {

// Polynomial buffers are large (0.1-10 MB) and short-lived. glibc serves blocks above 128 KB
// with fresh mmaps, so every operation would pay page faults to zero them again; keeping them
// in the heap lets freed buffers be reused. Process-wide, set once.
void tune_allocator() {
#if defined(__GLIBC__)
  static std::once_flag once;
  std::call_once(once, [] {
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
  });
#endif
}

std::vector<Modulus> chain_prefix(const std::vector<Modulus>& all, std::size_t count) {
  return {all.begin(), all.begin() + static_cast<std::ptrdiff_t>(count)};
}

}  // namespace

Context::Context(const Parameters& params, std::size_t threads) : params_(params) {
  params_.validate();
  tune_allocator();
  if (sodium_init() < 0) throw FheError("libsodium failed to initialise");
  n_ = params_.poly_degree;
  log_n_ = std::countr_zero(n_);
  chain_size_ = params_.chain_bits.size();
  special_size_ = params_.special_bits.size();
  tables_ = std::make_unique<ContextTables>(*this, threads);

  // Fingerprint: BLAKE2b over N, every prime and the scale, in a fixed byte order.
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, fingerprint_.size());
  const char tag[] = "fheprune.ckks.params.v1";
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(tag), sizeof tag);
  auto absorb = [&](u64 v) {
    unsigned char bytes[8];
    for (int b = 0; b < 8; ++b) bytes[b] = static_cast<unsigned char>(v >> (8 * b));
    crypto_generichash_update(&state, bytes, sizeof bytes);
  };
  absorb(n_);
  absorb(chain_size_);
  absorb(special_size_);
  for (const Modulus& q : tables_->moduli()) absorb(q.value());
  absorb(static_cast<u64>(params_.scale_bits));
  crypto_generichash_final(&state, fingerprint_.data(), fingerprint_.size());
}

Context::~Context() = default;

double Context::default_scale() const { return std::ldexp(1.0, params_.scale_bits); }

u64 Context::prime(std::size_t i) const {
  if (i >= key_size()) {
    throw ParameterError("prime index " + std::to_string(i) + " out of range: the parameters have " +
                         std::to_string(key_size()) + " primes");
  }
  return tables_->modulus(i).value();
}

std::vector<u64> Context::primes() const {
  std::vector<u64> out;
  for (const Modulus& q : tables_->moduli()) out.push_back(q.value());
  return out;
}

std::size_t Context::threads() const { return tables_->threads(); }

void Context::set_threads(std::size_t threads) const { tables_->set_threads(threads); }

void Context::parallel_for(std::size_t count,
                           const std::function<void(std::size_t)>& body) const {
  tables_->pool().parallel_for(count, body);
}

std::uint64_t Context::galois_element(long step) const {
  const long slots = static_cast<long>(n_ / 2);
  long s = step % slots;
  if (s < 0) s += slots;
  // 5^s mod 2N by square-and-multiply on plain integers (2N <= 2^17, no overflow).
  std::uint64_t result = 1;
  std::uint64_t base = 5;
  const std::uint64_t m = 2 * n_;
  auto e = static_cast<std::uint64_t>(s);
  while (e) {
    if (e & 1) result = result * base % m;
    base = base * base % m;
    e >>= 1;
  }
  return result;
}

ContextTables::ContextTables(const Context& ctx, std::size_t threads) : n_(ctx.poly_degree()) {
  const Parameters& params = ctx.parameters();
  const std::size_t chain_size = ctx.chain_size();
  const std::size_t special_size = ctx.special_size();
  std::vector<int> all_bits = params.chain_bits;
  all_bits.insert(all_bits.end(), params.special_bits.begin(), params.special_bits.end());
  const std::vector<u64> primes = generate_ntt_primes(n_, all_bits);
  moduli_.reserve(primes.size());
  ntt_.reserve(primes.size());
  for (u64 p : primes) {
    moduli_.emplace_back(p);
    ntt_.emplace_back(n_, moduli_.back());
  }

  const std::vector<Modulus> special(moduli_.begin() + static_cast<std::ptrdiff_t>(chain_size),
                                     moduli_.end());
  levels_.resize(chain_size);
  for (std::size_t l = 0; l < chain_size; ++l) {
    LevelData& data = levels_[l];
    data.level = l;
    const Modulus& last = moduli_[l];
    for (std::size_t i = 0; i < l; ++i) {
      data.inv_last_mod.emplace_back(moduli_[i].inv(moduli_[i].reduce(last.value())), moduli_[i]);
      data.last_mod.push_back(moduli_[i].reduce(last.value()));
    }
    const std::size_t digits = ctx.digit_count(l);
    for (std::size_t d = 0; d < digits; ++d) {
      const std::size_t begin = d * special_size;
      const std::size_t end = std::min(begin + special_size, l + 1);
      std::vector<Modulus> source(moduli_.begin() + static_cast<std::ptrdiff_t>(begin),
                                  moduli_.begin() + static_cast<std::ptrdiff_t>(end));
      std::vector<Modulus> targets;
      std::vector<std::size_t> target_index;
      for (std::size_t i = 0; i <= l; ++i) {
        if (i < begin || i >= end) {
          targets.push_back(moduli_[i]);
          target_index.push_back(i);
        }
      }
      for (std::size_t s = 0; s < special_size; ++s) {
        targets.push_back(special[s]);
        target_index.push_back(chain_size + s);
      }
      data.mod_up.emplace_back(std::move(source), std::move(targets));
      data.mod_up_targets.push_back(std::move(target_index));
    }
    data.mod_down = BaseConverter(special, chain_prefix(moduli_, l + 1));
    for (std::size_t i = 0; i <= l; ++i) {
      u64 p_mod = 1;
      for (const Modulus& s : special) p_mod = moduli_[i].mul(p_mod, moduli_[i].reduce(s.value()));
      data.inv_special_mod.emplace_back(moduli_[i].inv(p_mod), moduli_[i]);
    }
    data.garner_inv.resize(l + 1);
    for (std::size_t i = 0; i <= l; ++i) {
      for (std::size_t j = 0; j < i; ++j) {
        data.garner_inv[i].emplace_back(moduli_[i].inv(moduli_[i].reduce(moduli_[j].value())),
                                        moduli_[i]);
      }
    }
  }

  const int log_n = ctx.log_n();
  bit_reverse_.resize(n_);
  for (std::size_t k = 0; k < n_; ++k) {
    bit_reverse_[k] = static_cast<std::uint32_t>(reverse_bits(k, log_n));
  }
  set_threads(threads);
}

void ContextTables::set_threads(std::size_t threads) const {
  pool_ = std::make_unique<ThreadPool>(threads == 0 ? 1 : threads);
  threads_.store(pool_->threads(), std::memory_order_relaxed);
}

std::shared_ptr<const std::vector<std::uint32_t>> ContextTables::galois_permutation(
    std::uint64_t g) const {
  if ((g & 1) == 0 || g >= 2 * n_) {
    throw ParameterError("Galois element must be odd and below 2N; got " + std::to_string(g));
  }
  std::lock_guard lock(galois_mutex_);
  auto it = galois_cache_.find(g);
  if (it != galois_cache_.end()) return it->second;
  auto perm = std::make_shared<std::vector<std::uint32_t>>(n_);
  const std::uint64_t mask = 2 * n_ - 1;
  for (std::size_t k = 0; k < n_; ++k) {
    // Slot k evaluates at psi^(2 bitrev(k) + 1); the automorphism reads the evaluation at that
    // exponent times g.
    const std::uint64_t exponent = ((2 * std::uint64_t{bit_reverse_[k]} + 1) * g) & mask;
    (*perm)[k] = bit_reverse_[(exponent - 1) >> 1];
  }
  galois_cache_.emplace(g, perm);
  return perm;
}

std::size_t max_threads() { return ThreadPool::max_threads(); }

ContextPtr make_context(const Parameters& params, std::size_t threads) {
  return std::make_shared<const Context>(params, threads);
}

}  // namespace fheprune::ckks
