"""A deployable bundle: what a model owner hands to a server and to its clients.

::

    bundle/
      program.bin    the compiled program, weights included: for the server only
      client.json    the client spec (shape, parameters, program fingerprint): for clients
      program.sig    optional: the owner's Ed25519 signature of program.bin
      client.sig     optional: the owner's signature of client.json

``fheprune run`` writes one bundle per variant (dense, pruned); ``fheprune serve BUNDLE`` serves
one; a client needs only ``client.json`` (and the owner's verification key, to check it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fheprune import _core
from fheprune.errors import InputError, MissingFileError
from fheprune.fileio import atomic_write_bytes

from .compiler import CompiledModel
from .roles import ClientSpec

__all__ = ["Bundle", "BundleError", "load_bundle", "save_bundle"]

PROGRAM_FILE = "program.bin"
SPEC_FILE = "client.json"
PROGRAM_SIGNATURE = "program.sig"
SPEC_SIGNATURE = "client.sig"


class BundleError(InputError):
    """A bundle whose files do not belong together (or are not there)."""


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the program file's bytes and the parsed client spec."""

    folder: Path
    program: bytes
    spec: ClientSpec
    spec_text: str

    @property
    def program_fingerprint(self) -> str:
        """BLAKE2b-256 of the program file (hex), equal to ``spec.program_fingerprint``."""
        return str(self.spec.program_fingerprint)


def save_bundle(
    compiled: CompiledModel, folder: str | os.PathLike[str], *, signing_key: Any = None
) -> Path:
    """Write ``compiled`` as a bundle (each file atomically); with the owner's
    ``SigningKey``, also the signatures a server and clients can check."""
    target = Path(folder)
    program = bytes(compiled.program.save())
    spec_text = ClientSpec.from_compiled(compiled).to_json()
    files: dict[str, bytes] = {PROGRAM_FILE: program, SPEC_FILE: spec_text.encode()}
    if signing_key is not None:
        files[PROGRAM_SIGNATURE] = bytes(signing_key.sign(program))
        files[SPEC_SIGNATURE] = bytes(signing_key.sign(spec_text.encode()))
    for name, data in files.items():
        atomic_write_bytes(target / name, data)
    return target


def load_bundle(folder: str | os.PathLike[str], *, owner_key: str | None = None) -> Bundle:
    """Read and check a bundle: both files present, the spec valid, the spec's fingerprint
    that of the program file; with the owner's verification key (hex), both signatures."""
    root = Path(folder)
    if not root.is_dir():
        raise MissingFileError(f"bundle folder {root} does not exist (fheprune run writes one)")
    paths = {name: root / name for name in (PROGRAM_FILE, SPEC_FILE)}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise MissingFileError(f"bundle {root} lacks {', '.join(missing)}")
    program = paths[PROGRAM_FILE].read_bytes()
    spec_text = paths[SPEC_FILE].read_text(encoding="utf-8", errors="strict")
    if owner_key is not None:
        for name, data in ((PROGRAM_FILE, program), (SPEC_FILE, spec_text.encode())):
            signature = root / (PROGRAM_SIGNATURE if name == PROGRAM_FILE else SPEC_SIGNATURE)
            if not signature.is_file():
                raise MissingFileError(f"bundle {root} has no signature for {name}")
            _core.verify_signature(data, signature.read_bytes(), owner_key, name)
    spec = ClientSpec.from_json(spec_text)
    actual = bytes(_core.Program.load(program).fingerprint).hex()
    if spec.program_fingerprint is None:
        raise BundleError(f"{paths[SPEC_FILE]} names no program fingerprint; recompile it")
    if spec.program_fingerprint != actual:
        raise BundleError(
            f"{paths[SPEC_FILE]} was made for program {spec.program_fingerprint[:16]}..., but "
            f"{paths[PROGRAM_FILE]} is {actual[:16]}...: the files come from different compiles"
        )
    return Bundle(folder=root, program=program, spec=spec, spec_text=spec_text)
