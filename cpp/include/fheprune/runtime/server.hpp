// The server role: one compiled program, the context of its parameters and one client's
// evaluation keys, checked to belong together before any work is done, and the executor that
// runs ciphertexts through the program.
//
// Everything a server may hold and nothing more: the keys come as an evaluation-key bundle
// (public, relinearization and Galois keys), which by construction holds no secret key, and
// `from_bytes` refuses any other kind of object. The Python `Server` wraps this class, so a
// C++ deployment gets exactly the same checks:
//
//  * set-up: the keys' parameter fingerprint is the program's, the public, relinearization and
//    Galois keys belong to one secret key (one key id), and every rotation step the program
//    performs has its Galois key (missing ones are named);
//  * every run: each input is present (no null pointer), made under the program's parameters,
//    encrypted under the registered key, a fresh size-2 ciphertext at the program's input level
//    with the default scale; the count is a whole number of groups of input ciphertexts.
//
// Keys and program are held by shared ownership; nothing the server refers to can dangle.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "fheprune/ckks/ciphertext.hpp"
#include "fheprune/ckks/context.hpp"
#include "fheprune/ckks/keys.hpp"
#include "fheprune/ckks/types.hpp"
#include "fheprune/runtime/executor.hpp"
#include "fheprune/runtime/program.hpp"
#include "fheprune/runtime/signing.hpp"

namespace fheprune::runtime {

struct ServerOptions {
  std::size_t threads = 1;                   // engine threads for every run
  Encoding encoding = Encoding::kAtSetup;    // kOnDemand: programs too large to pre-encode
};

class ProgramHost;

class Server {
 public:
  // Throws ckks::MismatchError (keys made under other parameters or for different secret keys),
  // ckks::MissingKeyError (a rotation step without its Galois key, no keys at all), and the
  // context's ParameterError / InsecureParametersError for the program's parameters.
  Server(std::shared_ptr<const Program> program, std::shared_ptr<const ckks::EvaluationKeys> keys,
         ServerOptions options = {});

  // The same on a context the caller already has (it must have the program's parameters;
  // ckks::MismatchError otherwise); its threads run the program.
  Server(std::shared_ptr<const Program> program, ckks::ContextPtr context,
         std::shared_ptr<const ckks::EvaluationKeys> keys, Encoding encoding = Encoding::kAtSetup);

  // From the files a client and a compiler hand over: a program file and an evaluation-key
  // bundle. Throws ckks::SerializationError for corrupt data or another kind of object.
  static Server from_bytes(std::span<const std::uint8_t> program,
                           std::span<const std::uint8_t> evaluation_keys,
                           ServerOptions options = {});
  // The same for a program file that comes from another party: first checks that `signature`
  // is the model owner's Ed25519 signature of exactly these bytes (signing.hpp);
  // ckks::MismatchError if not.
  static Server from_signed_bytes(std::span<const std::uint8_t> program,
                                  std::span<const std::uint8_t> signature, const VerifyKey& owner,
                                  std::span<const std::uint8_t> evaluation_keys,
                                  ServerOptions options = {});
  static Server from_files(const std::filesystem::path& program,
                           const std::filesystem::path& evaluation_keys,
                           ServerOptions options = {});

  Server(Server&&) noexcept;
  Server& operator=(Server&&) noexcept;
  ~Server();

  const Program& program() const;
  const ckks::ContextPtr& context() const;
  const ckks::EvaluationKeys& keys() const;
  // The secret key every input must be encrypted under.
  const ckks::KeyId& key_id() const;
  // BLAKE2b-256 of the program file (Program::save()): what a client compares with its spec.
  ckks::Fingerprint program_fingerprint() const;
  // Plaintexts encoded at set-up (with Encoding::kOnDemand: only biases and masks).
  std::size_t plaintext_bytes() const;
  std::size_t plaintext_count() const;

  // The engine threads of the following runs. Only for a server that made its own context
  // (the ServerOptions constructors): a context shared with a ProgramHost or the caller may be
  // running other work, so ckks::ParameterError there; also for 0 or more threads than
  // ckks::max_threads(). A run in flight finishes first; other calls on this server (reading
  // its context's thread count included) must not overlap it. One server then times one
  // program at several thread counts without a second copy of its plaintexts.
  void set_threads(std::size_t threads);

  // Checks every input as described above, then runs the program: output_ciphertexts() per
  // group of inputs; nullopt marks an output the program knows to be zero. Runs are serialized
  // (one at a time); the engine's threads work within a run.
  std::vector<std::optional<ckks::Ciphertext>> run(std::span<const ckks::Ciphertext* const> inputs,
                                                   RunStats* stats = nullptr) const;
  std::vector<std::optional<ckks::Ciphertext>> run(const std::vector<ckks::Ciphertext>& inputs,
                                                   RunStats* stats = nullptr) const;

  // A serialized input ciphertext, loaded under the program's parameters and checked like a run
  // input; and an output ciphertext, serialized for the client.
  ckks::Ciphertext load_ciphertext(std::span<const std::uint8_t> bytes) const;
  ckks::Bytes save_ciphertext(const ckks::Ciphertext& ct) const;

 private:
  friend class ProgramHost;
  struct State;
  explicit Server(std::unique_ptr<State> state);
  void check_input(const ckks::Ciphertext* ct, const std::string& which) const;
  std::unique_ptr<State> state_;
};

// One program served to many clients, each with its own keys: the program, its context and
// its weight plaintexts are built once, and `serve` gives a client's evaluation keys a Server
// that shares all of them, so a client costs its keys and nothing more. The keys are checked
// as by Server's constructor. Servers made here run concurrently (each serializes its own
// runs); with a one-thread context, N concurrent runs use N cores.
class ProgramHost {
 public:
  explicit ProgramHost(std::shared_ptr<const Program> program, ServerOptions options = {});
  static ProgramHost from_bytes(std::span<const std::uint8_t> program, ServerOptions options = {});
  static ProgramHost from_signed_bytes(std::span<const std::uint8_t> program,
                                       std::span<const std::uint8_t> signature,
                                       const VerifyKey& owner, ServerOptions options = {});

  ProgramHost(ProgramHost&&) noexcept;
  ProgramHost& operator=(ProgramHost&&) noexcept;
  ~ProgramHost();

  Server serve(std::shared_ptr<const ckks::EvaluationKeys> keys) const;
  // From a serialized evaluation-key bundle (ckks::SerializationError for anything else).
  Server serve(std::span<const std::uint8_t> evaluation_keys) const;

  const Program& program() const;
  const ckks::ContextPtr& context() const;
  const ckks::Fingerprint& program_fingerprint() const;
  std::size_t plaintext_bytes() const;
  std::size_t plaintext_count() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Throws ckks::MismatchError unless `ctx` has the parameters `program` was compiled for.
void check_context(const Program& program, const ckks::Context& ctx);

// BLAKE2b-256 of a program's file bytes.
ckks::Fingerprint program_fingerprint(std::span<const std::uint8_t> program_bytes);

// Reads a whole file; throws ckks::SerializationError naming the path if it cannot.
ckks::Bytes read_file(const std::filesystem::path& path);

}  // namespace fheprune::runtime
