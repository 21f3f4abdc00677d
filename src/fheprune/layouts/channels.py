"""Multi-channel convolution layout (Gazelle / CHET style): THE definition of its units.

A feature map of C channels is cut into *channel blocks*. A block is a ``grid_h x grid_w`` grid
of slots (powers of two); a ciphertext holds ``lanes = slots / (grid_h * grid_w)`` blocks, one
channel each (``phases`` channels each when phase-packed, below). Channel ``c`` sits in
ciphertext ``ct(c)``, block ``lane(c)`` and phase ``phase(c)``; pixel ``(y, x)`` of a channel
sits at offset ``(origin_y + y*dilation) * grid_w + origin_x + x*dilation`` inside its block,
shifted by the phase offset of its channel, so the slot is ``lane(c) * block +
phase_offset(c) + offset``.

* The client writes the first layer's input with its padding as zeros around ``origin``; a
  channel count below ``lanes`` is replicated across the free blocks (``replicas``).
* A stride or an average pool keeps outputs where they are: the result is valid on a coarser
  grid (``dilation`` grows) and the next layer's kernel offsets are dilated to match.
* Group-interleaved encoding (SpENCNN's HE-group convolution with ``groups = G``): block
  ``lane`` of every ciphertext holds a channel of group ``lane mod G``, so a grouped
  convolution only ever meets channel offsets that are multiples of G.
* Phase packing ("multiplexed" packing, ``phases = p*p``): a map of dilation ``d`` holds data at
  one slot of every ``d x d``, so ``p*p`` channels (``p`` divides ``d``) can share a block, each
  at its own *phase* ``(ey, ex)`` in ``{0..p-1}^2``, i.e. at slot offset ``phase_offset = ey *
  grid_w + ex``. Per group, a ciphertext holds ``cap = (lanes / G) * phases`` channels: with
  ``u`` the channel's index in its group, ``ct = u // cap``, ``v = u % cap``, ``lane = g + G *
  (v % (lanes / G))`` and ``phase = v // (lanes / G)`` (lanes fill first, then phases). *Why*:
  fewer ciphertexts for everything after the convolution that writes the map (squares, window
  sums, the FC layer's inputs); a convolution writes its outputs wherever it likes (its weights
  are per-slot vectors), so the phases are free to produce. *When* (:func:`plan_layout`): on a
  convolution's output of dilation ``d > 1`` that no later convolution reads (the next weighted
  layer is a Linear after a Flatten: a convolution reading phased inputs would need one inner
  rotation per phase), when that lowers its ciphertext count and every term shift of the
  convolution names one (channel offset, kernel position, phase) (below); ``p = d``, else the
  largest divisor of ``d`` for which that holds. Pools and activations keep the packing: a
  window sum of kernel ``k`` adds only multiples of the dilation to a valid position, so each
  phase sums its own pixels and the phases stay exact (``p`` still divides the new dilation
  ``k*d``). The client's input is never phased.

Convolution ``C_in -> C_out`` with ``f x f`` kernels (runtime: a map of diagonals) is
``y_o = sum_i sum_(p, r) w[o, i, p, r] * rot(x_i, p_offset + r * block)``, evaluated as two
levels of rotations: the inner rotation by ``p_offset`` of each input (hoisted, shared by all
outputs) and the outer rotation by ``r * block`` of each output's partial sum. Kernel position
``p = 0``, channel offset ``r = 0`` and fc diagonal ``k = 0`` need no rotation at all.

* **position unit** ``(input ciphertext i, kernel position p)``: every weight that reads input
  ciphertext ``i`` at position ``p``, for all outputs (SpENCNN sub-block, Artemis positional).
  When it is zero the *inner* rotation by ``p_offset`` of input ``i`` is never computed.
* **diagonal unit** ``(output ciphertext o, input ciphertext i, channel offset r)``: the weights
  from block ``(lane + r) mod lanes`` of input ``i`` into block ``lane`` of output ``o``, all
  kernel positions and all phases (Artemis diagonal). When it is zero for every input of output
  ``o``, the *outer* rotations by ``r * block - phase_offset`` of output ``o`` (one per phase
  of its channels: the phase-shifted giant steps) are never computed.

With phases a weight's term shift is ``(r * block + p_offset + phase_offset_in -
phase_offset_out) mod slots`` (:func:`conv_term_shifts`); the plan gives phases only where
these shifts are all distinct, so every term still belongs to exactly one unit of each kind.

Fully connected layers see a vector layout (:class:`VectorPacking`: feature -> ciphertext, slot)
and are a map of generalized diagonals too: the **fc diagonal unit** ``(input ciphertext i,
k = (slot_in - slot_out) mod slots)`` (SpENCNN's FC sub-blocks). The lowering, the pruning
methods and the cost model all take their units from here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from torch import nn

from fheprune.errors import InputError

__all__ = [
    "ChannelPacking",
    "LayoutError",
    "LayoutPlan",
    "PlannedLayer",
    "UnitKind",
    "VectorPacking",
    "conv_term_shifts",
    "conv_units",
    "fc_units",
    "layer_units",
    "plan_layout",
    "unit_count",
]

IntArray = NDArray[np.int64]
UnitKind = Literal["position", "diagonal"]


class LayoutError(InputError):
    """A network or shape the multi-channel layout cannot hold (the message says what fits)."""


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class ChannelPacking:
    """Where every (channel, y, x) of a feature map lives: see the module docstring."""

    channels: int
    height: int  # valid rows / columns (in units of `dilation`)
    width: int
    grid_h: int
    grid_w: int
    lanes: int  # channel blocks per ciphertext
    groups: int = 1  # group-interleaved for G groups
    dilation: int = 1
    origin: tuple[int, int] = (0, 0)
    replicas: int = 1  # > 1 only for a client-packed input with fewer channels than lanes
    phases: int = 1  # p*p channels per block, p | dilation (see the module docstring)
    shifts: tuple[int, ...] = ()  # client input only: pre-rotated copies (see `pack`)

    def __post_init__(self) -> None:
        for v in (self.grid_h, self.grid_w, self.lanes):
            if v < 1 or v & (v - 1):
                raise LayoutError(f"grid sides and lanes must be powers of two, got {v}")
        if min(self.height, self.width, self.dilation, self.replicas) < 1 or min(self.origin) < 0:
            raise LayoutError(
                f"a map needs positive sizes, dilation and replicas and a non-negative origin, "
                f"got {self.height}x{self.width}, dilation {self.dilation}, replicas "
                f"{self.replicas}, origin {self.origin}"
            )
        if self.channels < 1 or self.groups < 1 or self.channels % self.groups:
            raise LayoutError(f"{self.channels} channels cannot form {self.groups} groups")
        if self.lanes % self.groups:
            raise LayoutError(
                f"{self.groups} groups need a divisor of the {self.lanes} channel blocks per "
                f"ciphertext (HE-group convolution allows G <= G_base = {self.lanes})"
            )
        if self.replicas > 1 and (self.groups != 1 or self.channels * self.replicas != self.lanes):
            raise LayoutError("replicas must fill exactly one ciphertext of an ungrouped input")
        p = math.isqrt(self.phases) if self.phases >= 1 else 0
        if p < 1 or p * p != self.phases or self.dilation % p:
            raise LayoutError(
                f"phases must be a square p*p with p dividing the dilation {self.dilation}, "
                f"got {self.phases}"
            )
        if self.phases > 1 and self.replicas > 1:
            raise LayoutError("a replicated input cannot be phase-packed")
        if self.shifts and (
            self.phases > 1
            or not all(isinstance(k, int | np.integer) for k in self.shifts)
            or len(set(self.shifts)) != len(self.shifts)
            or not all(0 <= int(k) < self.slots for k in self.shifts)
        ):
            raise LayoutError(
                f"client shifts must be distinct slot offsets in [0, {self.slots}) of an "
                f"unphased input, got {self.shifts}"
            )
        last_y = self.origin[0] + (p - 1) + (self.height - 1) * self.dilation
        last_x = self.origin[1] + (p - 1) + (self.width - 1) * self.dilation
        if last_y >= self.grid_h or last_x >= self.grid_w:
            raise LayoutError(
                f"a {self.height}x{self.width} map (dilation {self.dilation}, origin "
                f"{self.origin}, {self.phases} phases) does not fit a "
                f"{self.grid_h}x{self.grid_w} block"
            )

    @property
    def block(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def slots(self) -> int:
        return self.block * self.lanes

    @property
    def per_group_lanes(self) -> int:
        return self.lanes // self.groups

    @property
    def phase_side(self) -> int:
        """``p`` of ``phases = p*p``: phase offsets are ``ey * grid_w + ex``, ``ey, ex < p``."""
        return math.isqrt(self.phases)

    @property
    def capacity(self) -> int:
        """Channels of one group per ciphertext: ``(lanes / groups) * phases``."""
        return self.per_group_lanes * self.phases

    @property
    def ciphertexts(self) -> int:
        per_group = self.channels // self.groups
        return max(1, math.ceil(per_group / self.capacity))

    @property
    def client_ciphertexts(self) -> int:
        """Ciphertexts the client sends: one per (ciphertext, shift) with client shifts."""
        return self.ciphertexts * max(1, len(self.shifts))

    def _locate(self, channels: IntArray | Sequence[int]) -> tuple[IntArray, IntArray, IntArray]:
        c = np.asarray(channels, dtype=np.int64)
        per_group = self.channels // self.groups
        g, u = c // per_group, c % per_group
        ct, v = u // self.capacity, u % self.capacity
        lane = g + self.groups * (v % self.per_group_lanes)
        return ct, lane, v // self.per_group_lanes

    def place(self, channels: IntArray | Sequence[int]) -> tuple[IntArray, IntArray]:
        """(ciphertext, block) of each channel (the first replica when replicated)."""
        ct, lane, _ = self._locate(channels)
        return ct, lane

    def phase(self, channels: IntArray | Sequence[int]) -> IntArray:
        """Phase index ``0..phases-1`` of each channel (0 without phase packing)."""
        return self._locate(channels)[2]

    def phase_offsets(self) -> IntArray:
        """Slot offset ``(phase // p) * grid_w + phase % p`` of every phase ``0..phases-1``."""
        ph = np.arange(self.phases, dtype=np.int64)
        p = self.phase_side
        return np.asarray((ph // p) * self.grid_w + ph % p, dtype=np.int64)

    def phase_offset(self, channels: IntArray | Sequence[int]) -> IntArray:
        """Slot offset of each channel's phase inside its block (added to :meth:`offset`)."""
        return self.phase_offsets()[self.phase(channels)]

    def offset(self, y: IntArray | int, x: IntArray | int) -> IntArray:
        """Slot offset of pixel (y, x) inside its channel block."""
        yy = self.origin[0] + np.asarray(y, dtype=np.int64) * self.dilation
        xx = self.origin[1] + np.asarray(x, dtype=np.int64) * self.dilation
        return np.asarray(yy * self.grid_w + xx, dtype=np.int64)

    def valid_mask(self) -> NDArray[np.bool_]:
        """[ciphertexts, slots]: True where a real (channel, y, x) value lives."""
        out = np.zeros((self.ciphertexts, self.slots), dtype=bool)
        ys, xs = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        off = self.offset(ys.ravel(), xs.ravel())
        phase_off = self.phase_offset(np.arange(self.channels))
        for c in range(self.channels):
            for ct, lane in self._replica_places(c):
                out[ct, lane * self.block + phase_off[c] + off] = True
        return out

    def _replica_places(self, c: int) -> list[tuple[int, int]]:
        ct, lane = self.place([c])
        return [(int(ct[0]), int(lane[0]) + r * self.channels) for r in range(self.replicas)]

    def pack(self, images: NDArray[np.float64]) -> NDArray[np.float64]:
        """Client side: [batch, C, H, W] (dilation 1) -> [batch, client_ciphertexts, slots].

        With client ``shifts`` ciphertext ``ct * len(shifts) + j`` holds ciphertext ``ct``
        rotated left by ``shifts[j]``: the first convolution's inner rotations, done by the
        client on its cleartext for free (each kernel position costs it one more ciphertext
        to encrypt and send instead).
        """
        x = np.asarray(images, dtype=np.float64)
        if x.ndim != 4 or x.shape[1:] != (self.channels, self.height, self.width):
            raise LayoutError(
                f"expected inputs shaped [batch, {self.channels}, {self.height}, {self.width}], "
                f"got {list(x.shape)}"
            )
        out = np.zeros((x.shape[0], self.ciphertexts, self.slots))
        ys, xs = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        off = self.offset(ys.ravel(), xs.ravel())
        phase_off = self.phase_offset(np.arange(self.channels))  # 0: inputs are never phased
        for c in range(self.channels):
            for ct, lane in self._replica_places(c):
                out[:, ct, lane * self.block + phase_off[c] + off] = x[:, c].reshape(x.shape[0], -1)
        if not self.shifts:
            return out
        copies = [np.roll(out, -int(k), axis=2) for k in self.shifts]
        return np.stack(copies, axis=2).reshape(x.shape[0], self.client_ciphertexts, self.slots)

    def to_dict(self) -> dict[str, int | list[int]]:
        """Plain fields (JSON-ready): the client's copy of the input layout."""
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "grid_h": self.grid_h,
            "grid_w": self.grid_w,
            "lanes": self.lanes,
            "groups": self.groups,
            "dilation": self.dilation,
            "origin": list(self.origin),
            "replicas": self.replicas,
            "phases": self.phases,
            "shifts": [int(k) for k in self.shifts],
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ChannelPacking:
        """The inverse of :meth:`to_dict`; every field is checked by the constructor
        (``phases`` may be absent: 1, as written before phase packing existed)."""
        origin = d["origin"]
        if not isinstance(origin, list) or len(origin) != 2:
            raise LayoutError(f"origin must be a list of two integers, got {origin!r}")

        def num(key: str, default: int | None = None) -> int:
            v = d[key] if default is None else d.get(key, default)
            if not isinstance(v, int) or isinstance(v, bool):
                raise LayoutError(f"{key} must be an integer, got {v!r}")
            return v

        shifts = d.get("shifts", [])
        if not isinstance(shifts, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) for k in shifts
        ):
            raise LayoutError(f"shifts must be a list of integers, got {shifts!r}")
        return cls(
            num("channels"),
            num("height"),
            num("width"),
            num("grid_h"),
            num("grid_w"),
            num("lanes"),
            groups=num("groups"),
            dilation=num("dilation"),
            origin=(int(origin[0]), int(origin[1])),
            replicas=num("replicas"),
            phases=num("phases", 1),
            shifts=tuple(shifts),
        )

    def flatten(self) -> VectorPacking:
        """The vector layout of ``nn.Flatten`` (feature c*H*W + y*W + x) over this map."""
        c, y, x = np.meshgrid(
            np.arange(self.channels),
            np.arange(self.height),
            np.arange(self.width),
            indexing="ij",
        )
        ct, lane = self.place(c.ravel())
        slot = lane * self.block + self.phase_offset(c.ravel()) + self.offset(y.ravel(), x.ravel())
        return VectorPacking(
            ct.astype(np.int64), slot.astype(np.int64), self.slots, self.ciphertexts
        )


@dataclass(frozen=True, eq=False)
class VectorPacking:
    """A vector layout: feature f sits in ciphertext ``ct[f]`` at slot ``slot[f]``."""

    ct: IntArray
    slot: IntArray
    slots: int
    ciphertexts: int

    @property
    def features(self) -> int:
        return int(self.ct.shape[0])

    @staticmethod
    def spread(features: int, slots: int) -> VectorPacking:
        """Output layout of an FC layer: feature f at slot f * slots / next_pow2(features)."""
        if features > slots:
            raise LayoutError(f"{features} outputs do not fit {slots} slots in one ciphertext")
        stride = slots // _pow2_at_least(features)
        f = np.arange(features, dtype=np.int64)
        return VectorPacking(np.zeros(features, dtype=np.int64), f * stride, slots, 1)


def _fc_diagonals(inputs: VectorPacking, outputs: VectorPacking) -> int:
    """Generalized diagonals (plaintext products) of a dense layer between two layouts."""
    k = (inputs.slot[None, :] - outputs.slot[:, None]) % inputs.slots
    key = (outputs.ct[:, None] * inputs.ciphertexts + inputs.ct[None, :]) * inputs.slots + k
    return int(np.unique(key).size)


def _fc_outputs(inputs: VectorPacking, features: int, slots: int) -> VectorPacking:
    """Where an FC layer writes its outputs: the spread layout, or the slots of its own input
    pattern when that needs fewer diagonals.

    A flattened phase-packed map puts its features on a sparse lattice (lane * block + phase
    offset); outputs spread evenly meet it at many distinct shifts (LeNet-like's fc1: 128 per
    input ciphertext), outputs written on the same lattice at few (72). The choice depends on
    the shapes only, never on the weights, so pruning sees the layout the compiler builds.
    """
    spread = VectorPacking.spread(features, slots)
    own = inputs.slot[inputs.ct == 0]  # in feature order: a flatten fills lanes, then phases
    if own.size < features:
        return spread
    same = VectorPacking(np.zeros(features, dtype=np.int64), own[:features].copy(), slots, 1)
    return same if _fc_diagonals(inputs, same) < _fc_diagonals(inputs, spread) else spread


@dataclass
class PlannedLayer:
    """One step of the network on the layout.

    ``kind``: "conv" (nn.Conv2d), "fc" (nn.Linear), "pool" (nn.AvgPool2d: a window sum by
    rotate-and-add, its 1/k^2 folded into the next linear layer), "act" (polynomial
    activation, layout unchanged) or "flatten" (layout change only, no operation).
    """

    name: str
    kind: Literal["conv", "fc", "pool", "act", "flatten"]
    module: nn.Module
    inputs: ChannelPacking | VectorPacking
    outputs: ChannelPacking | VectorPacking


@dataclass
class LayoutPlan:
    slots: int
    layers: OrderedDict[str, PlannedLayer] = field(default_factory=OrderedDict)

    @property
    def input(self) -> ChannelPacking:
        first = next(iter(self.layers.values()))
        assert isinstance(first.inputs, ChannelPacking)
        return first.inputs

    @property
    def output(self) -> VectorPacking:
        last = next(reversed(self.layers.values()))
        assert isinstance(last.outputs, VectorPacking)
        return last.outputs


def _conv_groups_of_next(children: list[tuple[str, nn.Module]], start: int) -> int:
    """Groups of the next grouped conv reading this map (its input must be interleaved)."""
    for _, m in children[start:]:
        if isinstance(m, nn.Conv2d):
            return int(m.groups)
        if isinstance(m, (nn.Linear, nn.Flatten)):
            return 1
    return 1


def _flattened_before_conv(children: list[tuple[str, nn.Module]], start: int) -> bool:
    """True when the map reaches a Flatten (then Linear layers) before any Conv2d reads it."""
    for _, m in children[start:]:
        if isinstance(m, nn.Conv2d):
            return False
        if isinstance(m, (nn.Linear, nn.Flatten)):
            return True
    return False


def _divisors_desc(n: int) -> list[int]:
    return [p for p in range(n, 0, -1) if n % p == 0]


def _phase_packed(inp: ChannelPacking, out: ChannelPacking, kh: int, kw: int) -> ChannelPacking:
    """``out`` with the phase packing that needs the fewest ciphertexts (``out`` itself when
    none saves one): ``p*p`` phases, ``p`` dividing the dilation (larger ``p`` first), whose
    offsets fit the block and keep every term shift of the convolution distinct."""
    best = out
    for p in _divisors_desc(out.dilation)[:-1]:  # every divisor but 1
        try:
            candidate = replace(out, phases=p * p)
        except LayoutError:  # the phase offsets run off the block
            continue
        if candidate.ciphertexts >= best.ciphertexts:
            continue
        shifts = conv_term_shifts(inp, candidate, kh, kw)
        if np.unique(shifts).size == shifts.size:
            best = candidate
    return best


def plan_layout(
    model: nn.Module,
    slots: int,
    input_shape: tuple[int, int, int],
    *,
    phases: bool = True,
) -> LayoutPlan:
    """Lay a conv chain (Conv2d, AvgPool2d, activations, Flatten, Linear) out on ``slots``.

    The block grid is the smallest power-of-two square holding the padded input; every later
    map keeps it (strides and pools dilate instead of moving data). Padding is supported on
    the first convolution only (the client writes the zeros). ``phases``: phase-pack the
    outputs of convolutions where it pays (see the module docstring); ``False`` never does.
    """
    if not isinstance(model, nn.Sequential):
        raise LayoutError(
            f"the conv layout takes an nn.Sequential chain, got {type(model).__name__}"
        )
    from fheprune.models.activations import PolyActivation

    channels, height, width = input_shape
    children = [(n, m) for n, m in model.named_children() if not isinstance(m, nn.Identity)]
    first_conv = next((m for _, m in children if isinstance(m, nn.Conv2d)), None)
    pad = 0
    if isinstance(first_conv, nn.Conv2d):
        if isinstance(first_conv.padding, str):
            raise LayoutError(
                f"give the first convolution's padding as numbers, not {first_conv.padding!r}"
            )
        pad = int(first_conv.padding[0])
    grid = _pow2_at_least(max(height, width) + 2 * pad)
    if grid * grid > slots:
        raise LayoutError(
            f"a {height + 2 * pad}x{width + 2 * pad} padded image needs {grid * grid} slots per "
            f"channel block; the ring has {slots}. Choose a larger ring degree"
        )
    lanes = slots // (grid * grid)
    groups = _conv_groups_of_next(children, 0)
    replicas = (
        lanes // channels if channels < lanes and lanes % channels == 0 and groups == 1 else 1
    )
    current: ChannelPacking | VectorPacking = ChannelPacking(
        channels,
        height,
        width,
        grid,
        grid,
        lanes,
        groups=groups,
        origin=(pad, pad),
        replicas=replicas,
    )
    plan = LayoutPlan(slots)
    seen_conv = False
    for index, (name, m) in enumerate(children):
        if isinstance(m, nn.Conv2d):
            if not isinstance(current, ChannelPacking):
                raise LayoutError(f"conv '{name}' after a flatten is not supported")
            if m.in_channels != current.channels:
                raise LayoutError(
                    f"conv '{name}' takes {m.in_channels} channels, got {current.channels}"
                )
            kh, kw = m.kernel_size
            sh, sw = m.stride
            if isinstance(m.padding, str):
                raise LayoutError(f"conv '{name}': give the padding as numbers, not {m.padding!r}")
            ph, pw = (int(v) for v in m.padding)
            if (
                kh != kw
                or sh != sw
                or ph != pw
                or m.dilation != (1, 1)
                or m.padding_mode != "zeros"
            ):
                raise LayoutError(
                    f"conv '{name}': square kernels, strides and paddings, no dilation, zero "
                    "padding only"
                )
            if seen_conv and ph:
                raise LayoutError(
                    f"conv '{name}': padding is supported on the first convolution only"
                )
            if m.groups > 1 and m.groups != current.groups:
                raise LayoutError(
                    f"conv '{name}' has {m.groups} groups but its input is laid out for "
                    f"{current.groups}"
                )
            seen_conv = True
            d = current.dilation
            out_h = (current.height + 2 * ph - kh) // sh + 1
            out_w = (current.width + 2 * pw - kw) // sw + 1
            if out_h < 1 or out_w < 1:
                raise LayoutError(f"conv '{name}' leaves no output pixel")
            origin = (current.origin[0] - ph * d, current.origin[1] - pw * d)
            out = ChannelPacking(
                m.out_channels,
                out_h,
                out_w,
                current.grid_h,
                current.grid_w,
                current.lanes,
                groups=int(m.groups) if m.groups > 1 else _conv_groups_of_next(children, index + 1),
                dilation=d * sh,
                origin=origin,
            )
            if phases and out.dilation > 1 and _flattened_before_conv(children, index + 1):
                out = _phase_packed(current, out, kh, kw)
            plan.layers[name] = PlannedLayer(name, "conv", m, current, out)
            current = out
        elif isinstance(m, nn.AvgPool2d):
            if not isinstance(current, ChannelPacking):
                raise LayoutError(f"pool '{name}' after a flatten is not supported")

            def square(v: object) -> int | None:
                if isinstance(v, int):
                    return v
                if isinstance(v, tuple | list) and len(v) == 2 and v[0] == v[1]:
                    return int(v[0])
                return None

            k, s, p = square(m.kernel_size), square(m.stride), square(m.padding)
            if k is None or p or s != k or m.ceil_mode or m.divisor_override is not None:
                raise LayoutError(
                    f"pool '{name}': average pooling with a square kernel, stride = kernel, no "
                    "padding and no divisor_override only"
                )
            out = replace(
                current,
                height=current.height // k,
                width=current.width // k,
                dilation=current.dilation * k,
            )
            plan.layers[name] = PlannedLayer(name, "pool", m, current, out)
            current = out
        elif isinstance(m, PolyActivation):
            plan.layers[name] = PlannedLayer(name, "act", m, current, current)
        elif isinstance(m, nn.Flatten):
            if not isinstance(current, ChannelPacking):
                raise LayoutError(f"flatten '{name}' of a vector")
            out_vec = current.flatten()
            plan.layers[name] = PlannedLayer(name, "flatten", m, current, out_vec)
            current = out_vec
        elif isinstance(m, nn.Linear):
            if not isinstance(current, VectorPacking):
                raise LayoutError(f"linear '{name}' needs a flatten before it")
            if m.in_features != current.features:
                raise LayoutError(
                    f"linear '{name}' takes {m.in_features} features, got {current.features}"
                )
            out_vec = _fc_outputs(current, m.out_features, slots)
            plan.layers[name] = PlannedLayer(name, "fc", m, current, out_vec)
            current = out_vec
        else:
            raise LayoutError(
                f"layer '{name}' ({type(m).__name__}) is not supported by the conv layout; "
                "supported: Conv2d, AvgPool2d, polynomial activations, Flatten, Linear"
            )
    if not isinstance(current, VectorPacking):
        raise LayoutError("the network must end in a Linear layer (logits in a vector layout)")
    return plan


# ---------------------------------------------------------------------------------------
# Units


def _conv_in_channels(weight_shape: Sequence[int], groups: int) -> IntArray:
    """[C_out, C_in/groups] -> the real input channel of each weight column."""
    c_out, c_in_g = int(weight_shape[0]), int(weight_shape[1])
    per_out = c_out // groups
    g = np.arange(c_out) // per_out
    return g[:, None] * c_in_g + np.arange(c_in_g)[None, :]


def conv_term_shifts(inputs: ChannelPacking, outputs: ChannelPacking, kh: int, kw: int) -> IntArray:
    """Term shift of every (channel offset r, kernel position p, input phase, output phase):
    ``(r * block + p_offset + phase_offset_in - phase_offset_out) mod slots``, shaped
    ``[lanes, kh*kw, inputs.phases, outputs.phases]``, ``p_offset = (dy * grid_w + dx) *
    dilation_in`` for ``p = dy * kw + dx``. Output pixel ``(y, x)`` of an output channel reads
    its input pixel ``(y*stride + dy, x*stride + dx)`` at exactly this shift."""
    dy, dx = np.divmod(np.arange(kh * kw, dtype=np.int64), kw)
    p_offset = (dy * inputs.grid_w + dx) * inputs.dilation
    r = np.arange(inputs.lanes, dtype=np.int64) * inputs.block
    shift = (
        r[:, None, None, None]
        + p_offset[None, :, None, None]
        + inputs.phase_offsets()[None, None, :, None]
        - outputs.phase_offsets()[None, None, None, :]
    )
    return np.asarray(shift % inputs.slots, dtype=np.int64)


def conv_units(
    weight_shape: Sequence[int],
    groups: int,
    inputs: ChannelPacking,
    outputs: ChannelPacking,
    kind: UnitKind,
) -> IntArray:
    """Unit id of every weight of a ``Conv2d`` (same shape as the weight).

    "position": ``ct_in * f*f + p``; "diagonal": ``(ct_out * n_in + ct_in) * lanes + r``.
    """
    c_out, _, kh, kw = (int(v) for v in weight_shape)
    ci = _conv_in_channels(weight_shape, groups)  # [C_out, C_in/g]
    ct_in, lane_in = inputs.place(ci.ravel())
    ct_in, lane_in = ct_in.reshape(ci.shape), lane_in.reshape(ci.shape)
    if kind == "position":
        p = np.arange(kh * kw).reshape(1, 1, kh, kw)
        return np.asarray(ct_in[:, :, None, None] * (kh * kw) + p, dtype=np.int64)
    ct_out, lane_out = outputs.place(np.arange(c_out))
    if inputs.replicas > 1:  # each output block reads the nearest replica
        r = (lane_in - lane_out[:, None]) % inputs.channels
    else:
        r = (lane_in - lane_out[:, None]) % inputs.lanes
    unit = (ct_out[:, None] * inputs.ciphertexts + ct_in) * inputs.lanes + r
    return np.broadcast_to(unit[:, :, None, None], (c_out, ci.shape[1], kh, kw)).astype(np.int64)


def fc_units(out_features: int, inputs: VectorPacking, outputs: VectorPacking) -> IntArray:
    """Unit id ``ct_in * slots + k`` of every weight [out, in] of a Linear layer."""
    k = (inputs.slot[None, :] - outputs.slot[:out_features, None]) % inputs.slots
    return np.asarray(inputs.ct[None, :] * inputs.slots + k, dtype=np.int64)


def layer_units(plan: LayoutPlan, name: str, kind: UnitKind = "position") -> IntArray:
    """Unit ids for the weight of planned layer ``name`` (FC layers: always fc diagonals)."""
    layer = plan.layers[name]
    m = layer.module
    if isinstance(m, nn.Conv2d):
        assert isinstance(layer.inputs, ChannelPacking) and isinstance(
            layer.outputs, ChannelPacking
        )
        return conv_units(tuple(m.weight.shape), int(m.groups), layer.inputs, layer.outputs, kind)
    if isinstance(m, nn.Linear):
        assert isinstance(layer.inputs, VectorPacking) and isinstance(layer.outputs, VectorPacking)
        return fc_units(m.out_features, layer.inputs, layer.outputs)
    raise LayoutError(f"layer '{name}' has no weights")


def unit_count(units: IntArray) -> int:
    """Number of distinct units. Ids are not dense (fc ids go up to ciphertexts x slots, grouped
    diagonal ids skip offsets that are not multiples of G): renumber before indexing with them."""
    return int(np.unique(units).size)
