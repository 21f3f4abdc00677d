// The CKKS engine, one class per concept:
//   Parameters -> Context; KeyGenerator -> SecretKey / PublicKey / RelinKey / GaloisKeys;
//   Encoder (values <-> Plaintext); Encryptor / Decryptor; Evaluator; Serializer.
#pragma once

#include "fheprune/ckks/bootstrapper.hpp"
#include "fheprune/ckks/ciphertext.hpp"
#include "fheprune/ckks/context.hpp"
#include "fheprune/ckks/encoder.hpp"
#include "fheprune/ckks/encryptor.hpp"
#include "fheprune/ckks/errors.hpp"
#include "fheprune/ckks/evaluator.hpp"
#include "fheprune/ckks/flooding.hpp"
#include "fheprune/ckks/keygen.hpp"
#include "fheprune/ckks/keys.hpp"
#include "fheprune/ckks/parameters.hpp"
#include "fheprune/ckks/serialization.hpp"
