"""Lower a conv network onto a *map program* on the multi-channel layout, and run it in numpy.

The layout is :mod:`fheprune.layouts.channels` (channel blocks, group-interleaved lanes,
dilation for strides and pools); this module only turns every layer of its plan into one of
three slot-vector operations on a list of ciphertexts (``rot(x, k)[j] = x[(j + k) mod slots]``):

* :class:`MapLinearOp` (one level): ``y_o = sum_(t: out_ct[t] = o) values[t] * rot(x_(in_ct[t]),
  shift[t]) + bias[o]``, ``values`` and ``bias`` repeating with their (power-of-two) period.
  One term is one plaintext multiply: terms are merged per ``(o, in_ct, shift)`` and exist
  exactly when a non-zero weight needs them. A convolution's weight ``(c_out, c_in, dy, dx)``
  lands in the term of shift ``(p_offset + r * block + phase_offset(c_in) -
  phase_offset(c_out)) mod slots`` (``p_offset = (dy * grid_w + dx) * dilation_in``, ``r`` the
  channel offset of :func:`~fheprune.layouts.channels.conv_units`, the phase offsets those of
  a phase-packed map, 0 otherwise: :func:`~fheprune.layouts.channels.conv_term_shifts`), at
  every *valid* output position of its channel only (its block, shifted by its phase), so
  convolution outputs are exactly zero outside their valid region (a free output mask, which
  is also what lets phases share a block). A linear layer's weight ``W[f_out, f_in]`` lands in
  the term of shift ``(slot_in - slot_out) mod slots`` at ``slot_out`` (a phase-packed map's
  flatten puts each feature at its phase's slot);
* :class:`RotateSumOp` (no level): window sums (average pooling; its ``1/k^2`` is folded into
  the next linear layer). Strides are multiples of the dilation, so on a phase-packed map each
  phase sums only its own pixels. A window sum right before a fully connected layer with
  fewer output ciphertexts runs after it instead (:func:`_sum_after_fc`): on fewer
  ciphertexts, one level lower;
* :class:`SquareOp` (one level): every polynomial activation ``a*x^2 + b*x + c`` becomes a bare
  square: ``a*(x + b/2a)^2 + (c - b^2/4a)``, the shift joins the bias of the linear layer
  before it (through any pooling in between) and ``(a, c - b^2/4a)`` the next linear layer's
  weights and bias, as :func:`fheprune.runtime.compiler.fold_activations` does for FC chains.
  Affine activations (``a = 0``) fold away.

Every term belongs to exactly one unit of each kind of
:func:`~fheprune.layouts.channels.layer_units` (:func:`term_units` names it), so zeroing the
weights of a unit removes exactly the terms it owns. :func:`simulate` is the plain numpy
reference executor; :func:`build_program` hands the same program to the C++ runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fheprune import _core
from fheprune.layouts.channels import (
    ChannelPacking,
    LayoutError,
    LayoutPlan,
    UnitKind,
    VectorPacking,
    conv_term_keys,
    conv_term_shifts,
    plan_layout,
)

from .compiler import CompileError

__all__ = [
    "MapLinearOp",
    "MapOp",
    "MapProgramSpec",
    "RotateSumOp",
    "SquareOp",
    "build_program",
    "lower_conv_model",
    "simulate",
    "term_units",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Int32Array = NDArray[np.int32]


@dataclass
class TermValues:
    """The values of a map-linear op's terms, one period each, stored sparse (CSR): term ``t``
    holds ``data[indptr[t]:indptr[t + 1]]`` at slots ``index[...]`` of its period (increasing
    within a term) and zero elsewhere. A convolution's term is non-zero only at the valid
    outputs of its channels: after two pools a few percent of the slots, and a dense HEFNet
    would otherwise hold a billion zeros."""

    indptr: IntArray  # [T + 1]
    index: IntArray  # [nnz], in [0, period)
    data: FloatArray  # [nnz]
    period: int

    @classmethod
    def from_dense(cls, rows: FloatArray) -> TermValues:
        """From ``[T, period]`` rows (zeros dropped)."""
        a = np.asarray(rows, dtype=np.float64)
        if a.ndim != 2:
            raise CompileError(f"term values must be [terms, period], got shape {list(a.shape)}")
        term, index = np.nonzero(a)
        return cls.from_entries(term, index, a[term, index], a.shape[0], a.shape[1])

    @classmethod
    def from_entries(
        cls, term: IntArray, index: IntArray, data: FloatArray, terms: int, period: int
    ) -> TermValues:
        """From entries ``(term, index, value)``, no two with the same ``(term, index)``."""
        order = np.lexsort((index, term))
        counts = np.bincount(term, minlength=terms) if term.size else np.zeros(terms, np.int64)
        return cls(
            np.r_[0, np.cumsum(counts)].astype(np.int64),
            np.asarray(index, dtype=np.int64)[order],
            np.asarray(data, dtype=np.float64)[order],
            int(period),
        )

    @property
    def terms(self) -> int:
        return int(self.indptr.size) - 1

    def term_of_entry(self) -> IntArray:
        return np.repeat(np.arange(self.terms), np.diff(self.indptr))

    def dense(self, rows: IntArray | None = None) -> FloatArray:
        """``[T, period]`` (or the given rows only)."""
        picked = self if rows is None else self.take(rows)
        out = np.zeros((picked.terms, picked.period))
        out[picked.term_of_entry(), picked.index] = picked.data
        return out

    def take(self, rows: NDArray[Any]) -> TermValues:
        """The given terms (indices, or a boolean mask over the terms), in that order."""
        picked = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, np.int64)
        starts, counts = self.indptr[picked], np.diff(self.indptr)[picked]
        entries = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(
            int(counts.sum())
        )
        return TermValues(
            np.r_[0, np.cumsum(counts)].astype(np.int64),
            self.index[entries],
            self.data[entries],
            self.period,
        )

    def nonzero_terms(self) -> NDArray[np.bool_]:
        """Per term: holds a non-zero value."""
        hits = np.bincount(self.term_of_entry()[self.data != 0.0], minlength=self.terms)
        return np.asarray(hits > 0)

    def without_zeros(self) -> TermValues:
        keep = self.data != 0.0
        counts = np.bincount(self.term_of_entry()[keep], minlength=self.terms)
        return TermValues(
            np.r_[0, np.cumsum(counts)].astype(np.int64),
            self.index[keep],
            self.data[keep],
            self.period,
        )

    def shortest_period(self) -> TermValues:
        """The same terms on their smallest common power-of-two period."""
        v = self
        while v.period > 1 and v.period % 2 == 0:
            h = v.period // 2
            term = v.term_of_entry()
            low = v.index < h
            # Periodic with h iff every term's upper half repeats its lower half (entries are
            # sorted by (term, index), so both halves come out in the same order).
            same = (
                int(low.sum()) * 2 == low.size
                and np.array_equal(term[low], term[~low])
                and np.array_equal(v.index[low], v.index[~low] - h)
                and np.array_equal(v.data[low], v.data[~low])
            )
            if not same:
                break
            counts = np.bincount(term[low], minlength=v.terms)
            v = TermValues(
                np.r_[0, np.cumsum(counts)].astype(np.int64), v.index[low], v.data[low], h
            )
        return v


@dataclass
class MapLinearOp:
    """``y_o[j] = sum_(t: out_ct[t] = o) values[t][j mod period] * x_(in_ct[t])[(j + shift[t])
    mod slots] + bias[o][j mod bias_period]`` (see the module docstring). ``values`` may be
    given as dense ``[T, period]`` rows; they are kept as :class:`TermValues`."""

    name: str
    out_ciphertexts: int
    out_ct: Int32Array  # [T]
    in_ct: Int32Array  # [T]
    shift: IntArray  # [T], in [0, slots)
    values: TermValues
    bias: FloatArray  # [out_ciphertexts, bias_period], or [0, 0]: no bias
    # The convolution's own split: term t's inner (baby) rotation, the kernel position's
    # offset (plus the input phase); the rest of the shift is the channel offset (giant).
    # The C++ program takes it when no modular split needs fewer rotations. None: no hint.
    baby: IntArray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.values, TermValues):
            self.values = TermValues.from_dense(np.asarray(self.values))

    @property
    def terms(self) -> int:
        return int(self.out_ct.shape[0])

    @property
    def period(self) -> int:
        return self.values.period

    def distinct_shifts(self, by: Literal["input", "output"]) -> list[int]:
        """Distinct shifts per input ciphertext (``by="input"``) or per output ciphertext."""
        if by == "output":
            count, key = self.out_ciphertexts, self.out_ct
        else:
            count = int(self.in_ct.max()) + 1 if self.terms else 0
            key = self.in_ct
        return [int(np.unique(self.shift[key == c]).size) for c in range(count)]

    def check(self, slots: int, in_ciphertexts: int) -> None:
        """Raise ``CompileError`` unless the op is well formed (shapes, ranges, merged terms)."""
        t = self.terms
        where = f"map-linear '{self.name}'"
        if self.in_ct.shape != (t,) or self.shift.shape != (t,):
            raise CompileError(f"{where}: out_ct, in_ct and shift disagree on the terms")
        if self.values.terms != t:
            raise CompileError(f"{where}: {self.values.terms} value rows for {t} terms")
        v = self.values
        if v.index.size and (v.index.min() < 0 or v.index.max() >= v.period):
            raise CompileError(f"{where}: a value outside its period of {v.period} slots")
        for what, period in (("values", self.period), ("bias", int(self.bias.shape[1]))):
            if what == "bias" and self.bias.size == 0:
                continue
            if period < 1 or period & (period - 1) or slots % period:
                raise CompileError(f"{where}: {what} period {period} does not divide {slots}")
        if self.bias.size and self.bias.shape[0] != self.out_ciphertexts:
            raise CompileError(f"{where}: bias rows {self.bias.shape[0]} != outputs")
        if t == 0:
            return
        if self.out_ct.min() < 0 or self.out_ct.max() >= self.out_ciphertexts:
            raise CompileError(f"{where}: an output ciphertext out of range")
        if self.in_ct.min() < 0 or self.in_ct.max() >= in_ciphertexts:
            raise CompileError(f"{where}: reads a ciphertext beyond the {in_ciphertexts} live")
        if self.shift.min() < 0 or self.shift.max() >= slots:
            raise CompileError(f"{where}: shifts must lie in [0, {slots})")
        key = (self.out_ct.astype(np.int64) * in_ciphertexts + self.in_ct) * slots + self.shift
        if np.unique(key).size != t:
            raise CompileError(f"{where}: terms with equal (out_ct, in_ct, shift) not merged")
        if not np.all(self.values.nonzero_terms()):
            raise CompileError(f"{where}: an all-zero term")
        if self.baby is not None and (
            self.baby.shape != (t,) or self.baby.min() < 0 or self.baby.max() >= slots
        ):
            raise CompileError(f"{where}: baby hints must be one slot offset per term")


@dataclass
class RotateSumOp:
    """Average pooling (no level): first the ``fold`` sub-maps are added (output ciphertext
    ``o`` sums inputs ``o + m * n / fold``), then per ciphertext the window sum ``y[j] =
    sum_(n_d < count_d) x[j + sum_d n_d * stride_d]``."""

    name: str
    windows: list[tuple[int, int]]  # (count, stride)
    fold: int = 1


@dataclass
class SquareOp:
    name: str


MapOp = MapLinearOp | RotateSumOp | SquareOp


def _op_kind(op: MapOp) -> str:
    """The op's layer kind for ``_core.layer_levels``."""
    if isinstance(op, MapLinearOp):
        return "linear"
    return "square" if isinstance(op, SquareOp) else "rotate_sum"


@dataclass
class MapProgramSpec:
    """A lowered network: client-packed input, the op chain, and the client's output map."""

    slots: int
    input: ChannelPacking
    output: VectorPacking
    ops: list[MapOp]
    plan: LayoutPlan | None = field(default=None, repr=False)

    @property
    def levels(self) -> int:
        """Levels the program needs, by the C++ program's rule (its cost() gives each op's)."""
        return int(sum(_core.layer_levels("map", [_op_kind(op) for op in self.ops])))

    def pack(self, images: NDArray[np.float64]) -> FloatArray:
        """Client side: images [B, C, H, W] -> slot vectors [B, input ciphertexts, slots]."""
        return self.input.pack(images)

    def unpack(self, slot_vectors: NDArray[np.float64]) -> FloatArray:
        """Client side: slot vectors [B, output ciphertexts, slots] -> features [B, F]."""
        y = np.asarray(slot_vectors, dtype=np.float64)
        if y.ndim != 3 or y.shape[1:] != (self.output.ciphertexts, self.slots):
            raise LayoutError(
                f"expected outputs shaped [batch, {self.output.ciphertexts}, {self.slots}], "
                f"got {list(y.shape)}"
            )
        return np.ascontiguousarray(y[:, self.output.ct, self.output.slot])


# ---------------------------------------------------------------------------------------
# Lowering


@dataclass
class _Linear:
    """A map-linear op under construction: full-period arrays and its valid output slots."""

    op: MapLinearOp
    rows: IntArray  # (ciphertext, slot) of every valid output value: where a shift goes
    cols: IntArray


@dataclass
class _Fold:
    """What the ciphertexts hold: ``true value = scale * v + const`` at valid positions."""

    scale: float = 1.0
    const: float = 0.0
    producer: _Linear | None = None  # the linear op v comes from (through pools only)
    gain: float = 1.0  # how many times that op's bias is summed into v (pool windows)


def _terms(
    keys: IntArray,
    weights: FloatArray,
    cols: IntArray | list[IntArray],
    in_ciphertexts: int,
    slots: int,
) -> tuple[Int32Array, Int32Array, IntArray, TermValues]:
    """Merge weights by key ``(out_ct * in_cts + in_ct) * slots + shift``; ``cols[n]`` are
    the slots weight ``n`` fills in its term (no two weights of a term share a slot). ``cols``
    may be a list of ``[n_k, fills_k]`` blocks covering the weights in order (sub-maps of
    different sizes)."""
    uniq, term_of = np.unique(keys, return_inverse=True)
    blocks = cols if isinstance(cols, list) else [cols]
    fills = np.concatenate([np.full(b.shape[0], b.shape[1], dtype=np.int64) for b in blocks])
    values = TermValues.from_entries(
        np.repeat(term_of.ravel(), fills),
        np.concatenate([np.asarray(b, dtype=np.int64).ravel() for b in blocks]),
        np.repeat(weights.ravel(), fills),
        int(uniq.size),
        slots,
    )
    out_ct = (uniq // (in_ciphertexts * slots)).astype(np.int32)
    in_ct = ((uniq // slots) % in_ciphertexts).astype(np.int32)
    shift = np.asarray(uniq % slots, dtype=np.int64)
    return out_ct, in_ct, shift, values


def _conv_valid(out: ChannelPacking, c_out: int) -> tuple[IntArray, IntArray]:
    """(ciphertext, slot) [C_out, H*W] of every valid output (first copy of each channel)."""
    sub, off = out.pixels()
    channels = np.arange(c_out)
    ct_out, lane_out = out.place(channels)
    start = lane_out * out.block + out.phase_offset(channels)
    return ct_out[:, None] + sub[None, :], start[:, None] + off[None, :]


def _lower_conv(
    name: str, m: nn.Conv2d, inp: ChannelPacking, out: ChannelPacking, fold: _Fold
) -> _Linear:
    w0 = m.weight.detach().to(torch.float64).cpu().numpy()
    c_out = int(w0.shape[0])
    b0 = m.bias.detach().to(torch.float64).cpu().numpy() if m.bias is not None else np.zeros(c_out)
    bias_map = np.broadcast_to(b0[:, None, None], (c_out, out.height, out.width)).copy()
    if fold.const != 0.0:  # a constant on every real input pixel (padding stays zero)
        with torch.no_grad():
            ones = torch.full(
                (1, inp.channels, inp.height, inp.width), fold.const, dtype=torch.float64
            )
            bias_map += nn.functional.conv2d(
                ones, torch.from_numpy(w0), None, m.stride, m.padding, 1, m.groups
            )[0].numpy()
    w = w0 * fold.scale

    if inp.factors != out.factors:
        raise LayoutError(
            f"conv '{name}': input split {inp.factors} and output split {out.factors} differ"
        )
    rows, valid_cols = _conv_valid(out, c_out)
    nz = w != 0.0
    co = np.broadcast_to(np.arange(c_out)[:, None, None, None], w.shape)[nz]
    reads = conv_term_keys(inp, out, w.shape, int(m.groups))
    key = np.concatenate([k[nz] for _, k, _, _ in reads])
    cols = [valid_cols[:, pixels][co] + offset for pixels, _, _, offset in reads]
    weights = np.concatenate([w[nz]] * len(reads))
    out_ct, in_ct, shifts, values = _terms(key, weights, cols, inp.ciphertexts, inp.slots)
    _, first = np.unique(key, return_index=True)  # the order _terms uses
    baby = np.asarray(np.concatenate([b[nz] for _, _, b, _ in reads])[first], dtype=np.int64)

    # Every replica of an output holds its bias (and, through _Linear, any folded constant).
    copies = np.arange(out.replicas) * out.channels * out.block
    rows = np.concatenate([rows] * out.replicas, axis=1)
    valid_cols = np.concatenate([valid_cols + c for c in copies], axis=1)
    bias = np.zeros((out.ciphertexts, out.slots))
    bias[rows, valid_cols] = np.tile(bias_map.reshape(c_out, -1), (1, out.replicas))
    op = MapLinearOp(name, out.ciphertexts, out_ct, in_ct, shifts, values, bias, baby)
    return _Linear(op, rows.ravel(), valid_cols.ravel())


def _lower_fc(
    name: str, m: nn.Linear, inp: VectorPacking, out: VectorPacking, fold: _Fold
) -> _Linear:
    w0 = m.weight.detach().to(torch.float64).cpu().numpy()
    b0 = (
        m.bias.detach().to(torch.float64).cpu().numpy()
        if m.bias is not None
        else np.zeros(w0.shape[0])
    )
    b = b0 + fold.const * w0.sum(axis=1)
    w = w0 * fold.scale
    slots = inp.slots
    k = (inp.slot[None, :] - out.slot[:, None]) % slots
    key = (out.ct[:, None] * inp.ciphertexts + inp.ct[None, :]) * slots + k
    nz = w != 0.0
    cols = np.broadcast_to(out.slot[:, None], w.shape)[nz]
    out_ct, in_ct, shifts, values = _terms(key[nz], w[nz], cols[:, None], inp.ciphertexts, slots)
    bias = np.zeros((out.ciphertexts, slots))
    bias[out.ct, out.slot] = b
    op = MapLinearOp(name, out.ciphertexts, out_ct, in_ct, shifts, values, bias)
    return _Linear(op, out.ct.copy(), out.slot.copy())


def _period(a: FloatArray) -> int:
    """The smallest power-of-two period of every row of ``a`` (its width when none)."""
    p = int(a.shape[1])
    while p > 1:
        h = p // 2
        if a.shape[0] and not np.array_equal(a[0, :h], a[0, h:p]):
            break
        if not np.array_equal(a[:, :h], a[:, h:p]):
            break
        p = h
    return p


def _finish(op: MapLinearOp) -> None:
    """Drop all-zero terms, and shorten values and bias to their exact period."""
    op.values = op.values.without_zeros()
    keep = op.values.nonzero_terms()
    if not keep.all():
        op.out_ct, op.in_ct, op.shift = op.out_ct[keep], op.in_ct[keep], op.shift[keep]
        op.values = op.values.take(keep)
        if op.baby is not None:
            op.baby = op.baby[keep]
    op.values = op.values.shortest_period()
    if not np.any(op.bias != 0.0):
        op.bias = np.zeros((0, 0))
    else:
        op.bias = np.ascontiguousarray(op.bias[:, : _period(op.bias)])


def lower_conv_model(
    model: nn.Module,
    slots: int,
    input_shape: tuple[int, int, int] | None = None,
    *,
    phases: bool = True,
    drop_unread: bool = True,
    client_shifts: bool = False,
    compact: bool = True,
    sum_after_fc: bool = True,
) -> MapProgramSpec:
    """Lower an ``nn.Sequential`` conv chain (see :func:`plan_layout`) to a map program.

    ``input_shape`` = (C, H, W) of one sample, by default ``model.input_shape``; ``phases``:
    phase-pack conv outputs where the plan finds it pays (``False``: never); ``drop_unread``:
    never compute a ciphertext no later layer reads (``False`` keeps every term of every
    non-zero weight, for inspecting the raw lowering); ``client_shifts``: the client sends one
    copy of its input per live kernel position of the first convolution, pre-rotated, so that
    convolution needs no inner rotation at all (:func:`_shift_inputs`); ``compact``: split
    the input into sub-maps so the first pool leaves a compact map (:func:`plan_layout`;
    ``False``: the dilated layout throughout); ``sum_after_fc``: move a window sum past the
    fully connected layer after it where that leaves it fewer ciphertexts
    (:func:`_sum_after_fc`; ``False``: every op in the model's order). Unsupported
    layers or shapes raise ``LayoutError``; activations that cannot fold raise ``CompileError``.
    """
    if input_shape is None:
        shape = getattr(model, "input_shape", None)
        if not isinstance(shape, tuple) or len(shape) != 3:
            raise LayoutError(
                "the conv layout needs the (channels, height, width) of one sample: pass "
                f"input_shape (the model's input_shape is {shape!r})"
            )
        input_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    from fheprune.models.activations import PolyActivation

    plan = plan_layout(model, slots, input_shape, phases=phases, compact=compact)
    ops: list[MapOp] = []
    linears: list[_Linear] = []
    fold = _Fold()
    for name, layer in plan.layers.items():
        m = layer.module
        if layer.kind == "conv":
            assert isinstance(m, nn.Conv2d)
            assert isinstance(layer.inputs, ChannelPacking)
            assert isinstance(layer.outputs, ChannelPacking)
            padded = not isinstance(m.padding, str) and any(int(v) for v in m.padding)
            if padded and any(isinstance(op, RotateSumOp) for op in ops):
                raise LayoutError(
                    f"conv '{name}': padding reads the client's zeros, so it needs the "
                    "client-packed input (no pooling before it)"
                )
            if min(layer.outputs.origin) < 0:
                raise LayoutError(f"conv '{name}': its padding falls outside the channel block")
            lin = _lower_conv(name, m, layer.inputs, layer.outputs, fold)
        elif layer.kind == "fc":
            assert isinstance(m, nn.Linear)
            assert isinstance(layer.inputs, VectorPacking)
            assert isinstance(layer.outputs, VectorPacking)
            lin = _lower_fc(name, m, layer.inputs, layer.outputs, fold)
        elif layer.kind == "pool":
            assert isinstance(layer.inputs, ChannelPacking)
            assert isinstance(layer.outputs, ChannelPacking)
            if layer.inputs.factors:  # add the sub-maps of the first factor's digit
                k = layer.inputs.factors[0]
                ops.append(RotateSumOp(name, [], fold=k * k))
                fold.scale /= k * k
                fold.gain *= k * k
                continue
            k = layer.outputs.dilation // layer.inputs.dilation
            if k > 1:
                d, grid_w = layer.inputs.dilation, layer.inputs.grid_w
                ops.append(RotateSumOp(name, [(k, d), (k, d * grid_w)]))
                fold.scale /= k * k
                fold.gain *= k * k
            continue
        elif layer.kind == "act":
            assert isinstance(m, PolyActivation)
            _fold_activation(name, m, fold, ops)
            continue
        else:  # flatten: a change of layout only
            continue
        ops.append(lin.op)
        linears.append(lin)
        fold = _Fold(producer=lin)
    if (fold.scale, fold.const) != (1.0, 0.0):
        # Pending scaling at the end: the last linear op absorbs it (only window sums follow
        # it, and they are linear); after a square nothing can.
        last = fold.producer
        if last is None:
            raise CompileError(
                "the model ends with a polynomial activation other than x^2 (or an average "
                "pool after one); its constants need a linear layer after it"
            )
        last.op.values.data *= fold.scale
        last.op.bias *= fold.scale
        last.op.bias[last.rows, last.cols] += fold.const / fold.gain
    if sum_after_fc:
        _sum_after_fc(ops, plan, slots)
    if drop_unread:
        _drop_unread(ops, plan.output.ct, plan.input.ciphertexts)
    for lin in linears:
        _finish(lin.op)
    inputs = _shift_inputs(ops, plan.input) if client_shifts else plan.input
    return MapProgramSpec(slots, inputs, plan.output, ops, plan)


def _ciphertexts_before(ops: list[MapOp], input_ciphertexts: int) -> list[int]:
    """Ciphertexts entering each op (and, last, leaving the chain)."""
    counts = [input_ciphertexts]
    for op in ops:
        if isinstance(op, MapLinearOp):
            counts.append(op.out_ciphertexts)
        elif isinstance(op, RotateSumOp):
            counts.append(counts[-1] // op.fold)
        else:
            counts.append(counts[-1])
    return counts


def _window_offsets(windows: list[tuple[int, int]], slots: int) -> IntArray:
    """Every slot offset a window sum adds: ``sum_i n_i * stride_i``, ``0 <= n_i < count_i``."""
    offsets = np.zeros(1, dtype=np.int64)
    for count, stride in windows:
        offsets = (offsets[:, None] + stride * np.arange(count)[None, :]).ravel()
    return offsets % slots


def _sum_after_fc(ops: list[MapOp], plan: LayoutPlan, slots: int) -> None:
    """Run a window sum after the fully connected layer that follows it, where that layer has
    fewer output ciphertexts than the sum has inputs (a global average pool before the
    classifier: two ciphertexts of channels, one of outputs).

    ``F(P(x))[t] = sum_k d_k[t] sum_o x[t + k + o]`` over the sum's offsets ``o``; with
    ``d'_k[t + o] = d_k[t]`` (every value copied to each offset from its output slot) that is
    ``P(F'(x))[t]``, as long as no two (output slot, offset) pairs land on one slot, so that
    each copy and the bias (left at the output slot only) are summed exactly once. The other
    slots of the result hold partial sums no later layer reads. The rotations then act on the
    layer's outputs, one level lower; its products are as many as before. Rewrites ``ops``
    in place; runs before :func:`_finish` (values still span all the slots)."""
    for index in range(len(ops) - 1):
        pool, fc = ops[index], ops[index + 1]
        if not (
            isinstance(pool, RotateSumOp)
            and pool.fold == 1
            and pool.windows
            and isinstance(fc, MapLinearOp)
            and plan.layers[fc.name].kind == "fc"
            and fc.values.period == slots
        ):
            continue
        counts = _ciphertexts_before(ops, plan.input.ciphertexts)
        if fc.out_ciphertexts >= counts[index]:
            continue
        offsets = _window_offsets(pool.windows, slots)
        term = fc.values.term_of_entry()
        used = np.unique(
            np.concatenate(
                [
                    fc.out_ct.astype(np.int64)[term] * slots + fc.values.index,
                    np.flatnonzero(fc.bias.reshape(-1)) if fc.bias.size else np.zeros(0, np.int64),
                ]
            )
        )
        out_ct, at = np.divmod(used, slots)
        landing = out_ct[:, None] * slots + (at[:, None] + offsets[None, :]) % slots
        if np.unique(landing).size != landing.size:
            continue  # two copies would meet on one slot
        copies = offsets.size
        fc.values = TermValues.from_entries(
            np.repeat(term, copies),
            ((fc.values.index[:, None] + offsets[None, :]) % slots).ravel(),
            np.repeat(fc.values.data, copies),
            fc.values.terms,
            slots,
        )
        ops[index], ops[index + 1] = fc, pool


def _shift_inputs(ops: list[MapOp], packing: ChannelPacking) -> ChannelPacking:
    """Move the first convolution's inner rotations to the client.

    Every term of the first op reads its input ciphertext ``i`` rotated by ``shift = inner +
    outer`` (``inner`` its kernel position's offset, the baby hint; ``outer`` its channel
    offset). The client, which holds the image in the clear, sends one copy of ``i`` per
    distinct live ``inner``, rotated by it; the term then reads copy ``(i, inner)`` rotated by
    ``outer`` only (0 for a one-channel image replicated across the blocks). Returns the
    client's input packing with those shifts; the op is rewritten in place.
    """
    first = ops[0] if ops else None
    if not isinstance(first, MapLinearOp) or first.baby is None:
        raise LayoutError(
            "client shifts need a convolution as the first layer (it reads the client's input)"
        )
    inner = first.baby.astype(np.int64)
    shifts = np.unique(inner) if first.terms else np.zeros(1, dtype=np.int64)
    n = int(shifts.size)
    copy = np.searchsorted(shifts, inner)
    first.in_ct = (first.in_ct.astype(np.int64) * n + copy).astype(np.int32)
    first.shift = np.asarray((first.shift - inner) % packing.slots, dtype=np.int64)
    first.baby = np.zeros_like(inner)
    return replace(packing, shifts=tuple(int(k) for k in shifts))


def _drop_unread(ops: list[MapOp], output_ct: IntArray, input_ciphertexts: int) -> None:
    """Backward liveness: an output ciphertext that nothing later reads is never computed.

    Walks the ops from the last: a linear op keeps only the terms (and bias rows) of the
    ciphertexts read after it, and what it reads is what its remaining terms read; squares and
    window sums act on each ciphertext alone, so they pass the set through. Pruning can empty
    every term that reads a ciphertext (e.g. all kernel positions of one input ciphertext);
    then the layers that produce it (convolution, activation, pool) skip it too: it becomes a
    known zero, which the executor neither squares nor rotates. A pool that folds sub-maps
    reads, for each output it must produce, every ciphertext it adds into it.
    """
    counts = _ciphertexts_before(ops, input_ciphertexts)
    read = np.unique(output_ct)
    for index in range(len(ops) - 1, -1, -1):
        op = ops[index]
        if isinstance(op, RotateSumOp) and op.fold > 1:
            n_out = counts[index + 1]
            read = np.unique(read[:, None] + n_out * np.arange(op.fold)[None, :])
            continue
        if not isinstance(op, MapLinearOp):
            continue
        keep = np.isin(op.out_ct, read)
        if not keep.all():
            op.out_ct, op.in_ct, op.shift = op.out_ct[keep], op.in_ct[keep], op.shift[keep]
            op.values = op.values.take(keep)
            if op.baby is not None:
                op.baby = op.baby[keep]
        unread = np.setdiff1d(np.arange(op.out_ciphertexts), read)
        if op.bias.size and unread.size:
            op.bias[unread] = 0.0
        read = np.unique(op.in_ct)


def _fold_activation(name: str, m: Any, fold: _Fold, ops: list[MapOp]) -> None:
    a, b, c = (float(v) for v in m.coefficients())
    if a == 0.0:  # affine: nothing to evaluate under encryption
        fold.scale *= b
        fold.const = b * fold.const + c
        return
    if fold.scale == 0.0:  # a constant in, a constant out
        fold.const = (a * fold.const + b) * fold.const + c
        return
    # a*t^2 + b*t + c = a*(t + b/2a)^2 + c - b^2/4a, t = scale*v + const
    #                 = a*scale^2 * (v + shift)^2 + c - b^2/4a
    shift = (fold.const + b / (2.0 * a)) / fold.scale
    if shift != 0.0:
        if fold.producer is None:
            raise CompileError(
                f"activation '{name}' has no linear layer before it to absorb its shift"
            )
        lin = fold.producer
        lin.op.bias[lin.rows, lin.cols] += shift / fold.gain
    ops.append(SquareOp(name))
    fold.scale = a * fold.scale * fold.scale
    fold.const = c - b * b / (4.0 * a)
    fold.producer = None
    fold.gain = 1.0


# ---------------------------------------------------------------------------------------
# Units of the terms


def term_units(spec: MapProgramSpec, op: MapLinearOp, kind: UnitKind = "position") -> IntArray:
    """The unit of :func:`~fheprune.layouts.channels.layer_units` that owns each term of ``op``.

    A conv term's shift names one (channel offset ``r``, kernel position ``p``, phases) of
    :func:`~fheprune.layouts.channels.conv_term_shifts` (without phases: ``r = shift // block``
    and ``p_offset = shift mod block``); "position" ``(i, p)``: ``in_ct = i``; "diagonal"
    ``(o, i, r)``: ``out_ct = o``, ``in_ct = i``. Linear layers (any kind): ``(in_ct, shift)``.
    """
    if spec.plan is None or op.name not in spec.plan.layers:
        raise CompileError(f"map-linear '{op.name}' is not a layer of the spec's plan")
    layer = spec.plan.layers[op.name]
    inp = layer.inputs
    in_ct = op.in_ct.astype(np.int64)
    shift = op.shift
    if spec.input.shifts and spec.ops and op is spec.ops[0]:  # undo the client's copies
        n = len(spec.input.shifts)
        shift = (shift + np.asarray(spec.input.shifts, dtype=np.int64)[in_ct % n]) % spec.slots
        in_ct = in_ct // n
    if isinstance(inp, VectorPacking):
        return np.asarray(in_ct * inp.slots + shift, dtype=np.int64)
    m = layer.module
    out = layer.outputs
    assert isinstance(m, nn.Conv2d) and isinstance(out, ChannelPacking)
    kh, kw = (int(v) for v in m.kernel_size)
    if inp.split > 1:
        return _split_term_units(op, inp, out, in_ct, shift, kh, kw, kind)
    table = conv_term_shifts(inp, out, kh, kw)  # [lanes, kh*kw, phases_in, phases_out]
    flat = table.ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    at = np.minimum(np.searchsorted(ordered, shift), ordered.size - 1)
    if np.unique(flat).size != flat.size or not np.array_equal(ordered[at], shift):
        raise CompileError(f"map-linear '{op.name}': its shifts do not name one unit each")
    r, p, _, _ = np.unravel_index(order[at], table.shape)
    if kind == "diagonal":
        return np.asarray(
            (op.out_ct.astype(np.int64) * inp.ciphertexts + in_ct) * inp.lanes + r,
            dtype=np.int64,
        )
    return np.asarray(in_ct * (kh * kw) + p, dtype=np.int64)


def _split_term_units(
    op: MapLinearOp,
    inp: ChannelPacking,
    out: ChannelPacking,
    in_ct: IntArray,
    shift: IntArray,
    kh: int,
    kw: int,
    kind: UnitKind,
) -> IntArray:
    """:func:`term_units` on sub-maps: a term's output and input ciphertexts name their
    sub-maps ``q_out``, ``q_in``, its shift the channel offset ``r`` and the block offset
    ``(by, bx)``; with the sub-maps' residues, the kernel row is ``dy = (s * by + r_in -
    r_out) / d`` (columns alike, :func:`~fheprune.layouts.channels.kernel_reads`). Units are
    those of the sub-map-free layout (base ciphertexts): a unit owns one term per output
    sub-map."""
    s, d = inp.split, inp.dilation
    q_out, o_base = np.divmod(op.out_ct.astype(np.int64), out.base_ciphertexts)
    q_in, i_base = np.divmod(in_ct, inp.base_ciphertexts)
    (ay, ax), (ry, rx) = out.residues_of(q_out), inp.residues_of(q_in)
    r, rest = np.divmod(shift, inp.block)
    by, bx = np.divmod(rest, inp.grid_w)
    ty, tx = s * by + ry - ay, s * bx + rx - ax
    dy, dy_rem = np.divmod(ty, d)
    dx, dx_rem = np.divmod(tx, d)
    if np.any(dy_rem) or np.any(dx_rem) or np.any((dy < 0) | (dy >= kh) | (dx < 0) | (dx >= kw)):
        raise CompileError(f"map-linear '{op.name}': its shifts do not name one unit each")
    if kind == "diagonal":
        return np.asarray((o_base * inp.base_ciphertexts + i_base) * inp.lanes + r, dtype=np.int64)
    return np.asarray(i_base * (kh * kw) + dy * kw + dx, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Executors


def simulate(spec: MapProgramSpec, packed: NDArray[np.float64]) -> FloatArray:
    """Run the program on clear slot vectors [B, input ciphertexts, slots] (numpy reference)."""
    x = np.asarray(packed, dtype=np.float64)
    slots = spec.slots
    if x.ndim != 3 or x.shape[1:] != (spec.input.client_ciphertexts, slots):
        raise LayoutError(
            f"expected packed inputs shaped [batch, {spec.input.client_ciphertexts}, {slots}], "
            f"got {list(x.shape)}"
        )
    for op in spec.ops:
        if isinstance(op, SquareOp):
            x = x * x
        elif isinstance(op, RotateSumOp):
            if op.fold > 1:
                x = x.reshape(x.shape[0], op.fold, -1, slots).sum(axis=1)
            for count, stride in op.windows:
                acc = x.copy()
                for n in range(1, count):
                    acc += np.roll(x, -n * stride, axis=2)
                x = acc
        else:
            op.check(slots, x.shape[1])
            y = np.zeros((x.shape[0], op.out_ciphertexts, slots))
            reps = slots // op.period
            order = np.lexsort((op.shift, op.in_ct))
            pair = op.in_ct[order].astype(np.int64) * slots + op.shift[order]
            bounds = np.flatnonzero(np.diff(pair)) + 1  # one group per (in_ct, shift)
            starts, ends = np.r_[0, bounds], np.r_[bounds, order.size]
            for lo, hi in zip(starts[: op.terms], ends[: op.terms], strict=True):
                ts = order[lo:hi]
                rolled = np.roll(x[:, op.in_ct[ts[0]]], -int(op.shift[ts[0]]), axis=1)
                vals = np.tile(op.values.dense(ts), (1, reps))
                y[:, op.out_ct[ts]] += vals[None] * rolled[:, None]  # distinct outputs
            if op.bias.size:
                y += np.tile(op.bias, (1, slots // op.bias.shape[1]))[None]
            x = y
    return x


def build_program(spec: MapProgramSpec, parameters: Any) -> Any:
    """The spec as a C++ ``fheprune._core.Program`` (``Program.map``) on ``parameters``."""
    if int(parameters.poly_degree) // 2 != spec.slots:
        raise CompileError(
            f"the program was lowered for {spec.slots} slots; the parameters give "
            f"{int(parameters.poly_degree) // 2} (ring degree {int(parameters.poly_degree)})"
        )
    core: Any = _core
    program = core.Program.map(parameters, spec.input.client_ciphertexts)
    for op in spec.ops:
        if isinstance(op, MapLinearOp):
            program.add_map_linear_sparse(
                op.name,
                op.out_ciphertexts,
                np.ascontiguousarray(op.out_ct, dtype=np.uint32),
                np.ascontiguousarray(op.in_ct, dtype=np.uint32),
                np.ascontiguousarray(op.shift, dtype=np.uint64),
                np.ascontiguousarray(op.values.indptr, dtype=np.uint64),
                np.ascontiguousarray(op.values.index, dtype=np.uint32),
                np.ascontiguousarray(op.values.data, dtype=np.float64),
                op.period,
                np.ascontiguousarray(op.bias, dtype=np.float64) if op.bias.size else None,
                None if op.baby is None else np.ascontiguousarray(op.baby, dtype=np.uint64),
            )
        elif isinstance(op, RotateSumOp):
            program.add_rotate_sum(op.name, [(int(c), int(s)) for c, s in op.windows], op.fold)
        else:
            program.add_square(op.name)
    program.set_outputs(
        np.ascontiguousarray(spec.output.ct, dtype=np.uint32),
        np.ascontiguousarray(spec.output.slot, dtype=np.uint64),
    )
    return program
