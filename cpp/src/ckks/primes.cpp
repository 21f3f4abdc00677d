#include "ckks/primes.hpp"

#include <algorithm>
#include <string>

#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

namespace {

constexpr u64 kSmallPrimes[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};

u64 mulmod(u64 a, u64 b, u64 m) { return static_cast<u64>(static_cast<u128>(a) * b % m); }

u64 powmod(u64 b, u64 e, u64 m) {
  u64 r = 1 % m;
  b %= m;
  while (e) {
    if (e & 1) r = mulmod(r, b, m);
    b = mulmod(b, b, m);
    e >>= 1;
  }
  return r;
}

}  // namespace

bool is_prime(u64 n) {
  if (n < 2) return false;
  for (u64 p : kSmallPrimes) {
    if (n % p == 0) return n == p;
  }
  u64 d = n - 1;
  int s = 0;
  while ((d & 1) == 0) {
    d >>= 1;
    ++s;
  }
  // These twelve bases make Miller-Rabin deterministic below 3.3e24 > 2^64.
  for (u64 a : kSmallPrimes) {
    u64 x = powmod(a, d, n);
    if (x == 1 || x == n - 1) continue;
    bool composite = true;
    for (int r = 1; r < s; ++r) {
      x = mulmod(x, x, n);
      if (x == n - 1) {
        composite = false;
        break;
      }
    }
    if (composite) return false;
  }
  return true;
}

std::vector<u64> generate_ntt_primes(std::size_t n, const std::vector<int>& bit_sizes) {
  const u64 step = 2 * static_cast<u64>(n);
  std::vector<u64> primes;
  primes.reserve(bit_sizes.size());
  for (int bits : bit_sizes) {
    if (bits < 20 || bits > kMaxPrimeBits) {
      throw ParameterError("prime bit sizes must be in [20, " + std::to_string(kMaxPrimeBits) +
                           "]; got " + std::to_string(bits));
    }
    const u64 upper = u64{1} << bits;
    const u64 lower = u64{1} << (bits - 1);
    // Largest candidate below 2^bits that is 1 mod 2n, walking down in steps of 2n.
    u64 candidate = upper - step + 1;
    bool found = false;
    while (candidate > lower) {
      if (is_prime(candidate) &&
          std::find(primes.begin(), primes.end(), candidate) == primes.end()) {
        found = true;
        break;
      }
      candidate -= step;
    }
    if (!found) {
      throw ParameterError("not enough " + std::to_string(bits) + "-bit primes q = 1 mod " +
                           std::to_string(step) + "; use larger bit sizes");
    }
    primes.push_back(candidate);
  }
  return primes;
}

u64 minimal_primitive_root(std::size_t two_n, const Modulus& q) {
  const u64 qv = q.value();
  if ((qv - 1) % two_n != 0) throw ParameterError("modulus is not 1 mod 2N");
  const u64 cofactor = (qv - 1) / two_n;
  // A 2n-th root r is primitive iff r^n = -1 (2n is a power of two).
  u64 root = 0;
  for (u64 g = 2; g < qv; ++g) {
    const u64 r = q.pow(g, cofactor);
    if (q.pow(r, two_n / 2) == qv - 1) {
      root = r;
      break;
    }
  }
  if (root == 0) throw ParameterError("no primitive 2N-th root of unity found");
  // Pick the smallest primitive root: all are root^(odd k).
  u64 best = root;
  const u64 root_sq = q.mul(root, root);
  u64 current = root;
  for (std::size_t k = 1; k < two_n; k += 2) {
    best = std::min(best, current);
    current = q.mul(current, root_sq);
  }
  return best;
}

}  // namespace fheprune::ckks
