"""Reference adapter over Microsoft SEAL's CKKS, via ``tenseal.sealapi``.

The PyPI wheel ``tenseal`` ships ``tenseal.sealapi``, a pybind11 mirror of the SEAL C++ API. Its
surface is close to C++ (output arguments, parms_id arrays, no defaults), so this module wraps it in
a small numpy-friendly class, :class:`SealCKKS`, that the benchmarks, the demo and cross-checks
share. Importing this module needs ``tenseal`` (the ``seal`` extra: ``pip install tenseal``).

Things worth knowing about ``sealapi`` (all handled here):

* SEAL's coefficient modulus list is ``chain + [special]``: the LAST prime is the key-switching
  ("special") prime and is never a data level. SEAL supports exactly one special prime.
* ``KeyGenerator.create_public_key()`` / ``create_relin_keys()`` / ``create_galois_keys(...)``
  without an output argument return a ``Serializable`` wrapper, not a usable key. Use the overloads
  that fill an output object: ``kg.create_public_key(pk)`` etc.
* ``create_galois_keys(list[int], GaloisKeys)`` is bound twice (Galois elements and steps) with
  the same Python signature; pybind11 always picks the first, which takes Galois ELEMENTS. Passing
  steps raises ``ValueError: Galois element is not valid``. Convert steps with
  ``context.key_context_data().galois_tool().get_elts_from_steps(steps)`` first (step 0 maps to the
  conjugation element ``2N - 1``).
* ``CKKSEncoder.encode(values, [parms_id,] scale, out)`` has no default scale and encodes at the
  first (top) data level unless a ``parms_id`` is given. It takes Python sequences; numpy arrays
  are accepted but converted element by element, so ``ndarray.tolist()`` first is faster.
* ``multiply_plain``/``add_plain`` need the plaintext at the ciphertext's level (same parms_id),
  otherwise ``ValueError: encrypted_ntt and plain_ntt parameter mismatch``: encode with
  ``ct.parms_id()`` or ``evaluator.mod_switch_to_inplace(pt, ct.parms_id())``.
* After ``rescale_to_next`` the scale is ``s1*s2/q_l``, not exactly ``2**40``; ``add`` checks scales
  and raises ``ValueError: scale mismatch``. ``Ciphertext.scale`` is a writable property, so set it
  back to the nominal scale when the relative error is negligible (see :meth:`SealCKKS.set_scale`).
* ``Ciphertext`` has no copy constructor in the binding (``Plaintext`` does); use the non-inplace
  evaluator forms (``op(in, ..., out)``) to get fresh objects.
* Levels: ``context.get_context_data(parms_id).chain_index()``; the top data level is
  ``first_context_data().chain_index() == len(chain) - 1`` and the last level is 0.
* The SEAL evaluator is single-threaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fheprune.errors import InputError

try:
    import tenseal
    import tenseal.sealapi as sealapi
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fheprune.reference.seal needs the 'tenseal' wheel, whose tenseal.sealapi module "
        "exposes Microsoft SEAL: pip install tenseal (or pip install 'fheprune[seal]')"
    ) from exc

__all__ = [
    "SealCKKS",
    "SealParams",
    "sealapi",
    "tenseal_version",
]

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
# sealapi objects are untyped pybind11 classes; keep them as Any at the boundary.
Plaintext = Any
Ciphertext = Any
ParmsId = list[int]

_SECURITY = {
    "none": sealapi.SEC_LEVEL_TYPE.NONE,
    "tc128": sealapi.SEC_LEVEL_TYPE.TC128,
    "tc192": sealapi.SEC_LEVEL_TYPE.TC192,
    "tc256": sealapi.SEC_LEVEL_TYPE.TC256,
}


def tenseal_version() -> str:
    """Version string of the installed ``tenseal`` wheel (SEAL is bundled inside it)."""
    return str(getattr(tenseal, "__version__", "unknown"))


@dataclass(frozen=True)
class SealParams:
    """CKKS parameters in the engine's vocabulary (chain + special primes, scale bits).

    ``chain_bits`` are the data primes from level ``len(chain_bits) - 1`` (first, usually the
    largest) down to 0; ``special_bits`` must hold exactly one key-switching prime for SEAL.
    """

    poly_degree: int
    chain_bits: tuple[int, ...]
    special_bits: tuple[int, ...] = (60,)
    scale_bits: int = 40
    security: str = "tc128"

    def __post_init__(self) -> None:
        if self.poly_degree < 2 or self.poly_degree & (self.poly_degree - 1):
            raise InputError(f"poly_degree must be a power of two, got {self.poly_degree}")
        if not self.chain_bits:
            raise InputError("chain_bits must hold at least one prime")
        if len(self.special_bits) != 1:
            raise InputError(
                f"SEAL supports exactly one special prime, got special_bits={self.special_bits}"
            )
        if self.security not in _SECURITY:
            raise InputError(f"security must be one of {sorted(_SECURITY)}, got {self.security!r}")

    @property
    def coeff_bits(self) -> list[int]:
        """Bit sizes as SEAL's ``CoeffModulus.Create`` wants them: chain, then the special prime."""
        return [*self.chain_bits, *self.special_bits]

    @property
    def slots(self) -> int:
        return self.poly_degree // 2

    @property
    def scale(self) -> float:
        return float(2.0**self.scale_bits)


@dataclass
class _Keys:
    secret: Any
    public: Any
    relin: Any
    galois: Any | None
    galois_steps: tuple[int, ...] = field(default_factory=tuple)
    conjugate: bool = False


class SealCKKS:
    """One SEAL CKKS context with keys, encoder, encryptor, decryptor and evaluator.

    All evaluation methods return NEW objects (SEAL's non-inplace ``op(in..., out)`` forms), so
    the inputs stay valid, matching the engine's value semantics.
    """

    def __init__(
        self,
        params: SealParams,
        galois_steps: Sequence[int] = (),
        *,
        conjugate: bool = False,
    ) -> None:
        self.params = params
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_degree)
        parms.set_coeff_modulus(sealapi.CoeffModulus.Create(params.poly_degree, params.coeff_bits))
        self.context = sealapi.SEALContext(parms, True, _SECURITY[params.security])
        if not self.context.parameters_set():
            raise InputError(
                "SEAL rejected the parameters: "
                f"{self.context.parameters_error_name()}: "
                f"{self.context.parameters_error_message()} ({params})"
            )
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.evaluator = sealapi.Evaluator(self.context)
        self.keygen = sealapi.KeyGenerator(self.context)
        secret = self.keygen.secret_key()
        public = sealapi.PublicKey()
        self.keygen.create_public_key(public)
        relin = sealapi.RelinKeys()
        self.keygen.create_relin_keys(relin)
        self.keys = _Keys(secret=secret, public=public, relin=relin, galois=None)
        self.encryptor = sealapi.Encryptor(self.context, public)
        self.decryptor = sealapi.Decryptor(self.context, secret)
        # parms_id of every data level, indexed by level (chain_index).
        self._parms_ids: dict[int, ParmsId] = {}
        data = self.context.first_context_data()
        while data is not None:
            self._parms_ids[int(data.chain_index())] = list(data.parms_id())
            data = data.next_context_data()
        if galois_steps or conjugate:
            self.create_galois_keys(galois_steps, conjugate=conjugate)

    # ------------------------------------------------------------------ metadata
    @property
    def slots(self) -> int:
        return int(self.encoder.slot_count())

    @property
    def max_level(self) -> int:
        return int(self.context.first_context_data().chain_index())

    @property
    def default_scale(self) -> float:
        return self.params.scale

    def parms_id(self, level: int) -> ParmsId:
        """parms_id of data level ``level`` (``max_level`` is the top, 0 the bottom)."""
        try:
            return self._parms_ids[level]
        except KeyError:
            raise InputError(f"level must be in [0, {self.max_level}], got {level}") from None

    def level(self, obj: Ciphertext | Plaintext) -> int:
        """Data level (SEAL ``chain_index``) of a ciphertext or plaintext."""
        return int(self.context.get_context_data(obj.parms_id()).chain_index())

    def rescale_prime(self, level: int) -> int:
        """The prime that :meth:`rescale` divides by at data level ``level`` (its last prime).

        Encoding a multiplier at this scale leaves the product at exactly the input's scale
        after the rescale, so later plaintexts can be prepared ahead of time.
        """
        data = self.context.get_context_data(self.parms_id(level))
        return int(data.parms().coeff_modulus()[-1].value())

    @staticmethod
    def scale_of(obj: Ciphertext | Plaintext) -> float:
        return float(obj.scale)

    @staticmethod
    def size_of(ct: Ciphertext) -> int:
        return int(ct.size())

    # ------------------------------------------------------------------ keys
    def galois_elements(self, steps: Sequence[int], *, conjugate: bool = False) -> list[int]:
        """Galois elements for rotation ``steps`` (positive = rotate left), plus conjugation."""
        tool = self.context.key_context_data().galois_tool()
        wanted = [int(s) % self.slots for s in steps if int(s) % self.slots != 0]
        if conjugate:
            wanted.append(0)  # step 0 -> element 2N - 1 (complex conjugation)
        return [int(e) for e in tool.get_elts_from_steps(sorted(set(wanted)))] if wanted else []

    def create_galois_keys(self, steps: Sequence[int], *, conjugate: bool = False) -> None:
        """(Re)create Galois keys for exactly these rotation steps (no power-of-two fallback)."""
        elements = self.galois_elements(steps, conjugate=conjugate)
        galois = sealapi.GaloisKeys()
        if elements:
            # Overload taking Galois ELEMENTS, filling an output object (see module docstring).
            self.keygen.create_galois_keys(elements, galois)
        self.keys.galois = galois
        self.keys.galois_steps = tuple(sorted({int(s) % self.slots for s in steps} - {0}))
        self.keys.conjugate = conjugate

    def _galois(self, step: int | None) -> Any:
        galois = self.keys.galois
        if galois is None:
            raise InputError("no Galois keys: call create_galois_keys(steps) first")
        if step is not None and step % self.slots not in self.keys.galois_steps:
            raise InputError(
                f"no Galois key for rotation step {step}; have {self.keys.galois_steps}"
            )
        if step is None and not self.keys.conjugate:
            raise InputError(
                "no Galois key for conjugation; use create_galois_keys(..., conjugate=True)"
            )
        return galois

    # ------------------------------------------------------------------ encoding
    def _as_list(self, values: Any) -> list[Any]:
        if isinstance(values, list):
            seq: list[Any] = values
        else:
            arr = np.asarray(values)
            if arr.ndim != 1:
                raise InputError(f"expected a 1-D vector, got shape {arr.shape}")
            if np.iscomplexobj(arr):
                seq = arr.astype(np.complex128).tolist()
            else:
                seq = arr.astype(np.float64).tolist()
        if len(seq) > self.slots:
            raise InputError(f"{len(seq)} values do not fit in {self.slots} slots")
        return seq

    def encode(
        self,
        values: Any,
        scale: float | None = None,
        level: int | None = None,
    ) -> Plaintext:
        """Encode a real or complex vector (ndarray or list) at ``level`` (default: top).

        A Python ``list`` is passed straight to SEAL; ndarrays go through ``tolist()`` first.
        """
        pt = sealapi.Plaintext()
        seq = self._as_list(values)
        s = self.default_scale if scale is None else float(scale)
        if level is None:
            self.encoder.encode(seq, s, pt)
        else:
            self.encoder.encode(seq, self.parms_id(level), s, pt)
        return pt

    def encode_like(self, values: Any, ct: Ciphertext, scale: float | None = None) -> Plaintext:
        """Encode at ``ct``'s level (what ``multiply_plain``/``add_plain`` after rescale need)."""
        pt = sealapi.Plaintext()
        s = self.default_scale if scale is None else float(scale)
        self.encoder.encode(self._as_list(values), ct.parms_id(), s, pt)
        return pt

    def decode(self, pt: Plaintext) -> FloatArray:
        return np.asarray(self.encoder.decode_double(pt), dtype=np.float64)

    def decode_complex(self, pt: Plaintext) -> ComplexArray:
        return np.asarray(self.encoder.decode_complex(pt), dtype=np.complex128)

    # ------------------------------------------------------------------ en/decryption
    def encrypt(self, pt: Plaintext) -> Ciphertext:
        ct = sealapi.Ciphertext()
        self.encryptor.encrypt(pt, ct)
        return ct

    def decrypt(self, ct: Ciphertext) -> Plaintext:
        pt = sealapi.Plaintext()
        self.decryptor.decrypt(ct, pt)
        return pt

    def encrypt_values(self, values: Any) -> Ciphertext:
        return self.encrypt(self.encode(values))

    def decrypt_values(self, ct: Ciphertext) -> FloatArray:
        return self.decode(self.decrypt(ct))

    # ------------------------------------------------------------------ evaluation
    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.add(a, b, out)
        return out

    def sub(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.sub(a, b, out)
        return out

    def negate(self, a: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.negate(a, out)
        return out

    def add_plain(self, ct: Ciphertext, pt: Plaintext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.add_plain(ct, pt, out)
        return out

    def multiply_plain(self, ct: Ciphertext, pt: Plaintext) -> Ciphertext:
        """ct * pt (no rescale). ``pt`` must be at ct's level: see :meth:`encode_like`."""
        out = sealapi.Ciphertext()
        self.evaluator.multiply_plain(ct, pt, out)
        return out

    def multiply(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """Tensor product: a size-3 ciphertext (no relinearization, no rescale)."""
        out = sealapi.Ciphertext()
        self.evaluator.multiply(a, b, out)
        return out

    def relinearize(self, ct: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.relinearize(ct, self.keys.relin, out)
        return out

    def multiply_relin(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """a * b followed by relinearization (size 2, scale s_a*s_b, same level)."""
        out = sealapi.Ciphertext()
        self.evaluator.multiply(a, b, out)
        self.evaluator.relinearize_inplace(out, self.keys.relin)
        return out

    def square_relin(self, a: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.square(a, out)
        self.evaluator.relinearize_inplace(out, self.keys.relin)
        return out

    def rescale(self, ct: Ciphertext) -> Ciphertext:
        """Divide by the last prime of ct's level (``rescale_to_next``); level drops by one."""
        out = sealapi.Ciphertext()
        self.evaluator.rescale_to_next(ct, out)
        return out

    def mod_switch_to(self, ct: Ciphertext, level: int) -> Ciphertext:
        """Drop primes (no scale change) down to data level ``level``."""
        out = sealapi.Ciphertext()
        self.evaluator.mod_switch_to(ct, self.parms_id(level), out)
        return out

    def mod_switch_plain_to(self, pt: Plaintext, level: int) -> Plaintext:
        out = sealapi.Plaintext()
        self.evaluator.mod_switch_to(pt, self.parms_id(level), out)
        return out

    @staticmethod
    def set_scale(ct: Ciphertext, scale: float, *, rel_tol: float = 1e-6) -> None:
        """Overwrite ct's scale after rescale drift (refuses if that would be a real change)."""
        current = float(ct.scale)
        if abs(current - scale) > rel_tol * abs(scale):
            raise InputError(f"scale {current:.6g} is not within rel_tol of {scale:.6g}")
        ct.scale = float(scale)

    def rotate(self, ct: Ciphertext, step: int) -> Ciphertext:
        """Cyclic left rotation by ``step`` slots (slot i receives slot i + step)."""
        out = sealapi.Ciphertext()
        self.evaluator.rotate_vector(ct, int(step), self._galois(int(step)), out)
        return out

    def rotate_many(self, ct: Ciphertext, steps: Sequence[int]) -> list[Ciphertext]:
        """Rotations one by one: SEAL exposes no hoisted (shared-decomposition) rotation."""
        return [self.rotate(ct, step) for step in steps]

    def conjugate(self, ct: Ciphertext) -> Ciphertext:
        out = sealapi.Ciphertext()
        self.evaluator.complex_conjugate(ct, self._galois(None), out)
        return out
