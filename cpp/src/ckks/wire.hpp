// The byte-level reader and writer behind every fheprune file format (engine objects and the
// runtime's programs): little-endian integers and doubles, and a reader that never reads past
// its span and says how much was missing.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "fheprune/ckks/errors.hpp"
#include "fheprune/ckks/types.hpp"

namespace fheprune::ckks {

namespace detail {

class Writer {
 public:
  void u16(std::uint16_t v) { raw(&v, 2); }
  void u64(std::uint64_t v) { raw(&v, 8); }
  void f64(double v) { raw(&v, 8); }
  void bytes(const void* p, std::size_t n) { raw(p, n); }
  template <class Allocator>
  void words(const std::vector<std::uint64_t, Allocator>& v) {
    raw(v.data(), v.size() * 8);
  }
  Bytes& buffer() { return out_; }
  void f64s(const std::vector<double>& v) { raw(v.data(), v.size() * 8); }

 private:
  void raw(const void* p, std::size_t n) {
    const auto* b = static_cast<const std::uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  Bytes out_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> data) : data_(data) {}
  std::uint16_t u16() { return read<std::uint16_t>(); }
  std::uint64_t u64() { return read<std::uint64_t>(); }
  double f64() { return read<double>(); }
  void bytes(void* out, std::size_t n) {
    need(n);
    std::memcpy(out, data_.data() + pos_, n);
    pos_ += n;
  }
  void words(std::uint64_t* out, std::size_t count) { bytes(out, count * 8); }
  void f64s(double* out, std::size_t count) { bytes(out, count * 8); }
  std::size_t remaining() const { return data_.size() - pos_; }
  void expect_end() const {
    if (pos_ != data_.size()) {
      throw SerializationError("corrupted data: " + std::to_string(data_.size() - pos_) +
                               " unexpected trailing bytes in the payload");
    }
  }

 private:
  template <typename T>
  T read() {
    T v;
    bytes(&v, sizeof v);
    return v;
  }
  void need(std::size_t n) const {
    if (n > data_.size() - pos_) {
      throw SerializationError("truncated data: needed " + std::to_string(n) + " more bytes, " +
                               std::to_string(data_.size() - pos_) + " left");
    }
  }
  std::span<const std::uint8_t> data_;
  std::size_t pos_ = 0;
};

}  // namespace detail

}  // namespace fheprune::ckks
