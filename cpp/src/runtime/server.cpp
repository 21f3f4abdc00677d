#include "fheprune/runtime/server.hpp"

#include <sodium.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <mutex>
#include <string>
#include <utility>

#include "fheprune/ckks/errors.hpp"
#include "fheprune/ckks/serialization.hpp"

namespace fheprune::runtime {

namespace ck = fheprune::ckks;

namespace {

std::string kind_name(ck::ObjectKind kind) {
  switch (kind) {
    case ck::ObjectKind::kParameters: return "parameters";
    case ck::ObjectKind::kPlaintext: return "a plaintext";
    case ck::ObjectKind::kCiphertext: return "a ciphertext";
    case ck::ObjectKind::kPublicKey: return "a public key";
    case ck::ObjectKind::kRelinKey: return "a relinearization key";
    case ck::ObjectKind::kGaloisKeys: return "Galois keys";
    case ck::ObjectKind::kEvaluationKeys: return "an evaluation-key bundle";
    case ck::ObjectKind::kSecretKey: return "a secret key";
    case ck::ObjectKind::kProgram: return "a program";
  }
  return "unknown data";
}

bool uses_squares(const Program& p) {
  for (const Layer& l : p.layers()) {
    if (std::holds_alternative<Square>(l)) return true;
  }
  return false;
}

// The bundle belongs to the program's parameters and to one secret key, and holds every key
// the program will use.
void check_keys(const Program& program, const ck::Context& ctx, const ck::EvaluationKeys& keys) {
  const ck::Fingerprint& fp = ctx.fingerprint();
  if (keys.public_key.data().params() != fp || keys.relin_key.params() != fp ||
      keys.galois_keys.params() != fp) {
    throw ck::MismatchError("the evaluation keys were made under other parameters than the "
                            "program's (" + program.parameters().describe() +
                            "); generate them from the program's client spec");
  }
  const ck::KeyId& id = keys.public_key.id();
  if (keys.relin_key.id() != id || keys.galois_keys.id() != id) {
    throw ck::MismatchError("the evaluation-key bundle mixes keys of different secret keys "
                            "(public, relinearization and Galois keys must come from one client)");
  }
  if (uses_squares(program) && keys.relin_key.key().digits() == 0) {
    throw ck::MissingKeyError("the program squares ciphertexts but the bundle has no "
                              "relinearization key");
  }
  if (program.needs_conjugation() && !keys.galois_keys.has(ctx.conjugation_element())) {
    throw ck::MissingKeyError("the program refreshes ciphertexts (bootstrapping) but the bundle "
                              "has no conjugation key; generate it with conjugation");
  }
  const std::optional<ck::BootstrapConfig> refresh = program.refresh_config();
  if (refresh && refresh->ephemeral_weight > 0) {
    const ck::EncapsulationKeys& e = keys.encapsulation;
    if (e.empty() || e.hamming_weight() != refresh->ephemeral_weight || e.id() != id) {
      throw ck::MissingKeyError(
          "the program's refreshes go through an ephemeral secret of Hamming weight " +
          std::to_string(refresh->ephemeral_weight) + " but the bundle has " +
          (e.empty() ? std::string("no encapsulation keys")
                     : "encapsulation keys for weight " + std::to_string(e.hamming_weight()) +
                           (e.id() != id ? " of another secret key" : "")) +
          "; generate it from the program's client spec");
    }
  }
  std::string missing;
  for (long step : program.rotation_steps()) {
    const std::uint64_t g = ctx.galois_element(step);
    if (g != 1 && !keys.galois_keys.has(g)) {
      missing += (missing.empty() ? "" : ", ") + std::to_string(step);
    }
  }
  if (!missing.empty()) {
    throw ck::MissingKeyError("the evaluation keys lack Galois keys for the program's rotation "
                              "steps " + missing + "; generate the bundle with exactly "
                              "Program::rotation_steps()");
  }
}

// The bootstrapper a program's refreshes run with (null: none). Its plaintexts depend on the
// parameters only, so one serves every client of a host.
std::shared_ptr<const ck::Bootstrapper> bootstrapper_for(const Program& program,
                                                         const ck::ContextPtr& ctx) {
  const std::optional<ck::BootstrapConfig> config = program.refresh_config();
  return config ? std::make_shared<const ck::Bootstrapper>(ctx, *config) : nullptr;
}

// The context a server builds for its program; validates the parameters (128-bit bound
// included) and the thread count.
ck::ContextPtr make_server_context(const Program* program, const ServerOptions& options) {
  if (!program) throw CompileError("the server needs a program, got none");
  if (options.threads == 0) {
    throw ck::ParameterError("the server needs at least one engine thread, got 0");
  }
  return ck::make_context(program->parameters(), options.threads);
}

// A serialized evaluation-key bundle; any other kind of object is refused by name.
std::shared_ptr<const ck::EvaluationKeys> load_bundle(const ck::Context& ctx,
                                                      std::span<const std::uint8_t> bytes) {
  const ck::ObjectKind kind = ck::Serializer::peek_kind(bytes);
  if (kind != ck::ObjectKind::kEvaluationKeys) {
    throw ck::SerializationError("the server takes an evaluation-key bundle (public, "
                                 "relinearization and Galois keys), got " + kind_name(kind));
  }
  return std::make_shared<const ck::EvaluationKeys>(ck::Serializer::load_evaluation_keys(ctx, bytes));
}

}  // namespace

struct Server::State {
  std::shared_ptr<const Program> program;
  ck::ContextPtr context;
  std::shared_ptr<const ck::EvaluationKeys> keys;
  EngineBackend backend;
  Executor<EngineBackend> executor;
  std::mutex run_mutex;  // the executor's runs are not reentrant
  bool owns_context = false;  // made by the server itself: nobody else runs work on it

  State(std::shared_ptr<const Program> p, ck::ContextPtr ctx,
        std::shared_ptr<const ck::EvaluationKeys> k, Encoding encoding)
      : program(std::move(p)),
        context(std::move(ctx)),
        keys(std::move(k)),
        backend(context, keys, bootstrapper_for(*program, context)),
        executor(*program, backend, encoding) {}

  // Shares `prepared`'s plaintexts and `boot` (ProgramHost::serve).
  State(std::shared_ptr<const Program> p, ck::ContextPtr ctx,
        std::shared_ptr<const ck::EvaluationKeys> k, const Executor<EngineBackend>& prepared,
        std::shared_ptr<const ck::Bootstrapper> boot)
      : program(std::move(p)),
        context(std::move(ctx)),
        keys(std::move(k)),
        backend(context, keys, std::move(boot)),
        executor(prepared, backend) {}
};

Server::Server(std::unique_ptr<State> state) : state_(std::move(state)) {}

Server::Server(std::shared_ptr<const Program> program,
               std::shared_ptr<const ck::EvaluationKeys> keys, ServerOptions options)
    : Server(program, make_server_context(program.get(), options), std::move(keys),
             options.encoding) {
  state_->owns_context = true;
}

Server::Server(std::shared_ptr<const Program> program, ck::ContextPtr context,
               std::shared_ptr<const ck::EvaluationKeys> keys, Encoding encoding) {
  if (!program) throw CompileError("the server needs a program, got none");
  if (!context) throw ck::ParameterError("the server needs a context, got none");
  if (!keys) throw ck::MissingKeyError("the server needs evaluation keys, got none");
  check_context(*program, *context);
  check_keys(*program, *context, *keys);
  state_ = std::make_unique<State>(std::move(program), std::move(context), std::move(keys),
                                   encoding);
}

void check_context(const Program& program, const ck::Context& ctx) {
  const ck::Parameters& want = program.parameters();
  const ck::Parameters& have = ctx.parameters();
  if (want.poly_degree != have.poly_degree || want.chain_bits != have.chain_bits ||
      want.special_bits != have.special_bits || want.scale_bits != have.scale_bits) {
    throw ck::MismatchError("the program was compiled for " + want.describe() +
                            " but the context has " + have.describe());
  }
}

Server Server::from_bytes(std::span<const std::uint8_t> program,
                          std::span<const std::uint8_t> evaluation_keys, ServerOptions options) {
  auto loaded = std::make_shared<const Program>(Program::load(program));
  // One context, built once: it parses the keys and then runs the program.
  ck::ContextPtr ctx = make_server_context(loaded.get(), options);
  auto keys = load_bundle(*ctx, evaluation_keys);
  Server server(std::move(loaded), std::move(ctx), std::move(keys), options.encoding);
  server.state_->owns_context = true;
  return server;
}

Server Server::from_signed_bytes(std::span<const std::uint8_t> program,
                                 std::span<const std::uint8_t> signature, const VerifyKey& owner,
                                 std::span<const std::uint8_t> evaluation_keys,
                                 ServerOptions options) {
  verify_signature(program, signature, owner, "program file");
  return from_bytes(program, evaluation_keys, options);
}

Server Server::from_files(const std::filesystem::path& program,
                          const std::filesystem::path& evaluation_keys, ServerOptions options) {
  const ck::Bytes p = read_file(program);
  const ck::Bytes k = read_file(evaluation_keys);
  return from_bytes(p, k, options);
}

Server::Server(Server&&) noexcept = default;
Server& Server::operator=(Server&&) noexcept = default;
Server::~Server() = default;

const Program& Server::program() const { return *state_->program; }
const ck::ContextPtr& Server::context() const { return state_->context; }
const ck::EvaluationKeys& Server::keys() const { return *state_->keys; }
const ck::KeyId& Server::key_id() const { return state_->keys->public_key.id(); }
std::size_t Server::plaintext_bytes() const { return state_->executor.plaintext_bytes(); }
std::size_t Server::plaintext_count() const { return state_->executor.plaintext_count(); }

void Server::set_threads(std::size_t threads) {
  if (!state_->owns_context) {
    throw ck::ParameterError("this server shares its context (a ProgramHost's or the caller's), "
                             "whose threads other work may be using; set the threads where that "
                             "context is made");
  }
  if (threads == 0) throw ck::ParameterError("the server needs at least one engine thread, got 0");
  std::lock_guard lock(state_->run_mutex);
  if (threads == state_->context->threads()) return;  // keep the pool's threads
  state_->context->set_threads(threads);  // ParameterError above ckks::max_threads()
}

ck::Fingerprint Server::program_fingerprint() const {
  return runtime::program_fingerprint(state_->program->save());
}

void Server::check_input(const ck::Ciphertext* ct, const std::string& which) const {
  if (ct == nullptr) throw ck::MismatchError(which + " is missing (a null pointer)");
  const ck::Context& ctx = *state_->context;
  if (ct->params() != ctx.fingerprint()) {
    throw ck::MismatchError(which + " was made under other parameters than the program's (" +
                            state_->program->parameters().describe() + ")");
  }
  if (ct->key_id() != key_id()) {
    throw ck::MismatchError(which + " is encrypted under another secret key than the one whose "
                            "evaluation keys this server holds");
  }
  if (ct->size() != 2) {
    throw ck::MismatchError(which + " has " + std::to_string(ct->size()) +
                            " components; the server takes fresh (size-2) encryptions");
  }
  if (ct->level() != state_->executor.input_level()) {
    throw ck::LevelError(which + " is at level " + std::to_string(ct->level()) +
                         ", the program expects inputs at level " +
                         std::to_string(state_->executor.input_level()) +
                         " (encrypt at the program's input_level())");
  }
  const double want = ctx.default_scale();
  if (!std::isfinite(ct->scale()) || std::abs(ct->scale() - want) > 1e-9 * want) {
    throw ck::ScaleError(which + " has scale " + std::to_string(ct->scale()) +
                         ", the program expects the default scale " + std::to_string(want));
  }
}

std::vector<std::optional<ck::Ciphertext>> Server::run(
    std::span<const ck::Ciphertext* const> inputs, RunStats* stats) const {
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    check_input(inputs[i], "input ciphertext " + std::to_string(i));
  }
  std::vector<const ck::Ciphertext*> view(inputs.begin(), inputs.end());
  std::lock_guard lock(state_->run_mutex);
  return state_->executor.run(view, stats);
}

std::vector<std::optional<ck::Ciphertext>> Server::run(const std::vector<ck::Ciphertext>& inputs,
                                                       RunStats* stats) const {
  std::vector<const ck::Ciphertext*> view;
  view.reserve(inputs.size());
  for (const ck::Ciphertext& c : inputs) view.push_back(&c);
  return run(std::span<const ck::Ciphertext* const>(view), stats);
}

ck::Ciphertext Server::load_ciphertext(std::span<const std::uint8_t> bytes) const {
  ck::Ciphertext ct = ck::Serializer::load_ciphertext(*state_->context, bytes);
  check_input(&ct, "the loaded ciphertext");
  return ct;
}

ck::Bytes Server::save_ciphertext(const ck::Ciphertext& ct) const {
  return ck::Serializer::save(*state_->context, ct);
}

// ---- ProgramHost ----

struct ProgramHost::State {
  std::shared_ptr<const Program> program;
  ck::ContextPtr context;
  ck::Fingerprint fingerprint;
  std::shared_ptr<const ck::Bootstrapper> boot;  // shared by every client's server
  EngineBackend backend;  // no keys: it only encodes
  Executor<EngineBackend> executor;

  State(std::shared_ptr<const Program> p, ck::ContextPtr ctx, Encoding encoding)
      : program(std::move(p)),
        context(std::move(ctx)),
        fingerprint(runtime::program_fingerprint(program->save())),
        boot(bootstrapper_for(*program, context)),
        backend(context, boot),
        executor(*program, backend, encoding) {}
};

ProgramHost::ProgramHost(std::shared_ptr<const Program> program, ServerOptions options) {
  ck::ContextPtr ctx = make_server_context(program.get(), options);
  state_ = std::make_unique<State>(std::move(program), std::move(ctx), options.encoding);
}

ProgramHost ProgramHost::from_bytes(std::span<const std::uint8_t> program,
                                    ServerOptions options) {
  return ProgramHost(std::make_shared<const Program>(Program::load(program)), options);
}

ProgramHost ProgramHost::from_signed_bytes(std::span<const std::uint8_t> program,
                                           std::span<const std::uint8_t> signature,
                                           const VerifyKey& owner, ServerOptions options) {
  verify_signature(program, signature, owner, "program file");
  return from_bytes(program, options);
}

ProgramHost::ProgramHost(ProgramHost&&) noexcept = default;
ProgramHost& ProgramHost::operator=(ProgramHost&&) noexcept = default;
ProgramHost::~ProgramHost() = default;

Server ProgramHost::serve(std::shared_ptr<const ck::EvaluationKeys> keys) const {
  if (!keys) throw ck::MissingKeyError("the server needs evaluation keys, got none");
  check_keys(*state_->program, *state_->context, *keys);
  return Server(std::make_unique<Server::State>(state_->program, state_->context, std::move(keys),
                                                state_->executor, state_->boot));
}

Server ProgramHost::serve(std::span<const std::uint8_t> evaluation_keys) const {
  return serve(load_bundle(*state_->context, evaluation_keys));
}

const Program& ProgramHost::program() const { return *state_->program; }
const ck::ContextPtr& ProgramHost::context() const { return state_->context; }
const ck::Fingerprint& ProgramHost::program_fingerprint() const { return state_->fingerprint; }
std::size_t ProgramHost::plaintext_bytes() const { return state_->executor.plaintext_bytes(); }
std::size_t ProgramHost::plaintext_count() const { return state_->executor.plaintext_count(); }

ck::Fingerprint program_fingerprint(std::span<const std::uint8_t> program_bytes) {
  ck::Fingerprint out{};
  crypto_generichash(out.data(), out.size(), program_bytes.data(), program_bytes.size(), nullptr,
                     0);
  return out;
}

ck::Bytes read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ck::SerializationError("cannot open " + path.string() + " for reading");
  ck::Bytes out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw ck::SerializationError("error reading " + path.string());
  return out;
}

}  // namespace fheprune::runtime
