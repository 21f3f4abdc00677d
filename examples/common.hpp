// Small file helpers shared by the examples (not part of the library).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "fheprune/ckks/errors.hpp"
#include "fheprune/ckks/types.hpp"

namespace examples {

// Writes through a temporary file and a rename, so a reader never sees half a file.
inline void write_file(const std::filesystem::path& path, const fheprune::ckks::Bytes& data) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    if (!out) throw fheprune::ckks::SerializationError("cannot write " + tmp.string());
  }
  std::filesystem::rename(tmp, path);
}

// Ciphertext files in a folder: 000000.ct, 000001.ct, ... (an empty file: a known-zero output),
// the same layout the Python Client and Server use.
inline std::filesystem::path ciphertext_path(const std::filesystem::path& dir, std::size_t i) {
  std::string name = std::to_string(i);
  name.insert(0, 6 - std::min<std::size_t>(6, name.size()), '0');
  return dir / (name + ".ct");
}

inline std::vector<std::filesystem::path> ciphertext_files(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> out;
  if (std::filesystem::is_directory(dir)) {
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.path().extension() == ".ct") out.push_back(entry.path());
    }
  }
  std::sort(out.begin(), out.end());
  if (out.empty()) throw fheprune::ckks::SerializationError("no .ct files in " + dir.string());
  return out;
}

// Rows of whitespace-separated numbers, one sample per line.
inline std::vector<std::vector<double>> read_rows(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw fheprune::ckks::SerializationError("cannot open " + path.string());
  std::vector<std::vector<double>> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::vector<double> row;
    double v;
    while (fields >> v) row.push_back(v);
    if (!fields.eof()) {
      throw fheprune::ckks::SerializationError("not a number in " + path.string() + ": '" +
                                               line + "'");
    }
    if (!row.empty()) rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace examples
