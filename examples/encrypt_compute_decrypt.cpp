// The engine on its own: a client makes keys and encrypts a vector; a server, holding only the
// evaluation keys, computes rotate(x * x + x / 2, 1) on the ciphertext; the client decrypts and
// checks the result against the same computation in the clear.
//
//   encrypt_compute_decrypt        (exit status 0 when the error is below 1e-5)
#include <cmath>
#include <cstdio>
#include <vector>

#include "fheprune/ckks/ckks.hpp"
#include "fheprune/version.hpp"

namespace ck = fheprune::ckks;

int main() {
  try {
    // N = 8192 with a 200-bit modulus: within the 128-bit bound (218 bits at this N).
    ck::Parameters params;
    params.poly_degree = 8192;
    params.chain_bits = {60, 40, 40};
    params.special_bits = {60};
    params.scale_bits = 40;
    const ck::ContextPtr ctx = ck::make_context(params, /*threads=*/1);
    std::printf("fheprune %s, %s\n", FHEPRUNE_VERSION, params.describe().c_str());

    // Client: the secret key stays here; the server gets the evaluation keys.
    ck::KeyGenerator keygen(ctx);
    const ck::EvaluationKeys server_keys = keygen.create_evaluation_keys(/*steps=*/{1});
    ck::Encoder encoder(ctx);
    std::vector<double> x(ctx->slots());
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.001 * static_cast<double>(i));
    ck::Encryptor encryptor(ctx, server_keys.public_key);
    const ck::Ciphertext ct = encryptor.encrypt(encoder.encode(x));

    // Server: ciphertexts and evaluation keys only.
    ck::Evaluator eval(ctx);
    ck::Ciphertext sq = eval.rescale(eval.multiply_relin(ct, ct, server_keys.relin_key));
    // x / 2 at the square's scale: a constant at scale Delta, then the same rescale, gives
    // Delta^2 / q_L, exactly the square's scale.
    const ck::Plaintext half = encoder.encode_constant(0.5, ctx->default_scale());
    ck::Ciphertext lin = eval.rescale(eval.multiply_plain(ct, half));
    ck::Ciphertext y = eval.rotate(eval.add(sq, lin), 1, server_keys.galois_keys);

    // Client: decrypt and compare with the clear computation.
    ck::Decryptor decryptor(ctx, keygen.secret_key());
    const std::vector<double> got = encoder.decode(decryptor.decrypt(y));
    double max_error = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double xi = x[(i + 1) % x.size()];
      max_error = std::max(max_error, std::abs(got[i] - (xi * xi + xi / 2)));
    }
    std::printf("rotate(x*x + x/2, 1) over %zu slots: max error %.3g\n", x.size(), max_error);
    return max_error < 1e-5 ? 0 : 1;
  } catch (const ck::FheError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
