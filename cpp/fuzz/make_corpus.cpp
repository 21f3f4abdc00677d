// Seed-corpus generator for the fuzz targets (built only with FHEPRUNE_BUILD_FUZZERS).
//
//   make_corpus DIR
//
// Writes one valid serialized object of each kind, made under the fixed small context of
// fuzz_util.hpp, into DIR (created if missing; existing files of the same name are replaced):
//   parameters.bin                                   -> fuzz_parameters
//   plaintext.bin plaintext_level0.bin
//   ciphertext.bin ciphertext_size3.bin              -> fuzz_ciphertext
//   public_key.bin relin_key.bin galois_keys.bin (steps 1 and 2)
//   evaluation_keys.bin secret_key.bin               -> fuzz_keys
// Keys are fresh random keys on every run: the files are test material, never real keys.
// Every file is loaded back before the program reports success.
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz_util.hpp"

namespace {

namespace ckks = fheprune::ckks;
namespace fs = std::filesystem;
using ckks::Serializer;

void write_file(const fs::path& path, const ckks::Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw std::runtime_error("cannot write " + path.string());
  std::printf("  %-22s %8zu bytes\n", path.filename().c_str(), bytes.size());
}

int run(const fs::path& dir) {
  fs::create_directories(dir);
  const ckks::ContextPtr& shared = fheprune::fuzz::small_context_ptr();
  const ckks::Context& ctx = *shared;

  ckks::KeyGenerator keygen(shared);
  ckks::Encoder encoder(shared);
  ckks::Evaluator evaluator(shared);

  std::vector<double> values(ctx.slots());
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = std::sin(0.1 * static_cast<double>(i));
  }
  const double scale = std::ldexp(1.0, 25);
  const ckks::Plaintext pt = encoder.encode(values, scale);
  const ckks::Plaintext pt0 = encoder.encode(values, scale, 0);

  const ckks::PublicKey pk = keygen.create_public_key();
  const ckks::RelinKey rk = keygen.create_relin_key();
  const ckks::GaloisKeys gk = keygen.create_galois_keys({1, 2});
  const ckks::EvaluationKeys bundle{pk, rk, gk};

  ckks::Encryptor encryptor(shared, pk);
  const ckks::Ciphertext ct = encryptor.encrypt(pt);
  const ckks::Ciphertext ct3 = evaluator.multiply(ct, ct);

  std::printf("make_corpus: writing seeds to %s\n", dir.c_str());
  const auto emit = [&](const char* name, const ckks::Bytes& bytes, auto load) {
    write_file(dir / name, bytes);
    (void)load(bytes);  // throws if the seed is not a valid object
  };
  emit("parameters.bin", Serializer::save(ctx.parameters()),
       [](const ckks::Bytes& b) { return Serializer::load_parameters(b); });
  emit("plaintext.bin", Serializer::save(ctx, pt),
       [&](const ckks::Bytes& b) { return Serializer::load_plaintext(ctx, b); });
  emit("plaintext_level0.bin", Serializer::save(ctx, pt0),
       [&](const ckks::Bytes& b) { return Serializer::load_plaintext(ctx, b); });
  emit("ciphertext.bin", Serializer::save(ctx, ct),
       [&](const ckks::Bytes& b) { return Serializer::load_ciphertext(ctx, b); });
  emit("ciphertext_size3.bin", Serializer::save(ctx, ct3),
       [&](const ckks::Bytes& b) { return Serializer::load_ciphertext(ctx, b); });
  emit("public_key.bin", Serializer::save(ctx, pk),
       [&](const ckks::Bytes& b) { return Serializer::load_public_key(ctx, b); });
  emit("relin_key.bin", Serializer::save(ctx, rk),
       [&](const ckks::Bytes& b) { return Serializer::load_relin_key(ctx, b); });
  emit("galois_keys.bin", Serializer::save(ctx, gk),
       [&](const ckks::Bytes& b) { return Serializer::load_galois_keys(ctx, b); });
  emit("evaluation_keys.bin", Serializer::save(ctx, bundle),
       [&](const ckks::Bytes& b) { return Serializer::load_evaluation_keys(ctx, b); });
  emit("secret_key.bin", Serializer::save_secret_key(ctx, keygen.secret_key()),
       [&](const ckks::Bytes& b) { return Serializer::load_secret_key(ctx, b); });
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n  writes one valid object of each kind into DIR\n",
                 argc > 0 ? argv[0] : "make_corpus");
    return 2;
  }
  try {
    fheprune::fuzz::init();
    return run(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_corpus: %s\n", e.what());
    return 1;
  }
}
