// The two backends a program runs on. Both expose the same handful of operations, so the
// executor's kernels (executor.hpp) are written once and run unchanged on either:
//
//  * EngineBackend: the CKKS engine, on ciphertexts, with the server's evaluation keys;
//  * SlotBackend: a cleartext slot simulator. It holds plain slot vectors but tracks level and
//    scale exactly like the engine (same primes), and refuses what the engine would refuse
//    (a rescale with no level left, a rotation without its key, mismatched levels), so a
//    program that runs here runs encrypted, with the same operation counts.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fheprune/ckks/bootstrapper.hpp"
#include "fheprune/ckks/context.hpp"
#include "fheprune/ckks/encoder.hpp"
#include "fheprune/ckks/encryptor.hpp"
#include "fheprune/ckks/errors.hpp"
#include "fheprune/ckks/evaluator.hpp"
#include "fheprune/ckks/keys.hpp"

namespace fheprune::runtime {

class EngineBackend {
 public:
  using Ct = ckks::Ciphertext;
  using Pt = ckks::Plaintext;

  // Shares ownership of the keys: they live as long as any backend that uses them.
  // `boot`: refreshes Refresh layers (made on `ctx`; the keys must hold its rotations and the
  // conjugation); null for programs without refreshes.
  EngineBackend(ckks::ContextPtr ctx, std::shared_ptr<const ckks::EvaluationKeys> keys,
                std::shared_ptr<const ckks::Bootstrapper> boot = nullptr)
      : ctx_(std::move(ctx)), encoder_(ctx_), evaluator_(ctx_), keys_(checked(std::move(keys))),
        encryptor_(std::in_place, ctx_, keys_->public_key), boot_(checked(std::move(boot))) {}

  // Without keys: encodes plaintexts (an executor's set-up, shared by every client of a
  // server) and adds; rotations, squares, refreshes and encryptions throw MissingKeyError.
  explicit EngineBackend(ckks::ContextPtr ctx,
                         std::shared_ptr<const ckks::Bootstrapper> boot = nullptr)
      : ctx_(std::move(ctx)), encoder_(ctx_), evaluator_(ctx_), boot_(checked(std::move(boot))) {}

  const ckks::Context& context() const { return *ctx_; }
  bool can_refresh() const { return boot_ != nullptr; }
  std::size_t refresh_level() const { return boot_ ? boot_->output_level() : 0; }
  Ct refresh(const Ct& a) const {
    if (!boot_) throw ckks::MissingKeyError("this engine backend cannot refresh: no bootstrapper");
    return boot_->refresh(a, keys());
  }
  // Independent work items (output tiles) on the context's threads.
  template <class Body>
  void parallel_for(std::size_t count, Body&& body) const {
    ctx_->parallel_for(count, std::forward<Body>(body));
  }
  std::size_t threads() const { return ctx_->threads(); }
  std::size_t top_level() const { return ctx_->max_level(); }
  double default_scale() const { return ctx_->default_scale(); }
  double prime(std::size_t level) const {
    return static_cast<double>(ctx_->prime(level));
  }

  Pt encode(const std::vector<double>& v, std::size_t level, double scale) const {
    return encoder_.encode(v, scale, level);
  }
  // A fresh public-key encryption of a plaintext (constant outputs of pruned-away units).
  Ct encrypt(const Pt& p) { return encryptor().encrypt(p); }
  Ct mul_plain(const Ct& a, const Pt& p) const { return evaluator_.multiply_plain(a, p); }
  Ct mul_plain_sum(const std::vector<const Ct*>& a, const std::vector<const Pt*>& p) const {
    return evaluator_.multiply_plain_sum(a, p);
  }
  std::vector<Ct> mul_plain_sums(const std::vector<std::vector<const Ct*>>& a,
                                 const std::vector<std::vector<const Pt*>>& p) const {
    return evaluator_.multiply_plain_sums(a, p);
  }
  void add_inplace(Ct& a, const Ct& b) const { evaluator_.add_inplace(a, b); }
  void add_plain_inplace(Ct& a, const Pt& p) const { evaluator_.add_plain_inplace(a, p); }
  Ct rescale(const Ct& a) const { return evaluator_.rescale(a); }
  Ct rotate(const Ct& a, long step) const {
    return evaluator_.rotate(a, step, keys().galois_keys);
  }
  std::vector<Ct> rotate_hoisted(const Ct& a, const std::vector<long>& steps) const {
    return evaluator_.rotate_hoisted(a, steps, keys().galois_keys);
  }
  Ct square(const Ct& a) const { return evaluator_.multiply_relin(a, a, keys().relin_key); }
  // The product alone (three parts), and its relinearization (Executor: deferred squares).
  Ct square_unrelinearized(const Ct& a) const { return evaluator_.square(a); }
  Ct relinearize(const Ct& a) const { return evaluator_.relinearize(a, keys().relin_key); }
  std::size_t level(const Ct& a) const { return a.level(); }
  double scale(const Ct& a) const { return a.scale(); }
  static std::size_t bytes(const Pt& p) { return p.data().size() * sizeof(ckks::u64); }
  static std::size_t bytes(const Ct& c) { return c.data().size() * sizeof(ckks::u64); }

 private:
  static std::shared_ptr<const ckks::EvaluationKeys> checked(
      std::shared_ptr<const ckks::EvaluationKeys> keys) {
    if (!keys) throw ckks::MissingKeyError("the engine backend needs evaluation keys, got none");
    return keys;
  }
  std::shared_ptr<const ckks::Bootstrapper> checked(std::shared_ptr<const ckks::Bootstrapper> boot) const {
    if (boot && boot->context().get() != ctx_.get()) {
      throw ckks::MismatchError("the bootstrapper was made on another context than the backend's");
    }
    return boot;
  }

  const ckks::EvaluationKeys& keys() const {
    if (!keys_) throw ckks::MissingKeyError("this engine backend holds no evaluation keys");
    return *keys_;
  }
  ckks::Encryptor& encryptor() {
    if (!encryptor_) throw ckks::MissingKeyError("this engine backend holds no public key");
    return *encryptor_;
  }

  ckks::ContextPtr ctx_;
  ckks::Encoder encoder_;
  ckks::Evaluator evaluator_;
  std::shared_ptr<const ckks::EvaluationKeys> keys_;  // null: encode-only
  std::optional<ckks::Encryptor> encryptor_;
  std::shared_ptr<const ckks::Bootstrapper> boot_;  // null: no refresh
};

// How the slot simulator models a refresh: the level it leaves, the error it adds (Gaussian,
// this standard deviation per slot: the engine's measured refresh error) and the magnitude up
// to which that error was measured (the sine in EvalMod is accurate only for small messages,
// so a larger value is refused rather than modelled wrongly).
struct RefreshModel {
  std::size_t to_level = 0;
  double error = 0.0;
  double input_bound = 1.0;
  std::uint64_t seed = 0;
  // Sparse slots (BootstrapConfig::slots): the refresh returns each slot's mean over the
  // copies of this period, as the engine's does. 0: all slots.
  std::size_t period = 0;
};

class SlotBackend {
 public:
  struct Value {
    std::vector<double> slots;
    std::size_t level = 0;
    double scale = 1.0;
  };
  using Ct = Value;
  using Pt = Value;

  // `rotation_keys`: the steps a server would hold keys for; rotating by another step fails
  // like the engine does.
  SlotBackend(ckks::ContextPtr ctx, std::vector<long> rotation_keys)
      : ctx_(std::move(ctx)) {
    for (long s : rotation_keys) keys_.insert(normalize(s));
  }

  const ckks::Context& context() const { return *ctx_; }
  void set_refresh(const RefreshModel& model) {
    const std::size_t p = model.period;
    if (model.to_level > ctx_->max_level() || !(model.error >= 0.0) ||
        !std::isfinite(model.error) || !(model.input_bound > 0.0) ||
        (p != 0 && (p > ctx_->slots() || (p & (p - 1)) != 0))) {
      throw ckks::ParameterError("refresh model: to_level <= the top level, a finite error >= 0, "
                                 "an input bound > 0 and a period 0 or a power of two up to the "
                                 "slots are required");
    }
    refresh_ = model;
    noise_.seed(model.seed);
  }
  bool can_refresh() const { return refresh_.has_value(); }
  std::size_t refresh_level() const { return refresh_ ? refresh_->to_level : 0; }
  Ct refresh(const Ct& a) const {
    if (!refresh_) throw ckks::MissingKeyError("this simulator has no refresh model");
    Value out = a;
    std::normal_distribution<double> gauss(0.0, refresh_->error);
    for (std::size_t i = 0; i < out.slots.size(); ++i) {
      if (!(std::abs(out.slots[i]) <= refresh_->input_bound)) {
        throw ckks::EncodingError(
            "a refresh meets the value " + std::to_string(out.slots[i]) + " in slot " +
            std::to_string(i) + ", outside the range |x| <= " +
            std::to_string(refresh_->input_bound) +
            " its error is known for; scale the layers before it down");
      }
    }
    const std::size_t n = out.slots.size(), p = refresh_->period;
    if (p != 0 && p < n) {  // the trace to the subring: the mean over the period's copies
      std::vector<double> mean(p, 0.0);
      for (std::size_t i = 0; i < n; ++i) mean[i % p] += out.slots[i] / static_cast<double>(n / p);
      for (std::size_t i = 0; i < n; ++i) out.slots[i] = mean[i % p];
    }
    if (refresh_->error > 0.0) {
      for (double& v : out.slots) v += gauss(noise_);
    }
    out.level = refresh_->to_level;
    return out;
  }
  // Serial: the simulator's values are cheap; results do not depend on the order.
  template <class Body>
  void parallel_for(std::size_t count, Body&& body) const {
    for (std::size_t i = 0; i < count; ++i) body(i);
  }
  static std::size_t threads() { return 1; }
  std::size_t top_level() const { return ctx_->max_level(); }
  double default_scale() const { return ctx_->default_scale(); }
  double prime(std::size_t level) const {
    return static_cast<double>(ctx_->prime(level));
  }

  Pt encode(const std::vector<double>& v, std::size_t level, double scale) const {
    if (v.size() > ctx_->slots()) throw ckks::EncodingError("too many values for the slots");
    Value out{v, level, scale};
    out.slots.resize(ctx_->slots(), 0.0);
    return out;
  }
  Ct encrypt(const Pt& p) const { return p; }
  Ct mul_plain(const Ct& a, const Pt& p) const {
    if (p.level < a.level) {
      throw ckks::LevelError("plaintext at level " + std::to_string(p.level) +
                             " is below the ciphertext's level " + std::to_string(a.level));
    }
    Value out = a;
    for (std::size_t i = 0; i < out.slots.size(); ++i) out.slots[i] *= p.slots[i];
    out.scale = a.scale * p.scale;
    return out;
  }
  Ct mul_plain_sum(const std::vector<const Ct*>& a, const std::vector<const Pt*>& p) const {
    Value out = mul_plain(*a.at(0), *p.at(0));
    for (std::size_t t = 1; t < a.size(); ++t) add_inplace(out, mul_plain(*a[t], *p[t]));
    return out;
  }
  std::vector<Ct> mul_plain_sums(const std::vector<std::vector<const Ct*>>& a,
                                 const std::vector<std::vector<const Pt*>>& p) const {
    std::vector<Ct> out;
    for (std::size_t b = 0; b < a.size(); ++b) out.push_back(mul_plain_sum(a[b], p.at(b)));
    return out;
  }
  void add_inplace(Ct& a, const Ct& b) const {
    check_same(a, b, "add");
    for (std::size_t i = 0; i < a.slots.size(); ++i) a.slots[i] += b.slots[i];
  }
  void add_plain_inplace(Ct& a, const Pt& p) const {
    if (p.level < a.level || !same_scale(a.scale, p.scale)) {
      throw ckks::ScaleError("add_plain: plaintext level/scale does not match the ciphertext");
    }
    for (std::size_t i = 0; i < a.slots.size(); ++i) a.slots[i] += p.slots[i];
  }
  Ct rescale(const Ct& a) const {
    if (a.level == 0) {
      throw ckks::LevelError("cannot rescale a ciphertext at level 0: the program needs more "
                             "levels than the parameters give");
    }
    Value out = a;
    out.scale = a.scale / prime(a.level);
    out.level = a.level - 1;
    return out;
  }
  Ct rotate(const Ct& a, long step) const {
    const long s = normalize(step);
    if (s != 0 && keys_.count(s) == 0) {
      throw ckks::MissingKeyError("no Galois key for rotation step " + std::to_string(step));
    }
    Value out = a;
    const std::size_t n = a.slots.size();
    for (std::size_t i = 0; i < n; ++i) out.slots[i] = a.slots[(i + static_cast<std::size_t>(s)) % n];
    return out;
  }
  std::vector<Ct> rotate_hoisted(const Ct& a, const std::vector<long>& steps) const {
    std::vector<Ct> out;
    out.reserve(steps.size());
    for (long s : steps) out.push_back(rotate(a, s));
    return out;
  }
  Ct square(const Ct& a) const {
    Value out = a;
    for (double& v : out.slots) v *= v;
    out.scale = a.scale * a.scale;
    return out;
  }
  // Slot values do not see relinearization: the same square, and the identity.
  Ct square_unrelinearized(const Ct& a) const { return square(a); }
  Ct relinearize(const Ct& a) const { return a; }
  std::size_t level(const Ct& a) const { return a.level; }
  double scale(const Ct& a) const { return a.scale; }
  // What the engine object would occupy (N words per prime per component).
  std::size_t bytes(const Pt& p) const { return (p.level + 1) * ctx_->poly_degree() * 8; }

 private:
  long normalize(long step) const {
    const long n = static_cast<long>(ctx_->slots());
    return ((step % n) + n) % n;
  }
  static bool same_scale(double a, double b) { return std::abs(a - b) <= 1e-9 * std::max(a, b); }
  void check_same(const Ct& a, const Ct& b, const char* op) const {
    if (a.level != b.level) {
      throw ckks::LevelError(std::string(op) + ": operands at levels " + std::to_string(a.level) +
                             " and " + std::to_string(b.level));
    }
    if (!same_scale(a.scale, b.scale)) {
      throw ckks::ScaleError(std::string(op) + ": operand scales differ");
    }
  }

  ckks::ContextPtr ctx_;
  std::set<long> keys_;
  std::optional<RefreshModel> refresh_;
  mutable std::mt19937_64 noise_;  // the modelled refresh error; serial, like the backend
};

}  // namespace fheprune::runtime
