// The model owner: compiles a small network into a packed CKKS program and publishes it.
//
//   model_owner OUT_DIR [SAMPLES]
//
// The network is 16 -> 8 (square) -> 4 with seeded random weights, in the tile layout with
// 4x4 weight tiles; a third of the first layer's tiles are pruned to zero, and the program
// skips them. Writes OUT_DIR/program.fhp (what the client and the server receive) and, so that
// the example can check itself, OUT_DIR/inputs.txt with SAMPLES test inputs (default 8) and
// OUT_DIR/expected.txt with the network's outputs on them computed in the clear.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common.hpp"
#include "fheprune/runtime/program.hpp"
#include "fheprune/runtime/server.hpp"

namespace ck = fheprune::ckks;
namespace rt = fheprune::runtime;

namespace {

struct Dense {
  std::size_t out, in;
  std::vector<double> weight, bias;  // [out][in], [out]
};

Dense random_dense(std::size_t out, std::size_t in, std::mt19937_64& gen, bool prune_tiles) {
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  Dense d{out, in, std::vector<double>(out * in), std::vector<double>(out)};
  for (double& w : d.weight) w = 2.0 * dist(gen) / std::sqrt(static_cast<double>(in));
  for (double& b : d.bias) b = 0.1 * dist(gen);
  if (prune_tiles) {  // zero every third 4x4 tile
    for (std::size_t o = 0; o < out; ++o) {
      for (std::size_t i = 0; i < in; ++i) {
        if (((o / 4) * (in / 4) + i / 4) % 3 == 0) d.weight[o * in + i] = 0.0;
      }
    }
  }
  return d;
}

std::vector<double> forward(const Dense& d, const std::vector<double>& x) {
  std::vector<double> y(d.bias);
  for (std::size_t o = 0; o < d.out; ++o) {
    for (std::size_t i = 0; i < d.in; ++i) y[o] += d.weight[o * d.in + i] * x[i];
  }
  return y;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s OUT_DIR [SAMPLES]\n", argv[0]);
    return 2;
  }
  try {
    const std::filesystem::path dir = argv[1];
    const long samples = argc == 3 ? std::strtol(argv[2], nullptr, 10) : 8;
    if (samples < 1) throw ck::ParameterError("SAMPLES must be a positive number");
    std::filesystem::create_directories(dir);

    // Three levels (two products, one square) at N = 8192: a 33-bit scale keeps the modulus
    // (205 bits) within the 128-bit bound (218 bits).
    ck::Parameters params;
    params.poly_degree = 8192;
    params.chain_bits = {53, 33, 33, 33};
    params.special_bits = {53};
    params.scale_bits = 33;

    std::mt19937_64 gen(2026);
    const Dense l1 = random_dense(8, 16, gen, /*prune_tiles=*/true);
    const Dense l2 = random_dense(4, 8, gen, /*prune_tiles=*/false);
    rt::Program program = rt::Program::tile(params, {4, 4, 256}, 16);
    program.add_linear("fc1", l1.out, l1.in, l1.weight, l1.bias);
    program.add_square("act");
    program.add_linear("fc2", l2.out, l2.in, l2.weight, l2.bias);
    if (program.levels() > params.chain_bits.size() - 1) {
      throw rt::CompileError("the program needs " + std::to_string(program.levels()) +
                             " levels, the parameters give " +
                             std::to_string(params.chain_bits.size() - 1));
    }
    const ck::Bytes bytes = program.save();
    examples::write_file(dir / "program.fhp", bytes);

    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    std::ofstream inputs(dir / "inputs.txt"), expected(dir / "expected.txt");
    for (long s = 0; s < samples; ++s) {
      std::vector<double> x(16);
      for (double& v : x) v = dist(gen);
      std::vector<double> h = forward(l1, x);
      for (double& v : h) v *= v;
      const std::vector<double> y = forward(l2, h);
      for (double v : x) inputs << v << ' ';
      for (double v : y) expected << v << ' ';
      inputs << '\n';
      expected << '\n';
    }
    const ck::Fingerprint fp = rt::program_fingerprint(bytes);
    std::printf("program.fhp: %zu layers, %zu levels, %zu bytes, fingerprint %02x%02x%02x%02x...\n",
                program.layers().size(), program.levels(), bytes.size(), fp[0], fp[1], fp[2],
                fp[3]);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
