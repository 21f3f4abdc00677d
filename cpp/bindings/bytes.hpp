// Bytes between Python and the core, shared by the binding files: copies into Python `bytes`,
// views out of them (the caller keeps the `bytes` object alive while the view is used).
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>
#include <span>

inline nanobind::bytes to_bytes(std::span<const std::uint8_t> b) {
  return nanobind::bytes(reinterpret_cast<const char*>(b.data()), b.size());
}

inline std::span<const std::uint8_t> as_span(const nanobind::bytes& b) {
  return {reinterpret_cast<const std::uint8_t*>(b.c_str()), b.size()};
}
