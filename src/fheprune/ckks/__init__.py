"""The CKKS engine (C++ core), one class per concept.

Parameters -> Context; KeyGenerator -> SecretKey / PublicKey / RelinKey / GaloisKeys /
EvaluationKeys; Encoder (numpy <-> Plaintext); Encryptor / Decryptor; Evaluator; Bootstrapper
(refresh a ciphertext at the bottom of the chain); save / load_*.

Roles: the client keeps the SecretKey (``save_secret_key`` is the only way to write it); the
server gets an EvaluationKeys bundle, which cannot hold a secret key.
"""

from __future__ import annotations

try:
    from fheprune import _core  # noqa: F401  (import check with a helpful message)
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "the fheprune C++ engine is not built; install the package with "
        "'pip install .' (see README) so that fheprune._core exists"
    ) from exc

from fheprune._core import (
    BootstrapConfig,
    Bootstrapper,
    Ciphertext,
    Context,
    Decryptor,
    Encoder,
    EncodingError,
    Encryptor,
    EvaluationKeys,
    Evaluator,
    FheError,
    GaloisKeys,
    InsecureParametersError,
    KeyGenerator,
    LevelError,
    MismatchError,
    MissingKeyError,
    ParameterError,
    Parameters,
    Plaintext,
    PublicKey,
    RelinKey,
    ScaleError,
    SecretKey,
    SerializationError,
    load_ciphertext,
    load_evaluation_keys,
    load_galois_keys,
    load_plaintext,
    load_public_key,
    load_relin_key,
    load_secret_key,
    max_modulus_bits_128,
    peek_kind,
    save,
    save_secret_key,
    set_vector_kernels,
    vector_kernel_set,
    vector_kernels_available,
    vector_kernels_enabled,
)
from fheprune.ckks.presets import BootstrapPreset, bootstrappable, preset

__all__ = [
    "BootstrapConfig",
    "BootstrapPreset",
    "Bootstrapper",
    "Ciphertext",
    "Context",
    "Decryptor",
    "Encoder",
    "EncodingError",
    "Encryptor",
    "EvaluationKeys",
    "Evaluator",
    "FheError",
    "GaloisKeys",
    "InsecureParametersError",
    "KeyGenerator",
    "LevelError",
    "MismatchError",
    "MissingKeyError",
    "ParameterError",
    "Parameters",
    "Plaintext",
    "PublicKey",
    "RelinKey",
    "ScaleError",
    "SecretKey",
    "SerializationError",
    "bootstrappable",
    "load_ciphertext",
    "load_evaluation_keys",
    "load_galois_keys",
    "load_plaintext",
    "load_public_key",
    "load_relin_key",
    "load_secret_key",
    "max_modulus_bits_128",
    "peek_kind",
    "preset",
    "save",
    "save_secret_key",
    "set_vector_kernels",
    "vector_kernel_set",
    "vector_kernels_available",
    "vector_kernels_enabled",
]
