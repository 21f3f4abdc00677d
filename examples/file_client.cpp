// The client: holds the secret key, encrypts its samples for a program, decrypts the results.
// Works with any tile- or diagonal-layout program file (from model_owner or compiled in Python
// with a plain feature order).
//
//   file_client keygen  PROGRAM DIR              DIR/secret.key (stays here), DIR/evaluation.keys
//   file_client encrypt PROGRAM DIR INPUTS.txt   one sample per line -> DIR/in/*.ct
//   file_client decrypt PROGRAM DIR COUNT [EXPECTED.txt [TOLERANCE]]
//                                                DIR/out/*.ct -> COUNT rows of outputs; with
//                                                EXPECTED, exit status 1 if any output differs
//                                                by more than TOLERANCE (default 1e-3)
//
// Only DIR/evaluation.keys and DIR/in/ go to the server; the evaluation-key bundle cannot hold
// the secret key.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common.hpp"
#include "fheprune/ckks/ckks.hpp"
#include "fheprune/runtime/cost.hpp"
#include "fheprune/runtime/program.hpp"
#include "fheprune/runtime/server.hpp"

namespace ck = fheprune::ckks;
namespace rt = fheprune::runtime;
namespace fs = std::filesystem;

namespace {

int keygen(const rt::Program& program, const ck::ContextPtr& ctx, const fs::path& dir) {
  ck::KeyGenerator keygen(ctx);
  // Exactly the Galois keys the program rotates by.
  const ck::EvaluationKeys keys = keygen.create_evaluation_keys(program.rotation_steps());
  fs::create_directories(dir);
  examples::write_file(dir / "secret.key", ck::Serializer::save_secret_key(*ctx, keygen.secret_key()));
  fs::permissions(dir / "secret.key", fs::perms::owner_read | fs::perms::owner_write);
  const ck::Bytes bundle = ck::Serializer::save(*ctx, keys);
  examples::write_file(dir / "evaluation.keys", bundle);
  std::printf("evaluation.keys: %zu bytes (%zu rotation keys)\n", bundle.size(),
              keys.galois_keys.elements().size());
  return 0;
}

ck::SecretKey load_secret(const ck::Context& ctx, const fs::path& dir) {
  return ck::Serializer::load_secret_key(ctx, rt::read_file(dir / "secret.key"));
}

int encrypt(const rt::Program& program, const ck::ContextPtr& ctx, const fs::path& dir,
            const fs::path& inputs) {
  const auto rows = examples::read_rows(inputs);
  if (rows.empty()) throw ck::EncodingError(inputs.string() + " holds no samples");
  std::vector<double> flat;
  for (const auto& r : rows) {
    if (r.size() != program.in_features()) {
      throw ck::EncodingError("a sample has " + std::to_string(r.size()) +
                              " features, the program takes " +
                              std::to_string(program.in_features()));
    }
    flat.insert(flat.end(), r.begin(), r.end());
  }
  // Inputs beyond the program's range would wrap around the modulus and decrypt to garbage.
  try {
    const double bound = rt::input_range(program, program.parameters().chain_bits.size() - 1)
                             .max_input;
    for (double v : flat) {
      if (!std::isfinite(v) || std::abs(v) > bound) {
        throw ck::EncodingError("input " + std::to_string(v) + " is outside the range this "
                                "program holds at its parameters (|x| <= " +
                                std::to_string(bound) + ")");
      }
    }
  } catch (const rt::CompileError&) {
    // No range can be proven for this program (deep networks): inputs are not checked.
  }
  const auto slots = program.pack_inputs(flat, rows.size());
  ck::Encoder encoder(ctx);
  ck::Encryptor encryptor(ctx, load_secret(*ctx, dir));
  fs::create_directories(dir / "in");
  for (std::size_t i = 0; i < slots.size(); ++i) {
    const ck::Ciphertext ct = encryptor.encrypt(encoder.encode(slots[i]));
    examples::write_file(examples::ciphertext_path(dir / "in", i), ck::Serializer::save(*ctx, ct));
  }
  std::printf("encrypted %zu samples into %zu ciphertexts\n", rows.size(), slots.size());
  return 0;
}

int decrypt(const rt::Program& program, const ck::ContextPtr& ctx, const fs::path& dir,
            std::size_t count, const char* expected_path, double tolerance) {
  ck::Encoder encoder(ctx);
  ck::Decryptor decryptor(ctx, load_secret(*ctx, dir));
  std::vector<std::vector<double>> slots;
  for (const fs::path& file : examples::ciphertext_files(dir / "out")) {
    const ck::Bytes bytes = rt::read_file(file);
    if (bytes.empty()) {  // an output the program knows to be zero
      slots.emplace_back(ctx->slots(), 0.0);
    } else {
      slots.push_back(encoder.decode(decryptor.decrypt(ck::Serializer::load_ciphertext(*ctx, bytes))));
    }
  }
  const std::vector<double> y = program.unpack_outputs(slots, count);
  const std::size_t outs = program.out_features();
  for (std::size_t s = 0; s < count; ++s) {
    for (std::size_t f = 0; f < outs; ++f) std::printf("%s%.6f", f ? " " : "", y[s * outs + f]);
    std::printf("\n");
  }
  if (!expected_path) return 0;
  const auto expected = examples::read_rows(expected_path);
  double max_error = 0.0;
  for (std::size_t s = 0; s < count; ++s) {
    if (s >= expected.size() || expected[s].size() != outs) {
      throw ck::EncodingError(std::string(expected_path) + " does not hold " +
                              std::to_string(count) + " rows of " + std::to_string(outs));
    }
    for (std::size_t f = 0; f < outs; ++f) {
      max_error = std::max(max_error, std::abs(y[s * outs + f] - expected[s][f]));
    }
  }
  std::printf("max error against %s: %.3g (tolerance %.3g)\n", expected_path, max_error, tolerance);
  return max_error <= tolerance ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  const bool ok = (cmd == "keygen" && argc == 4) || (cmd == "encrypt" && argc == 5) ||
                  (cmd == "decrypt" && argc >= 5 && argc <= 7);
  if (!ok) {
    std::fprintf(stderr,
                 "usage: %s keygen PROGRAM DIR\n"
                 "       %s encrypt PROGRAM DIR INPUTS.txt\n"
                 "       %s decrypt PROGRAM DIR COUNT [EXPECTED.txt [TOLERANCE]]\n",
                 argv[0], argv[0], argv[0]);
    return 2;
  }
  try {
    const rt::Program program = rt::Program::load(rt::read_file(argv[2]));
    if (program.layout() == rt::Layout::kMap) {
      throw rt::CompileError("this client packs feature vectors (tile and diagonal layouts); "
                             "map-layout programs take images packed by the Python client");
    }
    // The client re-checks the parameters itself (the 128-bit bound included).
    const ck::ContextPtr ctx = ck::make_context(program.parameters());
    const fs::path dir = argv[3];
    if (cmd == "keygen") return keygen(program, ctx, dir);
    if (cmd == "encrypt") return encrypt(program, ctx, dir, argv[4]);
    const long count = std::strtol(argv[4], nullptr, 10);
    if (count < 1) throw ck::EncodingError("COUNT must be a positive number");
    const double tolerance = argc == 7 ? std::strtod(argv[6], nullptr) : 1e-3;
    return decrypt(program, ctx, dir, static_cast<std::size_t>(count), argc >= 6 ? argv[5] : nullptr,
                   tolerance);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
