// The one binding module: the CKKS engine for Python, numpy arrays in and out.
//
// Heavy operations release the GIL, so Python threads can run encrypted work in parallel.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/complex.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <complex>
#include <cstring>

#include "argument_errors.hpp"
#include "bytes.hpp"
#include "fheprune/ckks/ckks.hpp"
#include "fheprune/version.hpp"

namespace nb = nanobind;
using namespace nb::literals;
using namespace fheprune::ckks;

namespace {

using RealArray = nb::ndarray<nb::numpy, const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using ComplexArray =
    nb::ndarray<nb::numpy, const std::complex<double>, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using release_gil = nb::call_guard<nb::gil_scoped_release>;

// Hands a std::vector's buffer to numpy without copying.
template <typename T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T, nb::ndim<1>>(heap->data(), {heap->size()}, owner);
}


// Serializes with the GIL released: checksumming megabytes of ciphertext should not stop the
// other Python threads (a client encrypting for the next request, a server reading bodies).
template <typename T>
nb::bytes save_unlocked(const Context& c, const T& x) {
  Bytes out;
  {
    nb::gil_scoped_release release;
    out = Serializer::save(c, x);
  }
  return to_bytes(out);
}

// Loads with the GIL released (`b` stays referenced by the caller while it is read).
template <auto Load>
auto load_unlocked(const Context& c, const nb::bytes& b) {
  nb::gil_scoped_release release;
  return Load(c, as_span(b));
}

}  // namespace

// Pruning kernels (co-permutation clustering) live in pruning.cpp.
void bind_pruning(nb::module_& m);
// Programs, executors and the cost model live in runtime.cpp.
void bind_runtime(nb::module_& m);

NB_MODULE(_core, m) {
  m.doc() = "fheprune CKKS engine (C++ core)";
  m.attr("__version__") = FHEPRUNE_VERSION;

  // Errors: one Python class per C++ class, all under FheError, which sits under the package's
  // root: fheprune.errors.InputError (a FhepruneError and a ValueError: bad input).
  const nb::object input_error = nb::module_::import_("fheprune.errors").attr("InputError");
  auto fhe_error = nb::exception<FheError>(m, "FheError", input_error.ptr());
  auto parameter_error = nb::exception<ParameterError>(m, "ParameterError", fhe_error.ptr());
  nb::exception<InsecureParametersError>(m, "InsecureParametersError", parameter_error.ptr());
  nb::exception<LevelError>(m, "LevelError", fhe_error.ptr());
  nb::exception<ScaleError>(m, "ScaleError", fhe_error.ptr());
  nb::exception<MissingKeyError>(m, "MissingKeyError", fhe_error.ptr());
  nb::exception<MismatchError>(m, "MismatchError", fhe_error.ptr());
  nb::exception<EncodingError>(m, "EncodingError", fhe_error.ptr());
  nb::exception<SerializationError>(m, "SerializationError", fhe_error.ptr());

  m.def("allow_insecure_parameter_files", &allow_insecure_parameter_files, "allow"_a,
        "Opt this process in (or out) to loading parameter, program and client-spec files "
        "whose parameters switch off the 128-bit check. For test suites only: a file can "
        "never lower the security level on its own.");
  m.def("insecure_parameter_files_allowed", &insecure_parameter_files_allowed);
  // Exception translators run in registration order from the most recent, so the subclasses
  // registered above are matched before their bases.

  nb::class_<Parameters>(m, "Parameters")
      .def(
          "__init__",
          [](Parameters* p, std::size_t poly_degree, std::vector<int> chain_bits,
             std::vector<int> special_bits, int scale_bits, bool insecure_for_testing) {
            new (p) Parameters();
            p->poly_degree = poly_degree;
            p->chain_bits = std::move(chain_bits);
            p->special_bits = std::move(special_bits);
            p->scale_bits = scale_bits;
            p->security = insecure_for_testing ? SecurityLevel::kNoneInsecureTestingOnly
                                               : SecurityLevel::kClassical128;
            p->validate();
          },
          "poly_degree"_a, "chain_bits"_a, "special_bits"_a, "scale_bits"_a = 40,
          "insecure_for_testing"_a = false,
          "CKKS parameters. Refuses (InsecureParametersError) a modulus above the 128-bit bound "
          "unless insecure_for_testing=True, which is for unit tests only.")
      .def_ro("poly_degree", &Parameters::poly_degree)
      .def_ro("chain_bits", &Parameters::chain_bits)
      .def_ro("special_bits", &Parameters::special_bits)
      .def_ro("scale_bits", &Parameters::scale_bits)
      .def_prop_ro("insecure_for_testing",
                   [](const Parameters& p) {
                     return p.security == SecurityLevel::kNoneInsecureTestingOnly;
                   })
      .def_prop_ro("total_bits", &Parameters::total_bits)
      .def("__repr__", [](const Parameters& p) { return "Parameters(" + p.describe() + ")"; })
      .def("to_bytes", [](const Parameters& p) { return to_bytes(Serializer::save(p)); })
      .def_static("from_bytes",
                  [](const nb::bytes& b) { return Serializer::load_parameters(as_span(b)); });

  m.def("max_modulus_bits_128", &max_modulus_bits_128, "poly_degree"_a);
  m.def("max_threads", &max_threads,
        "The most engine threads a context may have on this machine (ParameterError above).");
  m.def("vector_kernels_available", &vector_kernels_available,
        "Whether this CPU has vector kernels the engine can use (AVX-512 F/DQ/IFMA, or AVX2 "
        "and FMA).");
  m.def("vector_kernel_set", &vector_kernel_set,
        "Which vector kernels run where enabled: 'avx512-ifma', 'avx2-fma' or 'none'.");
  m.def("vector_kernels_enabled", &vector_kernels_enabled,
        "Whether the vector kernels run (available, and not switched off).");
  m.def("set_vector_kernels", &set_vector_kernels, "enabled"_a,
        "Switch the vector kernels on or off for the whole process (same results either way); "
        "contexts made afterwards build their NTT tables for the chosen path. "
        "FHEPRUNE_SIMD=0 in the environment starts with them off.");

  nb::class_<Context>(m, "Context")
      .def(
          "__init__",
          [](Context* c, const Parameters& p, std::size_t threads) { new (c) Context(p, threads); },
          "parameters"_a, "threads"_a = 1)
      .def_prop_ro("parameters", &Context::parameters)
      .def_prop_ro("poly_degree", &Context::poly_degree)
      .def_prop_ro("slots", &Context::slots)
      .def_prop_ro("max_level", &Context::max_level)
      .def_prop_ro("default_scale", &Context::default_scale)
      .def_prop_ro("threads", &Context::threads)
      .def("set_threads", &Context::set_threads, "threads"_a)
      .def_prop_ro("primes", &Context::primes)
      .def_prop_ro("fingerprint", [](const Context& c) { return to_bytes(c.fingerprint()); })
      .def("galois_element", &Context::galois_element, "step"_a);

  nb::class_<Plaintext>(m, "Plaintext")
      .def_prop_ro("level", &Plaintext::level)
      .def_prop_rw("scale", &Plaintext::scale, &Plaintext::set_scale)
      .def_prop_ro("byte_size", [](const Plaintext& p) { return p.data().size() * 8; });

  nb::class_<Ciphertext>(m, "Ciphertext")
      .def_prop_ro("size", &Ciphertext::size)
      .def_prop_ro("level", &Ciphertext::level)
      .def_prop_rw("scale", &Ciphertext::scale, &Ciphertext::set_scale)
      .def_prop_ro("key_id", [](const Ciphertext& c) { return to_bytes(c.key_id()); })
      .def_prop_ro("byte_size", [](const Ciphertext& c) { return c.data().size() * 8; })
      .def("copy", [](const Ciphertext& c) { return Ciphertext(c); });

  nb::class_<SecretKey>(m, "SecretKey")
      .def_prop_ro("key_id", [](const SecretKey& k) { return to_bytes(k.id()); })
      .def("__repr__", [](const SecretKey&) { return std::string("<SecretKey (client only)>"); });
  nb::class_<PublicKey>(m, "PublicKey")
      .def_prop_ro("key_id", [](const PublicKey& k) { return to_bytes(k.id()); });
  nb::class_<RelinKey>(m, "RelinKey")
      .def_prop_ro("key_id", [](const RelinKey& k) { return to_bytes(k.id()); })
      .def_prop_ro("byte_size", [](const RelinKey& k) { return k.key().byte_size(); });
  nb::class_<GaloisKeys>(m, "GaloisKeys")
      .def_prop_ro("key_id", [](const GaloisKeys& k) { return to_bytes(k.id()); })
      .def_prop_ro("elements", &GaloisKeys::elements)
      .def_prop_ro("byte_size", &GaloisKeys::byte_size)
      .def("has", &GaloisKeys::has, "galois_element"_a);
  // Read-only: a server may share the bundle with its Python object (EngineExecutor), so the
  // keys must not change under a run.
  nb::class_<EncapsulationKeys>(m, "EncapsulationKeys",
                                 "Switching keys to and from an ephemeral sparse secret "
                                 "(bootstrapping's sparse-secret encapsulation).")
      .def_prop_ro("empty", &EncapsulationKeys::empty)
      .def_prop_ro("hamming_weight", &EncapsulationKeys::hamming_weight)
      .def_prop_ro("byte_size", &EncapsulationKeys::byte_size);
  nb::class_<EvaluationKeys>(m, "EvaluationKeys")
      .def_ro("public_key", &EvaluationKeys::public_key)
      .def_ro("relin_key", &EvaluationKeys::relin_key)
      .def_ro("galois_keys", &EvaluationKeys::galois_keys)
      .def_ro("encapsulation", &EvaluationKeys::encapsulation);

  nb::class_<KeyGenerator>(m, "KeyGenerator")
      .def(
          "__init__",
          [](KeyGenerator* k, std::shared_ptr<Context> ctx) { new (k) KeyGenerator(ctx); },
          "context"_a, release_gil())
      .def(
          "__init__",
          [](KeyGenerator* k, std::shared_ptr<Context> ctx, const SecretKey& sk) {
            new (k) KeyGenerator(ctx, sk);
          },
          "context"_a, "secret_key"_a)
      .def(
          "__init__",
          [](KeyGenerator* k, std::shared_ptr<Context> ctx, std::size_t hamming_weight) {
            new (k) KeyGenerator(ctx, hamming_weight);
          },
          "context"_a, "hamming_weight"_a, release_gil(),
          "A fresh secret with exactly `hamming_weight` non-zero coefficients (for "
          "bootstrapping; sparse secrets are outside the HE standard's tables).")
      .def_prop_ro("secret_key", &KeyGenerator::secret_key)
      .def("create_public_key", &KeyGenerator::create_public_key, release_gil())
      .def("create_relin_key", &KeyGenerator::create_relin_key, release_gil())
      .def("create_galois_keys", &KeyGenerator::create_galois_keys, "steps"_a,
           "conjugation"_a = false, release_gil())
      .def("create_encapsulation_keys", &KeyGenerator::create_encapsulation_keys,
           "hamming_weight"_a, release_gil(),
           "Keys to and from a fresh ephemeral sparse secret of this weight (drawn and "
           "wiped here), for refreshes with BootstrapConfig.ephemeral_weight.")
      .def("create_evaluation_keys", &KeyGenerator::create_evaluation_keys, "steps"_a,
           "conjugation"_a = false, "ephemeral_weight"_a = 0, release_gil(),
           "Public, relinearization and these Galois keys; with ephemeral_weight > 0 also the "
           "encapsulation keys a refresh with that BootstrapConfig.ephemeral_weight needs.");

  nb::class_<Encoder>(m, "Encoder")
      .def(
          "__init__", [](Encoder* e, std::shared_ptr<Context> ctx) { new (e) Encoder(ctx); },
          "context"_a)
      .def_prop_ro("slots", &Encoder::slots)
      .def(
          "encode",
          [](const Encoder& e, RealArray values, std::optional<double> scale,
             std::optional<std::size_t> level) {
            std::vector<double> v(values.data(), values.data() + values.shape(0));
            nb::gil_scoped_release release;
            return e.encode(v, scale, level);
          },
          "values"_a, "scale"_a = nb::none(), "level"_a = nb::none())
      .def(
          "encode",
          [](const Encoder& e, ComplexArray values, std::optional<double> scale,
             std::optional<std::size_t> level) {
            std::vector<std::complex<double>> v(values.data(), values.data() + values.shape(0));
            nb::gil_scoped_release release;
            return e.encode(v, scale, level);
          },
          "values"_a, "scale"_a = nb::none(), "level"_a = nb::none())
      .def("encode_constant", &Encoder::encode_constant, "value"_a, "scale"_a = nb::none(),
           "level"_a = nb::none())
      .def("decode",
           [](const Encoder& e, const Plaintext& pt) {
             std::vector<double> out;
             {
               nb::gil_scoped_release release;
               out = e.decode(pt);
             }
             return to_numpy(std::move(out));
           })
      .def("decode_complex", [](const Encoder& e, const Plaintext& pt) {
        std::vector<std::complex<double>> out;
        {
          nb::gil_scoped_release release;
          out = e.decode_complex(pt);
        }
        return to_numpy(std::move(out));
      });

  nb::class_<NoiseFlooder>(
      m, "NoiseFlooder",
      "Decodes with Gaussian noise 2^(s/2) * sqrt(N k) * 6 times the noise measured on the "
      "plaintext, for decryptions that leave the client (fheprune/ckks/flooding.hpp).")
      .def(
          "__init__",
          [](NoiseFlooder* f, std::shared_ptr<Context> ctx, int bits, std::size_t queries) {
            new (f) NoiseFlooder(ctx, bits, queries);
          },
          "context"_a, "statistical_security_bits"_a = 32, "shared_decryptions"_a = 1)
      .def_prop_ro("statistical_security_bits", &NoiseFlooder::statistical_security_bits)
      .def(
          "decode",
          [](NoiseFlooder& f, const Plaintext& pt) {
            FloodingReport report;
            std::vector<double> out;
            {
              nb::gil_scoped_release release;
              out = f.decode(pt, &report);
            }
            nb::dict d;
            d["noise_std"] = report.noise_std;
            d["flooding_std"] = report.flooding_std;
            return nb::make_tuple(to_numpy(std::move(out)), d);
          },
          "plaintext"_a,
          "(flooded real slots, {'noise_std', 'flooding_std'}) of a decrypted plaintext.");

  nb::class_<Encryptor>(m, "Encryptor")
      .def(
          "__init__",
          [](Encryptor* e, std::shared_ptr<Context> ctx, const PublicKey& pk) {
            new (e) Encryptor(ctx, pk);
          },
          "context"_a, "public_key"_a)
      .def(
          "__init__",
          [](Encryptor* e, std::shared_ptr<Context> ctx, const SecretKey& sk) {
            new (e) Encryptor(ctx, sk);
          },
          "context"_a, "secret_key"_a)
      .def("encrypt", &Encryptor::encrypt, "plaintext"_a, release_gil());

  nb::class_<Decryptor>(m, "Decryptor")
      .def(
          "__init__",
          [](Decryptor* d, std::shared_ptr<Context> ctx, const SecretKey& sk) {
            new (d) Decryptor(ctx, sk);
          },
          "context"_a, "secret_key"_a)
      .def("decrypt", &Decryptor::decrypt, "ciphertext"_a, release_gil());

  using E = Evaluator;
  nb::class_<Evaluator>(m, "Evaluator")
      .def(
          "__init__", [](Evaluator* e, std::shared_ptr<Context> ctx) { new (e) Evaluator(ctx); },
          "context"_a)
      .def("add", &E::add, release_gil())
      .def("add_inplace", &E::add_inplace, release_gil())
      .def("sub", &E::sub, release_gil())
      .def("negate", &E::negate, release_gil())
      .def("add_plain", &E::add_plain, release_gil())
      .def("sub_plain", &E::sub_plain, release_gil())
      .def("multiply_plain", &E::multiply_plain, release_gil())
      .def("multiply_plain_sum", &E::multiply_plain_sum, "ciphertexts"_a, "plaintexts"_a,
           release_gil(), "sum_i ciphertexts[i] * plaintexts[i] in one fused pass")
      .def("multiply_plain_sums", &E::multiply_plain_sums, "ciphertexts"_a, "plaintexts"_a,
           release_gil(),
           "[multiply_plain_sum(c, p) for c, p in zip(ciphertexts, plaintexts)], a slice of "
           "coefficients at a time (ciphertexts shared by the sums are read once per slice)")
      .def("multiply", &E::multiply, release_gil())
      .def("square", &E::square, release_gil())
      .def("relinearize", &E::relinearize, release_gil())
      .def("multiply_relin", &E::multiply_relin, release_gil())
      .def("rescale", &E::rescale, release_gil())
      .def("mod_switch_to", nb::overload_cast<const Ciphertext&, std::size_t>(&E::mod_switch_to, nb::const_),
           release_gil())
      .def("mod_switch_to", nb::overload_cast<const Plaintext&, std::size_t>(&E::mod_switch_to, nb::const_),
           release_gil())
      .def("rotate", &E::rotate, "ciphertext"_a, "step"_a, "galois_keys"_a, release_gil())
      .def("rotate_hoisted", &E::rotate_hoisted, "ciphertext"_a, "steps"_a, "galois_keys"_a,
           release_gil())
      .def("conjugate", &E::conjugate, release_gil());

  nb::class_<BootstrapConfig>(m, "BootstrapConfig")
      .def(
          "__init__",
          [](BootstrapConfig* c, double k_bound, std::size_t chebyshev_degree,
             std::size_t double_angles, std::size_t cts_levels, std::size_t stc_levels,
             std::size_t slots, bool pack_halves, double message_ratio_bits, bool arcsine,
             double cts_lift, std::size_t ephemeral_weight) {
            new (c) BootstrapConfig{k_bound,     chebyshev_degree,   double_angles,
                                    cts_levels,  stc_levels,         slots,
                                    pack_halves, message_ratio_bits, arcsine,
                                    cts_lift,    ephemeral_weight};
          },
          "k_bound"_a = 12.0, "chebyshev_degree"_a = 63, "double_angles"_a = 3,
          "cts_levels"_a = 3, "stc_levels"_a = 3, "slots"_a = 0, "pack_halves"_a = true,
          "message_ratio_bits"_a = 8.0, "arcsine"_a = true, "cts_lift"_a = 0.4,
          "ephemeral_weight"_a = 0,
          "slots: 0 refreshes all N/2 slots; a power of two n < N/2 refreshes messages of "
          "period n (cheaper DFTs). message_ratio_bits: the refresh scales the message up to "
          "about q0 / 2^bits first (0: off); arcsine: EvalMod corrects the sine (2 levels); "
          "cts_lift: the share of its scale gap CoeffToSlot lifts first. "
          "Both on by default (docs/bootstrapping.md). ephemeral_weight: sparse-secret "
          "encapsulation through an ephemeral secret of this Hamming weight (0: off; the "
          "evaluation keys must hold encapsulation keys of that weight).")
      .def("with_slots",
           [](const BootstrapConfig& c, std::size_t slots, std::optional<bool> pack_halves) {
             BootstrapConfig out = c;
             out.slots = slots;
             if (pack_halves) out.pack_halves = *pack_halves;
             return out;
           },
           "slots"_a, "pack_halves"_a = nb::none(),
           "The same configuration for messages of period `slots` (0: all).")
      .def_ro("pack_halves", &BootstrapConfig::pack_halves)
      .def_ro("slots", &BootstrapConfig::slots)
      .def_ro("k_bound", &BootstrapConfig::k_bound)
      .def_ro("chebyshev_degree", &BootstrapConfig::chebyshev_degree)
      .def_ro("double_angles", &BootstrapConfig::double_angles)
      .def_ro("cts_levels", &BootstrapConfig::cts_levels)
      .def_ro("stc_levels", &BootstrapConfig::stc_levels)
      .def_ro("message_ratio_bits", &BootstrapConfig::message_ratio_bits)
      .def_ro("arcsine", &BootstrapConfig::arcsine)
      .def_ro("cts_lift", &BootstrapConfig::cts_lift)
      .def_ro("ephemeral_weight", &BootstrapConfig::ephemeral_weight);

  using B = Bootstrapper;
  nb::class_<Bootstrapper>(m, "Bootstrapper",
                           "CKKS bootstrapping (fheprune/ckks/bootstrapper.hpp): refresh a "
                           "ciphertext at the bottom of the chain to output_level.")
      .def(
          "__init__",
          [](Bootstrapper* b, std::shared_ptr<Context> ctx, const BootstrapConfig& config) {
            new (b) Bootstrapper(ctx, config);
          },
          "context"_a, "config"_a = BootstrapConfig{}, release_gil())
      .def_prop_ro("config", &B::config)
      .def_prop_ro("slots", &B::slots, "The period of the messages it refreshes.")
      .def("rotation_steps", &B::rotation_steps,
           "Rotation steps the evaluation keys must hold (and conjugation).")
      .def_prop_ro("levels_consumed", &B::levels_consumed)
      .def_prop_ro("output_level", &B::output_level)
      .def("mod_raise", &B::mod_raise, "ciphertext"_a, release_gil())
      .def("raise_to_top", &B::raise_to_top, "ciphertext"_a, "keys"_a, release_gil(),
           "ModRaise as refresh does it: through the ephemeral secret when the configuration "
           "asks for encapsulation.")
      .def("coeff_to_slot", &B::coeff_to_slot, "raised"_a, "galois_keys"_a, release_gil())
      .def("eval_mod", &B::eval_mod, "x"_a, "relin_key"_a, release_gil())
      .def("slot_to_coeff", &B::slot_to_coeff, "parts"_a, "message_scale"_a, "galois_keys"_a,
           "out_scale"_a = 0.0, release_gil())
      .def("message_boost", &B::message_boost, "scale"_a,
           "The power of two refresh() multiplies a level-0 ciphertext of this scale by.")
      .def_prop_ro("eval_mod_levels", &B::eval_mod_levels)
      .def("refresh", &B::refresh, "ciphertext"_a, "evaluation_keys"_a, release_gil());

  // Serialization: bytes in and out; the secret key only through its own named functions.
  m.def("save", [](const Context& c, const Ciphertext& x) { return save_unlocked(c, x); });
  m.def("save", [](const Context& c, const Plaintext& x) { return save_unlocked(c, x); });
  m.def("save", [](const Context& c, const PublicKey& x) { return save_unlocked(c, x); });
  m.def("save", [](const Context& c, const RelinKey& x) { return save_unlocked(c, x); });
  m.def("save", [](const Context& c, const GaloisKeys& x) { return save_unlocked(c, x); });
  m.def("save", [](const Context& c, const EvaluationKeys& x) { return save_unlocked(c, x); });
  m.def("save_secret_key", [](const Context& c, const SecretKey& x) {
    return to_bytes(Serializer::save_secret_key(c, x));
  });
  m.def("load_ciphertext", &load_unlocked<&Serializer::load_ciphertext>);
  m.def("load_plaintext", &load_unlocked<&Serializer::load_plaintext>);
  m.def("load_public_key", &load_unlocked<&Serializer::load_public_key>);
  m.def("load_relin_key", &load_unlocked<&Serializer::load_relin_key>);
  m.def("load_galois_keys", &load_unlocked<&Serializer::load_galois_keys>);
  m.def("load_evaluation_keys", &load_unlocked<&Serializer::load_evaluation_keys>);
  m.def("load_secret_key", [](const Context& c, const nb::bytes& b) { return Serializer::load_secret_key(c, as_span(b)); });
  bind_pruning(m);
  bind_runtime(m);

  m.def("peek_kind", [](const nb::bytes& b) {
    switch (Serializer::peek_kind(as_span(b))) {
      case ObjectKind::kParameters: return std::string("parameters");
      case ObjectKind::kPlaintext: return std::string("plaintext");
      case ObjectKind::kCiphertext: return std::string("ciphertext");
      case ObjectKind::kPublicKey: return std::string("public_key");
      case ObjectKind::kRelinKey: return std::string("relin_key");
      case ObjectKind::kGaloisKeys: return std::string("galois_keys");
      case ObjectKind::kEvaluationKeys: return std::string("evaluation_keys");
      case ObjectKind::kSecretKey: return std::string("secret_key");
      case ObjectKind::kProgram: return std::string("program");
    }
    return std::string("unknown");
  });

  // Last: turn nanobind's "incompatible function arguments" into the package's typed error.
  // Only for the package's module: nanobind's stub generator imports the module under the
  // bare name `_core`, and the catch-all overloads must not reach the type stubs (mypy would
  // accept any call).
  if (std::string(nb::str(m.attr("__name__")).c_str()) == "fheprune._core") {
    reject_mismatched_arguments(m);
  }
}
