"""HE-PEx's sparsity experiment: every scheme x pruning fraction x tile shape, per model.

For each model a baseline is trained once (cached), then each (scheme, fraction, tile) point
starts from a copy of it, runs the scheme (prune / permute / expand / pack / retrain) and is
evaluated on the validation split (held out of the training images) and on the test set.
The best point per (model, scheme, tile) is the one with the highest tile sparsity whose
*validation* degradation stays within the budget (2.5%: accuracy points for classifiers,
relative loss increase for autoencoders), as in HE-PEx Fig. 9; its test degradation is only
reported beside it. Nothing that selects (``best_within_budget``, ``prune_within_budget``)
reads a test field or the test loader.

Points are appended to ``points.jsonl`` as they finish, so an interrupted sweep resumes where
it stopped; the summary is rewritten atomically at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fheprune.errors import InputError
from fheprune.layouts import TileShape, TileSpec
from fheprune.models import build_model
from fheprune.pruning import PruneConfig, build_scheme, run_scheme
from fheprune.pruning.pack import DEFAULT_PACK_THRESHOLD, tile_zero_fractions
from fheprune.pruning.schemes import PermuteFn, SchemeResult
from fheprune.reporting import machine_info, write_json_atomic, write_text_atomic
from fheprune.training import (
    Loaders,
    TrainConfig,
    default_config,
    degradation,
    evaluate,
    load_loaders,
    load_model,
    permute_loaders,
    save_model,
    train,
)

log = logging.getLogger(__name__)

#: HE-PEx's reported best tile sparsity within 2.5% degradation (MNIST, Fig. 9), and its
#: average gain over P2T (Hunter adapted).
PAPER_TILE_SPARSITY = {"mlp": 0.95, "cnn": 0.61, "ae-compressor": 0.41, "ae-denoiser": 0.47}
PAPER_GAIN_OVER_P2T = 1.70

#: The two evaluation splits: "val" (held out of the training images) chooses, "test" reports.
Split = Literal["val", "test"]

#: Training batches whose inputs calibrate the activation-aware criterion ("act").
CALIBRATION_BATCHES = 16


@dataclass(frozen=True)
class SchemeSpec:
    """One scheme with its first-prune configuration (HE-PEx's {scope/criterion/target})."""

    scheme: str
    scope: str = "local"
    criterion: str = "l1"
    target: str = "weight"
    reduction: str = "avg"
    conv_pack_threshold: float | None = None  # HE-PEx's best: P3E on conv (no pack prune there)
    input_fraction: float | None = None  # "neuron+input": inputs pruned at their own fraction

    @property
    def label(self) -> str:
        if self.scheme == "P2T":
            base = f"P2T {self.scope}/T-{self.reduction}"
        else:
            base = f"{self.scheme} {self.scope}/{self.criterion}/{self.target}"
        if self.input_fraction is not None:
            base += f" inputs-pruned={self.input_fraction:g}"
        return base + (" conv-no-pack" if self.conv_pack_threshold is not None else "")

    def prune_config(self, fraction: float, seed: int) -> PruneConfig:
        return PruneConfig.from_mapping(
            {
                "fraction": fraction,
                "scope": self.scope,
                "criterion": self.criterion,
                "target": self.target,
                "reduction": self.reduction,
                "seed": seed,
                "input_fraction": self.input_fraction,
            }
        )


#: The configurations Table 1 lists, one per scheme family member.
DEFAULT_SCHEMES: tuple[SchemeSpec, ...] = (
    SchemeSpec("P2", "local", "l1", "weight"),
    SchemeSpec("P2", "global", "l1", "weight"),
    SchemeSpec("P2", "local", "random", "weight"),
    SchemeSpec("P2", "local", "l1", "neuron"),
    SchemeSpec("P2T", "local", reduction="avg"),
    SchemeSpec("P2T", "local", reduction="max"),
    SchemeSpec("P2T", "local", reduction="min"),
    SchemeSpec("P2T", "global", reduction="avg"),
    SchemeSpec("P3", "local", "l1", "weight"),
    SchemeSpec("P3E", "local", "l1", "weight"),
    SchemeSpec("P3E", "global", "l1", "weight"),
    SchemeSpec("P4", "local", "l1", "weight"),
    SchemeSpec("P4E", "local", "l1", "weight"),
    SchemeSpec("P4E", "global", "l1", "weight"),
    # Neuron-target first prune: the co-permutation gathers dead neurons into dead tile rows,
    # which also removes their rotations in the runtime (output neurons are never pruned).
    SchemeSpec("P4E", "local", "l1", "neuron"),
    SchemeSpec("P4E", "global", "l1", "neuron"),
    SchemeSpec("P4E", "local", "l1", "weight", conv_pack_threshold=1.0),
    # Activation-aware scores (|w| times its input's RMS on training data).
    SchemeSpec("P4E", "local", "act", "weight"),
    SchemeSpec("P4E", "global", "act", "weight"),
    # The MLP's pixels as units too, pruned at their own fraction while the sweep's fraction
    # goes to the hidden neurons (models whose first layer is a conv have no such units).
    *(
        SchemeSpec("P4E", "local", "act", "neuron+input", input_fraction=f)
        for f in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)
    ),
)

# 0.50 .. 0.95 in 5% steps, then the high end where tile sparsity really moves.
DEFAULT_FRACTIONS: tuple[float, ...] = (
    *(round(0.5 + 0.05 * i, 2) for i in range(10)),
    0.97,
    0.98,
    0.99,
)

# P2T's fraction is its tile sparsity; on the autoencoders every P2T point from 0.5 up is
# over budget, so it also gets the low end (other schemes barely zero a tile there).
DEFAULT_P2T_LOW_FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 10))


@dataclass(frozen=True)
class SweepConfig:
    models: Sequence[str] = ("mlp", "cnn", "ae-compressor", "ae-denoiser")
    tiles: Sequence[int] = (8, 16, 32, 64)
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    p2t_low_fractions: Sequence[float] = DEFAULT_P2T_LOW_FRACTIONS  # P2T only, besides fractions
    schemes: Sequence[SchemeSpec] = DEFAULT_SCHEMES
    dataset: str = "mnist"
    train_epochs: int | None = None  # None: Table 2's schedule (default_config)
    retrain_epochs: int = 2
    limit: int | None = None  # training samples (None: all)
    test_limit: int | None = None
    budget: float = 0.025
    seed: int = 0
    data_dir: str | None = None
    out_dir: Path = Path("results/hepex")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["schemes"] = [s.label for s in self.schemes]
        return d


def default_permute_fn() -> PermuteFn | None:
    """The co-permutation step, if the permutation module is available."""
    try:
        from fheprune.pruning import permute
    except ImportError:  # pragma: no cover - permute ships with the package
        return None
    fn: PermuteFn = permute.permute_fn
    return fn


class Experiment:
    """Trains (or loads) baselines and runs sweep points for one configuration."""

    def __init__(self, config: SweepConfig, permute_fn: PermuteFn | None = None) -> None:
        self.config = config
        self.permute_fn = permute_fn if permute_fn is not None else default_permute_fn()
        self._loaders: dict[str, Loaders] = {}
        self._baselines: dict[str, nn.Module] = {}
        self._baseline_metrics: dict[tuple[str, Split], float] = {}

    def train_config(self, model_name: str) -> TrainConfig:
        cfg = default_config(model_name, self.config.dataset).replace(seed=self.config.seed)
        if self.config.train_epochs is not None:
            cfg = cfg.replace(epochs=self.config.train_epochs)
        return cfg

    def loaders(self, model_name: str) -> Loaders:
        if model_name not in self._loaders:
            self._loaders[model_name] = load_loaders(
                model_name,
                self.config.dataset,
                self.train_config(model_name),
                data_dir=self.config.data_dir,
                limit=self.config.limit,
                test_limit=self.config.test_limit,
            )
        return self._loaders[model_name]

    def task(self, model_name: str) -> str:
        return str(self.loaders(model_name).spec.task)

    def baseline(self, model_name: str) -> nn.Module:
        """The trained, unpruned model (cached on disk)."""
        if model_name in self._baselines:
            return self._baselines[model_name]
        cfg = self.train_config(model_name)
        # Torch's thread count changes the order of float reductions, so the same seed trains
        # a different model under another count: it is part of the cache name.
        tag = (
            f"{self.config.dataset}-{model_name}-e{cfg.epochs}-s{cfg.seed}-l{self.config.limit}"
            f"-t{torch.get_num_threads()}"
        )
        path = self.config.out_dir / "baselines" / f"{tag}.pt"
        loaders = self.loaders(model_name)
        if path.exists():
            model, _ = load_model(path)
            log.info("%s: loaded baseline %s", model_name, path)
        else:
            model = build_model(model_name, self.config.dataset, seed=self.config.seed)
            log.info("%s: training baseline (%d epochs)", model_name, cfg.epochs)
            train(
                model,
                loaders,
                cfg,
                checkpoint_dir=self.config.out_dir / "baselines" / f"{tag}.ckpt",
                progress=True,
            )
            save_model(model, path, metadata={"config": cfg.to_dict()})
        self._baselines[model_name] = model
        return model

    def baseline_metric(self, model_name: str, split: Split) -> float:
        """The baseline's metric on the validation split or the test set (cached)."""
        key = (model_name, split)
        if key not in self._baseline_metrics:
            loader = _split_loader(self.loaders(model_name), split)
            task = self.loaders(model_name).spec.task
            metric = evaluate(self.baseline(model_name), loader, task)
            log.info("%s: baseline %s metric %.4f", model_name, split, metric)
            self._baseline_metrics[key] = metric
        return self._baseline_metrics[key]

    def run_point(
        self, model_name: str, spec: SchemeSpec, tile: int, fraction: float
    ) -> dict[str, Any]:
        """One sweep point: copy the baseline, run the scheme, evaluate (validation and test)."""
        model, _, row, permuted = self.prune_point(model_name, spec, tile, fraction)
        return {**row, **self.test_fields(model_name, model, permuted)}

    def prune_point(
        self, model_name: str, spec: SchemeSpec, tile: int, fraction: float
    ) -> tuple[nn.Module, SchemeResult, dict[str, Any], Loaders]:
        """Copy the baseline, run the scheme at this fraction, evaluate it on validation.

        Returns the pruned model, the scheme's result, its row (``val_*`` fields only) and
        the loaders as the pruned model sees the data (permuted when the scheme permuted).
        """
        base_model = self.baseline(model_name)
        base_metric = self.baseline_metric(model_name, "val")
        loaders = self.loaders(model_name)
        task = loaders.spec.task
        started = time.perf_counter()
        model, result, permuted = run_hepex_scheme(
            base_model,
            loaders,
            spec,
            tile,
            fraction,
            retrain_config=self.train_config(model_name).replace(epochs=self.config.retrain_epochs),
            seed=self.config.seed,
            permute_fn=self.permute_fn,
        )
        metric = evaluate(model, _split_loader(permuted, "val"), task)
        row = {
            "model": model_name,
            "scheme": spec.scheme,
            "config": spec.label,
            "tile": [tile, tile],
            "fraction": fraction,
            "tile_sparsity": result.tile_stats.sparsity,
            "tile_sparsity_after_first_prune": _first_prune_tiles(result),
            "weight_sparsity": result.weight_sparsity.sparsity,
            "val_metric": metric,
            "val_baseline_metric": base_metric,
            "val_degradation": degradation(base_metric, metric, task),
            "task": task,
            "seconds": time.perf_counter() - started,
        }
        return model, result, row, permuted

    def test_fields(self, model_name: str, model: nn.Module, permuted: Loaders) -> dict[str, float]:
        """The reported test metrics of a pruned model (never used to choose anything)."""
        base = self.baseline_metric(model_name, "test")
        task = permuted.spec.task
        metric = evaluate(model, _split_loader(permuted, "test"), task)
        return {
            "test_metric": metric,
            "test_baseline_metric": base,
            "test_degradation": degradation(base, metric, task),
        }


def _split_loader(loaders: Loaders, split: Split) -> Any:
    loader = loaders.val if split == "val" else loaders.test
    if loader is None:
        what = "a validation split (val_fraction > 0)" if split == "val" else "a test split"
        raise InputError(f"the HE-PEx experiment needs {what}; the loaders have none")
    return loader


#: A point chosen on validation: the pruned model, the scheme's result, its row (validation
#: and test fields) and the loaders the pruned model reads.
BudgetPoint = tuple[nn.Module, SchemeResult, dict[str, Any]]


def run_hepex_scheme(
    base_model: nn.Module,
    loaders: Loaders,
    spec: SchemeSpec,
    tile: int | TileShape,
    fraction: float,
    *,
    retrain_config: TrainConfig,
    seed: int,
    permute_fn: PermuteFn | None,
) -> tuple[nn.Module, SchemeResult, Loaders]:
    """Run one HE-PEx scheme on a copy of ``base_model`` (``base_model`` is not modified).

    Returns the pruned model, the scheme's result and the loaders as the pruned model sees
    the data: after a co-permutation the model expects permuted inputs and yields permuted
    outputs (the client applies ``input_perm`` / ``output_perm`` in the clear), so retraining
    and every later evaluation must read the permuted loaders.
    """
    model = copy.deepcopy(base_model)
    shape = tile if isinstance(tile, TileShape) else TileShape(tile, tile)
    current = {"loaders": loaders}

    def retrain(m: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        train(m, current["loaders"], retrain_config, masks=masks, progress=False)

    permute = None
    if permute_fn is not None:
        inner = permute_fn

        def permute(
            m: nn.Module, masks: Mapping[str, torch.Tensor], s: TileSpec
        ) -> tuple[Mapping[str, torch.Tensor], Any]:
            new_masks, info = inner(m, masks, s)
            current["loaders"] = permute_loaders(
                current["loaders"],
                getattr(info, "input_perm", None),
                getattr(info, "output_perm", None),
            )
            return new_masks, info

    pack_threshold: float | dict[str, float] = DEFAULT_PACK_THRESHOLD
    pack_scope = "global"
    if spec.conv_pack_threshold is not None:
        pack_scope = "local"
        pack_threshold = {
            name: (
                spec.conv_pack_threshold if isinstance(mod, nn.Conv2d) else DEFAULT_PACK_THRESHOLD
            )
            for name, mod in model.named_modules()
            if isinstance(mod, (nn.Conv2d, nn.Linear))
        }
    kwargs: dict[str, Any] = {}
    if spec.scheme in ("P4", "P4E"):
        kwargs = {"pack_threshold": pack_threshold, "pack_scope": pack_scope}
        if permute is None:
            kwargs["permute"] = False
    scheme = build_scheme(spec.scheme, **kwargs)
    prune_config = spec.prune_config(fraction, seed)
    calibration = None
    if prune_config.needs_calibration:  # input statistics from the first training batches
        calibration = [x for x, _ in itertools.islice(loaders.train, CALIBRATION_BATCHES)]
    result = run_scheme(
        scheme,
        model,
        shape,
        prune_config=prune_config,
        retrain_fn=retrain,
        permute_fn=permute,
        calibration=calibration,
    )
    return model, result, current["loaders"]


def choose_within_budget(
    experiment: Experiment,
    model_name: str,
    spec: SchemeSpec,
    tile: int,
    fractions: Sequence[float],
) -> tuple[nn.Module, SchemeResult, dict[str, Any], Loaders] | None:
    """The highest-tile-sparsity point whose *validation* degradation is within the budget.

    Reads the validation split only (a test asserts it never touches the test loader).
    Fractions are tried in increasing order and the search stops after two consecutive points
    over budget: degradation grows with the fraction, so later ones will not qualify either.
    """
    best: tuple[nn.Module, SchemeResult, dict[str, Any], Loaders] | None = None
    misses = 0
    for fraction in sorted(fractions):
        point = experiment.prune_point(model_name, spec, tile, fraction)
        row = point[2]
        log.info(
            "fraction %.3f: tile sparsity %.1f%%, validation degradation %+.4f",
            fraction,
            100 * row["tile_sparsity"],
            row["val_degradation"],
        )
        if row["val_degradation"] <= experiment.config.budget:
            misses = 0
            if best is None or row["tile_sparsity"] > best[2]["tile_sparsity"]:
                best = point
        else:
            misses += 1
            if misses >= 2:
                break
    return best


def prune_within_budget(
    experiment: Experiment,
    model_name: str,
    spec: SchemeSpec,
    tile: int,
    fractions: Sequence[float],
) -> BudgetPoint | None:
    """:func:`choose_within_budget`, then the chosen point's test metrics, measured once."""
    chosen = choose_within_budget(experiment, model_name, spec, tile, fractions)
    if chosen is None:
        return None
    model, result, row, permuted = chosen
    test = experiment.test_fields(model_name, model, permuted)
    log.info(
        "chosen fraction %.3f: validation degradation %+.4f, test degradation %+.4f",
        row["fraction"],
        row["val_degradation"],
        test["test_degradation"],
    )
    return model, result, {**row, **test}


def save_budget_point(
    path: str | os.PathLike[str],
    model_name: str,
    spec: SchemeSpec,
    tile: TileShape,
    config: SweepConfig,
    best: BudgetPoint,
) -> dict[str, Any] | None:
    """Save a :func:`prune_within_budget` point (weights, masks, client-side permutations).

    Returns the permutation arrays it saved (None when the scheme did not permute).
    """
    from fheprune.pruning import save_pruned_model
    from fheprune.pruning.permute import PermutationResult

    model, result, row = best
    info = result.permutation
    arrays = info.as_arrays() if isinstance(info, PermutationResult) else None
    save_pruned_model(
        path,
        model,
        result.masks,
        model_name=model_name,
        model_kwargs=dict(getattr(model, "arch", {})),
        tile_shape=tile,
        scheme=spec.label,
        config={"fraction": row["fraction"], **config.to_dict()},
        metrics={k: float(row[k]) for k in POINT_METRICS},
        permutations=arrays,
    )
    return arrays


#: The numbers a saved budget point keeps (validation chose it; test is reported).
POINT_METRICS = (
    "val_metric",
    "val_baseline_metric",
    "val_degradation",
    "test_metric",
    "test_baseline_metric",
    "test_degradation",
    "tile_sparsity",
    "weight_sparsity",
)


def _first_prune_tiles(result: SchemeResult) -> float | None:
    """Tile sparsity right after the first prune (before permute/pack/expand)."""
    return next((r.tiles_after.sparsity for r in result.log if r.kind == "prune"), None)


def point_key(row: dict[str, Any]) -> str:
    return f"{row['model']}|{row['config']}|{row['tile'][0]}|{row['fraction']:.4f}"


def read_points(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    stale = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("skipping a torn line in %s (an interrupted write)", path)
                    continue
                if "val_degradation" not in row:
                    stale += 1
                    continue
                rows.append(row)
    if stale:
        log.warning(
            "%s: %d points from before validation selection (no val_degradation) are ignored "
            "and will be rerun",
            path,
            stale,
        )
    return rows


#: Models whose first layer is a convolution: no input columns to prune, and conv layers to
#: exempt from Prune^pack.
CONV_MODELS = frozenset({"cnn", "lenet", "hefnet-mnist", "vgg5-mnist"})


def applies(spec: SchemeSpec, model_name: str) -> bool:
    """Whether a sweep runs ``spec`` on ``model_name`` (conv-only options skip the others)."""
    conv = model_name in CONV_MODELS
    if spec.conv_pack_threshold is not None and not conv:
        return False
    return not (spec.input_fraction is not None and conv)


def sweep(
    experiment: Experiment,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run every point not yet in ``points.jsonl``; returns all rows."""
    cfg = experiment.config
    points_path = cfg.out_dir / "points.jsonl"
    rows = read_points(points_path)
    done = {point_key(r) for r in rows}
    todo = [
        (m, s, t, f)
        for m in cfg.models
        for t in cfg.tiles
        for s in cfg.schemes
        for f in sorted({*cfg.fractions, *(cfg.p2t_low_fractions if s.scheme == "P2T" else ())})
        if applies(s, m)
    ]
    todo = [p for p in todo if f"{p[0]}|{p[1].label}|{p[2]}|{p[3]:.4f}" not in done]
    log.info("%d points done, %d to run", len(done), len(todo))
    iterator: Iterable[Any] = progress(todo) if progress else todo
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    for model_name, spec, tile, fraction in iterator:
        row = experiment.run_point(model_name, spec, tile, fraction)
        rows.append(row)
        with points_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.info(
            "%s %s %dx%d f=%.2f: tiles %.1f%%, validation %.4f (degradation %+.4f)",
            model_name,
            spec.label,
            tile,
            tile,
            fraction,
            100 * row["tile_sparsity"],
            row["val_metric"],
            row["val_degradation"],
        )
    return rows


def best_within_budget(rows: Sequence[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """Per (model, config, tile): the row with the highest tile sparsity within the budget.

    The budget is checked on the validation degradation; test fields are never read.
    """
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in rows:
        if row["val_degradation"] > budget:
            continue
        key = (row["model"], row["config"], row["tile"][0])
        if key not in best or row["tile_sparsity"] > best[key]["tile_sparsity"]:
            best[key] = row
    return sorted(best.values(), key=lambda r: (r["model"], r["tile"][0], r["config"]))


_SUMMARY_FIELDS = ("config", "tile_sparsity", "val_degradation", "test_degradation")


def summarize(best: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per (model, tile): best HE-PEx scheme vs best P2T, and the ratio."""
    out: dict[str, Any] = {}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in best:
        groups.setdefault((row["model"], row["tile"][0]), []).append(row)
    for (model, tile), rows in sorted(groups.items()):
        hepex = [r for r in rows if r["scheme"] in ("P3", "P3E", "P4", "P4E")]
        p2t = [r for r in rows if r["scheme"] == "P2T"]
        top = max(hepex, key=lambda r: r["tile_sparsity"], default=None)
        top_p2t = max(p2t, key=lambda r: r["tile_sparsity"], default=None)
        ratio = None
        if top and top_p2t and top_p2t["tile_sparsity"] > 0:
            ratio = top["tile_sparsity"] / top_p2t["tile_sparsity"]
        out[f"{model}@{tile}x{tile}"] = {
            "best_hepex": top and {k: top[k] for k in _SUMMARY_FIELDS},
            "best_p2t": top_p2t and {k: top_p2t[k] for k in _SUMMARY_FIELDS},
            "hepex_over_p2t": ratio,
            "paper_tile_sparsity": PAPER_TILE_SPARSITY.get(model),
        }
    return out


def average_gain_over_p2t(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per tile shape: the mean over models of best-HE-PEx / best-P2T tile sparsity."""
    by_tile: dict[str, list[float]] = {}
    for key, s in summary.items():
        if s["hepex_over_p2t"]:
            by_tile.setdefault(key.split("@")[1], []).append(s["hepex_over_p2t"])
    return {
        tile: {"mean": sum(r) / len(r), "models": len(r)}
        for tile, r in sorted(by_tile.items(), key=lambda kv: int(kv[0].split("x")[0]))
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _deg(row: Mapping[str, Any], split: Split) -> str:
    return f"{row[f'{split}_degradation']:+.4f}" if row else "-"


def markdown_table(
    best: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    budget: float,
    rows: Sequence[dict[str, Any]] = (),
) -> str:
    """The report: best HE-PEx scheme vs best P2T per (model, tile), then every best point.

    Points are chosen on validation; test degradation is shown beside it, never used. The
    number of configurations and points tried per (model, tile) says how much was searched.
    """
    tried: dict[str, tuple[set[str], int]] = {}
    for r in rows:
        key = f"{r['model']}@{r['tile'][0]}x{r['tile'][0]}"  # summary's keys
        configs, count = tried.get(key, (set(), 0))
        tried[key] = (configs | {r["config"]}, count + 1)
    lines = [
        f"# HE-PEx tile sparsity within {100 * budget:.1f}% degradation",
        "",
        "Each point is chosen by its degradation on the validation split (held out of the "
        "training images); the test degradation is reported beside it and chose nothing.",
        "",
        "| model | tile | tried (configs / points) | best HE-PEx scheme | tile sparsity "
        "| val degradation | test degradation | best P2T | P2T tile sparsity "
        "| HE-PEx / P2T | paper (HE-PEx) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        model, tile = key.split("@")
        h, p = s["best_hepex"] or {}, s["best_p2t"] or {}
        ratio = s["hepex_over_p2t"]
        configs, count = tried.get(key, (set(), 0))
        lines.append(
            " | ".join(
                [
                    f"| {model}",
                    tile,
                    f"{len(configs)} / {count}" if count else "-",
                    h.get("config", "-"),
                    _pct(h.get("tile_sparsity")),
                    _deg(h, "val"),
                    _deg(h, "test"),
                    p.get("config", "-"),
                    _pct(p.get("tile_sparsity")),
                    f"{ratio:.2f}x" if ratio else "-",
                    _pct(s["paper_tile_sparsity"]) + " |",
                ]
            )
        )
    averages = average_gain_over_p2t(summary)
    if averages:
        lines.append("")
    for tile, avg in averages.items():
        lines.append(
            f"Average best-HE-PEx / best-P2T tile sparsity at {tile} ({avg['models']} models): "
            f"{avg['mean']:.2f}x (paper: +70%, i.e. {PAPER_GAIN_OVER_P2T:.2f}x)."
        )
    lines += ["", "Best point within budget (on validation) per scheme configuration:", ""]
    lines += [
        "| model | tile | scheme | fraction | tile sparsity | weight sparsity "
        "| val metric | test metric | test degradation |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for r in best:
        lines.append(
            f"| {r['model']} | {r['tile'][0]} | {r['config']} | {r['fraction']:.2f} | "
            f"{_pct(r['tile_sparsity'])} | {_pct(r['weight_sparsity'])} | "
            f"{r['val_metric']:.4f} | {r['test_metric']:.4f} | {r['test_degradation']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def zero_fraction_histograms(
    experiment: Experiment, model_name: str, tile: int, fraction: float
) -> dict[str, list[float]]:
    """Per-tile zero fractions after the first prune, before and after the permutation."""
    if experiment.permute_fn is None:
        return {}
    model = copy.deepcopy(experiment.baseline(model_name))
    shape = TileShape(tile, tile)
    scheme = build_scheme("P3")
    captured: dict[str, list[float]] = {}

    def capture(label: str, masks: Mapping[str, torch.Tensor]) -> None:
        values: list[float] = []
        for mask in masks.values():
            values += tile_zero_fractions(mask, shape).flatten().tolist()
        captured[label] = values

    def permute(
        m: nn.Module, masks: Mapping[str, torch.Tensor], s: TileSpec
    ) -> tuple[Mapping[str, torch.Tensor], Any]:
        capture("before", masks)
        assert experiment.permute_fn is not None
        new_masks, info = experiment.permute_fn(m, masks, s)
        capture("after", new_masks)
        return new_masks, info

    run_scheme(
        scheme,
        model,
        shape,
        prune_config=SchemeSpec("P3").prune_config(fraction, experiment.config.seed),
        retrain_fn=lambda m, masks: None,
        permute_fn=permute,
    )
    return captured


def plot(
    rows: Sequence[dict[str, Any]],
    histograms: dict[str, dict[str, list[float]]],
    out_dir: Path,
) -> list[Path]:
    """Metric vs tile sparsity per scheme (HE-PEx Fig. 7) and zero-fraction histograms (Fig. 10)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written: list[Path] = []
    for model in sorted({r["model"] for r in rows}):
        tiles = sorted({r["tile"][0] for r in rows if r["model"] == model})
        fig, axes = plt.subplots(1, len(tiles), figsize=(4.5 * len(tiles), 4), squeeze=False)
        for ax, tile in zip(axes[0], tiles, strict=True):
            configs = sorted({r["config"] for r in rows if r["model"] == model})
            for index, config in enumerate(configs):
                pts = sorted(
                    (r["tile_sparsity"], r["val_metric"])
                    for r in rows
                    if r["model"] == model and r["tile"][0] == tile and r["config"] == config
                )
                # Ten colours in the default cycle: the line style tells configs 11-20 apart.
                style = ("-", "--", ":")[(index // 10) % 3]
                if pts:
                    ax.plot(
                        [100 * p[0] for p in pts],
                        [p[1] for p in pts],
                        marker=".",
                        linestyle=style,
                        color=f"C{index % 10}",
                        label=config,
                    )
            ax.set_title(f"{model}, {tile}x{tile} tiles")
            ax.set_xlabel("tile sparsity (% zero tiles)")
            task = next(r["task"] for r in rows if r["model"] == model)
            # The curves the choice was made on: validation, not test.
            ax.set_ylabel("validation accuracy" if task == "classification" else "validation MSE")
        axes[0][-1].legend(fontsize=6)
        fig.tight_layout()
        path = out_dir / f"metric_vs_tiles_{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    for key, hist in histograms.items():
        if not hist:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        bins = [i / 20 for i in range(21)]
        ax.hist(hist["before"], bins=bins, alpha=0.6, label="before permutation")
        ax.hist(hist["after"], bins=bins, alpha=0.6, label="after permutation")
        ax.set_xlabel("zero fraction of a tile")
        ax.set_ylabel("tiles")
        ax.set_title(f"{key}: tile zero fractions (P3 prune)")
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"zero_fraction_hist_{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


@dataclass
class SweepReport:
    rows: list[dict[str, Any]]
    best: list[dict[str, Any]]
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def write_report(
    rows: Sequence[dict[str, Any]], out_dir: Path, budget: float, extra: dict[str, Any]
) -> SweepReport:
    """JSON (best points, all points, summary, machine) and Markdown for ``rows``."""
    best = best_within_budget(rows, budget)
    summary = summarize(best)
    result = {
        "results": best,
        "selection": "validation",
        "points_tried": len(rows),
        "configs_tried": len({(r["model"], r["config"]) for r in rows}),
        "all_points": list(rows),
        "summary": summary,
        "average_gain_over_p2t": average_gain_over_p2t(summary),
        "paper": {"tile_sparsity": PAPER_TILE_SPARSITY, "gain_over_p2t": PAPER_GAIN_OVER_P2T},
        "machine": machine_info(torch_threads=torch.get_num_threads()),
        **extra,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "hepex_sparsity.json", out_dir / "hepex_sparsity.md"]
    write_json_atomic(files[0], result, sort_keys=True)
    write_text_atomic(files[1], markdown_table(best, summary, budget, rows))
    return SweepReport(list(rows), best, summary, files)


def run_sweep(
    config: SweepConfig,
    *,
    permute_fn: PermuteFn | None = None,
    histogram_fraction: float = 0.9,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> SweepReport:
    """The whole experiment: sweep, select, report (JSON, Markdown, plots) into out_dir."""
    experiment = Experiment(config, permute_fn)
    rows = sweep(experiment, progress)
    rows = [r for r in rows if r["model"] in config.models and r["tile"][0] in config.tiles]
    out = config.out_dir
    report = write_report(
        rows, out, config.budget, {"config": config.to_dict(), "seed": config.seed}
    )
    histograms = {
        f"{m}-{t}x{t}": zero_fraction_histograms(experiment, m, t, histogram_fraction)
        for m in config.models
        for t in config.tiles[:1]
    }
    report.files += plot(rows, histograms, out)
    return report
