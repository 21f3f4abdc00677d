// runtime::Server: the checks that keep a server safe (parameters, key ids, rotation keys,
// every run input), shared ownership of keys and program, and results equal to the executor's;
// runtime::ProgramHost: many clients' keys on one program's shared plaintexts.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <thread>

#include "fheprune/ckks/ckks.hpp"
#include "fheprune/runtime/server.hpp"
#include "test_util.hpp"

namespace fheprune::runtime {
namespace {

using ckks::testing::small_params;

// 12 -> 6 (square) -> 3 in the tile layout with 4x4 tiles: rotations, a square, a rescale chain.
Program make_program(const ckks::Parameters& prm, std::uint64_t seed = 1) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> val(-0.5, 0.5);
  auto random = [&](std::size_t n) {
    std::vector<double> v(n);
    for (double& x : v) x = val(gen);
    return v;
  };
  Program p = Program::tile(prm, {4, 4, prm.poly_degree / 2 / 16}, 12);
  p.add_linear("fc1", 6, 12, random(6 * 12), random(6));
  p.add_square("act");
  p.add_linear("fc2", 3, 6, random(3 * 6), random(3));
  return p;
}

struct ServerSetup {
  ckks::Parameters prm = small_params();
  std::shared_ptr<const Program> program = std::make_shared<const Program>(make_program(prm));
  ckks::testing::Fixture client{prm};
  std::shared_ptr<const ckks::EvaluationKeys> keys =
      std::make_shared<const ckks::EvaluationKeys>(
          client.keygen.create_evaluation_keys(program->rotation_steps()));

  std::vector<ckks::Ciphertext> encrypt(std::size_t count) {
    const auto x = ckks::testing::random_reals(count * program->in_features(), 7);
    std::vector<ckks::Ciphertext> out;
    for (const auto& slots : program->pack_inputs(x, count)) {
      out.push_back(client.encryptor.encrypt(client.encoder.encode(slots)));
    }
    return out;
  }
};

std::vector<std::vector<double>> decrypt(ServerSetup& s, const std::vector<std::optional<ckks::Ciphertext>>& out) {
  std::vector<std::vector<double>> rows;
  for (const auto& c : out) {
    rows.push_back(c ? s.client.encoder.decode(s.client.decryptor.decrypt(*c))
                     : std::vector<double>(s.prm.poly_degree / 2, 0.0));
  }
  return rows;
}

TEST(Server, RunsLikeTheExecutorOnTheSameKeys) {
  ServerSetup s;
  const Server server(s.program, s.keys);
  const auto inputs = s.encrypt(5);
  RunStats stats;
  const auto got = decrypt(s, server.run(inputs, &stats));

  EngineBackend backend(s.client.ctx, s.keys);
  Executor<EngineBackend> exec(*s.program, backend);
  RunStats want_stats;
  const auto want = decrypt(s, exec.run(inputs, &want_stats));
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_LT(ckks::testing::max_abs_diff(got[i], want[i]), 1e-6);
  }
  EXPECT_EQ(stats.total(), want_stats.total());
  EXPECT_EQ(server.key_id(), s.client.keygen.secret_key().id());
}

TEST(Server, SharesOwnershipOfKeysAndProgram) {
  ServerSetup s;
  std::weak_ptr<const ckks::EvaluationKeys> watch = s.keys;
  const auto inputs = s.encrypt(2);
  std::optional<Server> server;
  server.emplace(s.program, s.keys);
  s.keys.reset();
  s.program.reset();
  ASSERT_FALSE(watch.expired());  // the server keeps them alive
  EXPECT_EQ(server->run(inputs).size(), server->program().output_ciphertexts());
  Server moved = std::move(*server);
  server.reset();
  EXPECT_FALSE(watch.expired());
  EXPECT_EQ(moved.run(inputs).size(), moved.program().output_ciphertexts());
}

TEST(Server, SetThreadsGivesTheSameBitsOnItsOwnContextOnly) {
  ServerSetup s;
  Server server(s.program, s.keys);
  const auto inputs = s.encrypt(5);
  const auto one = server.run(inputs);
  server.set_threads(2);
  EXPECT_EQ(server.context()->threads(), 2u);
  const auto two = server.run(inputs);  // exact: the same operations, other threads
  ASSERT_EQ(two.size(), one.size());
  for (std::size_t i = 0; i < one.size(); ++i) {
    ASSERT_EQ(two[i].has_value(), one[i].has_value());
    if (one[i]) {
      EXPECT_EQ(two[i]->data(), one[i]->data()) << "output " << i;
    }
  }
  EXPECT_THROW(server.set_threads(0), ckks::ParameterError);
  EXPECT_THROW(server.set_threads(ckks::max_threads() + 1), ckks::ParameterError);
  EXPECT_EQ(server.context()->threads(), 2u);  // a refused count changes nothing

  // A context the caller or a host shares may be running other work: refused.
  Server on_callers(s.program, s.client.ctx, s.keys);
  EXPECT_THROW(on_callers.set_threads(2), ckks::ParameterError);
  const ProgramHost host(s.program);
  Server served = host.serve(s.keys);
  EXPECT_THROW(served.set_threads(2), ckks::ParameterError);
  EXPECT_EQ(host.context()->threads(), 1u);
}

TEST(Server, RefusesKeysOfOtherParameters) {
  ServerSetup s;
  ckks::testing::Fixture other(small_params({50, 40, 40, 40, 40}));  // one more level
  const auto keys = std::make_shared<const ckks::EvaluationKeys>(
      other.keygen.create_evaluation_keys(s.program->rotation_steps()));
  EXPECT_THROW(Server(s.program, keys), ckks::MismatchError);
}

TEST(Server, RefusesABundleMixingTwoClientsKeys) {
  ServerSetup s;
  ckks::testing::Fixture stranger(s.prm);
  ckks::EvaluationKeys mixed = *s.keys;
  mixed.galois_keys = stranger.keygen.create_galois_keys(s.program->rotation_steps());
  try {
    Server(s.program, std::make_shared<const ckks::EvaluationKeys>(mixed));
    FAIL() << "a bundle of two clients' keys was accepted";
  } catch (const ckks::MismatchError& e) {
    EXPECT_NE(std::string(e.what()).find("different secret keys"), std::string::npos);
  }
}

TEST(Server, NamesTheMissingRotationKeys) {
  ServerSetup s;
  std::vector<long> steps = s.program->rotation_steps();
  ASSERT_FALSE(steps.empty());
  const long dropped = steps.back();
  steps.pop_back();
  const auto keys =
      std::make_shared<const ckks::EvaluationKeys>(s.client.keygen.create_evaluation_keys(steps));
  try {
    Server(s.program, keys);
    FAIL() << "a bundle without every rotation key was accepted";
  } catch (const ckks::MissingKeyError& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(dropped)), std::string::npos) << e.what();
  }
}

TEST(Server, RefusesNullArgumentsAndZeroThreads) {
  ServerSetup s;
  EXPECT_THROW(Server(nullptr, s.keys), CompileError);
  EXPECT_THROW(Server(s.program, std::shared_ptr<const ckks::EvaluationKeys>()),
               ckks::MissingKeyError);
  EXPECT_THROW(Server(s.program, s.keys, ServerOptions{.threads = 0}), ckks::ParameterError);
}

TEST(Server, RefusesAContextOfOtherParameters) {
  ServerSetup s;
  const auto other = ckks::make_context(small_params({50, 40, 40, 40, 40}));
  EXPECT_THROW(Server(s.program, other, s.keys), ckks::MismatchError);
  EXPECT_NO_THROW(Server(s.program, s.client.ctx, s.keys));
}

TEST(Server, ChecksEveryInput) {
  ServerSetup s;
  const Server server(s.program, s.keys);
  auto inputs = s.encrypt(1);
  ASSERT_EQ(inputs.size(), s.program->input_ciphertexts());

  // A null pointer: a typed error, not a crash.
  std::vector<const ckks::Ciphertext*> with_null{nullptr};
  for (std::size_t i = 1; i < inputs.size(); ++i) with_null.push_back(&inputs[i]);
  EXPECT_THROW(server.run(std::span<const ckks::Ciphertext* const>(with_null)),
               ckks::MismatchError);

  // Encrypted under another client's key.
  ckks::testing::Fixture stranger(s.prm);
  auto foreign = inputs;
  foreign[0] = stranger.encryptor.encrypt(stranger.encoder.encode(std::vector<double>{1.0}));
  EXPECT_THROW(server.run(foreign), ckks::MismatchError);

  // Below the input level, or at another scale.
  auto low = inputs;
  low[0] = s.client.evaluator.mod_switch_to(inputs[0], inputs[0].level() - 1);
  EXPECT_THROW(server.run(low), ckks::LevelError);
  for (double bad : {0.5, 2.0, 1.0 + 1e-6}) {
    auto scaled = inputs;
    scaled[0].set_scale(bad * scaled[0].scale());
    EXPECT_THROW(server.run(scaled), ckks::ScaleError) << bad;
  }
  // No ciphertext can carry a scale of 0, a negative one, inf or NaN.
  for (double bad : {0.0, -1.0, std::nan(""), HUGE_VAL}) {
    EXPECT_THROW(inputs[0].set_scale(bad), ckks::ScaleError) << bad;
  }

  // Size 3 (a product not relinearized).
  auto big = inputs;
  big[0] = s.client.evaluator.multiply(inputs[0], inputs[0]);
  EXPECT_THROW(server.run(big), ckks::MismatchError);

  // Not a whole group of input ciphertexts.
  if (inputs.size() == 1) {
    EXPECT_THROW(server.run(std::vector<ckks::Ciphertext>{}), CompileError);
  } else {
    inputs.pop_back();
    EXPECT_THROW(server.run(inputs), CompileError);
  }
}

TEST(Server, LoadsFromBytesAndRefusesOtherObjects) {
  ServerSetup s;
  const ckks::Bytes program = s.program->save();
  const ckks::Bytes keys = ckks::Serializer::save(*s.client.ctx, *s.keys);
  const Server server = Server::from_bytes(program, keys);
  EXPECT_EQ(server.program_fingerprint(), program_fingerprint(program));
  EXPECT_NE(server.program_fingerprint(), program_fingerprint(make_program(s.prm, 2).save()));

  const ckks::Bytes secret =
      ckks::Serializer::save_secret_key(*s.client.ctx, s.client.keygen.secret_key());
  try {
    Server::from_bytes(program, secret);
    FAIL() << "a secret key was accepted as evaluation keys";
  } catch (const ckks::SerializationError& e) {
    EXPECT_NE(std::string(e.what()).find("got a secret key"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Server::from_bytes(keys, keys), ckks::SerializationError);  // not a program
  ckks::Bytes corrupt = keys;
  corrupt[corrupt.size() / 2] ^= 1;
  EXPECT_THROW(Server::from_bytes(program, corrupt), ckks::SerializationError);

  // A serialized input goes through the same checks as a run input.
  const auto inputs = s.encrypt(1);
  const ckks::Ciphertext back =
      server.load_ciphertext(ckks::Serializer::save(*s.client.ctx, inputs[0]));
  EXPECT_EQ(back.data(), inputs[0].data());
  ckks::testing::Fixture stranger(s.prm);
  const auto foreign = stranger.encryptor.encrypt(stranger.encoder.encode(std::vector<double>{1}));
  EXPECT_THROW(server.load_ciphertext(ckks::Serializer::save(*stranger.ctx, foreign)),
               ckks::MismatchError);
}

TEST(Server, ASignedProgramIsCheckedAgainstItsOwnersKey) {
  ServerSetup s;
  const ckks::Bytes program = s.program->save();
  const ckks::Bytes keys = ckks::Serializer::save(*s.client.ctx, *s.keys);
  const SigningKey owner = SigningKey::generate();
  const Signature sig = owner.sign(program);
  EXPECT_NO_THROW(Server::from_signed_bytes(program, sig, owner.verify_key(), keys));

  ckks::Bytes changed = program;  // a file rewritten on the way (checksum re-sealed or not)
  changed[changed.size() / 2] ^= 1;
  EXPECT_THROW(Server::from_signed_bytes(changed, sig, owner.verify_key(), keys),
               ckks::MismatchError);
  const SigningKey other = SigningKey::generate();
  EXPECT_THROW(Server::from_signed_bytes(program, other.sign(program), owner.verify_key(), keys),
               ckks::MismatchError);
  EXPECT_THROW(Server::from_signed_bytes(program, std::span<const std::uint8_t>(sig).first(10),
                                         owner.verify_key(), keys),
               ckks::MismatchError);

  // Keys survive a round trip through their seed and hex forms.
  const SigningKey again = SigningKey::from_seed(owner.seed());
  EXPECT_EQ(again.verify_key(), owner.verify_key());
  EXPECT_EQ(VerifyKey::from_hex(owner.verify_key().hex()), owner.verify_key());
  EXPECT_THROW(VerifyKey::from_hex("xyz"), ckks::MismatchError);
  EXPECT_THROW(VerifyKey::from_hex(std::string(64, 'g')), ckks::MismatchError);
}

TEST(Server, MissingFilesAreTypedErrors) {
  EXPECT_THROW(read_file("/nonexistent/fheprune/program.fhp"), ckks::SerializationError);
  EXPECT_THROW(Server::from_files("/nonexistent/a", "/nonexistent/b"), ckks::SerializationError);
}

// ---- ProgramHost: one program, many clients ----

// The tile program with the first output tile of fc1 pruned away: that tile is its bias
// alone, an output the executor encrypts under each client's key.
Program make_pruned_program(const ckks::Parameters& prm) {
  Program dense = make_program(prm);
  std::mt19937_64 gen(3);
  std::uniform_real_distribution<double> val(-0.5, 0.5);
  std::vector<double> w1(6 * 12), b1(6), w2(3 * 6), b2(3);
  for (std::size_t r = 4; r < 6; ++r) {
    for (std::size_t c = 0; c < 12; ++c) w1[r * 12 + c] = val(gen);
  }
  for (double& v : b1) v = val(gen);
  for (double& v : w2) v = val(gen);
  for (double& v : b2) v = val(gen);
  Program p = Program::tile(prm, {4, 4, prm.poly_degree / 2 / 16}, 12);
  p.add_linear("fc1", 6, 12, w1, b1);
  p.add_square("act");
  p.add_linear("fc2", 3, 6, w2, b2);
  return p;
}

struct Client {
  explicit Client(const ckks::Parameters& prm, const Program& program)
      : fixture(prm),
        keys(std::make_shared<const ckks::EvaluationKeys>(
            fixture.keygen.create_evaluation_keys(program.rotation_steps()))) {}
  ckks::testing::Fixture fixture;
  std::shared_ptr<const ckks::EvaluationKeys> keys;

  std::vector<ckks::Ciphertext> encrypt(const Program& program, std::uint64_t seed) {
    const auto x = ckks::testing::random_reals(3 * program.in_features(), seed);
    std::vector<ckks::Ciphertext> out;
    for (const auto& slots : program.pack_inputs(x, 3)) out.push_back(fixture.encrypt(slots));
    return out;
  }
  std::vector<std::vector<double>> decrypt(const std::vector<std::optional<ckks::Ciphertext>>& cts) {
    std::vector<std::vector<double>> rows;
    for (const auto& c : cts) {
      rows.push_back(c ? fixture.decrypt(*c) : std::vector<double>(fixture.ctx->slots(), 0.0));
    }
    return rows;
  }
};

double max_diff(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    worst = std::max(worst, ckks::testing::max_abs_diff(a[i], b[i]));
  }
  return worst;
}

TEST(ProgramHost, ServesClientsWithTheirOwnKeysOnSharedPlaintexts) {
  const ckks::Parameters prm = small_params();
  auto program = std::make_shared<const Program>(make_pruned_program(prm));
  const ProgramHost host(program);
  EXPECT_EQ(host.program_fingerprint(), program_fingerprint(program->save()));
  ASSERT_GT(host.plaintext_count(), 0U);

  Client alice(prm, *program), bob(prm, *program);
  const Server for_alice = host.serve(alice.keys);
  const Server for_bob = host.serve(bob.keys);
  // A client costs its keys: the plaintexts are the host's.
  EXPECT_EQ(for_alice.plaintext_bytes(), host.plaintext_bytes());
  EXPECT_EQ(for_alice.context(), host.context());

  for (Client* client : {&alice, &bob}) {
    const Server& mine = client == &alice ? for_alice : for_bob;
    const auto inputs = client->encrypt(*program, client == &alice ? 11 : 12);
    RunStats stats;
    const auto got = client->decrypt(mine.run(inputs, &stats));
    // The same as a server of its own.
    const Server alone(program, client->keys);
    EXPECT_LT(max_diff(got, client->decrypt(alone.run(inputs))), 1e-6);
    EXPECT_GT(stats.total().constant, 0U);  // the pruned tile came from the client's own key
  }
  // A client's ciphertexts cannot run on another client's keys.
  EXPECT_THROW(for_bob.run(alice.encrypt(*program, 13)), ckks::MismatchError);
}

TEST(ProgramHost, ChecksKeysLikeTheServer) {
  const ckks::Parameters prm = small_params();
  auto program = std::make_shared<const Program>(make_program(prm));
  const ProgramHost host(program);
  ckks::testing::Fixture other(small_params({50, 40, 40, 40, 40}));
  EXPECT_THROW(host.serve(std::make_shared<const ckks::EvaluationKeys>(
                   other.keygen.create_evaluation_keys(program->rotation_steps()))),
               ckks::MismatchError);
  EXPECT_THROW(host.serve(std::shared_ptr<const ckks::EvaluationKeys>()), ckks::MissingKeyError);
  Client client(prm, *program);
  std::vector<long> steps = program->rotation_steps();
  steps.pop_back();
  EXPECT_THROW(host.serve(std::make_shared<const ckks::EvaluationKeys>(
                   client.fixture.keygen.create_evaluation_keys(steps))),
               ckks::MissingKeyError);
  const ckks::Bytes secret = ckks::Serializer::save_secret_key(*client.fixture.ctx,
                                                               client.fixture.keygen.secret_key());
  EXPECT_THROW(host.serve(std::span<const std::uint8_t>(secret)), ckks::SerializationError);
  const ckks::Bytes bundle = ckks::Serializer::save(*client.fixture.ctx, *client.keys);
  EXPECT_NO_THROW(host.serve(std::span<const std::uint8_t>(bundle)));
  EXPECT_THROW(ProgramHost(nullptr), CompileError);
}

TEST(ProgramHost, ClientsRunConcurrentlyWithTheSameResults) {
  const ckks::Parameters prm = small_params();
  auto program = std::make_shared<const Program>(make_pruned_program(prm));
  const ProgramHost host(program);
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<Server> servers;
  std::vector<std::vector<ckks::Ciphertext>> inputs;
  std::vector<std::vector<std::vector<double>>> sequential, concurrent(4);
  for (std::uint64_t i = 0; i < 4; ++i) {
    clients.push_back(std::make_unique<Client>(prm, *program));
    servers.push_back(host.serve(clients.back()->keys));
    inputs.push_back(clients.back()->encrypt(*program, 20 + i));
    sequential.push_back(clients.back()->decrypt(servers.back().run(inputs.back())));
  }
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int repeat = 0; repeat < 2; ++repeat) {
        concurrent[i] = clients[i]->decrypt(servers[i].run(inputs[i]));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (std::size_t i = 0; i < 4; ++i) EXPECT_LT(max_diff(concurrent[i], sequential[i]), 1e-6);
}

TEST(Executor, OutputTilesOnTwoThreadsGiveTheSameResultsAndCounts) {
  const ckks::Parameters prm = small_params();
  // One output tile of eight units: with fewer working tiles than threads, the tile splits
  // its sum of products over the threads instead.
  std::mt19937_64 gen(5);
  std::uniform_real_distribution<double> val(-0.5, 0.5);
  std::vector<double> w(4 * 32), b(4);
  for (double& v : w) v = val(gen);
  for (double& v : b) v = val(gen);
  Program narrow = Program::tile(prm, {4, 4, prm.poly_degree / 2 / 16}, 32);
  narrow.add_linear("fc", 4, 32, w, b);
  // Dense: the same bits. Pruned: an output tile that is its bias alone is a fresh encryption
  // in each executor, so compare what decrypts.
  for (const int variant : {0, 1, 2}) {
    const bool pruned = variant == 1;
    const Program program =
        variant == 0 ? make_program(prm) : (pruned ? make_pruned_program(prm) : narrow);
    Client client(prm, program);
    const auto inputs = client.encrypt(program, 31);
    RunStats one_stats, two_stats;
    EngineBackend one(client.fixture.ctx, client.keys);
    const auto want = Executor<EngineBackend>(program, one).run(inputs, &one_stats);
    EngineBackend two(ckks::make_context(prm, 2), client.keys);
    const auto got = Executor<EngineBackend>(program, two).run(inputs, &two_stats);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size() && !pruned; ++i) {
      ASSERT_EQ(got[i].has_value(), want[i].has_value());
      if (got[i]) {
        EXPECT_EQ(got[i]->data(), want[i]->data()) << "output " << i;
      }
    }
    EXPECT_LT(max_diff(client.decrypt(got), client.decrypt(want)), 1e-6);
    EXPECT_EQ(two_stats.total(), one_stats.total());
    EXPECT_EQ(two_stats.peak_ciphertexts, one_stats.peak_ciphertexts);
    EXPECT_EQ(one_stats.total().constant > 0, pruned);
  }
}

}  // namespace
}  // namespace fheprune::runtime
