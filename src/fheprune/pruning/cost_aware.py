"""Cost-aware sub-block pruning: SpENCNN's Algorithm 1 ranked by damage per second saved.

SpENCNN ranks sub-blocks by their average L2 norm. That ranking cannot compare units of
different layers fairly (a first-layer kernel position and a fully connected diagonal have
different weight scales and sizes), and it is blind to what a unit costs under encryption: a
kernel position of the first convolution runs at the top level, where a plaintext product
costs about six times one at the last (measured). Here every candidate unit gets

    score = damage / saving

* **damage**: the increase of the training loss on a fixed calibration batch when the unit
  is zeroed (measured, not approximated: a forward pass from the unit's layer on, with the
  activations before it cached);
* **saving**: the encrypted work the unit removes, read from the lowered program of the
  current model, as the C++ program runs it: its plaintext products and its share of the
  rotations of the program's baby-step / giant-step split, each at the level the program
  runs it, priced by :func:`~fheprune.runtime.cost.reference_timings` (fixed, so that a seed
  prunes the same way on every machine).

Besides the layout's position and fc-diagonal units, the candidates include **ciphertext
units**: input ciphertext ``i`` of a convolution or Linear layer whose input a convolution
produced (through activations, pools and a flatten only). Zeroing every weight that reads
it leaves the producer's output ciphertext unread, so the compiler drops the producer's
products into it, its square and its pool rotations too (backward liveness in the
lowering); the unit's saving counts all of that. Its producer-side weights (the output
channels that live in the ciphertext) are masked as well, since nothing reads them.

The loop is Algorithm 1's: prune the ``per_iteration`` lowest scores over the network,
fine-tune a copy with the masks fixed, keep it while the accuracy loss stays within the
budget, halve the step on an over-budget step (and double it again, up to
``per_iteration``, on an accepted one), stop at a one-unit failure. It starts with
the ciphertext units alone, one at a time (coarse before fine).

:func:`prune_in_rounds` repeats the loop: a round spends the budget, a longer fine-tuning
(:func:`polish`) recovers part of the accuracy the round's short steps lost, and the next
round spends what the recovery freed, starting from the masks the previous one left.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fheprune.errors import InputError, InputTypeError
from fheprune.layouts import layer_module
from fheprune.layouts.channels import ChannelPacking, plan_layout
from fheprune.runtime.cost import OpTimings, layer_seconds, reference_timings
from fheprune.runtime.params import counting_parameters
from fheprune.training.trainer import Distillation

from .base import Masks, apply_masks
from .rotation_aware import (
    DEFAULT_SLOTS,
    Harness,
    LayerUnits,
    RotationAwareResult,
    TrainerHarness,
    _check_budget,
    _fine_tuned,
    _input_shape,
    _result,
    _start_masks,
    alive_units,
    has_finite_weights,
    masks_without_units,
    model_units,
)

__all__ = [
    "CiphertextUnit",
    "CostAwareRecipe",
    "combined_cost_aware",
    "cost_aware_prune",
    "distilled",
    "polish",
    "prune_in_rounds",
    "unit_scores",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CiphertextUnit:
    """Input ciphertext ``ct`` of layer ``consumer`` (a conv or Linear), produced by conv
    ``producer``."""

    consumer: str
    producer: str
    ct: int


def _term_prices(layer: Mapping[str, Any], split: Mapping[str, Any], timings: OpTimings) -> Any:
    """Price of every term of one map layer of the C++ program, in its split's order: one
    plaintext product, plus an equal share of each rotation the term uses (its baby step,
    hoisted, shared by the terms of its input with that baby; its giant step, shared by the
    terms of its output with that giant), each at the level the program runs it. The prices
    of a layer's terms add up to its products and rotations."""
    seconds = layer_seconds(layer, timings)
    counts = {op: sum(by_level.values()) for op, by_level in layer["ops_by_level"].items()}
    each = {op: seconds[op] / counts[op] for op in seconds if counts[op]}
    terms = np.asarray(split["split"], dtype=np.int64).reshape(-1, 5)
    out, inp, _, baby, giant = terms.T
    price = np.full(len(terms), each.get("mul_plain", 0.0))
    for ct, step, op in ((inp, baby, "rotate_hoisted"), (out, giant, "rotate")):
        used = step != 0
        if not used.any():
            continue
        _, which, users = np.unique(
            np.stack([ct[used], step[used]]), axis=1, return_inverse=True, return_counts=True
        )
        price[used] += each[op] / users[which.ravel()]
    return terms, price


def _savings(
    model: nn.Module,
    units: Mapping[str, LayerUnits],
    slots: int,
    shape: tuple[int, int, int],
    client_shifts: bool = False,
    timings: OpTimings | None = None,
) -> tuple[dict[str, Tensor], dict[CiphertextUnit, float]]:
    """Price of every unit (what zeroing it removes now) and of every ciphertext unit, on the
    C++ program the compiler builds (``client_shifts``: the first convolution's rotations are
    the client's): its split, its operations and their levels, priced by ``timings``
    (default :func:`~fheprune.runtime.cost.reference_timings`, the same on every machine).
    A unit's price is the sum of its terms' (:func:`_term_prices`)."""
    from fheprune.runtime.conv_lowering import (
        MapLinearOp,
        RotateSumOp,
        SquareOp,
        build_program,
        lower_conv_model,
        term_units,
    )

    probe = copy.deepcopy(model).double().eval()
    spec = lower_conv_model(probe, slots, shape, client_shifts=client_shifts)
    assert spec.plan is not None
    program = build_program(spec, counting_parameters(spec.levels, slots))
    if timings is None:
        timings = reference_timings(int(program.levels), 2 * slots)
    cost = {str(layer["name"]): layer for layer in program.cost()}
    layer_total = {name: sum(layer_seconds(c, timings).values()) for name, c in cost.items()}
    linear = {op.name: op for op in spec.ops if isinstance(op, MapLinearOp)}
    terms: dict[str, Any] = {}  # layer -> (C++ terms [T, 5], their prices [T])
    for split in program.map_layers():
        terms[split["name"]] = _term_prices(cost[split["name"]], split, timings)

    def key(out: Any, inp: Any, shift: Any, n_in: int) -> Any:
        return (out.astype(np.int64) * n_in + inp.astype(np.int64)) * slots + shift

    prices: dict[str, Tensor] = {}
    for name, u in units.items():
        op = linear[name]
        n_in = int(op.in_ct.max()) + 1 if op.terms else 1
        # The program merged equal (out, in, shift) terms, which one unit owns.
        py_keys = key(op.out_ct, op.in_ct, op.shift, n_in)
        order = np.argsort(py_keys, kind="stable")
        owner = term_units(spec, op, "position")[order]
        cxx, price = terms[name]
        at = np.searchsorted(py_keys[order], key(cxx[:, 0], cxx[:, 1], cxx[:, 2], n_in))
        dense = np.searchsorted(u.layout_ids, owner[at])
        prices[name] = torch.from_numpy(np.bincount(dense, weights=price, minlength=u.count))
    ct_prices: dict[CiphertextUnit, float] = {}
    ops = list(spec.ops)
    for index, consumer in enumerate(ops):
        layer = spec.plan.layers.get(consumer.name)
        if not isinstance(consumer, MapLinearOp) or layer is None or consumer.name not in units:
            continue
        j = index - 1
        between: list[Any] = []
        while j >= 0 and isinstance(ops[j], SquareOp | RotateSumOp):
            between.append(ops[j])
            j -= 1
        producer = ops[j] if j >= 0 else None
        if (
            not isinstance(producer, MapLinearOp)
            or producer.name not in units
            or spec.plan.layers[producer.name].kind != "conv"
        ):
            continue
        c_terms, c_price = terms[consumer.name]
        p_terms, p_price = terms[producer.name]
        # A pool that adds sub-maps folds `fold` producer ciphertexts (ct + m * n) into input
        # ct of the consumer; the squares before it work on each of them.
        fold = math.prod(mid.fold for mid in between if isinstance(mid, RotateSumOp))
        n_in = int(layer.inputs.ciphertexts)
        for ct in range(n_in):
            reads = c_terms[:, 1] == ct
            if not reads.any():
                continue
            members = ct + n_in * np.arange(fold)
            price = c_price[reads].sum() + p_price[np.isin(p_terms[:, 0], members)].sum()
            copies, alive = fold, producer.out_ciphertexts
            for mid in reversed(between):  # forward order, from the producer on
                if isinstance(mid, RotateSumOp):
                    copies //= mid.fold
                    alive //= mid.fold
                price += layer_total[mid.name] / alive * copies
            ct_prices[CiphertextUnit(consumer.name, producer.name, ct)] = float(price)
    return prices, ct_prices


def _members(model: nn.Module, unit: CiphertextUnit, units: LayerUnits, slots: int) -> Tensor:
    """Bool over the consumer's units: those that read input ciphertext ``ct`` (a conv's
    position units ``(ct, p)`` for every kernel position ``p``, a Linear layer's diagonals
    ``(ct, k)`` for every offset ``k``)."""
    if units.kind == "fc":
        per_ct = slots
    else:
        weight = layer_module(model, unit.consumer).weight
        per_ct = int(weight.shape[2] * weight.shape[3])
    return torch.from_numpy(units.layout_ids // per_ct == unit.ct)


def _reads_ct(model: nn.Module, unit: CiphertextUnit, units: LayerUnits, slots: int) -> Tensor:
    """Bool mask over the consumer's weight: the weights that read input ciphertext ``ct``."""
    return _members(model, unit, units, slots)[units.ids]


def _producer_channels(model: nn.Module, unit: CiphertextUnit, packing: ChannelPacking) -> Tensor:
    """Bool [C_out] of the producer: the output channels that live in ciphertext ``ct``."""
    m = layer_module(model, unit.producer)
    ct, _ = packing.place(np.arange(int(m.weight.shape[0])))
    return torch.from_numpy(np.asarray(ct) == unit.ct)


@torch.no_grad()
def unit_scores(
    model: nn.Module,
    masks: Masks,
    units: Mapping[str, LayerUnits],
    calibration: tuple[Tensor, Tensor],
    *,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
    units_too: bool = True,
    client_shifts: bool = False,
) -> tuple[dict[str, Tensor], dict[CiphertextUnit, float]]:
    """Damage / saving of every alive unit (``inf`` for dead ones; all ``inf`` without
    ``units_too``) and every live ciphertext unit (``client_shifts``: as compiled with it).
    ``model`` must be an ``nn.Sequential`` (the zoo's models are); it is not changed."""
    shape = _input_shape(model, input_shape)
    work = copy.deepcopy(model).cpu().eval()  # scores on the CPU, wherever training runs
    apply_masks(work, masks)
    children = list(work.named_children())
    index = {name: i for i, (name, _) in enumerate(children)}
    x, y = (t.cpu() for t in calibration)
    if len(y) == 0:
        raise InputError("the calibration batch is empty; give a few hundred training samples")
    acts = [x]
    for _, m in children:
        acts.append(m(acts[-1]))
    base = float(F.cross_entropy(acts[-1], y))

    def loss_from(i: int) -> float:
        h = acts[i]
        for _, m in children[i:]:
            h = m(h)
        return float(F.cross_entropy(h, y))

    prices, ct_prices = _savings(work, units, slots, shape, client_shifts)
    scores: dict[str, Tensor] = {}
    for name, u in units.items():
        if name not in index:
            raise InputError(f"layer {name!r} is not a direct child of the Sequential model")
        weight = layer_module(work, name).weight
        saved = weight.detach().clone()
        alive = alive_units(masks[name], u)
        s = torch.full((u.count,), math.inf, dtype=torch.float64)
        for j in torch.nonzero(alive & units_too).flatten().tolist():
            weight.copy_(saved.masked_fill(u.ids == j, 0.0))
            s[j] = _score(loss_from(index[name]) - base, float(prices[name][j]))
        weight.copy_(saved)
        scores[name] = s
    ct_scores: dict[CiphertextUnit, float] = {}
    for cu, price in ct_prices.items():
        reads = _reads_ct(work, cu, units[cu.consumer], slots)
        if not bool((masks[cu.consumer] & reads).any()):
            continue
        weight = layer_module(work, cu.consumer).weight
        saved = weight.detach().clone()
        weight.copy_(saved.masked_fill(reads, 0.0))
        damage = loss_from(index[cu.consumer]) - base
        weight.copy_(saved)
        ct_scores[cu] = _score(damage, price)
    return scores, ct_scores


def _score(damage: float, price: float) -> float:
    """Damage per second saved; a unit whose removal does not raise the loss ranks before
    every other, the larger saving first; a NaN damage (a diverged model) never ranks."""
    if math.isnan(damage):
        return math.inf
    return damage / max(price, 1e-9) if damage > 0 else -price


def _select(
    scores: Mapping[str, Tensor],
    ct_scores: Mapping[CiphertextUnit, float],
    alive: Mapping[str, Tensor],
    k: int,
    min_alive: int,
    members: Mapping[CiphertextUnit, Tensor] | None = None,
) -> tuple[dict[str, Tensor], list[CiphertextUnit]]:
    """The ``k`` lowest scores among units and ciphertext units. A layer keeps ``min_alive``
    units and one input ciphertext: taking a ciphertext unit counts its alive units
    (``members[cu]``, bool over the consumer's units) against the layer, and a unit already
    inside a taken ciphertext is not taken again."""
    pool: list[tuple[float, int, str, int | CiphertextUnit]] = []
    for order, (name, layer_scores) in enumerate(scores.items()):
        for j in torch.nonzero(alive[name]).flatten().tolist():
            pool.append((float(layer_scores[j]), order, name, j))
    for cu, score in ct_scores.items():
        pool.append((score, -1, cu.consumer, cu))
    pool.sort(key=lambda t: (t[0], t[1]))
    dead = {name: torch.zeros_like(a, dtype=torch.bool) for name, a in alive.items()}
    claimed = {name: torch.zeros_like(a, dtype=torch.bool) for name, a in alive.items()}
    left = {name: int(a.sum()) for name, a in alive.items()}
    cts_left: dict[str, int] = {}
    for cu in ct_scores:
        cts_left[cu.consumer] = cts_left.get(cu.consumer, 0) + 1
    chosen: list[CiphertextUnit] = []
    taken = 0
    for score, _, name, what in pool:
        if taken >= k or not math.isfinite(score):
            break
        if isinstance(what, CiphertextUnit):
            own = alive[name].clone() if members is None else alive[name] & members[what]
            own &= ~dead[name] & ~claimed[name]
            if cts_left[name] <= 1 or left[name] - int(own.sum()) < min_alive:
                continue
            cts_left[name] -= 1
            claimed[name] |= own
            left[name] -= int(own.sum())
            chosen.append(what)
        else:
            if left[name] <= min_alive or bool(claimed[name][what]):
                continue
            dead[name][what] = True
            left[name] -= 1
        taken += 1
    return dead, chosen


def _masks_without_cts(
    model: nn.Module,
    masks: Masks,
    units: Mapping[str, LayerUnits],
    cts: Sequence[CiphertextUnit],
    slots: int,
    shape: tuple[int, int, int],
) -> Masks:
    """``masks`` without the ciphertext units ``cts``: the consumer weights that read them
    and the producer's output channels that live in them."""
    if not cts:
        return masks
    plan = plan_layout(model, slots, shape)
    out = {name: m.clone() for name, m in masks.items()}
    for cu in cts:
        out[cu.consumer] &= ~_reads_ct(model, cu, units[cu.consumer], slots)
        packing = plan.layers[cu.producer].outputs
        assert isinstance(packing, ChannelPacking)
        channels = _producer_channels(model, cu, packing)
        out[cu.producer][channels] = False
    return out


def cost_aware_prune(
    model: nn.Module,
    harness: Harness,
    calibration: tuple[Tensor, Tensor],
    *,
    budget: float = 0.005,
    baseline: float | None = None,
    per_iteration: int = 12,
    finetune_epochs: int = 1,
    masks: Mapping[str, Tensor] | None = None,
    max_iterations: int | None = None,
    min_alive: int = 1,
    coarse_first: bool = True,
    coarse_epochs: int | None = None,
    slots: int = DEFAULT_SLOTS,
    input_shape: Sequence[int] | None = None,
    client_shifts: bool = False,
    method: str = "cost-aware",
) -> RotationAwareResult:
    """Algorithm 1 with the cost-aware ranking of the module docstring, over the position
    units of every conv, the fc diagonals of every Linear and the ciphertext units.

    ``calibration``: (images, labels), a fixed training batch for the damages. ``baseline``
    defaults to the accuracy of ``model`` as given; a model already over budget is returned
    unpruned. ``client_shifts``: price units as the program compiled with client shifts
    runs. With ``coarse_first`` the loop starts with whole ciphertexts, one at a time
    (lowest score first, ``coarse_epochs`` of fine-tuning each, default ``finetune_epochs``),
    each tried once: a per-second ranking alone spends the budget on many small units first,
    and their damages add up before the few large savings are reached.
    ``model`` is not modified.
    """
    budget = _check_budget(budget)
    if per_iteration < 1 or finetune_epochs < 0 or min_alive < 1:
        raise InputError("per_iteration and min_alive must be positive, finetune_epochs >= 0")
    if coarse_epochs is not None and coarse_epochs < 0:
        raise InputError(f"coarse_epochs must be >= 0, got {coarse_epochs}")
    shape = _input_shape(model, input_shape)
    units = model_units(model, slots=slots, input_shape=shape, layers="all")
    _, ct_prices = _savings(model, units, slots, shape, client_shifts)
    members = {cu: _members(model, cu, units[cu.consumer], slots) for cu in ct_prices}

    def close_unread(proposal: Masks) -> Masks:
        """Also mask the producer channels of every ciphertext nothing reads any more (its
        last reader pruned unit by unit): the compiler no longer computes them."""
        gone = [
            cu
            for cu, own in members.items()
            if not bool(alive_units(proposal[cu.consumer], units[cu.consumer])[own].any())
        ]
        return _masks_without_cts(model, proposal, units, gone, slots, shape)

    current = copy.deepcopy(model)
    state = _start_masks(current, masks)
    apply_masks(current, state)
    accuracy = harness.evaluate(current)
    if baseline is None:
        baseline = accuracy
    history: list[dict[str, Any]] = [{"start_accuracy": accuracy}]
    if baseline - accuracy > budget:
        log.info("%s: the starting model is over budget (%.4f); nothing pruned", method, accuracy)
        max_iterations = 0
    step, iteration = per_iteration, 0
    tried = set[CiphertextUnit]()  # a rejected ciphertext is never proposed again

    def scores_now(units_too: bool) -> tuple[dict[str, Tensor], dict[CiphertextUnit, float]]:
        return unit_scores(
            current,
            state,
            units,
            calibration,
            slots=slots,
            input_shape=shape,
            units_too=units_too,
            client_shifts=client_shifts,
        )

    def attempt(
        proposal: Masks, epochs: int, pruned: dict[str, int], cts: list[CiphertextUnit], what: str
    ) -> tuple[nn.Module, float, bool]:
        """Fine-tune ``current`` under ``proposal``; record and log the step."""
        candidate, acc = _fine_tuned(harness, current, proposal, epochs)
        ok = baseline - acc <= budget
        history.append(
            {
                "iteration": iteration,
                "pruned": pruned,
                "ciphertexts": [f"{c.consumer}:{c.ct}" for c in cts],
                "accuracy": acc,
                "accepted": ok,
            }
        )
        log.info(
            "%s iteration %d: %s, accuracy %.4f (%s)",
            method,
            iteration,
            what,
            acc,
            "kept" if ok else "over budget",
        )
        return candidate, acc, ok

    while coarse_first and (max_iterations is None or iteration < max_iterations):
        _, ct_scores = scores_now(units_too=False)
        left: dict[str, int] = {}
        for cu in ct_scores:
            left[cu.consumer] = left.get(cu.consumer, 0) + 1
        options = [cu for cu in ct_scores if left[cu.consumer] > 1 and cu not in tried]
        if not options:
            break
        chosen = min(options, key=lambda cu: ct_scores[cu])
        tried.add(chosen)
        iteration += 1
        proposal = _masks_without_cts(current, state, units, [chosen], slots, shape)
        epochs = finetune_epochs if coarse_epochs is None else coarse_epochs
        candidate, acc, ok = attempt(
            proposal, epochs, {}, [chosen], f"ciphertext {chosen.consumer}:{chosen.ct}"
        )
        if ok:
            current, state, accuracy = candidate, proposal, acc
    while max_iterations is None or iteration < max_iterations:
        alive = {name: alive_units(state[name], u) for name, u in units.items()}
        scores, ct_scores = scores_now(units_too=True)
        untried = {cu: v for cu, v in ct_scores.items() if cu not in tried}
        dead, cts = _select(scores, untried, alive, step, min_alive, members)
        n_new = sum(int(d.sum()) for d in dead.values()) + len(cts)
        if n_new == 0:
            break
        iteration += 1
        proposal = masks_without_units(state, units, dead)
        proposal = close_unread(_masks_without_cts(current, proposal, units, cts, slots, shape))
        pruned = {n: int(d.sum()) for n, d in dead.items() if bool(d.any())}
        what = f"-{n_new} units ({len(cts)} ciphertexts)"
        candidate, acc, ok = attempt(proposal, finetune_epochs, pruned, cts, what)
        if ok:
            current, state, accuracy = candidate, proposal, acc
            step = min(per_iteration, 2 * step)  # a success earns the step back
            continue
        tried.update(cts)
        if step > 1:
            step //= 2
        elif not cts:
            break
    return _result(
        method,
        current,
        state,
        accuracy,
        baseline,
        kind="position",
        slots=slots,
        input_shape=shape,
        history=history,
    )


def polish(result: RotationAwareResult, harness: Harness, epochs: int) -> RotationAwareResult:
    """A final fine-tuning of a pruned result for ``epochs`` with its masks fixed (the loop's
    steps fine-tune one epoch each); kept only if the harness' accuracy does not drop and
    the training did not diverge."""
    if epochs < 0:
        raise InputError(f"epochs must be >= 0, got {epochs}")
    if epochs == 0:
        return result
    candidate, acc = _fine_tuned(harness, result.model, dict(result.masks), epochs)
    kept = acc >= result.accuracy and has_finite_weights(candidate)
    log.info(
        "%s polished %d epochs: accuracy %.4f (%s)",
        result.method,
        epochs,
        acc,
        "kept" if kept else "dropped",
    )
    history = [*result.history, {"polish_epochs": epochs, "accuracy": acc, "accepted": kept}]
    if not kept:
        return replace(result, history=history)
    return replace(result, model=candidate, accuracy=acc, history=history)


def prune_in_rounds(
    model: nn.Module,
    harness: Harness,
    recovery: Harness,
    calibration: tuple[Tensor, Tensor],
    *,
    rounds: int = 2,
    recovery_epochs: int = 8,
    load_round: Callable[[int], RotationAwareResult | None] | None = None,
    save_round: Callable[[int, RotationAwareResult], None] | None = None,
    **prune_options: Any,
) -> RotationAwareResult:
    """:func:`cost_aware_prune` ``rounds`` times, each round followed by ``recovery_epochs``
    of :func:`polish` with ``recovery`` (typically the training rate, where ``harness``
    fine-tunes gently between steps) and each later round starting from the recovered
    model and its masks. Stops early when a round prunes nothing.

    ``load_round(r)`` / ``save_round(r, pruned)`` cache round ``r``'s pruned stage (before
    its recovery), so an interrupted run resumes at the round it was in (the recoveries of
    earlier rounds are not redone). ``prune_options``
    go to every :func:`cost_aware_prune` call (budget, baseline, slots, ...). ``model`` is
    not modified.
    """
    if rounds < 1:
        raise InputError(f"rounds must be >= 1, got {rounds}")
    if "masks" in prune_options:
        raise InputTypeError("prune_in_rounds starts from the model's own zeros; pass no masks")
    result: RotationAwareResult | None = None
    saved = None if load_round is None else load_round(1)
    for round_ in range(1, rounds + 1):
        pruned = saved
        if pruned is None:
            start, masks = (model, None) if result is None else (result.model, result.masks)
            log.info("cost-aware pruning, round %d of %d", round_, rounds)
            pruned = cost_aware_prune(start, harness, calibration, masks=masks, **prune_options)
            pruned.history.insert(0, {"round": round_})
            if save_round is not None:
                save_round(round_, pruned)
        saved = None if load_round is None or round_ == rounds else load_round(round_ + 1)
        if saved is not None:
            result = pruned  # the next round's saved stage already holds this recovery
            continue
        before = None if result is None else result.masks
        result = polish(pruned, recovery, recovery_epochs)
        if (
            before is not None
            and before.keys() == result.masks.keys()
            and all(torch.equal(before[name], m) for name, m in result.masks.items())
        ):
            log.info("round %d pruned nothing more; stopping", round_)
            break
    assert result is not None
    return result


@dataclass(frozen=True)
class CostAwareRecipe:
    """The schedule of our combined cost-aware method (``docs/rotation_aware.md``).

    ``warmup_epochs`` of distillation from the dense model at ``recovery_lr`` first, then
    ``rounds`` rounds of :func:`cost_aware_prune` (``per_iteration`` units a step, each step
    fine-tuned ``finetune_epochs`` with distillation at ``tune_lr``, at most
    ``max_iterations`` steps), each round ending with ``recovery_epochs`` of distilled
    recovery at ``recovery_lr``.
    """

    warmup_epochs: int = 3
    rounds: int = 2
    recovery_epochs: int = 8
    recovery_lr: float = 0.01
    tune_lr: float = 3e-3
    per_iteration: int = 12
    finetune_epochs: int = 1
    max_iterations: int | None = None

    @property
    def extra_epochs(self) -> int:
        """Distilled training beyond the pruning steps: what a fair comparison gives every
        other method too (``benchmarks/rotation_aware.py``, matched effort)."""
        return self.warmup_epochs + self.rounds * self.recovery_epochs


def distilled(harness: TrainerHarness, teacher: nn.Module, lr: float) -> TrainerHarness:
    """``harness`` training at ``lr`` with distillation from ``teacher`` (in eval mode): the
    recipe's warm-up and recoveries, and the recovery a fair comparison gives other methods."""
    return replace(harness, distill=Distillation(teacher), config=harness.config.replace(lr=lr))


def combined_cost_aware(
    dense: nn.Module,
    group_model: Callable[[int], nn.Module],
    harness: TrainerHarness,
    train_harness: TrainerHarness,
    calibration: tuple[Tensor, Tensor],
    *,
    g_start: int,
    budget: float,
    baseline: float,
    slots: int = DEFAULT_SLOTS,
    recipe: CostAwareRecipe = CostAwareRecipe(),
    client_shifts: bool = True,
    margin: float = 0.0,
    load_round: Callable[[int], RotationAwareResult | None] | None = None,
    save_round: Callable[[int, RotationAwareResult], None] | None = None,
) -> RotationAwareResult:
    """Our best conv method: HE-group convolution, then cost-aware sub-block pruning.

    ``group_model(g)`` gives a fresh copy of the trained HE-group network at ``g`` groups
    (SpENCNN trains it from scratch). Starting at ``g_start`` (``G_base``), the network is
    warmed up by distillation from ``dense``; while that leaves it over ``budget - margin`` on
    the harness' (validation) split, G is halved, down to 2, which is pruned either way.
    Then :func:`prune_in_rounds` with distilled fine-tuning, ciphertext units included.
    ``load_round`` / ``save_round`` cache each round's pruned stage (a cached first round
    knows its G, so no warm-up is redone). ``dense`` is not modified.
    """
    teacher = copy.deepcopy(dense).eval()
    warm = distilled(train_harness, teacher, recipe.recovery_lr)
    tune = distilled(harness, teacher, recipe.tune_lr)

    def warmed(g: int) -> nn.Module:
        model = group_model(g)
        warm.train(model, epochs=recipe.warmup_epochs)
        if not has_finite_weights(model):
            log.warning("combined-cost-aware: the warm-up diverged; pruning the base as is")
            model = group_model(g)
        return model

    cached = None if load_round is None else load_round(1)
    if cached is not None:
        g = cached.groups
        model = group_model(g)
    else:
        g = g_start
        model = warmed(g)
        while g > 2 and baseline - harness.evaluate(model) > budget - margin:
            log.info("combined-cost-aware: G = %d is over the budget after its warm-up", g)
            g //= 2
            model = warmed(g)
    result = prune_in_rounds(
        model,
        tune,
        warm,
        calibration,
        rounds=recipe.rounds,
        recovery_epochs=recipe.recovery_epochs,
        load_round=load_round,
        save_round=save_round,
        budget=budget - margin,
        baseline=baseline,
        per_iteration=recipe.per_iteration,
        finetune_epochs=recipe.finetune_epochs,
        coarse_epochs=recipe.warmup_epochs,
        max_iterations=recipe.max_iterations,
        slots=slots,
        client_shifts=client_shifts,
        method="combined-cost-aware",
    )
    result.history.insert(0, {"base": f"group-{g}", "warmup_epochs": recipe.warmup_epochs})
    return result
