// Typed errors of the CKKS engine. Every failure a caller can provoke with bad input is one
// of these, with a message that says what was wrong and what would be right.
#pragma once

#include <stdexcept>
#include <string>

namespace fheprune::ckks {

// Base of every engine error; bindings map it (and each subclass) to a Python exception.
class FheError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parameters that are malformed (bad N, bit sizes, too few primes...).
class ParameterError : public FheError {
 public:
  using FheError::FheError;
};

// Parameters that are well formed but below the 128-bit security bound.
class InsecureParametersError : public ParameterError {
 public:
  using ParameterError::ParameterError;
};

// Operands at different levels, or an operation that needs a level the operand lacks.
class LevelError : public FheError {
 public:
  using FheError::FheError;
};

// Operands whose scales do not match, or a scale that overflows the modulus.
class ScaleError : public FheError {
 public:
  using FheError::FheError;
};

// A rotation (or conjugation) whose Galois key was not generated.
class MissingKeyError : public FheError {
 public:
  using FheError::FheError;
};

// Objects made under different parameters or different keys, used together.
class MismatchError : public FheError {
 public:
  using FheError::FheError;
};

// Values that do not fit: too many slots, non-finite numbers, values too large for the scale.
class EncodingError : public FheError {
 public:
  using FheError::FheError;
};

// Truncated, corrupted, wrong-version or wrong-kind serialized data.
class SerializationError : public FheError {
 public:
  using FheError::FheError;
};

}  // namespace fheprune::ckks
