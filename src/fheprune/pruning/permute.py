"""HE-PEx "Permute" (P3 / P3E): co-permute a pruned network so that more weight tiles are zero.

Reordering the neurons (FC) or channels (conv) of a network changes nothing it computes as long
as every weight, bias and per-channel parameter that touches a neuron moves with it: the rows
of the layer that produces the neurons and the columns of the layer that consumes them
(*co-permutation*, HE-PEx Section 4.2, Fig. 5). A tile of ``t1 x t2`` weights is a plaintext the
HE runtime skips when all its entries are zero, so the permutation is chosen to gather zeros
into whole tiles.

Neuron sets. A model exposes ``prunable_layers()`` (``nn.Linear`` / ``nn.Conv2d`` names in
forward order), ``neuron_chain()`` (consecutive ``(producer, consumer)`` pairs sharing neurons)
and ``flatten_after`` (the conv before the flatten into the first FC, or None). Each shared set
is permuted by one permutation, found by the C++ kernel on the concatenation
``[mask_producer | mask_consumer^T]`` (:func:`fheprune._core.copermute_rows_blocks`), each block
tiled on its own; conv weights ``[C_out, C_in, kh, kw]`` count as ``kh*kw`` matrices
``[C_out, C_in]``, each tiled separately. The network's input features and output neurons are
sets too (permuted on the client, in the clear, at no HE cost).

Rounds. Sets alternate in two phases, as HE-PEx alternates rows and columns: first the sets at
odd depth (outputs of the 1st, 3rd, ... layer: the *rows* of those layers), then the sets at even
depth (the network input, outputs of the 2nd, 4th, ... layer: the *columns*). No layer has both
its row and its column set in one phase. At most ``rounds`` rounds (HE-PEx demo: 5, with at most
20 k-means iterations each); stop early when a round changes nothing. A set's permutation is
kept only if it strictly lowers the exact number of non-zero tiles of the layers it touches, so
the tile sparsity never drops.

Conv -> FC boundary. HE-PEx inserts one "permute" layer before the first FC layer (a sparse
MatMul) because pooling after the last conv makes the conv/FC pair hard to co-permute. We add
no layer: ``nn.Flatten`` maps channel ``c`` of the last conv to the FC input features
``c*H*W .. (c+1)*H*W - 1`` (pooling is per channel), so permuting the channels by ``p`` and the
FC's columns by the block permutation ``[p[i]*H*W + j for i, j]`` is exact. What this gives up
is freely permuting the FC's columns inside a channel's block (spatial positions), which would
need that extra layer -- an HE matrix product with its rotations and a multiplicative level,
dearer than the few tiles it could empty. When ``H*W`` divides ``t2`` (e.g. global pooling,
``H*W = 1``) the FC's tiles depend on the channel order and join the objective; when ``t2``
divides ``H*W`` every FC tile column holds one channel's features and no channel order changes
the FC's tiles; otherwise the FC's tiles are left out of the clustering objective but still
checked exactly before a permutation is accepted.

Convention (numpy "gather" order everywhere): ``perm[i]`` is the *old* index of the neuron now
at position ``i``. For the returned ``input_perm`` and ``output_perm``::

    permuted_model(x[:, input_perm]) == model(x)[:, output_perm]

(dimension 1 of the first prunable layer's input: features for an MLP, channels for a CNN), so
the client feeds ``x[:, input_perm]`` and recovers ``model(x) = y[:, inverse(output_perm)]``
(:func:`unpermute_output`).

Per-channel parameters that follow a producer's outputs are permuted too: biases, pruning
reparametrizations (``weight_orig`` / ``weight_mask`` of ``torch.nn.utils.prune``),
``BatchNorm1d/2d`` modules registered between the producer and the next prunable layer, and
anything listed in ``per_channel``. Modules with non-scalar parameters that are none of these
make :func:`copermute_network` refuse (it could not prove the function unchanged). Grouped
convolutions (``groups > 1``) keep their channel order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from fheprune.errors import InputError
from fheprune.layouts import TilePlan, TileShape, zero_tile_mask

from . import copermute_ref

__all__ = [
    "Backend",
    "NeuronSet",
    "PermutationResult",
    "PermuteError",
    "copermute_network",
    "kernel_backend",
    "neuron_sets",
    "permute_input",
    "unpermute_output",
]

log = logging.getLogger(__name__)

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
#: (strip_rows, group_cols, segment_cols) of one block, as the kernel takes it.
Tiling = tuple[int, int, int]
Backend = Literal["auto", "cpp", "numpy"]
Layer = nn.Linear | nn.Conv2d


class PermuteError(InputError):
    """The model or masks cannot be co-permuted as given (the message says why and what to do)."""


@runtime_checkable
class _ChainModel(Protocol):
    def prunable_layers(self) -> list[str]: ...

    def neuron_chain(self) -> list[tuple[str, str]]: ...


class _HasTileDims(Protocol):
    @property
    def t1(self) -> int: ...
    @property
    def t2(self) -> int: ...


class _Kernel(Protocol):
    def __call__(
        self,
        blocks: Sequence[BoolArray],
        tilings: Sequence[Tiling],
        *,
        max_iter: int,
        restarts: int,
        candidates: int,
        seed: int,
    ) -> IntArray: ...


@dataclass(frozen=True)
class NeuronSet:
    """Neurons / channels permuted as one: outputs of ``producers``, inputs of ``consumers``.

    ``spatial[i]`` is how many input features of ``consumers[i]`` each neuron feeds (``H*W``
    after a flatten, else 1). ``depth`` is the set's position along the chain (network input 0);
    the two permutation phases take odd, then even depths.
    """

    name: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    spatial: tuple[int, ...]
    depth: int


@dataclass
class PermutationResult:
    """What :func:`copermute_network` did.

    ``permutations[name]``: the composed permutation of each neuron set (gather order: position
    ``i`` now holds old neuron ``perm[i]``); ``input_perm`` / ``output_perm``: the ones of the
    network input and output, for the client (identity when not permuted). ``masks``: the
    masks, permuted like the weights. Tile counts are over all prunable layers (conv weights as
    ``kh*kw`` matrices), ``history`` holds the zero tiles after each round.
    """

    permutations: dict[str, IntArray]
    input_perm: IntArray
    output_perm: IntArray
    masks: dict[str, Tensor]
    sets: list[NeuronSet]
    tile_shape: tuple[int, int]
    total_tiles: int
    zero_tiles_before: int
    zero_tiles_after: int
    tile_sparsity_before: float
    tile_sparsity_after: float
    rounds: int
    history: list[int] = field(default_factory=list)
    backend: str = "cpp"

    def as_arrays(self) -> dict[str, IntArray]:
        """Named index arrays for saving (``input``, ``output``, then ``set:<name>``)."""
        arrays = {"input": self.input_perm, "output": self.output_perm}
        arrays.update({f"set:{name}": perm for name, perm in self.permutations.items()})
        return arrays


# ------------------------------------------------------------------------------------------
# Kernels


def kernel_backend(backend: Backend = "auto") -> tuple[str, _Kernel]:
    """The clustering kernel: the C++ one (``fheprune._core``) or the numpy reference."""
    if backend not in ("auto", "cpp", "numpy"):
        raise InputError(f"backend must be 'auto', 'cpp' or 'numpy', got {backend!r}")
    if backend != "numpy":
        try:
            from fheprune import _core

            kernel: _Kernel = _core.copermute_rows_blocks
            return "cpp", kernel
        except (ImportError, AttributeError) as exc:
            if backend == "cpp":
                raise ImportError(
                    "the C++ co-permutation kernel (fheprune._core.copermute_rows_blocks) is not "
                    "built; build the extension (see README) or pass backend='numpy'"
                ) from exc
            log.warning("fheprune._core is not built: co-permuting with the (slow) numpy reference")
    return "numpy", copermute_ref.copermute_rows_blocks


# ------------------------------------------------------------------------------------------
# Tiles (the one definition: fheprune.layouts.tiles)


Dims = tuple[int, int]  # (t1, t2): one layer's weight tile, rows x columns


def _tile_counts(mask: BoolArray, dims: Dims) -> tuple[int, int]:
    """(non-zero tiles, all tiles) of one layer's mask."""
    zero = zero_tile_mask(torch.from_numpy(np.ascontiguousarray(mask)), TileShape(*dims))
    return int(zero.numel() - int(zero.sum())), int(zero.numel())


# ------------------------------------------------------------------------------------------
# Model structure


def _tile_dims(tile_shape: tuple[int, int] | _HasTileDims) -> tuple[int, int]:
    if isinstance(tile_shape, tuple):
        t1, t2 = tile_shape
    else:
        t1, t2 = tile_shape.t1, tile_shape.t2
    for name, value in (("t1", t1), ("t2", t2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"tile {name} must be a positive int, got {value!r}")
    return t1, t2


def _out_size(layer: Layer) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_size(layer: Layer) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _grouped(layer: Layer) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups != 1


def _layers(model: nn.Module) -> dict[str, Layer]:
    if not isinstance(model, _ChainModel):
        raise PermuteError(
            f"{type(model).__name__} must provide prunable_layers() and neuron_chain() (see "
            "fheprune.models.zoo.HEModel)"
        )
    modules = dict(model.named_modules())
    layers: dict[str, Layer] = {}
    for name in model.prunable_layers():
        module = modules.get(name)
        if not isinstance(module, nn.Linear | nn.Conv2d):
            raise PermuteError(
                f"prunable layer {name!r} is {type(module).__name__}, not nn.Linear / nn.Conv2d"
            )
        layers[name] = module
    if not layers:
        raise PermuteError(f"{type(model).__name__} has no prunable layers")
    return layers


def neuron_sets(
    model: nn.Module, *, permute_input: bool = True, permute_output: bool = True
) -> list[NeuronSet]:
    """The neuron sets of ``model`` that can be permuted, in forward order.

    Hidden sets are named after their (first) producer, the network's input and output sets
    ``"input"`` and ``"output"``. Sets touching a grouped convolution are left out.
    """
    layers = _layers(model)
    assert isinstance(model, _ChainModel)
    names = list(layers)
    flatten_after = getattr(model, "flatten_after", None)
    # Union-find over ("out", layer) / ("in", layer) ends joined by the chain.
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    spatial: dict[str, int] = {}
    has_producer: set[str] = set()
    has_consumer: set[str] = set()
    for producer, consumer in model.neuron_chain():
        if producer not in layers or consumer not in layers:
            raise PermuteError(
                f"neuron_chain pair ({producer!r}, {consumer!r}) names a layer that is not in "
                f"prunable_layers() = {names}"
            )
        p, q = layers[producer], layers[consumer]
        n_out, n_in = _out_size(p), _in_size(q)
        if isinstance(p, nn.Conv2d) and isinstance(q, nn.Linear):
            if flatten_after is not None and flatten_after != producer:
                raise PermuteError(
                    f"conv {producer!r} feeds FC {consumer!r}, but flatten_after = "
                    f"{flatten_after!r}"
                )
            if n_in % n_out:
                raise PermuteError(
                    f"FC {consumer!r} has {n_in} inputs, not a multiple of the {n_out} channels "
                    f"of {producer!r}: cannot map channels to flattened features"
                )
            spatial[consumer] = n_in // n_out
        elif isinstance(p, nn.Linear) and isinstance(q, nn.Conv2d):
            raise PermuteError(f"FC {producer!r} feeding conv {consumer!r} is not supported")
        elif n_out != n_in:
            raise PermuteError(
                f"neuron_chain pair ({producer!r}, {consumer!r}): {producer!r} has {n_out} "
                f"outputs but {consumer!r} has {n_in} inputs"
            )
        else:
            spatial[consumer] = 1
        parent[find(("out", producer))] = find(("in", consumer))
        has_producer.add(consumer)
        has_consumer.add(producer)
    for name in layers:
        if name not in spatial:
            spatial[name] = 1
        find(("out", name))
        find(("in", name))

    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for end in list(parent):
        groups.setdefault(find(end), []).append(end)
    # Depth along the chain: input ends of unproduced layers are 0; out = in + 1.
    depth: dict[tuple[str, str], int] = {}
    for name in names:
        root_in = find(("in", name))
        depth.setdefault(root_in, 0)
        depth[find(("out", name))] = max(depth.get(find(("out", name)), 0), depth[root_in] + 1)

    sets: list[NeuronSet] = []
    unproduced = [n for n in names if n not in has_producer]
    unconsumed = [n for n in names if n not in has_consumer]
    for root, ends in groups.items():
        producers = tuple(n for n in names if ("out", n) in ends)
        consumers = tuple(n for n in names if ("in", n) in ends)
        if not producers:
            # A network input: only the first layer's, and only when it is the only one.
            if not (permute_input and unproduced == [names[0]] and consumers == (names[0],)):
                continue
            name, size = "input", _in_size(layers[names[0]])
        elif not consumers:
            if not (permute_output and unconsumed == [names[-1]] and producers == (names[-1],)):
                continue
            name, size = "output", _out_size(layers[names[-1]])
        else:
            name, size = producers[0], _out_size(layers[producers[0]])
        if any(_grouped(layers[n]) for n in producers + consumers):
            log.info("neuron set %r touches a grouped convolution: not permuted", name)
            continue
        sets.append(
            NeuronSet(
                name=name,
                size=size,
                producers=producers,
                consumers=consumers,
                spatial=tuple(spatial[c] for c in consumers),
                depth=depth[root],
            )
        )
    order = {n: i for i, n in enumerate(names)}
    sets.sort(key=lambda s: (s.depth, order[(s.producers or s.consumers)[0]]))
    return sets


def _per_channel_modules(
    model: nn.Module,
    layers: Mapping[str, Layer],
    per_channel: Mapping[str, Sequence[str]],
    permute_input: bool,
) -> dict[str, list[tuple[str, Tensor]]]:
    """Tensors to permute along dim 0 with each producer's outputs (besides its own weights).

    Walks the modules in registration order; a module between prunable layers ``p`` and the
    next one sits on ``p``'s outputs. BatchNorm and PReLU tensors follow ``p``; modules with a
    ``coefficients()`` method (polynomial activations) and tensors whose leading dimension is
    not the width of those neurons are element-wise and left alone; any other tensor of that
    width makes us refuse, since moving the neurons without it would change the function.
    """
    modules = dict(model.named_modules())
    named = dict(model.named_parameters()) | dict(model.named_buffers())
    extra: dict[str, list[tuple[str, Tensor]]] = {name: [] for name in layers}
    listed: set[str] = set()
    for producer, tensor_names in per_channel.items():
        if producer not in layers:
            raise PermuteError(f"per_channel names {producer!r}, which is not a prunable layer")
        for tname in tensor_names:
            if tname not in named:
                raise PermuteError(f"per_channel[{producer!r}] names unknown tensor {tname!r}")
            extra[producer].append((tname, named[tname]))
            listed.add(tname)
    first = next(iter(layers.values()))
    current: str | None = None
    for name, module in modules.items():
        if name in layers:
            current = name
            continue
        own = [
            (f"{name}.{t}" if name else t, v)
            for t, v in [
                *module.named_parameters(recurse=False),
                *module.named_buffers(recurse=False),
            ]
            if (f"{name}.{t}" if name else t) not in listed
        ]
        width = _out_size(layers[current]) if current is not None else _in_size(first)
        wide = [(t, v) for t, v in own if v.ndim >= 1 and v.shape[0] == width and v.numel() > 1]
        if not wide or callable(getattr(module, "coefficients", None)):
            continue
        if current is None:
            if not permute_input:
                continue
            raise PermuteError(
                f"module {name!r} ({type(module).__name__}) has per-feature tensors "
                f"{[t for t, _ in wide]} before the first prunable layer; the network input "
                "cannot be permuted under it: pass permute_input=False"
            )
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.PReLU):
            extra[current].extend((t, v) for t, v in own if v.ndim == 1 and v.shape[0] == width)
            continue
        raise PermuteError(
            f"module {name!r} ({type(module).__name__}) has per-neuron tensors "
            f"{[t for t, _ in wide]} on the outputs of {current!r}: list them in "
            f"per_channel={{{current!r}: [names]}} if they are per-neuron (dim 0) and "
            "element-wise, else this model cannot be co-permuted"
        )
    return extra


# ------------------------------------------------------------------------------------------
# Blocks for the kernel and permutation of tensors


def _producer_block(mask: BoolArray, dims: Dims) -> tuple[BoolArray, Tiling]:
    t1, t2 = dims
    if mask.ndim == 2:
        return mask, (t1, t2, 0)
    co, ci, kh, kw = mask.shape
    return np.ascontiguousarray(mask.transpose(0, 2, 3, 1)).reshape(co, kh * kw * ci), (t1, t2, ci)


def _consumer_block(mask: BoolArray, spatial: int, dims: Dims) -> tuple[BoolArray, Tiling] | None:
    t1, t2 = dims
    if mask.ndim == 4:
        co, ci, kh, kw = mask.shape
        block = np.ascontiguousarray(mask.transpose(1, 2, 3, 0)).reshape(ci, kh * kw * co)
        return block, (t2, t1, co)
    if spatial == 1:
        return mask.T, (t2, t1, 0)
    if t2 % spatial == 0:  # a tile column holds t2 / spatial whole channels
        out, feats = mask.shape
        channels = feats // spatial
        per_channel: BoolArray = np.ascontiguousarray(
            mask.reshape(out, channels, spatial).transpose(1, 0, 2)
        ).reshape(channels, out * spatial)
        return per_channel, (t2 // spatial, t1 * spatial, 0)
    return None  # t2 divides spatial (channel order is irrelevant) or the tiles straddle channels


def _set_blocks(
    s: NeuronSet, masks: Mapping[str, BoolArray], tiles: Mapping[str, Dims]
) -> tuple[list[BoolArray], list[Tiling]]:
    blocks: list[tuple[BoolArray, Tiling]] = [
        _producer_block(masks[p], tiles[p]) for p in s.producers
    ]
    for consumer, spatial in zip(s.consumers, s.spatial, strict=True):
        block = _consumer_block(masks[consumer], spatial, tiles[consumer])
        if block is not None:
            blocks.append(block)
    # The kernel needs nested strip heights: keep the largest and those dividing it in chain.
    strips = sorted({t[0] for _, t in blocks}, reverse=True)
    kept = strips[:1]
    for strip in strips[1:]:
        if kept[-1] % strip == 0:
            kept.append(strip)
    blocks = [(b, t) for b, t in blocks if t[0] in kept]
    return [b for b, _ in blocks], [t for _, t in blocks]


def _column_index(perm: IntArray, spatial: int) -> IntArray:
    """Feature permutation of a consumer after a flatten: channel block p[i] moves to block i."""
    if spatial == 1:
        return perm
    return (perm[:, None] * spatial + np.arange(spatial)[None, :]).reshape(-1)


def _permute_mask_set(
    s: NeuronSet, masks: Mapping[str, BoolArray], perm: IntArray
) -> dict[str, BoolArray]:
    out = {p: masks[p][perm] for p in s.producers}
    for consumer, spatial in zip(s.consumers, s.spatial, strict=True):
        out[consumer] = masks[consumer][:, _column_index(perm, spatial)]
    return out


def _reorder(t: Tensor, index: IntArray, dim: int) -> None:
    idx = torch.as_tensor(index, device=t.device)
    t.copy_(t.index_select(dim, idx))


def _tensors(module: nn.Module, names: Sequence[str]) -> list[Tensor]:
    found: list[Tensor] = []
    for n in names:
        v: Tensor | None = module._parameters.get(n, None)
        if v is None:
            v = module._buffers.get(n, None)
        if v is not None:
            found.append(v)
    return found


def _apply_set(
    s: NeuronSet,
    layers: Mapping[str, Layer],
    extra: Mapping[str, Sequence[tuple[str, Tensor]]],
    perm: IntArray,
) -> None:
    with torch.no_grad():
        for p in s.producers:
            module = layers[p]
            for t in _tensors(module, ("weight", "weight_orig", "weight_mask")):
                _reorder(t, perm, 0)
            for t in _tensors(module, ("bias", "bias_orig", "bias_mask")):
                _reorder(t, perm, 0)
            for _, t in extra[p]:
                _reorder(t, perm, 0)
        for consumer, spatial in zip(s.consumers, s.spatial, strict=True):
            module = layers[consumer]
            for t in _tensors(module, ("weight", "weight_orig", "weight_mask")):
                _reorder(t, _column_index(perm, spatial), 1)


# ------------------------------------------------------------------------------------------
# The permute step


@dataclass
class _Search:
    """State of one search: composed permutations, permuted masks, their tile counts."""

    perms: dict[str, IntArray]
    masks: dict[str, BoolArray]
    counts: dict[str, tuple[int, int]]
    history: list[int]
    rounds: int = 0

    def zero_tiles(self) -> int:
        return sum(total - nonzero for nonzero, total in self.counts.values())


def _search(
    sets: Sequence[NeuronSet],
    masks: Mapping[str, BoolArray],
    start: Mapping[str, IntArray],
    kernel: _Kernel,
    tiles: Mapping[str, Dims],
    *,
    rounds: int,
    max_iter: int,
    restarts: int,
    candidates: int,
    seed: int,
) -> _Search:
    """Alternating co-permutation from the set orders ``start`` (gather order)."""
    current = dict(masks)
    for s in sets:
        current.update(_permute_mask_set(s, current, start[s.name]))
    state = _Search(
        perms={name: p.copy() for name, p in start.items()},
        masks=current,
        counts={name: _tile_counts(m, tiles[name]) for name, m in current.items()},
        history=[],
    )
    for rnd in range(rounds):
        state.rounds = rnd + 1
        changed = False
        for phase in (1, 0):  # rows of the 1st, 3rd, ... layers, then their columns
            for index, s in enumerate(sets):
                if s.depth % 2 != phase:
                    continue
                blocks, tilings = _set_blocks(s, state.masks, tiles)
                if not blocks:
                    continue
                perm = np.asarray(
                    kernel(
                        blocks,
                        tilings,
                        max_iter=max_iter,
                        restarts=restarts,
                        candidates=candidates,
                        seed=(seed * 1_000_003 + rnd * 7_919 + index) % 2**64,
                    ),
                    dtype=np.int64,
                )
                if np.array_equal(perm, np.arange(s.size)):
                    continue
                touched = [*s.producers, *s.consumers]
                trial = _permute_mask_set(s, state.masks, perm)
                new_counts = {n: _tile_counts(trial[n], tiles[n]) for n in touched}
                old = sum(state.counts[n][0] for n in touched)
                if sum(new_counts[n][0] for n in touched) >= old:
                    continue  # not strictly better on the exact count: keep the order
                state.masks.update(trial)
                state.counts.update(new_counts)
                state.perms[s.name] = state.perms[s.name][perm]
                changed = True
        state.history.append(state.zero_tiles())
        if not changed:
            break
    return state


def copermute_network(
    model: nn.Module,
    tile_shape: tuple[int, int] | _HasTileDims | TilePlan,
    masks: Mapping[str, Tensor] | None = None,
    *,
    rounds: int = 5,
    max_iter: int = 20,
    restarts: int = 1,
    candidates: int = 16,
    network_restarts: int = 0,
    seed: int = 0,
    permute_input: bool = True,
    permute_output: bool = True,
    per_channel: Mapping[str, Sequence[str]] | None = None,
    backend: Backend = "auto",
) -> PermutationResult:
    """Co-permute ``model`` **in place** to raise its tile sparsity; the function is unchanged.

    Args:
        model: a model with ``prunable_layers()``, ``neuron_chain()`` and optionally
            ``flatten_after`` (see the module docstring).
        tile_shape: ``(t1, t2)`` -- rows (outputs) x columns (inputs) of a weight tile -- or an
            object with ``t1`` / ``t2`` (``fheprune.layouts.TileShape``): every layer gets
            that tile; or a :class:`~fheprune.layouts.TilePlan`: each layer its own (the
            runtime's alternating orientations, what the HE-PEx schemes pass).
        masks: ``{layer: bool tensor shaped like its weight}`` (True = kept); default: the
            non-zero entries of the weights. Returned permuted in the result; not modified.
        rounds: at most this many rounds (each: odd-depth sets, then even-depth sets).
        max_iter, restarts, candidates: clustering effort per set and round (see
            :func:`fheprune._core.copermute_rows_blocks`).
        network_restarts: extra alternating searches, each from random orders of all neuron
            sets; the best result (zero tiles) wins. The alternation is a coordinate descent
            (one set at a time), so on small networks restarts find better optima: on
            HE-PEx's Fig. 3 network (6-4-8-4, 2x2 tiles, 61% pruned) the plain search reached
            the exhaustive optimum in 20 of 30 random masks, with 4 restarts in 30 of 30.
            Each costs about one more plain search.
        seed: makes the result deterministic.
        permute_input / permute_output: also permute the network input features / outputs
            (the client applies ``input_perm`` / undoes ``output_perm`` in the clear).
        per_channel: ``{producer: [qualified tensor names]}`` of extra per-neuron tensors
            (dim 0) that must follow a producer's outputs.
        backend: "cpp" (the C++ kernel), "numpy" (the reference) or "auto" (C++ if built).

    Returns:
        A :class:`PermutationResult`; ``permuted(x[:, input_perm]) == original(x)[:, output_perm]``.
    """
    if rounds < 0 or network_restarts < 0:
        raise InputError(
            f"rounds and network_restarts must be >= 0, got {rounds}, {network_restarts}"
        )
    layers = _layers(model)
    if isinstance(tile_shape, TilePlan):
        tiles = {name: (tile_shape.of(name).t1, tile_shape.of(name).t2) for name in layers}
        t1, t2 = tile_shape.base.t1, tile_shape.base.t2
    else:
        t1, t2 = _tile_dims(tile_shape)
        tiles = dict.fromkeys(layers, (t1, t2))
    backend_name, kernel = kernel_backend(backend)
    original: dict[str, BoolArray] = {}
    for name, layer in layers.items():
        if masks is None:
            original[name] = (layer.weight.detach() != 0).cpu().numpy()
            continue
        if name not in masks:
            raise PermuteError(f"masks has no entry for prunable layer {name!r}")
        given = masks[name]
        if tuple(given.shape) != tuple(layer.weight.shape):
            raise PermuteError(
                f"mask of {name!r} has shape {tuple(given.shape)}, but its weight has shape "
                f"{tuple(layer.weight.shape)}"
            )
        original[name] = given.detach().cpu().numpy().astype(bool, copy=True)
    sets = neuron_sets(model, permute_input=permute_input, permute_output=permute_output)
    extra = _per_channel_modules(model, layers, per_channel or {}, permute_input)

    effort = {
        "rounds": rounds,
        "max_iter": max_iter,
        "restarts": restarts,
        "candidates": candidates,
        "seed": seed,
    }
    identity = {s.name: np.arange(s.size, dtype=np.int64) for s in sets}
    before = _search(sets, original, identity, kernel, tiles, **{**effort, "rounds": 0})
    best = _search(sets, original, identity, kernel, tiles, **effort)
    rng = np.random.default_rng(seed)
    for r in range(network_restarts):
        start = {s.name: rng.permutation(s.size).astype(np.int64) for s in sets}
        found = _search(sets, original, start, kernel, tiles, **{**effort, "seed": seed + r + 1})
        if found.zero_tiles() > best.zero_tiles():
            best = found
    if best.zero_tiles() < before.zero_tiles():  # cannot happen (every step is checked): guard
        best = before

    for s in sets:
        if not np.array_equal(best.perms[s.name], identity[s.name]):
            _apply_set(s, layers, extra, best.perms[s.name])
    total = sum(c[1] for c in best.counts.values())
    zero_before, zero_after = before.zero_tiles(), best.zero_tiles()
    names = list(layers)
    input_perm = best.perms.get("input", np.arange(_in_size(layers[names[0]]), dtype=np.int64))
    output_perm = best.perms.get("output", np.arange(_out_size(layers[names[-1]]), dtype=np.int64))
    out_masks: dict[str, Tensor] = {}
    for name, permuted in best.masks.items():
        device = masks[name].device if masks is not None else layers[name].weight.device
        out_masks[name] = torch.from_numpy(permuted.copy()).to(device)
    log.info(
        "co-permutation %dx%d: zero tiles %d -> %d of %d in %d round(s)",
        t1,
        t2,
        zero_before,
        zero_after,
        total,
        best.rounds,
    )
    return PermutationResult(
        permutations=best.perms,
        input_perm=input_perm,
        output_perm=output_perm,
        masks=out_masks,
        sets=sets,
        tile_shape=(t1, t2),
        total_tiles=total,
        zero_tiles_before=zero_before,
        zero_tiles_after=zero_after,
        tile_sparsity_before=zero_before / total if total else 0.0,
        tile_sparsity_after=zero_after / total if total else 0.0,
        rounds=best.rounds,
        history=best.history,
        backend=backend_name,
    )


def permute_input(x: Tensor, result: PermutationResult) -> Tensor:
    """What the client feeds the permuted model: ``x[:, input_perm]``."""
    return x[:, torch.as_tensor(result.input_perm, device=x.device)]


def unpermute_output(y: Tensor, result: PermutationResult) -> Tensor:
    """The original model's output from the permuted model's: ``y[:, argsort(output_perm)]``."""
    inverse = np.argsort(result.output_perm).astype(np.int64)
    return y[:, torch.as_tensor(inverse, device=y.device)]


def permute_fn(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    tile_shape: tuple[int, int] | _HasTileDims | TilePlan,
    /,
) -> tuple[dict[str, Tensor], PermutationResult]:
    """The Permute step in the form the schemes take (:class:`fheprune.pruning.PermuteFn`)."""
    result = copermute_network(model, tile_shape, masks)
    return result.masks, result
