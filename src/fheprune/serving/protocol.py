"""The wire format of ciphertext batches, shared by the server and the client.

A batch is a header and one frame per ciphertext::

    b"FHPB" | u8 version (1) | u32 count | count x ( u32 length | length bytes )

integers little-endian; each frame holds one ciphertext in the engine's checked envelope
(``fheprune.ckks.save``). In responses a frame of length 0 is an output the program knows to be
zero (the client decrypts it as zeros); requests must not contain one.

:class:`FrameReader` takes a body in chunks of any size (a streamed or chunked upload), hands
out each frame as soon as it is complete, and refuses a batch larger than its limits before
reading further, so a server never holds more than the frames it will use.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any

from fheprune.errors import InputError

__all__ = [
    "MAGIC",
    "BatchFormatError",
    "FrameReader",
    "encode_batch",
    "iter_batch",
    "max_ciphertext_bytes",
]

MAGIC = b"FHPB"
VERSION = 1
_HEADER = struct.Struct("<4sBI")  # magic, version, count
_LENGTH = struct.Struct("<I")


class BatchFormatError(InputError):
    """A ciphertext batch that is truncated, oversized or not in the batch format."""


def max_ciphertext_bytes(parameters: Any) -> int:
    """The largest serialized ciphertext under ``parameters`` (``_core.Parameters``): a fresh
    one at the top level, plus the envelope. No frame of a valid batch is larger."""
    return 2 * len(parameters.chain_bits) * int(parameters.poly_degree) * 8 + 4096


def iter_batch(frames: Iterable[bytes | None], count: int) -> Iterator[bytes]:
    """The batch's bytes, header first, one frame at a time (for streamed bodies); ``None``
    stands for a known-zero output."""
    yield _HEADER.pack(MAGIC, VERSION, count)
    for frame in frames:
        data = b"" if frame is None else frame
        yield _LENGTH.pack(len(data))
        if data:
            yield data  # as it is: a ciphertext is megabytes, not copied to prefix it


def encode_batch(frames: list[bytes | None]) -> bytes:
    return b"".join(iter_batch(frames, len(frames)))


class FrameReader:
    """Incremental parser: ``feed`` chunks, collect frames; ``finish`` checks completeness.

    ``max_frames`` and ``max_frame_bytes`` bound what a sender can make the reader hold;
    ``allow_empty`` admits zero-length frames (known-zero outputs, responses only)."""

    def __init__(self, *, max_frames: int, max_frame_bytes: int, allow_empty: bool = False):
        self.max_frames = max_frames
        self.max_frame_bytes = max_frame_bytes
        self.allow_empty = allow_empty
        self.count: int | None = None
        self.frames: list[bytes | None] = []
        # Unparsed bytes are self._buffer[self._start:]; consumed bytes are dropped in one move
        # when they make up most of the buffer, not after every frame.
        self._buffer = bytearray()
        self._start = 0
        self._need: int | None = None  # length of the frame being read, once known

    def feed(self, chunk: bytes) -> None:
        if self._start and self._start * 2 >= len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += chunk
        view = memoryview(self._buffer)
        try:
            self._parse(view)
        finally:
            view.release()  # the buffer may grow again only without views on it

    def _parse(self, view: memoryview) -> None:
        while True:
            available = len(view) - self._start
            if self.count is None:
                start = bytes(view[self._start : self._start + len(MAGIC)])
                if not MAGIC.startswith(start):  # say so at once, not after 9 bytes
                    raise BatchFormatError(
                        "not a ciphertext batch (the body must start with b'FHPB'; "
                        "fheprune.serving.protocol describes the format)"
                    )
                if available < _HEADER.size:
                    return
                _magic, version, count = _HEADER.unpack_from(view, self._start)
                if version != VERSION:
                    raise BatchFormatError(f"batch format version {version}, expected {VERSION}")
                if count == 0 or count > self.max_frames:
                    raise BatchFormatError(
                        f"a batch holds 1 to {self.max_frames} ciphertexts, this one says {count}"
                    )
                self.count = count
                self._start += _HEADER.size
                continue
            if len(self.frames) == self.count:
                if available:
                    raise BatchFormatError(
                        f"{available} bytes after the batch's {self.count} ciphertexts"
                    )
                return
            if self._need is None:
                if available < _LENGTH.size:
                    return
                (length,) = _LENGTH.unpack_from(view, self._start)
                if length > self.max_frame_bytes:
                    raise BatchFormatError(
                        f"ciphertext {len(self.frames)} is {length} bytes; a ciphertext of this "
                        f"program is at most {self.max_frame_bytes}"
                    )
                if length == 0 and not self.allow_empty:
                    raise BatchFormatError(f"ciphertext {len(self.frames)} is empty")
                self._need = length
                self._start += _LENGTH.size
                continue
            if available < self._need:
                return
            end = self._start + self._need
            self.frames.append(bytes(view[self._start : end]) if self._need else None)
            self._start = end
            self._need = None

    def finish(self) -> list[bytes | None]:
        """The frames of a complete batch; BatchFormatError if the body stopped early."""
        if self.count is None:
            raise BatchFormatError("the body ended before the batch header (9 bytes)")
        if len(self.frames) != self.count:
            raise BatchFormatError(
                f"the body ended after {len(self.frames)} of {self.count} ciphertexts "
                "(truncated upload)"
            )
        return self.frames
