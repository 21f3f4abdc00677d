"""HE-PEx pruning schemes (Fig. 2) as pipelines of small step objects.

A :class:`Scheme` is a name and a tuple of steps: :class:`Prune` (a :class:`PruningMethod`, or
one built from the run's :class:`PruneConfig`), :class:`Permute` (an injected
:class:`PermuteFn`), :class:`Expand`, :class:`PrunePack` and :class:`Retrain` (an injected
:class:`RetrainFn`). :func:`run_scheme` executes them on a trained model and records tile and
weight sparsity around every step. "Train" (before) and the final "Pack" (encoding the
non-zero tiles, done by the compiler/runtime) are outside the pipeline.

Orders built by :func:`build_scheme` (Train happens before; steps in brackets are optional):

- P2:  Prune -> Retrain
- P2T: Prune^tile -> Retrain
- P3:  Prune -> Permute -> Retrain
- P3E: Prune -> Permute -> Expand -> Retrain
- P4:  Prune -> [Permute] -> Prune^pack -> Retrain
- P4E: Prune -> [Permute] -> Prune^pack -> Expand -> Retrain

P4/P4E permute by default (``permute=True``). Fig. 2 draws them without Permute, but the
paper's evaluation treats P4E as a permuted scheme ("After permutation (P3/P3E/P4E)",
Sec. 6.1; Sec. 6.3 credits permutation with moving tiles under the Prune^pack threshold), and
the public demo runs "prune -> retrain -> permute -> prune almost-zero tiles + expand ->
retrain". ``permute=False`` gives Fig. 2's literal order; ``retrain_after_prune=True`` adds
the demo's retraining between the first prune and the permutation.

Masks are applied lazily (like torch's ``weight_orig`` reparametrization): pruning steps only
change masks; the zeros are written into the model before each Retrain and at the end. So
Expand gives entries back with their trained values, not zeros.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from torch import Tensor, nn

from fheprune.errors import InputError, InputTypeError
from fheprune.layouts import (
    TileShape,
    TileSpec,
    TileStats,
    layer_weights,
    output_layer_names,
    prunable_layer_names,
    tile_plan,
    tile_sparsity,
)

from .base import (
    Criterion,
    MaskError,
    PruningMethod,
    Scope,
    SparsityStats,
    Target,
    apply_masks,
    check_fraction,
    check_input_fraction,
    complete_masks,
    weight_sparsity,
)
from .calibration import input_rms
from .expand import expand_masks
from .fold import fold_dead_neurons
from .magnitude import MagnitudePruning
from .pack import DEFAULT_PACK_THRESHOLD, PackPruning
from .tiles_prune import TilePruning, TileReduction

__all__ = [
    "SCHEME_NAMES",
    "Expand",
    "Permute",
    "PermuteFn",
    "Prune",
    "PruneConfig",
    "PrunePack",
    "Retrain",
    "RetrainFn",
    "Scheme",
    "SchemeName",
    "SchemeResult",
    "Step",
    "StepRecord",
    "build_scheme",
    "run_scheme",
]

log = logging.getLogger(__name__)

SchemeName = Literal["P2", "P2T", "P3", "P3E", "P4", "P4E"]
SCHEME_NAMES: tuple[SchemeName, ...] = ("P2", "P2T", "P3", "P3E", "P4", "P4E")


class PermuteFn(Protocol):
    """The Permute step, injected (the co-permutation lives in :mod:`fheprune.pruning.permute`).

    Must permute the model in place (weights and biases of every co-permuted layer, so the
    function it computes is unchanged) and return the masks permuted the same way, plus an
    opaque description of the permutations (kept in :attr:`SchemeResult.permutations`). Cluster
    on the masks, not on weight values: masked-out weights still hold their trained values.
    """

    def __call__(
        self, model: nn.Module, masks: Mapping[str, Tensor], tile_shape: TileSpec, /
    ) -> tuple[Mapping[str, Tensor], Any]: ...


class RetrainFn(Protocol):
    """The Retrain step, injected: train ``model`` in place with ``masks`` held fixed."""

    def __call__(self, model: nn.Module, masks: Mapping[str, Tensor], /) -> None: ...


# ---------------------------------------------------------------------------------------------
# configuration and steps
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneConfig:
    """The first prune in HE-PEx's {scope/criterion/target} notation, plus P2T's reduction."""

    fraction: float
    scope: Scope = Scope.LOCAL
    criterion: Criterion = Criterion.L1
    target: Target = Target.WEIGHT
    reduction: TileReduction = TileReduction.AVG  # P2T only: T-Avg / T-Max / T-Min
    seed: int = 0
    # "neuron+input" only: the fraction of input features pruned, ranked among themselves
    # (None: they share the neurons' ranking or fraction).
    input_fraction: float | None = None

    def __post_init__(self) -> None:
        # Accept the enum values as strings (configs come from JSON and the CLI).
        object.__setattr__(self, "fraction", check_fraction(self.fraction))
        object.__setattr__(self, "scope", Scope(self.scope))
        object.__setattr__(self, "criterion", Criterion(self.criterion))
        object.__setattr__(self, "target", Target(self.target))
        object.__setattr__(self, "reduction", TileReduction(self.reduction))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputTypeError(f"seed must be an int, got {type(self.seed).__name__}")
        fraction = check_input_fraction(self.input_fraction, self.target)
        object.__setattr__(self, "input_fraction", fraction)

    @property
    def needs_calibration(self) -> bool:
        """Whether the first prune scores with input statistics (criterion ``act``)."""
        return self.criterion is Criterion.ACTIVATION

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> PruneConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(f"unknown prune config keys {unknown}; known: {sorted(known)}")
        return cls(**dict(config))

    def label(self, *, tiled: bool = False) -> str:
        if tiled:
            return f"{self.scope.label}/{self.reduction.label}/-"
        return f"{self.scope.label}/{self.criterion.label}/{self.target.label}"

    def method(
        self,
        tile_shape: TileSpec,
        *,
        tiled: bool = False,
        protected: Sequence[str] | None = None,
        input_rms: Mapping[str, Tensor] | None = None,
    ) -> PruningMethod:
        """The method this config describes: Prune^tile when ``tiled``, else magnitude.

        ``input_rms`` (:func:`fheprune.pruning.calibration.input_rms`) is needed by the
        activation-aware criterion and ignored otherwise.
        """
        if tiled:
            return TilePruning(
                self.fraction, tile_shape, reduction=self.reduction, scope=self.scope
            )
        return MagnitudePruning(
            self.fraction,
            scope=self.scope,
            criterion=self.criterion,
            target=self.target,
            seed=self.seed,
            protected=protected,
            input_rms=input_rms if self.needs_calibration else None,
            input_fraction=self.input_fraction,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "fraction": self.fraction,
            "scope": self.scope.value,
            "criterion": self.criterion.value,
            "target": self.target.value,
            "reduction": self.reduction.value,
            "seed": self.seed,
        }
        if self.input_fraction is not None:  # files without it read as before
            d["input_fraction"] = self.input_fraction
        return d


@dataclass(frozen=True)
class Prune:
    """Prune with ``method``; with none, the run's :class:`PruneConfig` (tiled: P2T's)."""

    method: PruningMethod | None = None
    tiled: bool = False
    kind: ClassVar[str] = "prune"


@dataclass(frozen=True)
class Permute:
    """Co-permute rows/columns to gather zeros into tiles (function unchanged)."""

    kind: ClassVar[str] = "permute"


@dataclass(frozen=True)
class Expand:
    """Un-prune the zeros inside tiles that stay non-zero."""

    kind: ClassVar[str] = "expand"


@dataclass(frozen=True)
class PrunePack:
    """Prune^pack: drop tiles whose zero fraction exceeds ``threshold`` (see pack.py)."""

    threshold: float | Mapping[str, float] = DEFAULT_PACK_THRESHOLD
    scope: Scope = Scope.GLOBAL
    kind: ClassVar[str] = "prune_pack"


@dataclass(frozen=True)
class Retrain:
    """Retrain with masks held fixed (injected :class:`RetrainFn`)."""

    kind: ClassVar[str] = "retrain"


Step = Prune | Permute | Expand | PrunePack | Retrain


def _step_label(step: Step, config: PruneConfig | None) -> str:
    if isinstance(step, Prune):
        if step.method is not None:
            return step.method.label
        return config.label(tiled=step.tiled) if config is not None else "prune"
    if isinstance(step, PrunePack):
        threshold = "per-layer" if isinstance(step.threshold, Mapping) else step.threshold
        return f"{Scope(step.scope).label}/pack>{threshold}"
    return step.kind


@dataclass(frozen=True, init=False)
class Scheme:
    """A named pipeline of steps, e.g. ``Scheme("P3E", [Prune(), Permute(), Expand(), ...])``."""

    name: str
    steps: tuple[Step, ...]

    def __init__(self, name: str, steps: Sequence[Step]) -> None:
        steps = tuple(steps)
        if not steps:
            raise InputError(f"scheme {name!r} has no steps")
        for step in steps:
            if not isinstance(step, (Prune, Permute, Expand, PrunePack, Retrain)):
                raise InputTypeError(f"not a scheme step: {step!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "steps", steps)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(step.kind for step in self.steps)

    def describe(self) -> str:
        return f"{self.name}: " + " -> ".join(self.kinds)

    def to_dict(self) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        for step in self.steps:
            entry: dict[str, Any] = {"kind": step.kind}
            if isinstance(step, Prune):
                entry["tiled"] = step.tiled
                if step.method is not None:
                    entry["method"] = repr(step.method)
            elif isinstance(step, PrunePack):
                entry["threshold"] = (
                    dict(step.threshold)
                    if isinstance(step.threshold, Mapping)
                    else float(step.threshold)
                )
                entry["scope"] = Scope(step.scope).value
            steps.append(entry)
        return {"name": self.name, "steps": steps}


def build_scheme(
    name: SchemeName | str,
    *,
    pack_threshold: float | Mapping[str, float] = DEFAULT_PACK_THRESHOLD,
    pack_scope: Scope | str = Scope.GLOBAL,
    permute: bool | None = None,
    retrain_after_prune: bool = False,
    method: PruningMethod | None = None,
) -> Scheme:
    """One of HE-PEx's schemes (see the module docstring for the orders).

    ``pack_threshold``/``pack_scope`` configure Prune^pack (P4/P4E only); ``permute`` switches
    the optional Permute of P4/P4E (default on); ``retrain_after_prune`` retrains between the
    first prune and the permutation (schemes that permute); ``method`` replaces the
    config-built first prune.
    """
    key = name.upper()
    if key not in SCHEME_NAMES:
        raise InputError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEME_NAMES)}")
    is_p4 = key in ("P4", "P4E")
    if permute is not None and not is_p4:
        raise InputError(
            f"permute is only optional in P4/P4E; {key} "
            + ("always permutes" if key.startswith("P3") else "never permutes")
        )
    custom_pack = isinstance(pack_threshold, Mapping) or (
        pack_threshold != DEFAULT_PACK_THRESHOLD or Scope(pack_scope) is not Scope.GLOBAL
    )
    if custom_pack and not is_p4:
        raise InputError(f"pack_threshold/pack_scope only apply to P4/P4E, not {key}")
    pack = PrunePack(
        dict(pack_threshold) if isinstance(pack_threshold, Mapping) else float(pack_threshold),
        Scope(pack_scope),
    )
    # Fail now, not after training: PackPruning validates thresholds against the scope.
    if is_p4:
        PackPruning(TileShape(1, 1), pack.threshold, scope=pack.scope)
    first = Prune(method, tiled=(key == "P2T"))
    does_permute = key in ("P3", "P3E") or (is_p4 and (permute is None or permute))
    steps: list[Step] = [first]
    if retrain_after_prune:
        if not does_permute:
            raise InputError(f"retrain_after_prune needs a scheme that permutes, not {key}")
        steps.append(Retrain())
    if does_permute:
        steps.append(Permute())
    if is_p4:
        steps.append(pack)
    if key.endswith("E"):
        steps.append(Expand())
    steps.append(Retrain())
    return Scheme(key, steps)


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    """What one step did: tile sparsity before/after, weight sparsity after, time."""

    index: int
    kind: str
    label: str
    tiles_before: TileStats
    tiles_after: TileStats
    weights_after: SparsityStats
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "label": self.label,
            "tile_sparsity_before": self.tiles_before.sparsity,
            "tile_sparsity_after": self.tiles_after.sparsity,
            "zero_tiles_after": self.tiles_after.zero_tiles,
            "tiles": self.tiles_after.tiles,
            "weight_sparsity_after": self.weights_after.sparsity,
            "seconds": self.seconds,
            "tiles_after": self.tiles_after.to_dict(),
        }


@dataclass
class SchemeResult:
    """Final masks and what happened on the way (the model itself is modified in place)."""

    scheme: Scheme
    tile_shape: TileShape
    prune_config: PruneConfig | None
    masks: dict[str, Tensor]
    initial_tiles: TileStats
    tile_stats: TileStats
    weight_sparsity: SparsityStats
    permutations: list[Any] = field(default_factory=list)
    log: list[StepRecord] = field(default_factory=list)

    @property
    def permutation(self) -> Any:
        """The last Permute step's info (``None`` when the scheme did not permute)."""
        return self.permutations[-1] if self.permutations else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {
            "scheme": self.scheme.to_dict(),
            "tile_shape": [self.tile_shape.t1, self.tile_shape.t2],
            "prune_config": None if self.prune_config is None else self.prune_config.to_dict(),
            "initial_tiles": self.initial_tiles.to_dict(),
            "tiles": self.tile_stats.to_dict(),
            "weight_sparsity": self.weight_sparsity.to_dict(),
            "permute_steps": len(self.permutations),
            "log": [record.to_dict() for record in self.log],
        }


def _check_permuted(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> None:
    # A permutation moves entries around; it can neither prune nor revive any.
    for name, mask in before.items():
        was, now = int(mask.sum()), int(after[name].sum())
        if was != now:
            raise MaskError(
                f"permute_fn changed the live-entry count of {name!r} ({was} -> {now}); a "
                "permutation must only reorder"
            )


def _before_prune(scheme: Scheme) -> list[Step]:
    """The steps that run before the last config-built Prune step."""
    config_built = [
        i for i, step in enumerate(scheme.steps) if isinstance(step, Prune) and step.method is None
    ]
    return list(scheme.steps[: max(config_built, default=0)])


def run_scheme(
    scheme: Scheme,
    model: nn.Module,
    tile_shape: TileShape,
    *,
    prune_config: PruneConfig | Mapping[str, Any] | None,
    retrain_fn: RetrainFn,
    permute_fn: PermuteFn | None = None,
    initial_masks: Mapping[str, Tensor] | None = None,
    calibration: Iterable[Tensor] | None = None,
) -> SchemeResult:
    """Run ``scheme`` on a trained ``model`` (modified in place) with ``tile_shape`` tiles.

    ``prune_config`` builds every :class:`Prune` step without its own method (neuron pruning
    protects :func:`fheprune.layouts.output_layer_names`). Starts from ``initial_masks`` (default:
    nothing pruned). Tile statistics are taken on the masks - what the packer will see once
    the masks are applied, which this function does before each Retrain and at the end.
    ``calibration`` (batches of model inputs, in the model's input order) feeds the
    activation-aware criterion; its statistics are taken once, before the first step.
    Every layer is cut the way the tile runtime cuts it (:func:`fheprune.layouts.tile_plan`:
    with rectangular tiles, every second layer's tile is ``t2 x t1``).
    """
    if not isinstance(tile_shape, TileShape):
        raise InputTypeError(f"tile_shape must be a TileShape, got {type(tile_shape).__name__}")
    config = (
        PruneConfig.from_mapping(prune_config)
        if isinstance(prune_config, Mapping)
        else prune_config
    )
    for step in scheme.steps:
        if isinstance(step, Permute) and permute_fn is None:
            raise InputError(
                f"scheme {scheme.name} has a Permute step but no permute_fn was given (pass "
                "one, or build P4/P4E with permute=False)"
            )
        if isinstance(step, Prune) and step.method is None and config is None:
            raise InputError(f"scheme {scheme.name} needs a prune_config for its Prune step")
    calibrated = (
        config is not None
        and config.needs_calibration
        and any(
            isinstance(step, Prune) and step.method is None and not step.tiled
            for step in scheme.steps
        )
    )
    if calibrated and calibration is None:
        raise InputError(
            "criterion 'act' needs calibration data: pass calibration= a few batches of "
            "training inputs"
        )
    if calibrated and any(isinstance(step, Permute) for step in _before_prune(scheme)):
        raise InputError(
            "calibration statistics are taken before the first step; a Prune with criterion "
            "'act' after a Permute would read them in the wrong order"
        )

    names = prunable_layer_names(model)
    masks = complete_masks(layer_weights(model, names), initial_masks)
    protected = output_layer_names(model)
    rms = input_rms(model, calibration, names) if calibrated and calibration is not None else None
    plan = tile_plan(names, tile_shape)
    initial = tile_sparsity(masks, plan)
    result = SchemeResult(
        scheme=scheme,
        tile_shape=tile_shape,
        prune_config=config,
        masks=masks,
        initial_tiles=initial,
        tile_stats=initial,
        weight_sparsity=weight_sparsity(masks),
    )
    log.info("running %s with %s tiles on %d layers", scheme.describe(), tile_shape, len(names))
    before = initial
    for index, step in enumerate(scheme.steps):
        start = time.perf_counter()
        weights = layer_weights(model, names)  # re-read: Permute / Retrain change the model
        if isinstance(step, Prune):
            method = step.method
            if method is None:
                assert config is not None  # checked above
                method = config.method(plan, tiled=step.tiled, protected=protected, input_rms=rms)
            masks = method(weights, masks)
            if isinstance(method, MagnitudePruning) and method.target.neurons:
                # Pruned neurons output constants: fold them into the next Linear's bias and
                # prune the columns that read them (exact; see fheprune.pruning.fold).
                masks = fold_dead_neurons(model, masks, seed=config.seed if config else 0)
        elif isinstance(step, Permute):
            assert permute_fn is not None  # checked above
            permuted, info = permute_fn(model, masks, plan)
            permuted = complete_masks(layer_weights(model, names), permuted, require_all=True)
            _check_permuted(masks, permuted)
            masks = permuted
            result.permutations.append(info)
        elif isinstance(step, Expand):
            masks = expand_masks(masks, plan)
        elif isinstance(step, PrunePack):
            masks = PackPruning(plan, step.threshold, scope=step.scope)(weights, masks)
        else:  # Retrain
            apply_masks(model, masks)
            retrain_fn(model, masks)
            apply_masks(model, masks)  # hold the masks even if retrain_fn let weights drift
        after = tile_sparsity(masks, plan)
        record = StepRecord(
            index=index,
            kind=step.kind,
            label=_step_label(step, config),
            tiles_before=before,
            tiles_after=after,
            weights_after=weight_sparsity(masks),
            seconds=time.perf_counter() - start,
        )
        result.log.append(record)
        log.info(
            "%s step %d %s (%s): tile sparsity %.4f -> %.4f, weight sparsity %.4f",
            scheme.name,
            index,
            record.kind,
            record.label,
            before.sparsity,
            after.sparsity,
            record.weights_after.sparsity,
        )
        before = after
    apply_masks(model, masks)
    result.masks = masks
    result.tile_stats = before
    result.weight_sparsity = weight_sparsity(masks)
    return result
