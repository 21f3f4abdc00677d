#include <gtest/gtest.h>

#include <algorithm>

#include "fheprune/runtime/program.hpp"
#include "test_util.hpp"

namespace fheprune::ckks {
namespace {

using testing::Fixture;
using testing::max_abs_diff;
using testing::random_reals;

class SerializationTest : public ::testing::Test {
 protected:
  Fixture f{testing::small_params()};
  std::vector<double> x = random_reals(f.ctx->slots(), 41);
};

TEST_F(SerializationTest, RoundTripsEveryObject) {
  const auto ct = f.encrypt(x);
  const auto ct2 = Serializer::load_ciphertext(*f.ctx, Serializer::save(*f.ctx, ct));
  EXPECT_EQ(ct2.data(), ct.data());
  EXPECT_EQ(ct2.scale(), ct.scale());
  EXPECT_EQ(ct2.level(), ct.level());
  EXPECT_EQ(ct2.key_id(), ct.key_id());

  const auto pt = f.encoder.encode(x, std::nullopt, 1);
  const auto pt2 = Serializer::load_plaintext(*f.ctx, Serializer::save(*f.ctx, pt));
  EXPECT_EQ(pt2.data(), pt.data());
  EXPECT_EQ(pt2.level(), 1u);

  const Parameters p2 = Serializer::load_parameters(Serializer::save(f.ctx->parameters()));
  EXPECT_EQ(make_context(p2)->fingerprint(), f.ctx->fingerprint());

  // Keys loaded from bytes work: a relinearized, rotated product decrypts correctly.
  EvaluationKeys bundle = f.keygen.create_evaluation_keys({1, 2});
  const Bytes bytes = Serializer::save(*f.ctx, bundle);
  EvaluationKeys server = Serializer::load_evaluation_keys(*f.ctx, bytes);
  EXPECT_EQ(server.galois_keys.elements(), bundle.galois_keys.elements());
  Encryptor enc(f.ctx, server.public_key);
  const auto c = enc.encrypt(f.encoder.encode(x));
  const auto r = f.evaluator.rotate(f.evaluator.relinearize(f.evaluator.multiply(c, c), server.relin_key),
                                    2, server.galois_keys);
  std::vector<double> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = x[(i + 2) % x.size()] * x[(i + 2) % x.size()];
  EXPECT_LT(max_abs_diff(f.encoder.decode(f.decryptor.decrypt(f.evaluator.rescale(r))), want), 1e-6);

  const SecretKey sk = Serializer::load_secret_key(*f.ctx, Serializer::save_secret_key(*f.ctx, f.keygen.secret_key()));
  Decryptor dec(f.ctx, sk);
  EXPECT_LT(max_abs_diff(f.encoder.decode(dec.decrypt(ct)), x), 1e-6);
  EXPECT_EQ(Serializer::peek_kind(bytes), ObjectKind::kEvaluationKeys);
}

TEST_F(SerializationTest, EncapsulationKeysRoundTripAndAreValidated) {
  const EvaluationKeys bundle = f.keygen.create_evaluation_keys({1}, false, 16);
  const Bytes bytes = Serializer::save(*f.ctx, bundle);
  const EvaluationKeys back = Serializer::load_evaluation_keys(*f.ctx, bytes);
  EXPECT_EQ(back.encapsulation.hamming_weight(), 16u);
  EXPECT_EQ(back.encapsulation.id(), bundle.encapsulation.id());
  EXPECT_EQ(back.encapsulation.byte_size(), bundle.encapsulation.byte_size());
  EXPECT_EQ(Serializer::save(*f.ctx, back), bytes);
  // A bundle without them (also the format before they existed) loads with none.
  const Bytes plain = Serializer::save(*f.ctx, f.keygen.create_evaluation_keys({1}));
  EXPECT_TRUE(Serializer::load_evaluation_keys(*f.ctx, plain).encapsulation.empty());
  // Payloads cut inside the encapsulation part, or with a residue out of range, re-sealed so
  // that the envelope's checks pass: the reader itself refuses them with a typed error.
  Fingerprint fp{};
  const auto payload = Serializer::open_envelope(bytes, ObjectKind::kEvaluationKeys, &fp);
  const std::size_t extra = bytes.size() - plain.size();  // the encapsulation part's length
  const std::size_t start = payload.size() - extra;
  for (std::size_t keep : {std::size_t{4}, std::size_t{8 + 10}, std::size_t{8 + 16 + 100}, extra - 8}) {
    const Bytes cut(payload.begin(), payload.begin() + static_cast<long>(start + keep));
    EXPECT_THROW(Serializer::load_evaluation_keys(*f.ctx, Serializer::seal_envelope(
                                                            ObjectKind::kEvaluationKeys, fp, cut)),
                 SerializationError)
        << keep;
  }
  Bytes bad(payload.begin(), payload.end());
  for (std::size_t b = 0; b < 8; ++b) bad[start + 8 + 16 + b] = 0xff;  // first residue >= q0
  EXPECT_THROW(Serializer::load_evaluation_keys(
                   *f.ctx, Serializer::seal_envelope(ObjectKind::kEvaluationKeys, fp, bad)),
               SerializationError);
  // A bundle has one encoding: "none" is no trailing section, never a weight of 0 (the fuzzers'
  // round-trip oracle caught that second form).
  Bytes zero(payload.begin(), payload.begin() + static_cast<long>(start));
  zero.insert(zero.end(), 8, 0);
  EXPECT_THROW(Serializer::load_evaluation_keys(
                   *f.ctx, Serializer::seal_envelope(ObjectKind::kEvaluationKeys, fp, zero)),
               SerializationError);
}

TEST_F(SerializationTest, ServerBundleHoldsNoSecretKeyMaterial) {
  const Bytes bundle = Serializer::save(*f.ctx, f.keygen.create_evaluation_keys({1, 3}, false, 16));
  const Bytes secret = Serializer::save_secret_key(*f.ctx, f.keygen.secret_key());
  // Any 32-byte window of the secret key's payload (its NTT residues) must not occur.
  const std::size_t header = 52 + 8 + 16;  // header, poly degree, key id
  for (std::size_t off = header; off + 32 < secret.size() - 32; off += 4096) {
    auto it = std::search(bundle.begin(), bundle.end(), secret.begin() + static_cast<long>(off),
                          secret.begin() + static_cast<long>(off + 32));
    ASSERT_EQ(it, bundle.end()) << "secret key bytes found in the server bundle at " << off;
  }
  EXPECT_THROW(Serializer::load_evaluation_keys(*f.ctx, secret), SerializationError);
  EXPECT_THROW(Serializer::load_ciphertext(*f.ctx, secret), SerializationError);
}

TEST_F(SerializationTest, RejectsTruncatedData) {
  const Bytes good = Serializer::save(*f.ctx, f.encrypt(x));
  for (std::size_t len : {std::size_t{0}, std::size_t{7}, std::size_t{51}, std::size_t{60},
                          good.size() / 2, good.size() - 33, good.size() - 1}) {
    const Bytes cut(good.begin(), good.begin() + static_cast<long>(len));
    EXPECT_THROW(Serializer::load_ciphertext(*f.ctx, cut), SerializationError) << len;
  }
}

TEST_F(SerializationTest, RejectsCorruptedData) {
  const Bytes good = Serializer::save(*f.ctx, f.encrypt(x));
  // Every single-byte flip is caught (by the checksum if nothing earlier).
  for (std::size_t pos = 0; pos < good.size(); pos += 997) {
    Bytes bad = good;
    bad[pos] ^= 0x5a;
    EXPECT_THROW(Serializer::load_ciphertext(*f.ctx, bad), FheError) << pos;
  }
  Bytes bad_version = good;
  bad_version[8] = 9;
  EXPECT_THROW(Serializer::load_ciphertext(*f.ctx, bad_version), SerializationError);
  Bytes extra = good;
  extra.push_back(0);
  EXPECT_THROW(Serializer::load_ciphertext(*f.ctx, extra), SerializationError);
}

TEST_F(SerializationTest, RejectsMismatchedParametersAndKinds) {
  Fixture other(testing::small_params({50, 40, 40}));
  const Bytes ct = Serializer::save(*f.ctx, f.encrypt(x));
  EXPECT_THROW(Serializer::load_ciphertext(*other.ctx, ct), MismatchError);
  EXPECT_THROW(Serializer::load_plaintext(*f.ctx, ct), SerializationError);
  EXPECT_THROW(Serializer::load_galois_keys(*f.ctx, ct), SerializationError);
}

TEST(SerializationParameters, InsecureFilesAreRefusedOnLoad) {
  Parameters p;
  p.poly_degree = 8192;
  p.chain_bits = {60, 40, 40, 40};
  p.special_bits = {60};
  p.security = SecurityLevel::kNoneInsecureTestingOnly;
  Bytes bytes = Serializer::save(p);
  EXPECT_NO_THROW(Serializer::load_parameters(bytes));  // this test process opted in
  {
    // Without the opt-in, a file cannot switch the 128-bit check off: the insecure flag (here
    // written by a valid envelope, as anyone can rewrite one) is refused by name.
    testing::RefuseInsecureFiles refuse;
    try {
      Serializer::load_parameters(bytes);
      FAIL() << "a file lowered the security level";
    } catch (const InsecureParametersError& e) {
      EXPECT_NE(std::string(e.what()).find("cannot lower the security level"), std::string::npos);
    }
    // The same refusal reaches programs and their loaders.
    runtime::Program program = runtime::Program::diagonal(testing::small_params(), 4);
    const Bytes program_bytes = program.save();
    EXPECT_THROW(runtime::Program::load(program_bytes), InsecureParametersError);
    // Secure parameters still load.
    Parameters secure = p;
    secure.chain_bits = {60, 40, 40};
    secure.security = SecurityLevel::kClassical128;
    EXPECT_NO_THROW(Serializer::load_parameters(Serializer::save(secure)));
  }
  // Writing validates too: insecure parameters without the opt-in never reach a file.
  p.security = SecurityLevel::kClassical128;
  EXPECT_THROW(Serializer::save(p), InsecureParametersError);
}

}  // namespace
}  // namespace fheprune::ckks
