// The server: runs a compiled program (from model_owner, or compiled in Python) on a client's
// ciphertexts with that client's evaluation keys, all read from files.
//
//   run_program PROGRAM EVALUATION_KEYS IN_DIR OUT_DIR [THREADS]
//
// IN_DIR holds the input ciphertexts (000000.ct, 000001.ct, ... as the Python Client and
// file_client write them); OUT_DIR receives the outputs in the same layout, an empty file for
// an output the program knows to be zero. runtime::Server checks, before any work, that the
// keys are an evaluation-key bundle of one client made under the program's parameters with
// every rotation key the program needs, and checks every input ciphertext.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common.hpp"
#include "fheprune/runtime/server.hpp"

namespace ck = fheprune::ckks;
namespace rt = fheprune::runtime;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 5 || argc > 6) {
    std::fprintf(stderr, "usage: %s PROGRAM EVALUATION_KEYS IN_DIR OUT_DIR [THREADS]\n", argv[0]);
    return 2;
  }
  try {
    rt::ServerOptions options;
    if (argc == 6) {
      const long threads = std::strtol(argv[5], nullptr, 10);
      if (threads < 1) throw ck::ParameterError("THREADS must be a positive number");
      options.threads = static_cast<std::size_t>(threads);
    }
    const rt::Server server = rt::Server::from_files(argv[1], argv[2], options);

    std::vector<ck::Ciphertext> inputs;
    for (const fs::path& file : examples::ciphertext_files(argv[3])) {
      inputs.push_back(server.load_ciphertext(rt::read_file(file)));
    }
    rt::RunStats stats;
    const auto outputs = server.run(inputs, &stats);

    const fs::path out_dir = argv[4];
    fs::create_directories(out_dir);
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      const ck::Bytes bytes = outputs[i] ? server.save_ciphertext(*outputs[i]) : ck::Bytes{};
      examples::write_file(examples::ciphertext_path(out_dir, i), bytes);
    }
    const rt::OpCounts ops = stats.total();
    double seconds = 0.0;
    for (const auto& layer : stats.layers) seconds += layer.seconds;
    std::printf("ran %zu input ciphertexts -> %zu outputs in %.3f s (%llu plaintext products, "
                "%llu rotations, %llu rescales)\n",
                inputs.size(), outputs.size(), seconds,
                static_cast<unsigned long long>(ops.mul_plain),
                static_cast<unsigned long long>(ops.rotate),
                static_cast<unsigned long long>(ops.rescale));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
