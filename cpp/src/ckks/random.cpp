#include "ckks/random.hpp"

#include <pthread.h>
#include <sodium.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>

#include "fheprune/ckks/errors.hpp"

namespace fheprune::ckks {

namespace {

constexpr std::size_t kBufferBytes = 1 << 14;
constexpr int kTailCut = 19;  // ceil(6 * sigma)

// cdf[k] = P(|x| < k+1) * 2^63 for the magnitude of a discrete Gaussian, k = 0..kTailCut.
struct GaussianTable {
  std::array<u64, kTailCut + 1> cdf{};
  GaussianTable() {
    const double s = SecureRandom::kErrorSigma;
    std::array<long double, kTailCut + 1> weight{};
    long double total = 0;
    for (int k = 0; k <= kTailCut; ++k) {
      const long double rho = std::exp(-static_cast<long double>(k) * k / (2.0L * s * s));
      weight[k] = k == 0 ? rho : 2 * rho;  // +k and -k
      total += weight[k];
    }
    long double acc = 0;
    for (int k = 0; k <= kTailCut; ++k) {
      acc += weight[k] / total;
      cdf[k] = static_cast<u64>(std::min(acc, 1.0L) * 9223372036854775808.0L);
    }
    cdf[kTailCut] = u64{1} << 63;
  }
};

const GaussianTable& gaussian_table() {
  static const GaussianTable table;
  return table;
}

// Incremented in every child process right after fork() (pthread_atfork runs the handler for
// fork() in any thread, and Python's os.fork() and multiprocessing call fork()).
std::atomic<std::uint64_t> g_fork_generation{0};

}  // namespace

std::uint64_t fork_generation() {
  static const bool registered = [] {
    if (pthread_atfork(nullptr, nullptr, [] {
          g_fork_generation.fetch_add(1, std::memory_order_relaxed);
        }) != 0) {
      throw FheError("could not register the CSPRNG's fork handler (pthread_atfork failed)");
    }
    return true;
  }();
  (void)registered;
  return g_fork_generation.load(std::memory_order_relaxed);
}

SecureRandom::SecureRandom() : buffer_(kBufferBytes) {
  if (sodium_init() < 0) throw FheError("libsodium failed to initialise");
  rekey();
}

void SecureRandom::rekey() {
  generation_ = fork_generation();
  randombytes_buf(key_.data(), key_.size());  // getrandom(2): independent in every process
  nonce_ = 0;
  sodium_memzero(buffer_.data(), buffer_.size());
  used_ = buffer_.size();
}

SecureRandom::~SecureRandom() {
  sodium_memzero(key_.data(), key_.size());
  sodium_memzero(buffer_.data(), buffer_.size());
}

void SecureRandom::stream(unsigned char* out, std::size_t size) {
  // Every call takes a fresh nonce, so no keystream is ever produced twice.
  unsigned char nonce[crypto_stream_chacha20_NONCEBYTES];
  static_assert(crypto_stream_chacha20_NONCEBYTES == 8);
  std::uint64_t v = nonce_++;
  for (int b = 0; b < 8; ++b) nonce[b] = static_cast<unsigned char>(v >> (8 * b));
  crypto_stream_chacha20(out, size, nonce, key_.data());
}

void SecureRandom::refill() {
  stream(buffer_.data(), buffer_.size());
  used_ = 0;
}

void SecureRandom::fill(unsigned char* out, std::size_t size) {
  // After a fork, never continue the parent's stream (see random.hpp).
  if (generation_ != g_fork_generation.load(std::memory_order_relaxed)) rekey();
  // Drain what the buffer holds, then write large requests straight from the stream: a
  // polynomial's worth of bytes (a ciphertext's uniform half) skips the buffer's copy.
  const std::size_t held = std::min(size, buffer_.size() - used_);
  std::memcpy(out, buffer_.data() + used_, held);
  sodium_memzero(buffer_.data() + used_, held);
  used_ += held;
  out += held;
  size -= held;
  if (size >= buffer_.size()) {
    stream(out, size);
    return;
  }
  if (size > 0) {
    refill();
    std::memcpy(out, buffer_.data(), size);
    sodium_memzero(buffer_.data(), size);
    used_ = size;
  }
}

u64 SecureRandom::next_u64() {
  unsigned char bytes[8];
  fill(bytes, 8);
  u64 v = 0;
  std::memcpy(&v, bytes, 8);
  return v;
}

void SecureRandom::uniform_mod(const Modulus& q, u64* out, std::size_t n) {
  const u64 qv = q.value();
  const u64 mask = (u64{1} << q.bits()) - 1;
  // Draw all n words at once, then redraw the rare ones at or above q (rejection sampling:
  // no modulo bias; a value is redrawn with probability 1 - q / 2^bits(q) < 1/2).
  fill(reinterpret_cast<unsigned char*>(out), n * sizeof(u64));
  for (std::size_t i = 0; i < n; ++i) {
    u64 v = out[i] & mask;
    while (v >= qv) v = next_u64() & mask;
    out[i] = v;
  }
}

void SecureRandom::ternary(std::int8_t* out, std::size_t n) {
  std::size_t i = 0;
  unsigned char bytes[64];
  while (i < n) {
    fill(bytes, sizeof bytes);
    for (unsigned char b : bytes) {
      // 255 = 3 * 85: rejecting it keeps {0,1,2} exactly uniform. The branch is on a byte
      // that is thrown away, so it says nothing about the values kept.
      if (b >= 255) continue;
      if (i == n) break;
      out[i++] = ternary_from_byte(b);
    }
  }
}

std::int8_t SecureRandom::ternary_from_byte(unsigned char byte) {
  return static_cast<std::int8_t>(static_cast<int>(byte % 3) - 1);
}

std::int64_t SecureRandom::gaussian_from_bits(u64 bits) {
  const auto& cdf = gaussian_table().cdf;
  const u64 u = bits >> 1;  // 63 uniform bits
  const u64 sign = bits & 1;
  // Scan the whole table (no early exit) so timing does not depend on the sample.
  std::int64_t magnitude = 0;
  for (int k = 0; k < kTailCut; ++k) magnitude += static_cast<std::int64_t>(u >= cdf[k]);
  // Magnitude 0 must not be doubled by the sign: map -0 to 0.
  const std::int64_t neg = -static_cast<std::int64_t>(sign);
  return (magnitude ^ neg) - neg;
}

void SecureRandom::gaussian(std::int64_t* out, std::size_t n) {
  // The bits for all n samples at once, each word then mapped in place.
  fill(reinterpret_cast<unsigned char*>(out), n * sizeof(std::int64_t));
  for (std::size_t i = 0; i < n; ++i) {
    u64 bits;
    std::memcpy(&bits, &out[i], sizeof bits);
    out[i] = gaussian_from_bits(bits);
  }
}

}  // namespace fheprune::ckks
