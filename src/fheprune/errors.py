"""The package's exceptions: one root, so a caller can catch everything fheprune refuses.

::

    FhepruneError                       every refusal of the package
    ├── InputError (ValueError)         a bad value: shapes, names, ranges, files
    │   ├── fheprune._core.FheError     the engine (ParameterError, InsecureParametersError,
    │   │                               LevelError, ScaleError, MissingKeyError, MismatchError,
    │   │                               EncodingError, SerializationError, CompileError)
    │   ├── SpecError, LayoutError, MaskError, PermuteError, CheckpointError,
    │   │   PrunedModelFormatError, DemoConfigError, UnknownNameError (also a KeyError)
    ├── InputTypeError (TypeError)      an argument of the wrong type
    ├── DataError                       datasets: missing, corrupt, checksum, download
    ├── MissingFileError (FileNotFoundError)
    └── TrainingDivergedError (RuntimeError)

Each class also derives from the built-in exception it refines, so code that catches
``ValueError`` or ``TypeError`` keeps working. This module imports nothing from the package:
the compiled engine (``fheprune._core``) imports it to root its own errors here.
"""

from __future__ import annotations

__all__ = [
    "FhepruneError",
    "InputError",
    "InputTypeError",
    "MissingFileError",
    "UnknownNameError",
]


class FhepruneError(Exception):
    """Root of every exception fheprune raises on purpose."""


class InputError(FhepruneError, ValueError):
    """A value the package cannot use; the message says what was wrong and what would work."""


class InputTypeError(FhepruneError, TypeError):
    """An argument of the wrong type; the message names the expected type."""


class MissingFileError(FhepruneError, FileNotFoundError):
    """A file or folder the package needs is not there."""


class UnknownNameError(InputError, KeyError):
    """A name (preset, layer, dataset field) that is not one of the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
