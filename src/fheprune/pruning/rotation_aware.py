"""Rotation-aware pruning on the multi-channel convolution layout (SpENCNN, Artemis, Hunter).

Every method here prunes *units* of :mod:`fheprune.layouts.channels` (THE definition; nothing
here re-derives where a weight lives):

* **position unit** (input ciphertext i, kernel position p) of a conv: SpENCNN's sub-block,
  Artemis' "positional" group. Zero -> the inner rotation of input i by p is never computed
  (p = 0, the top-left tap, reads the input unrotated) and its plaintext multiplies vanish.
* **diagonal unit** (output ciphertext o, input ciphertext i, channel offset r) of a conv:
  Artemis' "diagonal" group. Zero for every i -> output o's outer rotation by r vanishes.
* **fc diagonal unit** (input ciphertext i, slot offset k) of a Linear: SpENCNN's FC
  sub-block (a generalized diagonal; k = 0 needs no rotation).

Pieces, each small and composable:

1. unit helpers: :func:`model_units` (ids per weight, dense 0..count-1, with what a zero unit
   saves), :func:`unit_norms`, :func:`alive_units`, :func:`unit_mask`, :func:`is_unit_aligned`,
   :func:`select_units` (global lowest-k with a per-layer floor), :func:`group_weights`;
2. :func:`subblock_prune`: SpENCNN Algorithm 1 (avg-L2 importance, prune the least important
   sub-blocks, fine-tune with masks fixed, repeat while within the accuracy budget);
3. :func:`he_group_conv`, :func:`grouped_from_dense`, :func:`g_base`: HE-group convolution;
4. :class:`GroupLasso` + :func:`artemis_prune`: group-Lasso training, threshold, fine-tune;
5. :func:`hunter_prune`: packing-aligned L1 magnitude pruning of whole units, one-shot;
6. :func:`magnitude_prune` (non-structured) and :func:`channel_prune`: plaintext baselines;
7. :func:`spencnn_prune`: HE-group convolution at G_base, then sub-block pruning.

Every method returns a :class:`RotationAwareResult` with masks (``{layer: bool tensor}``,
``True`` = live) the trainer accepts, the trained model and its accuracy. Budgets are absolute
accuracy drops against the dense baseline (0.005 = 0.5 points), as in
:func:`fheprune.training.within_budget`. Training and evaluation go through a
:class:`Harness` (:class:`TrainerHarness` wraps :func:`fheprune.training.train`: seeded,
progress bars, masks fixed), so tests can substitute a fake one.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from fheprune.errors import InputError, InputTypeError
from fheprune.layouts import layer_module, layer_weights, output_layer_names
from fheprune.layouts.channels import (
    ChannelPacking,
    IntArray,
    LayoutPlan,
    UnitKind,
    conv_units,
    layer_units,
    plan_layout,
)
from fheprune.training import CallCheckpoints, Loaders, TrainConfig, evaluate, train
from fheprune.training.trainer import Distillation, Regularizer, TrainingDivergedError

from .base import Masks, apply_masks, check_fraction, full_masks, prune_count, select_lowest

__all__ = [
    "DEFAULT_SLOTS",
    "PTM_COST",
    "GroupLasso",
    "Harness",
    "LayerUnits",
    "RotationAwareResult",
    "TrainerHarness",
    "UnitScope",
    "alive_unit_counts",
    "alive_units",
    "artemis_prune",
    "channel_masks",
    "channel_prune",
    "dense_weight_count",
    "g_base",
    "group_weights",
    "grouped_builder",
    "grouped_from_dense",
    "has_finite_weights",
    "he_group_conv",
    "hunter_prune",
    "in_group_mask",
    "is_unit_aligned",
    "magnitude_prune",
    "masks_without_units",
    "model_units",
    "select_units",
    "spencnn_prune",
    "subblock_prune",
    "unit_mask",
    "unit_norms",
]

log = logging.getLogger(__name__)

#: Slots per ciphertext (N = 16384): what LeNetLike's ~7 levels need at 128-bit security.
DEFAULT_SLOTS = 8192
#: Cost of one plaintext multiply in rotations: 0.49 ms / 11.5 ms for SEAL at N = 16384
#: (DESIGN.md). Used for the "small constant" of the Artemis group weights.
PTM_COST = 0.04

#: Which layers a method prunes: "conv" only, or "all" (conv and Linear).
UnitScope = Literal["conv", "all"]
LayerUnitKind = Literal["position", "diagonal", "fc"]
Norm = Literal["l1", "l2", "avg_l2", "mean_abs", "rms"]


# ---------------------------------------------------------------------------------------
# 1. Units


@dataclass(frozen=True, eq=False)
class LayerUnits:
    """The units of one layer's weight, renumbered densely (0 .. count-1).

    ``ids``: unit of every weight (int64, the weight's shape). ``layout_ids[j]``: the id
    :mod:`fheprune.layouts.channels` gives dense unit ``j``. ``sizes[j]``: weights in unit j.
    ``rotations[j]``: rotations removed when unit j is zero -- 1 for a position unit with
    p != 0 or an fc diagonal with k != 0; for a diagonal unit its share 1/m of output o's
    outer rotations for offset r (one per phase o's channels use, at r * block - phase
    offset; none for r = 0 at phase 0), m = the diagonal units (o, *, r) that exist (m =
    n_input_ciphertexts for a dense conv); 0 for unrotated units (p = 0, k = 0).
    ``plaintexts[j]``: plaintext multiplies removed (distinct plaintexts the unit's weights
    sit in; a conv plaintext is (o, i, r, p, output phase), an fc plaintext its diagonal).
    A conv whose output is split into sub-maps (:mod:`fheprune.layouts.channels`) has every
    term, so every plaintext and outer rotation, once per output sub-map. (Its inner
    rotations, one per (input sub-map, block offset), are shared by kernel positions of
    different output sub-maps; a position unit still counts 1 for p != 0 there.)
    """

    name: str
    kind: LayerUnitKind
    ids: Tensor
    layout_ids: IntArray
    sizes: Tensor
    rotations: Tensor
    plaintexts: Tensor

    @property
    def count(self) -> int:
        return int(self.layout_ids.shape[0])


def _dense(raw: IntArray) -> tuple[IntArray, IntArray]:
    """(distinct layout ids, dense id 0..count-1 of every weight)."""
    uniq, inverse = np.unique(raw, return_inverse=True)
    return uniq.astype(np.int64), inverse.reshape(raw.shape).astype(np.int64)


def _distinct_per_unit(dense_ids: IntArray, keys: IntArray, count: int) -> IntArray:
    """Number of distinct ``keys`` among each unit's weights."""
    pairs = np.unique(np.stack([dense_ids.ravel(), keys.ravel()], axis=1), axis=0)
    return np.bincount(pairs[:, 0], minlength=count).astype(np.int64)


def _layer_units(plan: LayoutPlan, name: str, kind: UnitKind) -> LayerUnits:
    layer = plan.layers[name]
    m = layer.module
    if isinstance(m, nn.Linear):
        raw = layer_units(plan, name, kind)
        uniq, dense = _dense(raw)
        k = uniq % plan.slots
        rotations = (k != 0).astype(np.float64)
        plaintexts = np.ones(uniq.shape[0], dtype=np.int64)
        lkind: LayerUnitKind = "fc"
    elif isinstance(m, nn.Conv2d):
        assert isinstance(layer.inputs, ChannelPacking)
        assert isinstance(layer.outputs, ChannelPacking)
        shape = tuple(m.weight.shape)
        taps = int(shape[2] * shape[3])
        diag = conv_units(shape, int(m.groups), layer.inputs, layer.outputs, "diagonal")
        tap = np.broadcast_to(np.arange(taps).reshape(1, 1, *shape[2:]), diag.shape)
        phases_out = layer.outputs.phases
        out_phase = layer.outputs.phase(np.arange(shape[0])).reshape(-1, 1, 1, 1)
        # One plaintext per (o, i, r, p, output phase): phase-packed outputs of one block
        # meet the input at different shifts.
        plaintext = (diag * taps + tap) * phases_out + out_phase
        # A split output (sub-maps, see channels.py) repeats every term once per output
        # sub-map: its ciphertexts q * base_ciphertexts + o each get their own plaintexts and
        # outer rotations, while unit ids name the base ciphertexts o.
        # A replicated output (the first convolution's, channels.py) writes each term once
        # per copy as well.
        submaps = int(np.unique(layer.outputs.pixels()[0]).size) * layer.outputs.replicas
        raw = diag if kind == "diagonal" else layer_units(plan, name, "position")
        uniq, dense = _dense(raw)
        lanes = layer.inputs.lanes
        if kind == "diagonal":
            r = uniq % lanes
            out_ct = uniq // lanes // layer.inputs.base_ciphertexts
            key = out_ct * lanes + r
            _, key_inv, key_count = np.unique(key, return_inverse=True, return_counts=True)
            sharing = key_count[key_inv.ravel()]
            # Output o's outer rotations for offset r: one per phase its channels use, at
            # r * block - phase offset; only (r = 0, phase 0) needs none.
            ct_out, _ = layer.outputs.place(np.arange(shape[0]))
            ph_out = layer.outputs.phase(np.arange(shape[0]))
            used = np.zeros((layer.outputs.base_ciphertexts, phases_out), dtype=bool)
            used[ct_out, ph_out] = True
            phases_of = used.sum(axis=1)[out_ct]
            first_free = used[out_ct, 0]
            rotations = submaps * (phases_of - ((r == 0) & first_free)) / sharing
        else:
            rotations = (uniq % taps != 0).astype(np.float64)
        plaintexts = submaps * _distinct_per_unit(dense, plaintext, uniq.shape[0])
        lkind = kind
    else:
        raise InputTypeError(f"layer {name!r} ({type(m).__name__}) has no units")
    sizes = np.bincount(dense.ravel(), minlength=uniq.shape[0]).astype(np.int64)
    return LayerUnits(
        name=name,
        kind=lkind,
        ids=torch.from_numpy(np.ascontiguousarray(dense)),
        layout_ids=uniq,
        sizes=torch.from_numpy(sizes),
        rotations=torch.from_numpy(rotations.astype(np.float64)),
        plaintexts=torch.from_numpy(plaintexts),
    )


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, int, int]:
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None or len(shape) != 3:
        raise InputError(
            f"need the (C, H, W) input shape of the model (give input_shape), got {shape!r}"
        )
    c, h, w = (int(v) for v in shape)
    return c, h, w


def model_units(
    model: nn.Module,
    *,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
    kind: UnitKind = "position",
    layers: UnitScope = "all",
    plan: LayoutPlan | None = None,
) -> dict[str, LayerUnits]:
    """Units of the model's conv layers (``kind``) and, with ``layers="all"``, its Linear layers
    (fc diagonals), from ``plan_layout(model, slots, input_shape)``; input order."""
    if layers not in ("conv", "all"):
        raise InputError(f'layers must be "conv" or "all", got {layers!r}')
    if kind not in ("position", "diagonal"):
        raise InputError(f'kind must be "position" or "diagonal", got {kind!r}')
    if plan is None:
        plan = plan_layout(model, slots, _input_shape(model, input_shape))
    out: dict[str, LayerUnits] = {}
    for name, layer in plan.layers.items():
        if layer.kind == "conv" or (layer.kind == "fc" and layers == "all"):
            out[name] = _layer_units(plan, name, kind)
    return out


def unit_norms(weight: Tensor, units: LayerUnits, norm: Norm = "l2") -> Tensor:
    """Per-unit norm of ``weight`` ([count], differentiable; zero units have a zero gradient).

    "l1": sum |w|; "l2": ||w||_2; "avg_l2": ||w||_2 / size (SpENCNN's importance, size =
    dim(w_p) = weights in the unit, so units of different sizes compare fairly); "mean_abs":
    sum |w| / size (Hunter / HE-PEx T-Avg); "rms": ||w||_2 / sqrt(size).
    """
    ids = units.ids.to(weight.device).reshape(-1)
    flat = weight.reshape(-1)
    sizes = units.sizes.to(device=weight.device, dtype=weight.dtype)
    zeros = torch.zeros(units.count, dtype=weight.dtype, device=weight.device)
    if norm in ("l1", "mean_abs"):
        total = zeros.index_add(0, ids, flat.abs())
        return total if norm == "l1" else total / sizes
    sq = zeros.index_add(0, ids, flat * flat)
    l2 = torch.where(sq > 0, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), zeros)
    if norm == "l2":
        return l2
    if norm == "avg_l2":
        return l2 / sizes
    if norm == "rms":
        return l2 / sizes.sqrt()
    raise InputError(f"unknown norm {norm!r}")


def alive_units(tensor: Tensor, units: LayerUnits) -> Tensor:
    """Bool [count]: a unit is alive when any of its entries is live (a bool mask's True, a
    weight's non-zero)."""
    live = tensor if tensor.dtype == torch.bool else tensor != 0
    counts = torch.zeros(units.count, dtype=torch.int64).index_add(
        0, units.ids.reshape(-1), live.detach().cpu().reshape(-1).to(torch.int64)
    )
    return counts > 0


def unit_mask(units: LayerUnits, alive: Tensor) -> Tensor:
    """Bool mask shaped like the weight: True exactly on the weights of alive units."""
    if alive.shape != (units.count,):
        raise InputError(f"alive must have shape ({units.count},), got {tuple(alive.shape)}")
    return alive.to(torch.bool).cpu()[units.ids]


def is_unit_aligned(mask: Tensor, units: LayerUnits) -> bool:
    """Whether every unit is either wholly live or wholly pruned in ``mask``."""
    return bool(torch.equal(mask.cpu(), unit_mask(units, alive_units(mask, units))))


def alive_unit_counts(
    masks: Mapping[str, Tensor], units: Mapping[str, LayerUnits]
) -> dict[str, tuple[int, int]]:
    """(alive units, all units) per layer of ``units``."""
    return {
        name: (int(alive_units(masks[name], u).sum()), u.count)
        for name, u in units.items()
        if name in masks
    }


def masks_without_units(
    masks: Mapping[str, Tensor], units: Mapping[str, LayerUnits], dead: Mapping[str, Tensor]
) -> Masks:
    """``masks`` with every weight of the units marked in ``dead`` (bool [count]) pruned."""
    out = {name: m.clone() for name, m in masks.items()}
    for name, d in dead.items():
        out[name] = out[name] & unit_mask(units[name], ~d.to(torch.bool))
    return out


def select_units(
    scores: Mapping[str, Tensor], alive: Mapping[str, Tensor], k: int, *, min_alive: int = 1
) -> dict[str, Tensor]:
    """The ``k`` alive units with the lowest scores over all layers (bool [count] per layer).

    Ties go to the earlier layer / lower unit (stable). A layer never drops below
    ``min_alive`` alive units, so no layer is cut off entirely; fewer than ``k`` units are
    returned when the floor leaves no more.
    """
    chosen = {name: torch.zeros_like(alive[name], dtype=torch.bool) for name in scores}
    if k <= 0:
        return chosen
    names = list(scores)
    flat = torch.cat([scores[n].detach().cpu().to(torch.float64).reshape(-1) for n in names])
    layer_of = torch.cat(
        [torch.full((scores[n].numel(),), i, dtype=torch.int64) for i, n in enumerate(names)]
    )
    offset = np.cumsum([0] + [scores[n].numel() for n in names])
    live = torch.cat([alive[n].cpu().reshape(-1) for n in names])
    left = [int(alive[n].sum()) for n in names]
    order = torch.sort(flat.masked_fill(~live, math.inf), stable=True).indices
    taken = 0
    for idx in order.tolist():
        if taken >= k or not bool(live[idx]):
            break
        li = int(layer_of[idx])
        if left[li] <= min_alive:
            continue
        chosen[names[li]][idx - int(offset[li])] = True
        left[li] -= 1
        taken += 1
    return chosen


def group_weights(units: LayerUnits, ptm_cost: float = PTM_COST) -> Tensor:
    """Artemis group weight w_g of every unit: rotations removed + ptm_cost * plaintexts.

    The rotation part is :attr:`LayerUnits.rotations`: a positional unit (i, p) saves its
    inner rotation (1) when p != 0; a diagonal unit (o, i, r) with r != 0 carries its share
    1/m of output o's outer rotation r (m = n_input_ciphertexts for a dense conv), since
    the rotation vanishes only when all m are zero; an fc diagonal with k != 0 saves 1. The
    constant ``ptm_cost`` (a plaintext multiply priced in rotations, default 0.49 ms / 11.5 ms
    at N = 16384) times the plaintext multiplies the unit removes keeps unrotated units
    (p = 0, r = 0, k = 0) in the penalty, at the low price of what they actually cost.
    """
    if not (math.isfinite(ptm_cost) and ptm_cost >= 0):
        raise InputError(f"ptm_cost must be a non-negative finite number, got {ptm_cost}")
    return units.rotations + ptm_cost * units.plaintexts.to(torch.float64)


# ---------------------------------------------------------------------------------------
# Results and the training harness


@dataclass
class RotationAwareResult:
    """What a rotation-aware method produced.

    ``weight_sparsity``: 1 - live weights / weights of the *dense, ungrouped* network, so the
    cross-group blocks an HE-group convolution removes count as pruned. ``alive_units``: per
    layer (alive, total) units of ``unit_kind`` (conv) and fc diagonals (Linear).
    ``accuracy`` and ``baseline_accuracy`` come from the harness' evaluator.
    """

    method: str
    groups: int
    model: nn.Module
    masks: Masks
    accuracy: float
    baseline_accuracy: float
    weight_sparsity: float
    alive_units: dict[str, tuple[int, int]]
    unit_kind: str = "position"
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def degradation(self) -> float:
        """Accuracy points lost against the dense baseline (positive = worse)."""
        return self.baseline_accuracy - self.accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no model, no masks)."""
        return {
            "method": self.method,
            "groups": self.groups,
            "accuracy": self.accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "degradation": self.degradation,
            "weight_sparsity": self.weight_sparsity,
            "unit_kind": self.unit_kind,
            "alive_units": {n: list(v) for n, v in self.alive_units.items()},
            "history": self.history,
        }


class Harness(Protocol):
    """How a method trains and scores a model (a fake in tests, :class:`TrainerHarness` else)."""

    def evaluate(self, model: nn.Module) -> float:
        """Accuracy in [0, 1]."""
        ...

    def train(
        self,
        model: nn.Module,
        *,
        epochs: int,
        masks: Masks | None = None,
        regularizer: Regularizer | None = None,
    ) -> None:
        """Train in place for ``epochs``; masked weights stay exactly zero."""
        ...


@dataclass
class TrainerHarness:
    """:class:`Harness` over :func:`fheprune.training.train` and ``evaluate``.

    Every call trains with ``config`` (seeded by ``config.seed``; ``epochs`` overridden), fixed
    masks and tqdm progress bars, distilling from ``distill``'s teacher when given; accuracy
    is measured on ``split`` ("val" for decisions, the default, or "test"). With
    ``checkpoints``, every call checkpoints after each epoch, so a procedure run again after an
    interruption skips the calls it finished (:mod:`fheprune.training.replay`); copies made
    with ``dataclasses.replace`` share it.
    """

    loaders: Loaders
    config: TrainConfig
    split: Literal["val", "test"] = "val"
    device: str = "cpu"
    progress: bool = True
    distill: Distillation | None = None
    checkpoints: CallCheckpoints | None = None

    def evaluate(self, model: nn.Module) -> float:
        loader = self.loaders.val if self.split == "val" else self.loaders.test
        if loader is None:
            raise InputError(f"the loaders have no {self.split} split to evaluate on")
        return float(evaluate(model, loader, self.loaders.spec.task, device=self.device))

    def train(
        self,
        model: nn.Module,
        *,
        epochs: int,
        masks: Masks | None = None,
        regularizer: Regularizer | None = None,
    ) -> None:
        if epochs < 1:
            return
        config = self.config.replace(epochs=epochs)
        folder = None
        if self.checkpoints is not None:
            train_data = self.loaders.train.dataset
            data = {
                "spec": self.loaders.spec,
                "train": len(train_data) if hasattr(train_data, "__len__") else None,
            }
            folder = self.checkpoints.next_dir(
                model,
                config,
                masks=masks,
                distill=self.distill,
                regularizer=regularizer,
                data=data,
            )
        try:
            train(
                model,
                self.loaders,
                config,
                masks=masks,
                checkpoint_dir=folder,
                regularizer=regularizer,
                progress=self.progress,
                device=self.device,
                distill=self.distill,
            )
        except TrainingDivergedError as exc:
            # A candidate whose fine-tuning blows up (polynomial activations can) is a failed
            # candidate, not a failed experiment: poison it so it scores as over budget.
            log.warning("training diverged (%s); this candidate is rejected", exc)
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))


def dense_weight_count(model: nn.Module) -> int:
    """Weights of the model's prunable layers as if every conv were ungrouped."""
    total = 0
    for name, w in layer_weights(model).items():
        m = layer_module(model, name)
        total += w.numel() * (int(m.groups) if isinstance(m, nn.Conv2d) else 1)
    return total


def _result(
    method: str,
    model: nn.Module,
    masks: Masks,
    accuracy: float,
    baseline: float,
    *,
    kind: UnitKind,
    slots: int,
    input_shape: Sequence[int] | None,
    history: list[dict[str, Any]],
) -> RotationAwareResult:
    units = model_units(model, slots=slots, input_shape=input_shape, kind=kind)
    live = sum(int(m.sum()) for m in masks.values())
    return RotationAwareResult(
        method=method,
        groups=_groups_of(model),
        model=model,
        masks=masks,
        accuracy=accuracy,
        baseline_accuracy=baseline,
        weight_sparsity=1.0 - live / max(1, dense_weight_count(model)),
        alive_units=alive_unit_counts(masks, units),
        unit_kind=kind,
        history=history,
    )


def _groups_of(model: nn.Module) -> int:
    return max((int(m.groups) for m in model.modules() if isinstance(m, nn.Conv2d)), default=1)


def _check_budget(budget: float) -> float:
    if not (math.isfinite(budget) and 0 <= budget <= 1):
        raise InputError(f"budget must be an accuracy drop in [0, 1], got {budget}")
    return float(budget)


def _start_masks(model: nn.Module, masks: Mapping[str, Tensor] | None) -> Masks:
    full = full_masks(layer_weights(model))
    for name, m in (masks or {}).items():
        full[name] = full[name] & m.to(torch.bool).cpu()
    return full


def _scores(
    model: nn.Module, masks: Masks, units: Mapping[str, LayerUnits], norm: Norm
) -> dict[str, Tensor]:
    with torch.no_grad():
        return {
            name: unit_norms(
                layer_module(model, name).weight.detach().cpu().masked_fill(~masks[name], 0),
                u,
                norm,
            ).to(torch.float64)
            for name, u in units.items()
        }


def has_finite_weights(model: nn.Module) -> bool:
    """False for a model whose training diverged (:class:`TrainerHarness` fills it with NaN)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _fine_tuned(
    harness: Harness, model: nn.Module, masks: Masks, epochs: int
) -> tuple[nn.Module, float]:
    """A copy of ``model`` with ``masks`` applied, fine-tuned, and its accuracy."""
    candidate = copy.deepcopy(model)
    apply_masks(candidate, masks)
    harness.train(candidate, epochs=epochs, masks=masks)
    return candidate, harness.evaluate(candidate)


def _search_fraction(
    probe: Callable[[float], tuple[nn.Module, Masks, float]],
    baseline: float,
    budget: float,
    *,
    steps: int,
    high: float,
    history: list[dict[str, Any]],
) -> tuple[float, nn.Module, Masks, float] | None:
    """Bisection on a pruning fraction in (0, high): ``steps`` probes (high/2, then halfway
    towards the last failure or away from the last success); the largest probed fraction
    whose fine-tuned accuracy is within ``budget`` wins (accuracy assumed monotone), None if
    none is."""
    if steps < 1:
        raise InputError(f"search_steps must be positive, got {steps}")
    lo, hi = 0.0, check_fraction(high)
    best: tuple[float, nn.Module, Masks, float] | None = None
    for step in range(steps):
        mid = (lo + hi) / 2
        model, masks, acc = probe(mid)
        ok = baseline - acc <= budget
        history.append({"step": step, "fraction": mid, "accuracy": acc, "accepted": ok})
        log.info("fraction %.4f: accuracy %.4f (%s)", mid, acc, "kept" if ok else "over budget")
        if ok:
            best, lo = (mid, model, masks, acc), mid
        else:
            hi = mid
    return best


# ---------------------------------------------------------------------------------------
# 2. SpENCNN sub-block pruning (Algorithm 1)


def subblock_prune(
    model: nn.Module,
    harness: Harness,
    *,
    budget: float = 0.005,
    baseline: float | None = None,
    per_iteration: int = 1,
    finetune_epochs: int = 5,
    layers: UnitScope = "all",
    masks: Mapping[str, Tensor] | None = None,
    max_iterations: int | None = None,
    backoff: bool = True,
    min_alive: int = 1,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
    method: str = "subblock",
) -> RotationAwareResult:
    """SpENCNN's sub-block iterative pruning (Algorithm 1), within an accuracy budget.

    Each iteration scores every alive sub-block by its average L2 norm ||w_p|| / dim(w_p)
    (conv: position units; Linear: fc diagonal units; ``layers="conv"`` leaves Linear layers
    dense), prunes the ``per_iteration`` least important ones over the whole network, and
    fine-tunes a copy for ``finetune_epochs`` with the masks fixed. The paper loops while the
    accuracy loss is <= 0; we loop while it is <= ``budget`` and keep the last state within
    it. With ``backoff`` an over-budget step of k > 1 units is retried from the last good
    state with k // 2 units (down to 1) before stopping; without it the loop stops at once.
    ``baseline`` defaults to the accuracy of ``model`` as given. ``model`` is not modified.
    """
    budget = _check_budget(budget)
    if per_iteration < 1 or finetune_epochs < 0 or min_alive < 1:
        raise InputError("per_iteration and min_alive must be positive, finetune_epochs >= 0")
    units = model_units(model, slots=slots, input_shape=input_shape, layers=layers)
    current = copy.deepcopy(model)
    state = _start_masks(current, masks)
    apply_masks(current, state)
    accuracy = harness.evaluate(current)
    if baseline is None:
        baseline = accuracy
    history: list[dict[str, Any]] = []
    step_size, iteration = per_iteration, 0
    while max_iterations is None or iteration < max_iterations:
        alive = {name: alive_units(state[name], u) for name, u in units.items()}
        scores = _scores(current, state, units, "avg_l2")
        dead = select_units(scores, alive, step_size, min_alive=min_alive)
        n_new = sum(int(d.sum()) for d in dead.values())
        if n_new == 0:
            break
        iteration += 1
        proposal = masks_without_units(state, units, dead)
        candidate, acc = _fine_tuned(harness, current, proposal, finetune_epochs)
        ok = baseline - acc <= budget
        history.append(
            {
                "iteration": iteration,
                "pruned": {n: int(d.sum()) for n, d in dead.items() if bool(d.any())},
                "accuracy": acc,
                "accepted": ok,
            }
        )
        log.info(
            "%s iteration %d: -%d units, accuracy %.4f (%s)",
            method,
            iteration,
            n_new,
            acc,
            "kept" if ok else "over budget",
        )
        if ok:
            current, state, accuracy = candidate, proposal, acc
        elif backoff and step_size > 1:
            step_size //= 2
        else:
            break
    return _result(
        method,
        current,
        state,
        accuracy,
        baseline,
        kind="position",
        slots=slots,
        input_shape=input_shape,
        history=history,
    )


# ---------------------------------------------------------------------------------------
# 3. HE-group convolution


def g_base(
    model: nn.Module, slots: int = DEFAULT_SLOTS, input_shape: Sequence[int] | None = None
) -> int:
    """SpENCNN's G_base: channel blocks per ciphertext (``lanes``) of the model's layout; at
    G = G_base every outer rotation of the grouped convolutions vanishes. Capped by the
    channel widths of the convolutions after the first (the ones a grouped model groups; G
    must divide them): compact layouts can hold more blocks per ciphertext than a network
    has channels."""
    lanes = plan_layout(model, slots, _input_shape(model, input_shape)).input.lanes
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1:]
    widths = [w for m in convs for w in (int(m.in_channels), int(m.out_channels))]
    return math.gcd(lanes, *widths) if widths else lanes


def in_group_mask(shape: Sequence[int], groups: int) -> Tensor:
    """Bool mask over a *dense* conv weight [C_out, C_in, kh, kw]: True on the weights that
    a ``groups``-grouped convolution keeps (output o reads input c iff same group)."""
    c_out, c_in = int(shape[0]), int(shape[1])
    if groups < 1 or c_out % groups or c_in % groups:
        raise InputError(f"{groups} groups do not divide {c_out} outputs and {c_in} inputs")
    g_out = torch.arange(c_out) // (c_out // groups)
    g_in = torch.arange(c_in) // (c_in // groups)
    keep = g_out[:, None] == g_in[None, :]
    return keep[:, :, None, None].expand(*(int(s) for s in shape)).clone()


@torch.no_grad()
def grouped_from_dense(dense: nn.Module, grouped: nn.Module) -> nn.Module:
    """Warm start: copy ``dense`` into ``grouped`` (same architecture but grouped convs),
    keeping of every grouped conv only the in-group weights of its dense counterpart.

    Grouped conv weight [C_out, C_in/G, kh, kw]: ``w_g[o, j] = w_d[o, g(o) * C_in/G + j]``
    with ``g(o) = o // (C_out/G)`` (PyTorch's group order). Every other tensor is copied as
    is. The grouped model then computes what the dense one computes with its out-of-group
    weights zeroed. Returns ``grouped``.
    """
    src = dense.state_dict()
    modules = dict(grouped.named_modules())
    dst = grouped.state_dict()
    for key, value in dst.items():
        if key not in src:
            raise InputError(f"the dense model has no {key!r}")
        source = src[key]
        owner = modules.get(key.rpartition(".")[0])
        if (
            isinstance(owner, nn.Conv2d)
            and key.endswith("weight")
            and owner.groups > 1
            and source.shape != value.shape
        ):
            c_out, c_in_g = int(value.shape[0]), int(value.shape[1])
            if source.shape[0] != c_out or source.shape[1] != c_in_g * owner.groups:
                raise InputError(f"{key}: dense {tuple(source.shape)} vs {tuple(value.shape)}")
            g = torch.arange(c_out) // (c_out // owner.groups)
            cols = g[:, None] * c_in_g + torch.arange(c_in_g)[None, :]
            index = cols[:, :, None, None].expand_as(value).to(source.device)
            value.copy_(torch.gather(source, 1, index))
        elif source.shape != value.shape:
            raise InputError(f"{key}: dense {tuple(source.shape)} vs {tuple(value.shape)}")
        else:
            value.copy_(source)
    return grouped


def grouped_builder(
    name: str, dataset: str = "mnist", *, seed: int | None = 0, **overrides: Any
) -> Callable[[int], nn.Module]:
    """``groups -> model`` for a zoo model: "lenet" groups conv2 (``conv2_groups``),
    "hefnet-mnist" / "vgg5-mnist" every conv but the first (``groups``)."""
    from fheprune.models import build_model

    key = "conv2_groups" if name.lower() == "lenet" else "groups"

    def build(groups: int) -> nn.Module:
        return build_model(name, dataset, seed=seed, **{**overrides, key: groups})

    return build


def he_group_conv(
    make_model: Callable[[int], nn.Module],
    groups: int,
    harness: Harness,
    *,
    epochs: int,
    dense: nn.Module | None = None,
    baseline: float | None = None,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
) -> RotationAwareResult:
    """SpENCNN's HE-group convolution: build ``make_model(groups)`` and train it.

    ``groups`` must divide G_base (channel blocks per ciphertext; :func:`plan_layout` rejects
    it otherwise). With ``dense`` given, the grouped model starts from its in-group weights
    (:func:`grouped_from_dense`) and ``epochs`` fine-tune it; otherwise it trains from
    scratch. ``baseline`` defaults to the dense model's accuracy (or the grouped model's own
    when there is no dense model). Masks are all-True over the grouped weights: the
    cross-group blocks are structurally absent, not masked.
    """
    model = make_model(groups)
    shape = _input_shape(model, input_shape)
    lanes = plan_layout(model, slots, shape).input.lanes  # also validates groups | lanes
    if dense is not None:
        grouped_from_dense(dense, model)
        if baseline is None:
            baseline = harness.evaluate(dense)
    harness.train(model, epochs=epochs)
    accuracy = harness.evaluate(model)
    masks = full_masks(layer_weights(model))
    history = [{"groups": groups, "g_base": lanes, "warm_start": dense is not None}]
    return _result(
        "he-group",
        model,
        masks,
        accuracy,
        accuracy if baseline is None else baseline,
        kind="diagonal",
        slots=slots,
        input_shape=shape,
        history=history,
    )


# ---------------------------------------------------------------------------------------
# 4. Artemis: group Lasso over units, threshold, fine-tune


class GroupLasso:
    """``lam * sum_layers sum_g w_g * ||theta_g||_2`` over the units of ``units``.

    A trainer regularizer (``train(..., regularizer=GroupLasso(...))``). Groups are the
    positional or diagonal units (whichever ``units`` holds), plus fc diagonals if present;
    ``w_g`` defaults to :func:`group_weights` (rotations removed + ``ptm_cost`` * plaintext
    multiplies removed). A zero group has a zero (sub)gradient, never NaN.
    """

    def __init__(
        self,
        units: Mapping[str, LayerUnits],
        lam: float,
        *,
        weights: Mapping[str, Tensor] | None = None,
        ptm_cost: float = PTM_COST,
    ) -> None:
        if not (math.isfinite(lam) and lam >= 0):
            raise InputError(f"lam must be a non-negative finite number, got {lam}")
        self.units = dict(units)
        self.lam = float(lam)
        self.weights = {
            name: (weights[name] if weights is not None else group_weights(u, ptm_cost))
            for name, u in self.units.items()
        }
        for name, w in self.weights.items():
            if w.shape != (self.units[name].count,):
                raise InputError(f"group weights of {name!r} must have one entry per unit")

    def penalty(self, model: nn.Module) -> Tensor:
        """``sum_g w_g ||theta_g||_2`` (without ``lam``), differentiable."""
        total: Tensor | None = None
        for name, u in self.units.items():
            weight = layer_module(model, name).weight
            norms = unit_norms(weight, u, "l2")
            term = (self.weights[name].to(device=weight.device, dtype=weight.dtype) * norms).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total

    def __call__(self, model: nn.Module) -> Tensor:
        return self.lam * self.penalty(model)


def artemis_prune(
    model: nn.Module,
    harness: Harness,
    *,
    budget: float = 0.005,
    baseline: float | None = None,
    variant: UnitKind = "diagonal",
    lam: float = 1e-3,
    reg_epochs: int = 5,
    finetune_epochs: int = 2,
    ptm_cost: float = PTM_COST,
    layers: UnitScope = "conv",
    search_steps: int = 5,
    max_fraction: float = 1.0,
    min_alive: int = 1,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
) -> RotationAwareResult:
    """Artemis: group-Lasso training over HE units, then threshold and fine-tune.

    1. Train a copy of ``model`` for ``reg_epochs`` with :class:`GroupLasso` (``lam``) over
       the ``variant`` units ("positional" = position, or "diagonal") of its conv layers (and
       fc diagonals with ``layers="all"``), which drives costly groups towards zero.
    2. Rank the groups by RMS norm ||theta_g|| / sqrt(|g|) (fair across layers of different
       unit sizes) and prune the lowest fraction over the whole network, found by bisection
       (``search_steps`` probes in [0, ``max_fraction``]): each probe fine-tunes a copy for
       ``finetune_epochs`` with the masks fixed; the largest fraction within ``budget`` wins.
    ``baseline`` defaults to the accuracy of ``model`` as given (before regularization).
    """
    budget = _check_budget(budget)
    units = model_units(model, slots=slots, input_shape=input_shape, kind=variant, layers=layers)
    if baseline is None:
        baseline = harness.evaluate(model)
    regularized = copy.deepcopy(model)
    harness.train(
        regularized, epochs=reg_epochs, regularizer=GroupLasso(units, lam, ptm_cost=ptm_cost)
    )
    start = full_masks(layer_weights(regularized))
    scores = _scores(regularized, start, units, "rms")
    alive = {name: alive_units(start[name], u) for name, u in units.items()}
    total = sum(u.count for u in units.values())
    history: list[dict[str, Any]] = []

    def probe(fraction: float) -> tuple[nn.Module, Masks, float]:
        dead = select_units(scores, alive, prune_count(fraction, total), min_alive=min_alive)
        masks = masks_without_units(start, units, dead)
        candidate, acc = _fine_tuned(harness, regularized, masks, finetune_epochs)
        return candidate, masks, acc

    best = _search_fraction(
        probe, baseline, budget, steps=search_steps, high=max_fraction, history=history
    )
    if best is None:
        log.warning("artemis: no probed fraction is within budget; returning the unpruned model")
        final, masks, acc = regularized, start, harness.evaluate(regularized)
    else:
        _, final, masks, acc = best
    return _result(
        f"artemis-{variant}",
        final,
        masks,
        acc,
        baseline,
        kind=variant,
        slots=slots,
        input_shape=input_shape,
        history=history,
    )


# ---------------------------------------------------------------------------------------
# 5. Hunter-style structured magnitude pruning, 6. plaintext baselines


def _one_shot(
    method: str,
    model: nn.Module,
    harness: Harness,
    make_masks: Callable[[float], Masks],
    *,
    budget: float,
    baseline: float | None,
    finetune_epochs: int,
    search_steps: int,
    max_fraction: float,
    slots: int,
    input_shape: Sequence[int] | None,
) -> RotationAwareResult:
    """Shared driver: bisect the fraction of one-shot masks, fine-tune each probe."""
    budget = _check_budget(budget)
    if baseline is None:
        baseline = harness.evaluate(model)
    history: list[dict[str, Any]] = []

    def probe(fraction: float) -> tuple[nn.Module, Masks, float]:
        masks = make_masks(fraction)
        candidate, acc = _fine_tuned(harness, model, masks, finetune_epochs)
        return candidate, masks, acc

    best = _search_fraction(
        probe, baseline, budget, steps=search_steps, high=max_fraction, history=history
    )
    if best is None:
        final, masks, acc = copy.deepcopy(model), make_masks(0.0), harness.evaluate(model)
    else:
        _, final, masks, acc = best
    return _result(
        method,
        final,
        masks,
        acc,
        baseline,
        kind="position",
        slots=slots,
        input_shape=input_shape,
        history=history,
    )


def hunter_prune(
    model: nn.Module,
    harness: Harness,
    *,
    budget: float = 0.005,
    baseline: float | None = None,
    finetune_epochs: int = 2,
    layers: UnitScope = "all",
    search_steps: int = 5,
    max_fraction: float = 1.0,
    min_alive: int = 1,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
) -> RotationAwareResult:
    """Hunter-style baseline: structured magnitude pruning aligned to the packing.

    The same units as sub-block pruning (conv position units, fc diagonals), scored by L1
    magnitude per weight (sum |w| / size, HE-PEx's T-Avg; within a layer this ranks like
    the plain L1 norm), pruned in one shot by one fraction of every layer's units (bisection
    against ``budget``; each layer keeps at least ``min_alive``), fine-tuned with masks fixed;
    no regularization, no iteration. Per layer, as Hunter prunes: magnitudes are not
    comparable across layers (a VGG-5's conv weights are a tenth of its FC weights, and a
    global ranking at 12.5% cuts its conv2 and conv3 down to one unit each).
    """
    units = model_units(model, slots=slots, input_shape=input_shape, layers=layers)
    start = full_masks(layer_weights(model))
    scores = _scores(model, start, units, "mean_abs")

    def make_masks(fraction: float) -> Masks:
        dead = {
            name: select_lowest(s, min(prune_count(fraction, s.numel()), s.numel() - min_alive))
            for name, s in scores.items()
        }
        return masks_without_units(start, units, dead)

    return _one_shot(
        "hunter",
        model,
        harness,
        make_masks,
        budget=budget,
        baseline=baseline,
        finetune_epochs=finetune_epochs,
        search_steps=search_steps,
        max_fraction=max_fraction,
        slots=slots,
        input_shape=input_shape,
    )


def magnitude_prune(
    model: nn.Module,
    harness: Harness,
    *,
    budget: float = 0.005,
    baseline: float | None = None,
    finetune_epochs: int = 2,
    search_steps: int = 5,
    max_fraction: float = 0.99,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
) -> RotationAwareResult:
    """Plaintext baseline: non-structured global weight-magnitude pruning (|w| ranked over all
    layers together), fraction searched against ``budget``, fine-tuned with masks fixed."""
    from .magnitude import MagnitudePruning

    weights = {n: w.cpu() for n, w in layer_weights(model).items()}

    def make_masks(fraction: float) -> Masks:
        return MagnitudePruning(fraction, scope="global", criterion="l1", target="weight")(weights)

    return _one_shot(
        "magnitude",
        model,
        harness,
        make_masks,
        budget=budget,
        baseline=baseline,
        finetune_epochs=finetune_epochs,
        search_steps=search_steps,
        max_fraction=max_fraction,
        slots=slots,
        input_shape=input_shape,
    )


def channel_masks(model: nn.Module, dead: Mapping[str, Tensor]) -> Masks:
    """Masks removing the output channels / neurons marked in ``dead`` (bool [C_out] per layer)
    from their producer (its rows) and from every consumer (the inputs they feed).

    Consumers come from ``model.neuron_chain()``: a conv consumer loses input channel c (for a
    grouped conv: column c mod C_in/G of the outputs of c's group); a Linear after the flatten
    loses features c*H*W .. (c+1)*H*W - 1 (``flatten_shape``); a Linear after a Linear loses
    column c.
    """
    masks = full_masks({n: w.cpu() for n, w in layer_weights(model).items()})
    chain = getattr(model, "neuron_chain", None)
    pairs: list[tuple[str, str]] = list(chain()) if callable(chain) else []
    flatten_after = getattr(model, "flatten_after", None)
    flatten_shape = getattr(model, "flatten_shape", None)
    for name, d in dead.items():
        d = d.to(torch.bool).cpu()
        masks[name][d] = False
        for producer, consumer in pairs:
            if producer != name:
                continue
            cm = layer_module(model, consumer)
            cmask = masks[consumer]
            channels = torch.nonzero(d).reshape(-1)
            if isinstance(cm, nn.Conv2d):
                c_in_g = cm.in_channels // cm.groups
                per_out = cm.out_channels // cm.groups
                for c in channels.tolist():
                    g, j = divmod(c, c_in_g)
                    cmask[g * per_out : (g + 1) * per_out, j] = False
            elif producer == flatten_after and flatten_shape is not None:
                _, h, w = flatten_shape
                for c in channels.tolist():
                    cmask[:, c * h * w : (c + 1) * h * w] = False
            else:
                cmask[:, channels] = False
    return masks


def channel_prune(
    model: nn.Module,
    harness: Harness,
    *,
    budget: float = 0.005,
    baseline: float | None = None,
    finetune_epochs: int = 2,
    layers: UnitScope = "conv",
    search_steps: int = 5,
    max_fraction: float = 1.0,
    min_alive: int = 1,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
) -> RotationAwareResult:
    """Plaintext baseline: channel pruning by the L1 norm of output channels.

    Channels (conv output channels; with ``layers="all"`` also hidden Linear neurons; never
    the output layer) are ranked globally by mean |w| (L1 / fan-in, so layers compare
    fairly; within a layer the L1 order), the lowest fraction is removed from the producer
    and its consumers (:func:`channel_masks`), the fraction is searched against ``budget``
    and every probe fine-tuned with masks fixed.
    """
    protected = set(output_layer_names(model))
    candidates = [
        n
        for n in layer_weights(model)
        if n not in protected and (layers == "all" or isinstance(layer_module(model, n), nn.Conv2d))
    ]
    weights = {n: layer_module(model, n).weight.detach().cpu() for n in candidates}
    scores = {
        n: w.reshape(w.shape[0], -1).abs().mean(dim=1).to(torch.float64) for n, w in weights.items()
    }
    alive = {n: torch.ones(w.shape[0], dtype=torch.bool) for n, w in weights.items()}
    total = sum(w.shape[0] for w in weights.values())

    def make_masks(fraction: float) -> Masks:
        dead = select_units(scores, alive, prune_count(fraction, total), min_alive=min_alive)
        return channel_masks(model, dead)

    return _one_shot(
        "channel",
        model,
        harness,
        make_masks,
        budget=budget,
        baseline=baseline,
        finetune_epochs=finetune_epochs,
        search_steps=search_steps,
        max_fraction=max_fraction,
        slots=slots,
        input_shape=input_shape,
    )


# ---------------------------------------------------------------------------------------
# 7. SpENCNN: HE-group convolution at G_base + sub-block pruning


def spencnn_prune(
    dense: nn.Module,
    make_grouped: Callable[[int], nn.Module],
    harness: Harness,
    *,
    budget: float = 0.005,
    baseline: float | None = None,
    groups: int | None = None,
    warm_start: bool = True,
    group_epochs: int = 5,
    per_iteration: int = 1,
    finetune_epochs: int = 5,
    layers: UnitScope = "all",
    max_iterations: int | None = None,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
) -> RotationAwareResult:
    """SpENCNN's full method: HE-group convolution (``groups``, default G_base) trained for
    ``group_epochs`` (from the dense model's in-group weights with ``warm_start``, else from
    scratch), then sub-block pruning of the grouped model. The budget is counted against the
    *dense* model's accuracy (``baseline``, measured when None), so the grouping spends part
    of it; sub-block pruning gets what is left (none if the grouping alone is over budget).
    """
    budget = _check_budget(budget)
    if baseline is None:
        baseline = harness.evaluate(dense)
    if groups is None:
        groups = g_base(make_grouped(1), slots, input_shape)
    grouped = he_group_conv(
        make_grouped,
        groups,
        harness,
        epochs=group_epochs,
        dense=dense if warm_start else None,
        baseline=baseline,
        slots=slots,
        input_shape=input_shape,
    )
    result = subblock_prune(
        grouped.model,
        harness,
        budget=budget,
        baseline=baseline,
        per_iteration=per_iteration,
        finetune_epochs=finetune_epochs,
        layers=layers,
        max_iterations=0 if baseline - grouped.accuracy > budget else max_iterations,
        slots=slots,
        input_shape=input_shape,
        method="spencnn",
    )
    result.history = grouped.history + result.history
    return result
