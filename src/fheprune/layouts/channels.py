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
* Sub-map splitting (compact packing before pools, ``factors = (k1, k2, ...)``, ``s = k1 * k2
  * ...``): the map lives on a *virtual* grid ``s`` times larger per side, cut by pixel phase
  into ``s*s`` sub-maps of the physical ``grid_h x grid_w`` block: virtual position ``(vy, vx)``
  (``origin + pixel * dilation``) goes to block offset ``(vy div s) * grid_w + vx div s`` of the
  sub-map of its residues ``(vy mod s, vx mod s)``, in ciphertext ``submap * base_ciphertexts +
  ct(c)``. The residues' digits in the mixed radix of the factors, ``a_i``, name the sub-map,
  ``a_1`` most significant (:meth:`ChannelPacking.submap_of`). A stride-1 convolution from a
  split input to a split output is still one rotation per (input sub-map, offset): output
  residue ``a`` at kernel row ``dy`` reads input residue ``(a + dy*d) mod s``, ``(a + dy*d) div
  s`` block rows further (columns alike). An average pool of kernel ``k1`` then adds the
  ``k1*k1`` sub-map groups of digit ``a_1`` (ciphertext additions, no rotation), and leaves the
  map split by ``(k2, ...)``; after the last factor the map is *compact*: pixels next to each
  other in a block ``s`` times smaller per side, ``s*s`` times more channels per ciphertext,
  instead of a dilated map that wastes all but one slot in ``s*s``. *When*
  (:func:`plan_layout`): the network opens with stride-1 convolutions and average pools; the
  client packs its image any way it likes, so its input can be split by the kernels of the
  first pools, and the plan takes the number of pools to absorb that needs the fewest
  plaintext products (the choice depends on the shapes only).

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

import itertools
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
    "block_slots",
    "conv_term_keys",
    "conv_term_shifts",
    "conv_units",
    "dense_products",
    "fc_units",
    "kernel_reads",
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
    factors: tuple[int, ...] = ()  # sub-map splitting, s = product (see the module docstring)

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
        if any(int(k) < 2 for k in self.factors) or (self.factors and self.phases > 1):
            raise LayoutError(
                f"split factors must be integers >= 2 and exclude phase packing, got "
                f"{self.factors} with {self.phases} phases"
            )
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
        if last_y >= self.grid_h * self.split or last_x >= self.grid_w * self.split:
            raise LayoutError(
                f"a {self.height}x{self.width} map (dilation {self.dilation}, origin "
                f"{self.origin}, {self.phases} phases, split {self.split}) does not fit a "
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
    def split(self) -> int:
        """``s``: the product of the split factors (1 without splitting)."""
        return math.prod(self.factors)

    def submap_of(self, ry: IntArray | int, rx: IntArray | int) -> IntArray:
        """Sub-map index of virtual residues ``(ry, rx)`` in ``[0, s)``: their digits in the
        factors' mixed radix, the first factor's digit pair most significant (so a pool by
        the first factor adds equal groups of consecutive sub-maps)."""
        ry, rx = np.asarray(ry, dtype=np.int64), np.asarray(rx, dtype=np.int64)
        index = np.zeros(np.broadcast(ry, rx).shape, dtype=np.int64)
        for k in self.factors:
            index = index * (k * k) + (ry % k) * k + rx % k
            ry, rx = ry // k, rx // k
        return index

    def residues_of(self, submap: IntArray | int) -> tuple[IntArray, IntArray]:
        """The inverse of :meth:`submap_of`: virtual residues ``(ry, rx)`` of each sub-map."""
        q = np.asarray(submap, dtype=np.int64)
        pairs = []
        for k in reversed(self.factors):
            q, d = np.divmod(q, k * k)
            pairs.append(d)
        ry, rx = np.zeros_like(q), np.zeros_like(q)
        place = 1
        for k, d in zip(self.factors, reversed(pairs), strict=True):
            ay, ax = np.divmod(d, k)
            ry, rx = ry + ay * place, rx + ax * place
            place *= k
        return ry, rx

    @property
    def base_ciphertexts(self) -> int:
        """Ciphertexts of one sub-map (all of them without splitting)."""
        per_group = self.channels // self.groups
        return max(1, math.ceil(per_group / self.capacity))

    @property
    def submaps(self) -> int:
        return self.split * self.split

    @property
    def ciphertexts(self) -> int:
        return self.base_ciphertexts * self.submaps

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
        """(ciphertext, block) of each channel (the first replica when replicated); with
        sub-maps, the ciphertext within one sub-map (add ``submap * base_ciphertexts``)."""
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
        """Slot offset of pixel (y, x) inside its channel block (of its sub-map)."""
        yy = self.origin[0] + np.asarray(y, dtype=np.int64) * self.dilation
        xx = self.origin[1] + np.asarray(x, dtype=np.int64) * self.dilation
        s = self.split
        return np.asarray((yy // s) * self.grid_w + xx // s, dtype=np.int64)

    def submap(self, y: IntArray | int, x: IntArray | int) -> IntArray:
        """Sub-map of pixel (y, x) (:meth:`submap_of` its residues; 0 without splitting)."""
        yy = self.origin[0] + np.asarray(y, dtype=np.int64) * self.dilation
        xx = self.origin[1] + np.asarray(x, dtype=np.int64) * self.dilation
        s = self.split
        return self.submap_of(yy % s, xx % s)

    def pixels(self) -> tuple[IntArray, IntArray]:
        """(ciphertext offset, slot offset) of every pixel ``y * width + x`` of a channel in
        ciphertext 0, block 0: add ``place``'s ciphertext and ``lane * block + phase offset``."""
        ys, xs = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        y, x = ys.ravel(), xs.ravel()
        return self.submap(y, x) * self.base_ciphertexts, self.offset(y, x)

    def valid_mask(self) -> NDArray[np.bool_]:
        """[ciphertexts, slots]: True where a real (channel, y, x) value lives."""
        out = np.zeros((self.ciphertexts, self.slots), dtype=bool)
        sub, off = self.pixels()
        phase_off = self.phase_offset(np.arange(self.channels))
        for c in range(self.channels):
            for ct, lane in self._replica_places(c):
                out[ct + sub, lane * self.block + phase_off[c] + off] = True
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
        sub, off = self.pixels()
        phase_off = self.phase_offset(np.arange(self.channels))  # 0: inputs are never phased
        for c in range(self.channels):
            for ct, lane in self._replica_places(c):
                pixels = x[:, c].reshape(x.shape[0], -1)
                out[:, ct + sub, lane * self.block + phase_off[c] + off] = pixels
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
            "factors": [int(k) for k in self.factors],
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ChannelPacking:
        """The inverse of :meth:`to_dict`; every field is checked by the constructor
        (``phases`` and ``factors`` may be absent: 1 and none, as written before they
        existed)."""
        origin = d["origin"]
        if not isinstance(origin, list) or len(origin) != 2:
            raise LayoutError(f"origin must be a list of two integers, got {origin!r}")

        def num(key: str, default: int | None = None) -> int:
            v = d[key] if default is None else d.get(key, default)
            if not isinstance(v, int) or isinstance(v, bool):
                raise LayoutError(f"{key} must be an integer, got {v!r}")
            return v

        factors = d.get("factors", [])
        if not isinstance(factors, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) for k in factors
        ):
            raise LayoutError(f"factors must be a list of integers, got {factors!r}")
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
            factors=tuple(factors),
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
        ct = ct + self.submap(y.ravel(), x.ravel()) * self.base_ciphertexts
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


def _square_side(v: object) -> int | None:
    """The side of a square pooling argument (an int or two equal ints); None otherwise."""
    if isinstance(v, int):
        return v
    if isinstance(v, tuple | list) and len(v) == 2 and v[0] == v[1]:
        return int(v[0])
    return None


def _pool_kernel(m: nn.Module) -> int | None:
    """The kernel of a square average pool with stride = kernel (None for anything else)."""
    if not isinstance(m, nn.AvgPool2d):
        return None
    k, stride = _square_side(m.kernel_size), _square_side(m.stride)
    return k if k is not None and k == stride else None


def _split_factors(children: list[tuple[str, nn.Module]], size: int) -> tuple[int, ...]:
    """The kernels of the average pools the client's input could be split for: walking from
    a first stride-1 convolution through stride-1 convolutions, activations and pools (stride
    = kernel >= 2), up to the first other layer or a global pool (one pixel per sub-map
    would be all a split could give it). ``size``: the input's side."""
    from fheprune.models.activations import PolyActivation

    if not children or not isinstance(children[0][1], nn.Conv2d):
        return ()
    factors: list[int] = []
    for _, m in children:
        if isinstance(m, PolyActivation):
            continue
        if isinstance(m, nn.Conv2d) and tuple(m.stride) == (1, 1):
            if isinstance(m.padding, str):
                break
            size = size + 2 * int(m.padding[0]) - int(m.kernel_size[0]) + 1
            continue
        k = _pool_kernel(m)
        if k is None or k < 2 or size // k <= 1:
            break
        size //= k
        factors.append(k)
    return tuple(factors)


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise LayoutError(
            f"the conv layout takes an nn.Sequential chain, got {type(model).__name__}"
        )
    return [(n, m) for n, m in model.named_children() if not isinstance(m, nn.Identity)]


def _first_padding(children: list[tuple[str, nn.Module]]) -> int:
    first_conv = next((m for _, m in children if isinstance(m, nn.Conv2d)), None)
    pad = 0
    if isinstance(first_conv, nn.Conv2d):
        if isinstance(first_conv.padding, str):
            raise LayoutError(
                f"give the first convolution's padding as numbers, not {first_conv.padding!r}"
            )
        pad = int(first_conv.padding[0])
    return pad


def _grid(input_shape: tuple[int, int, int], pad: int, factors: tuple[int, ...]) -> int:
    """Side of the channel block: the padded image, divided by the split, to a power of two."""
    side = max(input_shape[1], input_shape[2]) + 2 * pad
    return _pow2_at_least(math.ceil(side / math.prod(factors)))


def _candidates(
    children: list[tuple[str, nn.Module]], size: int, compact: bool
) -> list[tuple[int, ...]]:
    """Split factors to consider: none, and each prefix of :func:`_split_factors`."""
    factors = _split_factors(children, size) if compact else ()
    return [factors[:i] for i in range(len(factors) + 1)]


def block_slots(
    model: nn.Module, input_shape: tuple[int, int, int], *, compact: bool = True
) -> int:
    """The fewest slots (ring degree / 2) one of :func:`plan_layout`'s candidate layouts can
    run on: one channel block."""
    children = _chain(model)
    pad = _first_padding(children)
    candidates = _candidates(children, max(input_shape[1:]), compact)
    return min(_grid(input_shape, pad, f) ** 2 for f in candidates)


def plan_layout(
    model: nn.Module,
    slots: int,
    input_shape: tuple[int, int, int],
    *,
    phases: bool = True,
    compact: bool = True,
) -> LayoutPlan:
    """Lay a conv chain (Conv2d, AvgPool2d, activations, Flatten, Linear) out on ``slots``.

    The block grid is the smallest power-of-two square holding the padded input; every later
    map keeps it (strides and pools dilate instead of moving data). Padding is supported on
    the first convolution only (the client writes the zeros). ``phases``: phase-pack the
    outputs of convolutions where it pays (see the module docstring); ``False`` never does.
    ``compact``: split the input into sub-maps for the first pools (:func:`_split_factors`;
    each prefix of them, with and without copies of the first convolution's outputs in the
    blocks it leaves free (:func:`_plan`), is a candidate, and the one whose dense weights
    need the fewest plaintext products wins, ties to the earlier candidate: fewer factors, no
    copies), so those pools add sub-maps and the maps after them are compact; ``False`` never
    splits nor copies.
    """
    children = _chain(model)
    best: tuple[int, LayoutPlan] | None = None
    failure: LayoutError | None = None
    candidates = _candidates(children, max(input_shape[1:]), compact)
    for factors, replicate in itertools.product(candidates, (False, True)):
        if replicate and not compact:
            continue
        try:
            plan = _plan(children, slots, input_shape, phases, factors, replicate)
        except LayoutError as exc:
            # Raised when no candidate fits: the most split one's reason (the smallest block,
            # so a size error there is the real limit, and any other error is the network's).
            if not replicate:
                failure = exc
            continue
        cost = dense_products(plan)
        if best is None or cost < best[0]:
            best = (cost, plan)
    if best is None:
        assert failure is not None
        raise failure
    return best[1]


def _plan(
    children: list[tuple[str, nn.Module]],
    slots: int,
    input_shape: tuple[int, int, int],
    phases: bool,
    factors: tuple[int, ...],
    replicate: bool = False,
) -> LayoutPlan:
    """:func:`plan_layout` for one choice of split factors; ``replicate``: the first
    convolution writes each output channel into every block it leaves free (when its channels
    divide the blocks of a ciphertext), so the next convolution reads the nearest copy and
    needs only as many channel offsets as there are channels. Raises ``LayoutError`` when
    ``replicate`` changes nothing (the candidate is then the unreplicated one)."""
    from fheprune.models.activations import PolyActivation

    channels, height, width = input_shape
    pad = _first_padding(children)
    grid = _grid(input_shape, pad, factors)
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
        factors=factors,
    )
    plan = LayoutPlan(slots)
    seen_conv = False
    replicated = False
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
                factors=current.factors,
            )
            if replicate and current.replicas > 1:  # the first conv: its input is replicated
                copies = out.lanes // m.out_channels
                if out.groups == 1 and copies > 1 and out.lanes % m.out_channels == 0:
                    out = replace(out, replicas=copies)
                    replicated = True
            if (
                phases
                and out.split == 1
                and out.replicas == 1
                and out.dilation > 1
                and _flattened_before_conv(children, index + 1)
            ):
                out = _phase_packed(current, out, kh, kw)
            plan.layers[name] = PlannedLayer(name, "conv", m, current, out)
            current = out
        elif isinstance(m, nn.AvgPool2d):
            if not isinstance(current, ChannelPacking):
                raise LayoutError(f"pool '{name}' after a flatten is not supported")
            k, s, p = (_square_side(v) for v in (m.kernel_size, m.stride, m.padding))
            if k is None or p or s != k or m.ceil_mode or m.divisor_override is not None:
                raise LayoutError(
                    f"pool '{name}': average pooling with a square kernel, stride = kernel, no "
                    "padding and no divisor_override only"
                )
            if current.factors:
                # Adding sub-maps pools by the first factor f: legal when the window is one
                # pixel of each digit a_1 (kernel f, dilation 1, windows aligned on f).
                f = current.factors[0]
                aligned = current.origin[0] % f == 0 and current.origin[1] % f == 0
                if k != f or current.dilation != 1 or not aligned:
                    raise LayoutError(
                        f"pool '{name}': a map split by {current.factors} pools by {f} only "
                        f"(got kernel {k}, dilation {current.dilation}, origin {current.origin})"
                    )
                out = replace(
                    current,
                    height=current.height // k,
                    width=current.width // k,
                    origin=(current.origin[0] // f, current.origin[1] // f),
                    factors=current.factors[1:],
                )
            else:
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
    if replicate and not replicated:
        raise LayoutError("no convolution output to replicate")
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


def kernel_reads(
    inp: ChannelPacking, out: ChannelPacking, kh: int, kw: int
) -> list[tuple[int, IntArray, IntArray, IntArray]]:
    """Per output sub-map holding pixels: (its index, its pixels as indices ``y * width + x``,
    and per kernel position ``[kh, kw]`` the input sub-map read and the in-block offset of the
    read). Without splitting: one sub-map 0 and ``(dy * grid_w + dx) * dilation``. With a split
    ``s``, output residue ``a`` at kernel row ``dy`` reads input residue ``(a + dy*d) mod s``,
    ``(a + dy*d) div s`` block rows further (columns alike)."""
    s, d = inp.split, inp.dilation
    ys, xs = np.meshgrid(np.arange(out.height), np.arange(out.width), indexing="ij")
    vy = out.origin[0] + ys.ravel() * out.dilation
    vx = out.origin[1] + xs.ravel() * out.dilation
    dy, dx = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    reads = []
    for ay in range(s):
        for ax in range(s):
            pixels = np.flatnonzero((vy % s == ay) & (vx % s == ax))
            if pixels.size == 0:
                continue
            ty, tx = ay + dy * d, ax + dx * d
            q_in = inp.submap_of(ty % s, tx % s)
            offset = (ty // s) * inp.grid_w + tx // s
            q_out = int(out.submap_of(ay, ax))
            reads.append((q_out, pixels, q_in.astype(np.int64), offset.astype(np.int64)))
    return reads


def conv_term_keys(
    inp: ChannelPacking, out: ChannelPacking, weight_shape: Sequence[int], groups: int
) -> list[tuple[IntArray, IntArray, IntArray, int]]:
    """Where every weight of a convolution lands, per output sub-map and output replica: (the
    sub-map's pixels, the term key ``(out_ct * n_in + in_ct) * slots + shift`` of every weight
    ``[C_out, C_in/g, kh, kw]``, its inner rotation (the compiler's baby step), and the slot
    offset of the replica, ``replica * channels * block``). Weights with equal keys share
    one plaintext product."""
    c_out, _, kh, kw = (int(v) for v in weight_shape)
    ci = _conv_in_channels(weight_shape, groups)  # [C_out, C_in/g]
    ct_in, lane_in = (a.reshape(ci.shape) for a in inp.place(ci.ravel()))
    ct_out, first_lane = out.place(np.arange(c_out))
    mod = inp.channels if inp.replicas > 1 else inp.lanes
    phase = inp.phase_offset(ci) - out.phase_offset(np.arange(c_out))[:, None]
    reads = kernel_reads(inp, out, kh, kw)
    inner = [
        (p_offset[None, None] + inp.phase_offset(ci)[:, :, None, None]) % inp.slots
        for _, _, _, p_offset in reads
    ]
    keys = []
    for replica in range(out.replicas):
        lane_out = first_lane + replica * out.channels
        r = (lane_in - lane_out[:, None]) % mod  # the nearest replica when replicated
        for read, (q_out, pixels, q_in, p_offset) in zip(inner, reads, strict=True):
            shift = (p_offset[None, None] + (r * inp.block + phase)[:, :, None, None]) % inp.slots
            o_ct = ct_out[:, None, None, None] + q_out * out.base_ciphertexts
            i_ct = ct_in[:, :, None, None] + q_in[None, None] * inp.base_ciphertexts
            key = (o_ct * inp.ciphertexts + i_ct) * inp.slots + shift
            offset = replica * out.channels * out.block
            keys.append((pixels, key, np.broadcast_to(read, key.shape), offset))
    return keys


def dense_products(plan: LayoutPlan) -> int:
    """Plaintext products of the plan's network with every weight non-zero: the terms of its
    convolutions and fully connected layers (a function of the shapes only)."""
    total = 0
    for layer in plan.layers.values():
        m = layer.module
        if isinstance(m, nn.Conv2d):
            assert isinstance(layer.inputs, ChannelPacking)
            assert isinstance(layer.outputs, ChannelPacking)
            keys = conv_term_keys(layer.inputs, layer.outputs, tuple(m.weight.shape), m.groups)
            total += int(np.unique(np.concatenate([k.ravel() for _, k, _, _ in keys])).size)
        elif isinstance(m, nn.Linear):
            assert isinstance(layer.inputs, VectorPacking)
            assert isinstance(layer.outputs, VectorPacking)
            total += _fc_diagonals(layer.inputs, layer.outputs)
    return total


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
    unit = (ct_out[:, None] * inputs.base_ciphertexts + ct_in) * inputs.lanes + r
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
