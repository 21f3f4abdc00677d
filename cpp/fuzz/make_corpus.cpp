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
//   evaluation_keys.bin evaluation_keys_encapsulated.bin
//   secret_key.bin                                   -> fuzz_keys
//   program_tile.bin program_diagonal.bin program_map.bin
//   program_refresh.bin                              -> fuzz_program
// The programs carry their own small parameters (N = 1024, enough levels for their layers),
// independent of the fixed context; their weights are fixed pseudo-random values with some
// zero tiles / diagonals, so the loader's pruning paths run on the seeds.
// Keys are fresh random keys on every run: the files are test material, never real keys.
// Every file is loaded back before the program reports success.
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fheprune/runtime/program.hpp"
#include "fuzz_util.hpp"

namespace {

namespace ckks = fheprune::ckks;
namespace fs = std::filesystem;
using ckks::Serializer;

namespace rt = fheprune::runtime;

// Small insecure parameters for a program of `levels` levels.
ckks::Parameters program_parameters(std::size_t levels) {
  ckks::Parameters p;
  p.poly_degree = 1024;
  p.chain_bits = std::vector<int>(levels + 1, 30);
  p.chain_bits[0] = 40;
  p.special_bits = {40};
  p.scale_bits = 30;
  p.security = ckks::SecurityLevel::kNoneInsecureTestingOnly;
  return p;
}

// Weights [out][in] in [-0.5, 0.5], with every `zero_every`-th block of `block` x `block`
// entries zero (0: none), and a bias whose entries are zero for rows r % 3 == 2.
std::pair<std::vector<double>, std::vector<double>> seed_layer(std::size_t out, std::size_t in,
                                                               std::size_t block,
                                                               std::size_t zero_every,
                                                               double phase) {
  std::vector<double> w(out * in), b(out);
  for (std::size_t r = 0; r < out; ++r) {
    for (std::size_t c = 0; c < in; ++c) {
      const std::size_t blk = (r / block) * 97 + c / block;
      const bool zero = zero_every != 0 && blk % zero_every == 0;
      w[r * in + c] = zero ? 0.0 : 0.5 * std::sin(phase + 0.37 * static_cast<double>(r * in + c));
    }
    b[r] = r % 3 == 2 ? 0.0 : 0.25 * std::cos(phase + static_cast<double>(r));
  }
  return {w, b};
}

// Tile layout [4, 4, 32], 20 -> 12 -> 10 -> 5 with squares: both orientations and a rebuild.
rt::Program seed_tile_program() {
  rt::Program p = rt::Program::tile(program_parameters(6), {4, 4, 32}, 20);
  const std::size_t widths[] = {20, 12, 10, 5};
  for (std::size_t i = 0; i + 1 < std::size(widths); ++i) {
    const auto [w, b] = seed_layer(widths[i + 1], widths[i], 4, 3, static_cast<double>(i));
    p.add_linear("fc" + std::to_string(i + 1), widths[i + 1], widths[i], w, b);
    if (i + 2 < std::size(widths)) p.add_square("act" + std::to_string(i + 1));
  }
  return p;
}

// Diagonal layout, 20 -> 12 -> 5 with a square: padded sizes 32 -> 16 -> 8 (the hybrid fold);
// the last layer has no bias.
rt::Program seed_diagonal_program() {
  rt::Program p = rt::Program::diagonal(program_parameters(3), 20);
  const auto [w1, b1] = seed_layer(12, 20, 3, 4, 0.5);
  p.add_linear("fc1", 12, 20, w1, b1);
  p.add_square("act1");
  const std::vector<double> w2 = seed_layer(5, 12, 2, 0, 1.5).first;
  p.add_linear("fc2", 5, 12, w2, {});  // no bias: the file holds an empty bias vector
  return p;
}

// Diagonal layout deeper than its chain: three linear + square pairs on a bootstrappable chain
// with two levels left after a refresh, so the program holds two refreshes.
rt::Program seed_refresh_program() {
  ckks::Parameters params;
  params.poly_degree = 1024;
  params.chain_bits = {55, 40, 40, 40, 40, 40};
  for (int i = 0; i < 11; ++i) params.chain_bits.push_back(55);  // EvalMod, arcsine included
  for (int i = 0; i < 3; ++i) params.chain_bits.push_back(60);
  params.special_bits = {60};
  params.scale_bits = 40;
  params.security = ckks::SecurityLevel::kNoneInsecureTestingOnly;
  rt::Program p = rt::Program::diagonal(params, 8);
  for (int k = 0; k < 3; ++k) {
    const auto [w, b] = seed_layer(8, 8, 2, 3, 0.3 * k);
    p.add_linear("fc" + std::to_string(k + 1), 8, 8, w, b);
    p.add_square("act" + std::to_string(k + 1));
  }
  p.place_refreshes({.chebyshev_degree = 31});
  return p;
}

// Map layout: a 3x3 convolution between two ciphertexts of 4 channel blocks (8x16 grids),
// a window sum, a square and a small map into one output ciphertext with an output map.
rt::Program seed_map_program() {
  rt::Program p = rt::Program::map(program_parameters(3), 2);
  const std::size_t slots = p.slots(), block = slots / 4, grid_w = 16;
  std::vector<std::uint32_t> out, in;
  std::vector<std::size_t> shift;
  std::vector<double> values;
  for (std::uint32_t o = 0; o < 2; ++o) {
    for (std::uint32_t i = 0; i < 2; ++i) {
      for (std::size_t k = 0; k < 9; ++k) {
        for (std::size_t r = 0; r < 4; ++r) {
          out.push_back(o);
          in.push_back(i);
          shift.push_back(((k / 3) * grid_w + k % 3 + r * block) % slots);
          for (std::size_t j = 0; j < 4; ++j) {
            values.push_back(0.25 * std::sin(static_cast<double>(values.size())));
          }
        }
      }
    }
  }
  const std::vector<double> bias(2 * 4, 0.125);
  p.add_map_linear("conv", 2, out, in, shift, values, 4, bias, 4);
  p.add_rotate_sum("pool", {{2, 1}, {2, grid_w}});
  p.add_square("act");
  const std::vector<std::uint32_t> fo{0, 0}, fi{0, 1};
  const std::vector<std::size_t> fs{0, 3};
  const std::vector<double> fv(2 * slots, 0.5);
  p.add_map_linear("fc", 1, fo, fi, fs, fv, slots, {}, 0);
  const std::vector<std::uint32_t> ct{0, 0, 0};
  const std::vector<std::size_t> at{0, 1, 2};
  p.set_outputs(ct, at);
  return p;
}

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
  const ckks::EvaluationKeys bundle{pk, rk, gk, {}};  // no encapsulation keys
  // A bootstrapping bundle also carries the two sparse-secret switching keys.
  const ckks::EvaluationKeys encapsulated{pk, rk, gk, keygen.create_encapsulation_keys(32)};

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
  emit("evaluation_keys_encapsulated.bin", Serializer::save(ctx, encapsulated),
       [&](const ckks::Bytes& b) {
         auto keys = Serializer::load_evaluation_keys(ctx, b);
         if (keys.encapsulation.empty()) {
           throw std::runtime_error("the encapsulated bundle lost its encapsulation keys");
         }
         return keys;
       });
  emit("secret_key.bin", Serializer::save_secret_key(ctx, keygen.secret_key()),
       [&](const ckks::Bytes& b) { return Serializer::load_secret_key(ctx, b); });
  emit("program_tile.bin", seed_tile_program().save(),
       [](const ckks::Bytes& b) { return rt::Program::load(b); });
  emit("program_diagonal.bin", seed_diagonal_program().save(),
       [](const ckks::Bytes& b) { return rt::Program::load(b); });
  emit("program_map.bin", seed_map_program().save(),
       [](const ckks::Bytes& b) { return rt::Program::load(b); });
  emit("program_refresh.bin", seed_refresh_program().save(),
       [](const ckks::Bytes& b) { return rt::Program::load(b); });
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
