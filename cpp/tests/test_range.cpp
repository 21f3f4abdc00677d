// input_range: the largest input magnitude a program holds. Inputs below it decrypt to the
// network's outputs; inputs far above it wrap around the modulus and decrypt to garbage, which
// is why clients refuse them.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fheprune/ckks/ckks.hpp"
#include "fheprune/runtime/cost.hpp"
#include "fheprune/runtime/server.hpp"
#include "test_util.hpp"

namespace fheprune::runtime {
namespace {

struct Net {
  std::vector<double> w1, b1, w2, b2;  // 8 -> 6 (square) -> 3
  std::vector<double> forward(const std::vector<double>& x) const {
    std::vector<double> h(6), y(3);
    for (std::size_t r = 0; r < 6; ++r) {
      double s = b1[r];
      for (std::size_t c = 0; c < 8; ++c) s += w1[r * 8 + c] * x[c];
      h[r] = s * s;
    }
    for (std::size_t r = 0; r < 3; ++r) {
      double s = b2[r];
      for (std::size_t c = 0; c < 6; ++c) s += w2[r * 6 + c] * h[c];
      y[r] = s;
    }
    return y;
  }
};

// Non-negative weights and inputs: every bound is nearly reached, so the test probes the edge.
Net random_net(std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> val(0.0, 0.5);
  auto draw = [&](std::size_t n) {
    std::vector<double> v(n);
    for (double& x : v) x = val(gen);
    return v;
  };
  return {draw(48), draw(6), draw(18), draw(3)};
}

// Worst error of the encrypted network against the clear one, relative to the output size, on
// inputs uniform in [magnitude / 2, magnitude].
double relative_error(const Program& p, const Net& net, double magnitude) {
  ckks::testing::Fixture client(p.parameters());
  const auto keys = std::make_shared<const ckks::EvaluationKeys>(
      client.keygen.create_evaluation_keys(p.rotation_steps()));
  const Server server(std::make_shared<const Program>(p), keys);
  const std::size_t count = p.samples_per_group();  // a full batch: outputs fill the slots
  std::vector<double> x = ckks::testing::random_reals(count * 8, 5);
  for (double& v : x) v = magnitude * (0.75 + 0.25 * v);
  std::vector<ckks::Ciphertext> in;
  for (const auto& slots : p.pack_inputs(x, count)) {
    in.push_back(client.encryptor.encrypt(client.encoder.encode(slots)));
  }
  std::vector<std::vector<double>> rows;
  for (const auto& c : server.run(in)) {
    rows.push_back(c ? client.encoder.decode(client.decryptor.decrypt(*c))
                     : std::vector<double>(p.slots(), 0.0));
  }
  const std::vector<double> y = p.unpack_outputs(rows, count);
  double worst = 0.0, size = 0.0;
  for (std::size_t s = 0; s < count; ++s) {
    const auto want = net.forward({x.begin() + static_cast<long>(s * 8),
                                   x.begin() + static_cast<long>((s + 1) * 8)});
    for (std::size_t f = 0; f < 3; ++f) {
      worst = std::max(worst, std::abs(y[s * 3 + f] - want[f]));
      size = std::max(size, std::abs(want[f]));
    }
  }
  return worst / size;
}

TEST(InputRange, InputsWithinTheBoundDecryptAndFarBeyondItDoNot) {
  // q0 of 34 bits over a 2^25 scale: outputs must stay below 2^(33 - 1 - 25 - 1) = 64 in the
  // bound, so the square's growth makes the input range small and easy to overflow.
  const ckks::Parameters prm = ckks::testing::small_params({34, 25, 25, 25}, {50}, 2048);
  auto prm25 = prm;
  prm25.scale_bits = 25;
  const Net net = random_net(3);
  Program p = Program::tile(prm25, {4, 4, prm25.poly_degree / 2 / 16}, 8);
  p.add_linear("fc1", 6, 8, net.w1, net.b1);
  p.add_square("act");
  p.add_linear("fc2", 3, 6, net.w2, net.b2);

  const InputRange range = input_range(p, prm25.chain_bits.size() - 1);
  ASSERT_GT(range.max_input, 0.0);
  EXPECT_EQ(range.limiting_layer, "fc2");  // the output level (q0 alone) binds first
  EXPECT_LT(relative_error(p, net, range.max_input), 1e-2);
  // The bound is sufficient, not tight: it bounds slot values, and a ciphertext overflows when
  // its polynomial's coefficients (averages over the slots) do. 64x the inputs make the
  // outputs 4096x larger, far past half of q0: they wrap around the modulus.
  EXPECT_GT(relative_error(p, net, 64.0 * range.max_input), 0.1);  // within: ~1e-5

  // More margin, smaller bound; a larger first prime, larger bound.
  EXPECT_LT(input_range(p, 3, 4.0).max_input, range.max_input);
  auto wide = prm25;
  wide.chain_bits[0] = 44;
  Program q = Program::tile(wide, {4, 4, wide.poly_degree / 2 / 16}, 8);
  q.add_linear("fc1", 6, 8, net.w1, net.b1);
  q.add_square("act");
  q.add_linear("fc2", 3, 6, net.w2, net.b2);
  EXPECT_GT(input_range(q, 3).max_input, range.max_input * 10);
}

TEST(InputRange, AProgramWhoseBiasCannotFitIsACompileError) {
  auto prm = ckks::testing::small_params({30, 25}, {50}, 2048);
  prm.scale_bits = 25;
  Program p = Program::diagonal(prm, 4);
  p.add_linear("fc", 2, 4, std::vector<double>(8, 0.1), std::vector<double>{1e6, 0.0});
  EXPECT_THROW(input_range(p, 1), CompileError);
}

}  // namespace
}  // namespace fheprune::runtime
