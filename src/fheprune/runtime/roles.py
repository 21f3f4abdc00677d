"""The two roles of encrypted inference, and the files they exchange.

* :class:`Client` holds the secret key. It makes the evaluation keys for exactly the rotations
  the program uses, permutes + packs + encodes + encrypts inputs, and decrypts + decodes +
  un-permutes outputs. It needs only the program's *shape* (a :class:`ClientSpec`: parameters,
  layout, layer sizes, permutations), never the server's weights.
* :class:`Server` loads the program file and the evaluation-key bundle and computes on
  ciphertexts only. It never sees a secret key: the bundle format cannot hold one.

Files (see ``docs/runtime.md``): ``program.bin``, ``evaluation_keys.bin`` and the ``*.ct``
ciphertexts in the engine's checked envelope (an empty ``.ct`` file is a known-zero output),
and ``client.json``, a validated JSON description of the program's shape.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fheprune import _core
from fheprune.errors import InputError, InputTypeError, MissingFileError
from fheprune.fileio import atomic_write_bytes

from .compiler import CompiledModel, LinearStep

__all__ = ["Client", "ClientSpec", "InputRangeError", "Server", "SpecError"]

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
SPEC_FORMAT = "fheprune.client-spec"
SPEC_VERSION = 1


class InputRangeError(InputError):
    """Inputs larger than the program holds at its parameters (ClientSpec.max_input)."""


class SpecError(InputError):
    """A client spec file that is unreadable, of another version, or inconsistent."""


@dataclass(frozen=True)
class ClientSpec:
    """What the client must know about a program: its shape, not its weights."""

    parameters: Any  # _core.Parameters
    layout: str
    tile_shape: tuple[int, int, int]
    in_features: int
    layers: tuple[
        tuple[str, int] | tuple[str, int, int], ...
    ]  # ("square", 0) | ("linear", out, in)
    rotation_steps: tuple[int, ...]
    input_perm: tuple[int, ...] | None
    output_perm: tuple[int, ...] | None
    # Map layout only: the input layout (ChannelPacking fields), the ciphertexts the program
    # ends with and where each output feature sits in them (ciphertext, slot).
    input_packing: dict[str, Any] | None = None
    output_ciphertexts: int = 0
    output_map: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    # The largest |input| the program holds at its parameters (Program.input_range()); the
    # client refuses larger inputs, which would decrypt to garbage. None: not checked.
    max_input: float | None = None
    # BLAKE2b-256 of the program file (hex): a remote client checks that the server runs
    # exactly this program before it sends anything (fheprune.client). None: not known.
    program_fingerprint: str | None = None
    # Programs with refreshes (bootstrapping, docs/runtime.md "Refreshes"): the level inputs
    # are encrypted at (None: the top), the secret's Hamming weight the refresh was made for
    # (None: a uniform ternary secret) and whether the bundle needs the conjugation key.
    input_level: int | None = None
    hamming_weight: int | None = None
    conjugation: bool = False
    # The ephemeral secret's weight the refreshes switch to (sparse-secret encapsulation): the
    # bundle then holds encapsulation keys of that weight. 0: none.
    ephemeral_weight: int = 0

    @classmethod
    def from_compiled(cls, compiled: CompiledModel) -> ClientSpec:
        layers: list[tuple[str, int] | tuple[str, int, int]] = []
        for step in compiled.steps:
            if isinstance(step, LinearStep):
                layers.append(("linear", int(step.weight.shape[0]), int(step.weight.shape[1])))
            else:
                layers.append(("square", 0))
        p = compiled.program
        spec = compiled.map_spec
        return cls(
            input_packing=None if spec is None else spec.input.to_dict(),
            output_ciphertexts=0 if spec is None else int(spec.output.ciphertexts),
            output_map=None
            if spec is None
            else (
                tuple(int(v) for v in spec.output.ct),
                tuple(int(v) for v in spec.output.slot),
            ),
            parameters=p.parameters,
            layout=p.layout,
            tile_shape=tuple(int(v) for v in p.tile_shape),  # type: ignore[arg-type]
            in_features=int(p.in_features),
            layers=tuple(layers),
            rotation_steps=tuple(int(s) for s in p.rotation_steps()),
            input_perm=None
            if compiled.input_perm is None
            else tuple(int(v) for v in compiled.input_perm),
            output_perm=None
            if compiled.output_perm is None
            else tuple(int(v) for v in compiled.output_perm),
            max_input=_proven_input_bound(p),
            program_fingerprint=bytes(p.fingerprint).hex(),
            input_level=None
            if int(p.input_level) == len(p.parameters.chain_bits) - 1
            else int(p.input_level),
            hamming_weight=None
            if compiled.choice.bootstrap is None
            else int(compiled.choice.bootstrap.hamming_weight),
            conjugation=bool(p.needs_conjugation),
            ephemeral_weight=0
            if p.refresh_config is None
            else int(p.refresh_config.ephemeral_weight),
        )

    def shape_program(self) -> Any:
        """A weightless program of the same shape: packs inputs and unpacks outputs."""
        if self.layout not in LAYOUTS:
            raise SpecError(f"unknown layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if self.layout == "map":
            return self._map_shape_program()
        if self.layout == "tile":
            to, ti, tb = self.tile_shape
            program = _core.Program.tile(self.parameters, to, ti, tb, self.in_features)
        else:
            program = _core.Program.diagonal(self.parameters, self.in_features)
        for i, layer in enumerate(self.layers):
            if layer[0] == "square":
                program.add_square(f"act{i}")
            else:
                _, out, inp = layer  # type: ignore[misc]
                program.add_linear(f"fc{i}", np.zeros((out, inp)), np.ones(out))
        return program

    def packing(self) -> Any:
        """The map layout's input packing (``layouts.channels.ChannelPacking``)."""
        from fheprune.layouts.channels import ChannelPacking

        if self.input_packing is None:
            raise SpecError("a map-layout client spec needs its input packing")
        return ChannelPacking.from_dict(self.input_packing)

    def _map_shape_program(self) -> Any:
        if self.output_map is None or self.input_packing is None:
            raise SpecError("a map-layout client spec needs its input packing and output map")
        packing = self.packing()
        slots = int(self.parameters.poly_degree) // 2
        if packing.slots != slots or packing.client_ciphertexts * slots != self.in_features:
            raise SpecError(
                f"the input packing ({packing.client_ciphertexts} ciphertexts of {packing.slots} "
                f"slots) does not match the parameters' {slots} slots and "
                f"{self.in_features} input values"
            )
        program = _core.Program.map(self.parameters, packing.client_ciphertexts)
        empty_u32 = np.zeros(0, dtype=np.uint32)
        program.add_map_linear(
            "outputs",
            self.output_ciphertexts,
            empty_u32,
            empty_u32,
            np.zeros(0, dtype=np.uint64),
            np.zeros((0, 1)),
        )
        cts, at = self.output_map
        program.set_outputs(np.asarray(cts, dtype=np.uint32), np.asarray(at, dtype=np.uint64))
        return program

    def to_json(self) -> str:
        return json.dumps(
            {
                "input_packing": self.input_packing,
                "output_ciphertexts": self.output_ciphertexts,
                "output_map": None
                if self.output_map is None
                else [list(self.output_map[0]), list(self.output_map[1])],
                "format": SPEC_FORMAT,
                "version": SPEC_VERSION,
                "parameters": self.parameters.to_bytes().hex(),
                "layout": self.layout,
                "tile_shape": list(self.tile_shape),
                "in_features": self.in_features,
                "layers": [list(layer) for layer in self.layers],
                "rotation_steps": list(self.rotation_steps),
                "input_perm": None if self.input_perm is None else list(self.input_perm),
                "output_perm": None if self.output_perm is None else list(self.output_perm),
                "max_input": self.max_input,
                "program_fingerprint": self.program_fingerprint,
                "input_level": self.input_level,
                "hamming_weight": self.hamming_weight,
                "conjugation": self.conjugation,
                "ephemeral_weight": self.ephemeral_weight,
            }
        )

    @classmethod
    def from_json(
        cls, text: str, *, signature: bytes | None = None, owner_key: str | None = None
    ) -> ClientSpec:
        """Parse a spec; with the owner's verification key (hex), only if ``signature`` is the
        owner's signature of exactly this text (UTF-8), e.g. ``owner.sign(text.encode())``."""
        _check_signed(text.encode(), signature, owner_key, "client spec")
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise SpecError("a client spec is a JSON object")
            if d.get("format") != SPEC_FORMAT or d.get("version") != SPEC_VERSION:
                raise SpecError(
                    f"not a {SPEC_FORMAT} v{SPEC_VERSION} file (format={d.get('format')!r}, "
                    f"version={d.get('version')!r})"
                )
            params = _core.Parameters.from_bytes(bytes.fromhex(d["parameters"]))
            layers: list[tuple[str, int] | tuple[str, int, int]] = []
            for layer in d["layers"]:
                if layer[0] == "square" and len(layer) == 2:
                    layers.append(("square", 0))
                elif layer[0] == "linear" and len(layer) == 3:
                    layers.append(("linear", int(layer[1]), int(layer[2])))
                else:
                    raise SpecError(f"bad layer entry {layer!r}")
            spec = cls(
                parameters=params,
                layout=str(d["layout"]),
                tile_shape=tuple(int(v) for v in d["tile_shape"]),  # type: ignore[arg-type]
                in_features=int(d["in_features"]),
                layers=tuple(layers),
                rotation_steps=tuple(int(s) for s in d["rotation_steps"]),
                input_perm=None
                if d["input_perm"] is None
                else tuple(int(v) for v in d["input_perm"]),
                output_perm=None
                if d["output_perm"] is None
                else tuple(int(v) for v in d["output_perm"]),
                input_packing=_packing_field(d.get("input_packing")),
                output_ciphertexts=_int_field(d.get("output_ciphertexts", 0), "output_ciphertexts"),
                output_map=_output_map_field(d.get("output_map")),
                max_input=_max_input_field(d.get("max_input")),
                program_fingerprint=_fingerprint_field(d.get("program_fingerprint")),
                input_level=_optional_count(
                    d.get("input_level"), "input_level", len(params.chain_bits) - 1
                ),
                hamming_weight=_optional_count(
                    d.get("hamming_weight"), "hamming_weight", int(params.poly_degree)
                ),
                conjugation=_bool_field(d.get("conjugation", False), "conjugation"),
                ephemeral_weight=_optional_count(
                    d.get("ephemeral_weight", 0), "ephemeral_weight", int(params.poly_degree)
                )
                or 0,
            )
            program = spec.shape_program()  # validates the shape against the parameters
            _check_permutation(spec.input_perm, int(program.in_features), "input_perm")
            _check_permutation(spec.output_perm, int(program.out_features), "output_perm")
        except (SpecError, _core.InsecureParametersError):
            raise  # a spec cannot switch the 128-bit check off: say so, not "corrupt"
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            # ValueError covers the engine's FheError family (CompileError, ParameterError...).
            raise SpecError(f"corrupt client spec: {exc}") from exc
        return spec


def _packing_field(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError(f"input_packing must be an object, got {type(value).__name__}")
    from fheprune.layouts.channels import ChannelPacking

    return ChannelPacking.from_dict(value).to_dict()  # validates every field


LAYOUTS = ("tile", "diagonal", "map")


def _ciphertexts(values: Any, where: str, *, allow_none: bool) -> list[Any]:
    """``values`` as a list of ciphertexts (None allowed for known-zero outputs), or an
    InputTypeError naming what was expected (instead of the bindings' generic TypeError)."""
    if values is None or isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise InputTypeError(
            f"{where} takes a list of Ciphertext objects, got {type(values).__name__}"
        )
    items = list(values)
    for i, c in enumerate(items):
        if not (isinstance(c, _core.Ciphertext) or (allow_none and c is None)):
            allowed = "a Ciphertext or None" if allow_none else "a Ciphertext"
            raise InputTypeError(f"{where}: item {i} is {type(c).__name__}, expected {allowed}")
    return items


def _check_signed(data: bytes, signature: bytes | None, owner_key: str | None, what: str) -> None:
    """Checks the owner's signature when the caller has the owner's key (MismatchError)."""
    if owner_key is None:
        if signature is not None:
            raise InputError(f"a signature for the {what} needs the owner's key to check it")
        return
    if signature is None:
        raise _core.MismatchError(
            f"the {what} must be signed by the owner's key {owner_key[:16]}..., got no signature"
        )
    _core.verify_signature(data, signature, owner_key, what)


def _bytes_arg(value: Any, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InputTypeError(f"{what} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _check_permutation(perm: tuple[int, ...] | None, size: int, what: str) -> None:
    """A permutation of range(size): every index once (None: no permutation)."""
    if perm is not None and sorted(perm) != list(range(size)):
        raise SpecError(
            f"{what} must be a permutation of 0..{size - 1} (each index once), got "
            f"{len(perm)} entries" + ("" if len(perm) != size else " with repeats or gaps")
        )


def _proven_input_bound(program: Any) -> float | None:
    """The program's input bound, or None (with a warning) where the interval analysis cannot
    prove any input safe: it bounds every layer for the worst signs, so deep programs at small
    moduli can fail it although their real inputs fit."""
    try:
        return float(program.input_range()["max_input"])
    except _core.CompileError as exc:
        log.warning("inputs will not be range-checked: %s", exc)
        return None


def _fingerprint_field(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or not _is_hex(value):
        raise SpecError(f"program_fingerprint must be 64 hex digits, got {value!r}")
    return value.lower()


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _optional_count(value: Any, what: str, most: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise SpecError(f"{what} must be null or a whole number in [0, {most}], got {value!r}")
    return value


def _bool_field(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{what} must be true or false, got {value!r}")
    return value


def _max_input_field(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"max_input must be a number or null, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise SpecError(f"max_input must be a positive finite number, got {value!r}")
    return float(value)


def _int_field(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{what} must be an integer, got {value!r}")
    return value


def _output_map_field(value: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, list) for v in value)
        or len(value[0]) != len(value[1])
    ):
        raise SpecError("output_map must be [ciphertexts, slots]: two lists of equal length")
    return (
        tuple(_int_field(v, "an output ciphertext") for v in value[0]),
        tuple(_int_field(v, "an output slot") for v in value[1]),
    )


class Client:
    """The data owner: keys, encryption, decryption. The secret key stays here.

    A new client draws a fresh secret key; ``secret_key`` (the bytes of
    :meth:`secret_key_bytes`, kept by the client between sessions) restores one."""

    def __init__(
        self, spec: ClientSpec, *, threads: int = 1, secret_key: bytes | None = None
    ) -> None:
        self.spec = spec
        self.context = _core.Context(spec.parameters, threads)
        if secret_key is None and spec.hamming_weight is not None:
            # A refresh's overflow bound holds for a secret of this weight only.
            self._keygen = _core.KeyGenerator(self.context, spec.hamming_weight)
        elif secret_key is None:
            self._keygen = _core.KeyGenerator(self.context)
        else:
            loaded = _core.load_secret_key(self.context, _bytes_arg(secret_key, "secret_key"))
            self._keygen = _core.KeyGenerator(self.context, loaded)
        self._program = spec.shape_program()
        self._encoder = _core.Encoder(self.context)
        self._encryptor = _core.Encryptor(self.context, self._keygen.secret_key)
        self._decryptor = _core.Decryptor(self.context, self._keygen.secret_key)
        self.last_flooding: list[dict[str, float]] = []

    def evaluation_keys(self) -> Any:
        """The server bundle: public, relinearization and exactly the program's Galois keys
        (with the conjugation key and the encapsulation keys when the program refreshes)."""
        return self._keygen.create_evaluation_keys(
            list(self.spec.rotation_steps), self.spec.conjugation, self.spec.ephemeral_weight
        )

    def evaluation_keys_bytes(self) -> bytes:
        data: bytes = _core.save(self.context, self.evaluation_keys())
        return data

    def secret_key_bytes(self) -> bytes:
        """The secret key, serialized, for the client's own storage (never for a server: no
        server API takes it, and the evaluation-key bundle format cannot hold it)."""
        return bytes(_core.save_secret_key(self.context, self._keygen.secret_key))

    @property
    def key_id(self) -> bytes:
        """The secret key's public id (BLAKE2b of the key), as ciphertexts and servers report it."""
        return bytes(self._keygen.secret_key.key_id)

    def encrypt(self, samples: FloatArray) -> list[Any]:
        """Samples [count, features] -> input ciphertexts, group by group.

        Map layout: images [count, C, H, W] (or flattened [count, C*H*W]), one group of input
        ciphertexts per image.
        """
        if self.spec.layout == "map":
            return self._encrypt_images(samples)
        x = np.ascontiguousarray(self._real(samples))
        if x.ndim != 2 or x.shape[1] != self.spec.in_features:
            raise _core.CompileError(
                f"inputs must be [count, {self.spec.in_features}], got {list(x.shape)}"
            )
        self._check_values(x)
        if self.spec.input_perm is not None:
            x = np.ascontiguousarray(x[:, list(self.spec.input_perm)])
        slots = self._program.pack_inputs(x)
        return [
            self._encryptor.encrypt(
                self._encoder.encode(np.ascontiguousarray(v), level=self.spec.input_level)
            )
            for v in slots
        ]

    @staticmethod
    def _real(samples: Any) -> FloatArray:
        """The samples as float64; complex or non-numeric arrays are refused."""
        x = np.asarray(samples)
        if np.iscomplexobj(x):
            raise InputTypeError("inputs must be real numbers, got a complex array")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise InputTypeError(f"inputs must be a numeric array, got dtype {x.dtype}")
        result: FloatArray = x.astype(np.float64, copy=False)
        return result

    def _check_values(self, x: FloatArray) -> None:
        """Non-empty, finite, and within the program's input range (ClientSpec.max_input)."""
        if x.size == 0:
            raise InputError(f"inputs are empty (shape {list(x.shape)}); give at least one sample")
        if not np.all(np.isfinite(x)):
            raise InputError("inputs hold NaN or infinite values")
        bound = self.spec.max_input
        peak = float(np.max(np.abs(x)))
        if bound is not None and peak > bound:
            raise InputRangeError(
                f"inputs reach |x| = {peak:.4g}, but this program holds inputs up to {bound:.4g} "
                "at its parameters (beyond it a value wraps around the ciphertext modulus and "
                "decrypts to garbage); scale the inputs down, or compile with a larger first "
                "prime"
            )

    def _encrypt_images(self, samples: FloatArray) -> list[Any]:
        packing = self.spec.packing()
        x = self._real(samples)
        per_image = packing.channels * packing.height * packing.width
        image = (packing.channels, packing.height, packing.width)
        if (
            x.ndim not in (2, 4)
            or x.shape[0] == 0
            or (x.ndim == 2 and x.shape[1] != per_image)
            or (x.ndim == 4 and tuple(x.shape[1:]) != image)
        ):
            raise _core.CompileError(
                f"inputs must be images [count, {packing.channels}, {packing.height}, "
                f"{packing.width}] (or [count, {per_image}]), count >= 1, got {list(x.shape)}"
            )
        self._check_values(x)
        images = x.reshape(-1, packing.channels, packing.height, packing.width)
        rows = packing.pack(images).reshape(images.shape[0], -1)
        slots = self._program.pack_inputs(np.ascontiguousarray(rows))
        return [
            self._encryptor.encrypt(
                self._encoder.encode(np.ascontiguousarray(v), level=self.spec.input_level)
            )
            for v in slots
        ]

    def decrypt(self, outputs: Sequence[Any | None], count: int) -> FloatArray:
        """Output ciphertexts (None = known zero) -> outputs [count, out_features].

        The results keep the ciphertexts' noise, which depends on the secret key: they must stay
        with the client. To hand results to anyone who holds the ciphertexts (the server, or
        whoever may collude with it), use :meth:`decrypt_for_sharing`."""
        return self._unpack(
            [
                np.zeros(self.context.slots)
                if c is None
                else np.asarray(self._encoder.decode(self._decryptor.decrypt(c)))
                for c in _ciphertexts(outputs, "Client.decrypt", allow_none=True)
            ],
            count,
        )

    def decrypt_for_sharing(
        self,
        outputs: Sequence[Any | None],
        count: int,
        *,
        statistical_security: int = 32,
        shared_decryptions: int = 1,
    ) -> FloatArray:
        """Like :meth:`decrypt`, with noise flooding for results that leave the client: Gaussian
        noise 2^(s/2) * sqrt(N * k) * 6 times the noise measured on each output is added, so
        that the shared values do not give the secret key away (whoever holds a ciphertext and
        its plain decryption can solve for the key; docs/security.md). ``shared_decryptions``
        k counts the decryptions of these ciphertexts (or of ones with correlated noise) that
        will ever be shared. ``last_flooding`` reports the noise levels; its ``noise_std``
        depends on the key and must stay private."""
        flooder = _core.NoiseFlooder(self.context, statistical_security, shared_decryptions)
        rows, reports = [], []
        for c in _ciphertexts(outputs, "Client.decrypt_for_sharing", allow_none=True):
            if c is None:
                rows.append(np.zeros(self.context.slots))
                continue
            values, report = flooder.decode(self._decryptor.decrypt(c))
            rows.append(np.asarray(values))
            reports.append(report)
        self.last_flooding = reports
        return self._unpack(rows, count)

    def _unpack(self, rows: list[FloatArray], count: int) -> FloatArray:
        y: FloatArray = self._program.unpack_outputs(np.ascontiguousarray(np.stack(rows)), count)
        if self.spec.output_perm is not None:
            y = np.ascontiguousarray(y[:, np.argsort(np.asarray(self.spec.output_perm))])
        return y

    def save_ciphertexts(
        self, cts: Sequence[Any | None], folder: str | os.PathLike[str]
    ) -> list[Path]:
        return _save_cts(self._save, cts, Path(folder))

    def load_ciphertexts(self, folder: str | os.PathLike[str]) -> list[Any | None]:
        return _load_cts(self._load, Path(folder))

    def _save(self, ct: Any) -> bytes:
        return bytes(_core.save(self.context, ct))

    def _load(self, data: bytes) -> Any:
        return _core.load_ciphertext(self.context, data)


class Server:
    """The model owner's compute: a program and evaluation keys, ciphertexts in and out.

    ``encode_on_demand``: encode the map layers' weight plaintexts in every run instead of once
    here, for programs whose plaintexts would not fit in memory (``Program.cost()`` gives their
    bytes); the outputs are the same, each run takes longer."""

    def __init__(
        self,
        program_bytes: bytes,
        evaluation_keys_bytes: bytes,
        *,
        threads: int = 1,
        encode_on_demand: bool = False,
        signature: bytes | None = None,
        owner_key: str | None = None,
    ):
        # A program file from another party: with the owner's verification key, the server runs
        # it only if `signature` is the owner's signature of exactly these bytes.
        _check_signed(program_bytes, signature, owner_key, "program file")
        # The C++ server (fheprune/runtime/server.hpp) does every check: the bundle is an
        # evaluation-key bundle made under the program's parameters by one client, with every
        # rotation key the program uses; each run checks its inputs.
        self._server = _core.Server(
            program_bytes,
            evaluation_keys_bytes,
            threads=threads,
            encode_on_demand=encode_on_demand,
        )
        self.last_stats: dict[str, Any] = {}

    @functools.cached_property
    def context(self) -> Any:
        """A context of the program's parameters, for callers that (de)serialize ciphertexts
        themselves (the server's own stays inside it; the server loads and saves without it)."""
        return _core.Context(self._server.parameters)

    @property
    def threads(self) -> int:
        """Engine threads each run uses."""
        return int(self._server.threads)

    def set_threads(self, threads: int) -> None:
        """Engine threads for the following runs (waits for a run in flight): one server times
        a program at several thread counts with one copy of its plaintexts."""
        self._server.set_threads(threads)

    @property
    def plaintext_bytes(self) -> int:
        """Bytes of the plaintexts encoded at set-up."""
        return int(self._server.plaintext_bytes)

    @property
    def plaintext_count(self) -> int:
        return int(self._server.plaintext_count)

    @property
    def program_fingerprint(self) -> str:
        """BLAKE2b-256 of the program file, hex (compare with ``Program.fingerprint``)."""
        return bytes(self._server.program_fingerprint).hex()

    @classmethod
    def from_files(
        cls,
        program: str | os.PathLike[str],
        keys: str | os.PathLike[str],
        *,
        threads: int = 1,
        encode_on_demand: bool = False,
    ) -> Server:
        return cls(
            Path(program).read_bytes(),
            Path(keys).read_bytes(),
            threads=threads,
            encode_on_demand=encode_on_demand,
        )

    def run(self, inputs: Sequence[Any]) -> list[Any | None]:
        """Input ciphertexts (input_ciphertexts() per group of samples) -> output ciphertexts
        (None = known zero)."""
        outputs, stats = self._server.run(_ciphertexts(inputs, "Server.run", allow_none=False))
        self.last_stats = stats
        return list(outputs)

    def load_ciphertext(self, data: bytes) -> Any:
        """A client's serialized input ciphertext, checked like a run input."""
        return self._server.load_ciphertext(data)

    def run_folder(self, inputs: str | os.PathLike[str], outputs: str | os.PathLike[str]) -> None:
        cts = _load_cts(self.load_ciphertext, Path(inputs))
        empty = [i for i, c in enumerate(cts) if c is None]
        if empty:
            raise _core.SerializationError(
                f"input ciphertext file {empty[0]:06d}.ct in {inputs} is empty"
            )
        _save_cts(self._server.save_ciphertext, self.run(cts), Path(outputs))


def _save_cts(save: Callable[[Any], bytes], cts: Sequence[Any | None], folder: Path) -> list[Path]:
    """One file per ciphertext (an empty file for a known-zero output), written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, c in enumerate(cts):
        path = folder / f"{i:06d}.ct"
        atomic_write_bytes(path, b"" if c is None else bytes(save(c)))
        paths.append(path)
    return paths


def _load_cts(load: Callable[[bytes], Any], folder: Path) -> list[Any | None]:
    """The folder's ciphertexts in file order (None for an empty file); a file that does not
    load is named in the error, which keeps its type."""
    paths = sorted(folder.glob("*.ct"))
    if not paths:
        raise MissingFileError(f"no .ct files in {folder}")
    out: list[Any | None] = []
    for path in paths:
        data = path.read_bytes()
        try:
            out.append(load(data) if data else None)
        except _core.FheError as exc:
            raise type(exc)(f"{path}: {exc}") from exc
    return out
