#include "fheprune/ckks/ciphertext.hpp"

namespace fheprune::ckks {

Plaintext::Plaintext(const Context& ctx, std::size_t level, double scale)
    : data_((level + 1) * ctx.poly_degree(), 0),
      n_(ctx.poly_degree()),
      level_(level),
      scale_(scale),
      params_(ctx.fingerprint()) {}

Ciphertext::Ciphertext(const Context& ctx, std::size_t size, std::size_t level, double scale,
                       const KeyId& key_id)
    : data_(size * (level + 1) * ctx.poly_degree(), 0),
      n_(ctx.poly_degree()),
      size_(size),
      level_(level),
      scale_(scale),
      params_(ctx.fingerprint()),
      key_id_(key_id) {}

}  // namespace fheprune::ckks
