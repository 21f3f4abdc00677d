"""``fheprune optimize``: from a model and constraints to the best deployable program.

The stages read like HE-PEx's framework (Fig. 14), with our cost model in the loop:

1. **model**: a zoo name (trained here, cached) or the user's trained model, imported from a
   torch file or ONNX (:mod:`fheprune.importing`);
2. **dry run and calibration**: compile the dense model per tile shape (or the map layout),
   let the dry run pick the parameters, and time every engine operation once on this machine;
3. **screening**: every candidate of the search space (:mod:`fheprune.optimize.space`) is a
   Ray Tune trial: prune, fine-tune, score on *validation*, compile, predict latency and
   memory from the program's operation counts (:func:`fheprune.runtime.cost.predict`);
4. **measurement**: the most promising candidates that the prediction says meet every
   constraint run encrypted (client encrypts validation images, server computes, client
   decrypts), one at a time so that they do not disturb each other's timings;
5. **decision**: the best measured program that meets every constraint; otherwise the
   closest one and, per constraint, by how much it misses. The test split is read once, after
   the decision, to report the chosen program's test metric beside its validation metric.

Every trial is stored as it finishes (:class:`~fheprune.optimize.store.TrialStore`): an
interrupted search started again with the same output folder redoes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fheprune.errors import FhepruneError, InputError
from fheprune.models.zoo import Task
from fheprune.reporting import machine_info, write_json_atomic
from fheprune.runtime.cost import OpTimings, calibrate

from .constraints import Constraints, Objective, objective_value
from .pareto import pareto_front
from .space import HEPEX_SCHEMES, ROTATION_METHODS, Candidate, fc_space, map_space
from .store import TrialStore
from .trial import (
    SearchSetup,
    compile_candidate,
    fingerprint,
    load_artifacts,
    measure,
    parameters_key,
    screen,
    share_loaders,
)

__all__ = ["OptimizeConfig", "optimize", "resolve_model"]

log = logging.getLogger(__name__)

Executor = Literal["ray", "local"]
Searcher = Literal["grid", "optuna"]

#: Screening lets a candidate through when its *predicted* latency / memory / throughput is
#: within this factor of a limit: the cost model's calibrated error (measured: see the
#: benchmark) must not reject a program that the measurement would accept.
PREDICTION_TOLERANCE = 0.2


@dataclass
class OptimizeConfig:
    model: str = "mlp"  # a zoo name, or a model file (.onnx, or a torch file)
    data_dir: str | None = None
    dataset: str = "mnist"
    constraints: Constraints = field(default_factory=Constraints)
    objective: Objective = "latency"
    out_dir: Path = Path("results/optimize")
    workers: int = 2
    address: str | None = None  # a Ray cluster; None starts a local instance
    executor: Executor = "ray"
    searcher: Searcher = "grid"
    trials: int | None = None  # optuna: how many trials (grid: the whole grid)
    quick: bool = False
    tiles: Sequence[int] | None = None
    fractions: Sequence[float] | None = None
    schemes: Sequence[tuple[str, str, str, str]] | None = None
    methods: Sequence[str] | None = None
    groups: Sequence[int] | None = None
    input_shape: tuple[int, ...] | None = None  # for torch files without model.input_shape
    allow_pickle: bool = False  # torch files holding a whole pickled module (runs its code)
    limit: int | None = None  # training samples (None: all)
    train_epochs: int | None = None  # zoo baselines (None: the model's published schedule)
    retrain_epochs: int = 2
    finetune_epochs: int = 1
    group_epochs: int = 2
    batch: int | None = None  # images per measured batch (None: 256 tile, 1 map)
    measure_top: int = 3
    repeats: int = 3
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")
        if self.executor not in ("ray", "local"):
            raise InputError(f"executor must be 'ray' or 'local', got {self.executor!r}")
        if self.searcher not in ("grid", "optuna"):
            raise InputError(f"searcher must be 'grid' or 'optuna', got {self.searcher!r}")
        if self.searcher == "optuna" and (self.trials is None or self.trials < 1):
            raise InputError("the optuna searcher needs a positive number of trials")
        if self.searcher == "optuna" and self.executor != "ray":
            raise InputError("the optuna searcher runs on Ray; use executor='ray'")
        if self.searcher == "grid" and self.trials is not None:
            raise InputError("trials is the optuna searcher's budget; the grid runs every point")
        if self.address is not None and self.address.startswith("ray://"):
            raise InputError(
                "Ray Client addresses (ray://) are not supported: the trials' results must reach "
                "this process. Run fheprune optimize on a node of the cluster with the cluster's "
                "address (host:port) and an --out-dir on storage every node can reach"
            )
        if self.measure_top < 1 or self.repeats < 1:
            raise InputError("measure_top and repeats must be at least 1")


# --------------------------------------------------------------------------- stage 1: model


@dataclass
class _Model:
    model: nn.Module
    name: str
    task: Task
    baseline_val: float
    loaders: Any  # the train / validation loaders, loaded once here
    load_loaders: Callable[[], Any]  # how a Ray worker loads them again
    load_test: Callable[[], Any]
    train_config: Any
    make_grouped: Callable[[int], nn.Module] | None


class _ZooLoaders:
    """Picklable loader factory (Ray ships it to the workers), validation split only."""

    def __init__(
        self, name: str, dataset: str, config: Any, data_dir: str | None, limit: int | None
    ):
        self.args = (name, dataset, config, data_dir, limit)

    def __call__(self, with_test: bool = False) -> Any:
        from fheprune.training import load_loaders

        name, dataset, config, data_dir, limit = self.args
        return load_loaders(
            name, dataset, config, data_dir=data_dir, limit=limit, with_test=with_test
        )


class _ImportedLoaders:
    def __init__(
        self,
        shape: tuple[int, ...],
        dataset: str,
        config: Any,
        data_dir: str | None,
        limit: int | None,
    ):
        self.args = (shape, dataset, config, data_dir, limit)

    def __call__(self, with_test: bool = False) -> Any:
        from fheprune.data.registry import load_dataset
        from fheprune.training.data import DataSpec, make_loaders

        shape, dataset, config, data_dir, limit = self.args
        train = load_dataset(dataset, data_dir, split="train")
        test = load_dataset(dataset, data_dir, split="test") if with_test else None
        spec = DataSpec("classification", flatten=len(shape) == 1, noisy=False)
        return make_loaders(train, test, spec, config, limit=limit)


class _Grouped:
    def __init__(self, name: str, dataset: str, seed: int) -> None:
        self.args = (name, dataset, seed)

    def __call__(self, groups: int) -> nn.Module:
        from fheprune.models import build_model

        name, dataset, seed = self.args
        return build_model(name, dataset, seed=seed, conv2_groups=groups)


def resolve_model(cfg: OptimizeConfig) -> _Model:
    """Stage 1: the trained model (a zoo model is trained once and cached in
    ``OUT/baseline``), its validation metric and its data (validation split only)."""
    from fheprune.models.zoo import MODEL_NAMES
    from fheprune.training import default_config, evaluate, load_model, save_model, train

    if cfg.model.lower() in MODEL_NAMES:
        from fheprune.models import build_model

        name = cfg.model.lower()
        config = default_config(name, cfg.dataset).replace(seed=cfg.seed)
        if cfg.train_epochs is not None:
            config = config.replace(epochs=cfg.train_epochs)
        factory = _ZooLoaders(name, cfg.dataset, config, cfg.data_dir, cfg.limit)
        loaders = factory()
        tag = f"{cfg.dataset}-{name}-e{config.epochs}-s{cfg.seed}-l{cfg.limit}"
        path = cfg.out_dir / "baseline" / f"{tag}.pt"
        if path.exists():
            model, _ = load_model(path)
            log.info("loaded the trained baseline %s", path)
        else:
            model = build_model(name, cfg.dataset, seed=cfg.seed)
            log.info("training the %s baseline (%d epochs)", name, config.epochs)
            train(model, loaders, config, checkpoint_dir=path.with_suffix(".ckpt"), progress=True)
            save_model(model, path, metadata={"config": config.to_dict()})
        task: Task = loaders.spec.task
        if task != "classification":
            raise InputError(f"the optimizer reports accuracy; {name!r} is not a classifier")
        grouped = None
        if "conv2_groups" in getattr(model, "arch", {}):
            grouped = _Grouped(name, cfg.dataset, cfg.seed)
        return _Model(
            model=model.eval(),
            name=name,
            task=task,
            baseline_val=float(evaluate(model, loaders.val, task)),
            loaders=loaders,
            load_loaders=factory,
            load_test=lambda: factory(with_test=True),
            train_config=config,
            make_grouped=grouped,
        )
    from fheprune.importing import import_model

    source = Path(cfg.model)
    model = import_model(source, input_shape=cfg.input_shape, allow_pickle=cfg.allow_pickle)
    shape = tuple(int(v) for v in model.input_shape)
    conv = len(shape) == 3
    config = default_config("lenet" if conv else "mlp", cfg.dataset).replace(seed=cfg.seed)
    if conv:
        config = config.replace(lr=1e-3)  # fine-tuning a trained model, not training it
    ifactory = _ImportedLoaders(shape, cfg.dataset, config, cfg.data_dir, cfg.limit)
    loaders = ifactory()
    return _Model(
        model=model.eval(),
        name=source.stem,
        task="classification",
        baseline_val=float(evaluate(model, loaders.val, "classification")),
        loaders=loaders,
        load_loaders=ifactory,
        load_test=lambda: ifactory(with_test=True),
        train_config=config,
        make_grouped=None,
    )


def _is_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def group_sizes(base: int) -> tuple[int, ...]:
    """HE-group sizes to screen: the powers of two from 1 up to ``base`` (G_base), and
    ``base`` itself. Only the two ends is too coarse: with a compact layout G_base can be 32,
    where G = 1 may not hold the data's range and G = 32 loses the most accuracy."""
    sizes = [1]
    while sizes[-1] * 2 < base:
        sizes.append(sizes[-1] * 2)
    return tuple(dict.fromkeys([*sizes, max(base, 1)]))


def _candidates(cfg: OptimizeConfig, m: _Model) -> list[Candidate]:
    if _is_conv(m.model):
        groups: Sequence[int] = cfg.groups or (1,)
        if cfg.groups is None and m.make_grouped is not None:
            from fheprune.pruning.rotation_aware import g_base
            from fheprune.runtime.compiler import compile_model

            # G_base of the layout the program will have (its slot count from the dry run).
            slots = int(compile_model(m.model, layout="map").parameters.poly_degree) // 2
            groups = group_sizes(g_base(m.model, slots))
        groups = tuple(dict.fromkeys(groups))
        methods = cfg.methods or (("hunter", "subblock") if cfg.quick else ROTATION_METHODS)
        return map_space(methods, groups)
    tiles = tuple(dict.fromkeys(cfg.tiles or ((8, 16) if cfg.quick else (8, 16, 32))))
    fractions = cfg.fractions or (
        (0.85, 0.9, 0.93, 0.95, 0.97) if cfg.quick else (0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
    )
    schemes = cfg.schemes or (
        (
            ("P2T", "local", "l1", "weight"),
            ("P4E", "global", "l1", "weight"),
            ("P4E", "global", "l1", "neuron"),
        )
        if cfg.quick
        else HEPEX_SCHEMES
    )
    return fc_space(tiles, tuple(dict.fromkeys(fractions)), schemes)


# ---------------------------------------------------------- stage 2: dry run and calibration


def _search_id(cfg: OptimizeConfig, m: _Model, setup: SearchSetup) -> str:
    """Everything a trial's result depends on besides its candidate (see
    :attr:`SearchSetup.search_id`); also written to ``OUT/search.json`` for people to read."""
    weights = hashlib.sha256()
    for name, tensor in m.model.state_dict().items():
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = {
        "model": m.name,
        "weights_sha256": weights.hexdigest(),
        "dataset": cfg.dataset,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "train_config": repr(m.train_config),
        "retrain_epochs": cfg.retrain_epochs,
        "finetune_epochs": cfg.finetune_epochs,
        "group_epochs": cfg.group_epochs,
        "max_degradation": cfg.constraints.max_degradation,
        "batch": setup.batch,
        "threads": cfg.threads,
        "repeats": cfg.repeats,
        "parameters": {k: hashlib.sha256(v).hexdigest() for k, v in setup.parameters.items()},
    }
    text = json.dumps(settings, sort_keys=True)
    write_json_atomic(cfg.out_dir / "search.json", settings)
    return hashlib.sha256(text.encode()).hexdigest()


def _calibrate(setup: SearchSetup, candidates: Sequence[Candidate], threads: int) -> None:
    """Parameters per family key (the dense model's dry run), timings and key sizes."""
    from fheprune import _core
    from fheprune.runtime.cost import machine_timings

    for cand in candidates:
        key = parameters_key(cand)
        if key in setup.parameters:
            continue
        dense = compile_candidate(
            replace(cand, method="dense", fraction=None, groups=1), setup.model, None, None, None
        )
        params = dense.parameters
        setup.parameters[key] = bytes(params.to_bytes())
        fp = fingerprint(params)
        if fp in setup.timings:
            continue
        log.info("calibrating engine timings for %s", dense.choice.message)
        setup.timings[fp] = machine_timings(params, threads=threads)
        ctx = _core.Context(params, 1)
        keygen = _core.KeyGenerator(ctx)
        none = len(_core.save(ctx, keygen.create_evaluation_keys([])))
        one = len(_core.save(ctx, keygen.create_evaluation_keys([1])))
        setup.key_bytes[fp] = (none, one - none)


# ------------------------------------------------------------------- stage 3: screening


def _screen_local(
    pending: Sequence[Candidate], setup: SearchSetup, store: TrialStore, bar: Any
) -> None:
    threads = torch.get_num_threads()  # screen() runs torch on one thread, as a Ray worker does
    try:
        for cand in pending:
            with tempfile.TemporaryDirectory() as tmp:
                record = screen(cand, setup, Path(tmp))
                store.save_record(record, Path(tmp) if record["status"] == "ok" else None)
            bar.update(1)
    finally:
        torch.set_num_threads(threads)


def _score(record: dict[str, Any], setup: SearchSetup, objective: Objective) -> float:
    """What the Optuna searcher minimizes: the predicted objective (log scale), pushed past
    every feasible point when the candidate misses the accuracy budget or failed."""
    if record["status"] != "ok":
        return 1e6
    value = objective_value(_metrics(record, "predicted"), objective)
    score = math.log(value) if value > 0 else -math.log(-value)
    excess = max(0.0, record["degradation"] - setup.budget)
    return score + (100.0 + 100.0 * excess / max(setup.budget, 1e-6) if excess > 0 else 0.0)


def _candidate_from(config: dict[str, Any]) -> Candidate:
    """A trial's candidate: the grid hands it over whole, Optuna as independent choices
    (``config`` is "family|method|scope|criterion|target"; the unpruned model ignores the
    fraction, so every fraction Optuna pairs with it names the same candidate)."""
    if "candidate" in config:
        return Candidate.from_dict(config["candidate"])
    family, method, scope, criterion, target = str(config["config"]).split("|")
    return Candidate(
        family,  # type: ignore[arg-type]
        method,
        scope,
        criterion,
        target,
        tile=config.get("tile") if family == "tile" else None,
        fraction=None if method == "dense" or family == "map" else config.get("fraction"),
        groups=config.get("groups", 1),
    )


def _ray_trainable(
    config: dict[str, Any], setup: SearchSetup, objective: Objective, store_root: str
) -> None:
    from ray import tune

    cand = _candidate_from(config)
    key = setup.trial_key(cand)
    # Screened before (an interrupted run, or Optuna sampling a point twice): report it again
    # instead of redoing it. The store is on storage every worker reads (see docs/optimize.md).
    known = TrialStore(Path(store_root)).record(key)
    if known is not None:
        metrics = {"record": json.dumps(known), "score": _score(known, setup, objective)}
        tune.report({**metrics, "cached": True})
        return
    folder = Path(tempfile.mkdtemp(prefix="fheprune-trial-"))
    try:
        record = screen(cand, setup, folder)
        ok = record["status"] == "ok"
        checkpoint = tune.Checkpoint.from_directory(str(folder)) if ok else None
        metrics = {"record": json.dumps(record), "score": _score(record, setup, objective)}
        tune.report({**metrics, "cached": False}, checkpoint=checkpoint)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _optuna_space(candidates: Sequence[Candidate]) -> dict[str, Any]:
    """Independent categorical choices spanning ``candidates`` (Optuna samples from them)."""
    from ray import tune

    configs = sorted(
        {"|".join((c.family, c.method, c.scope, c.criterion, c.target)) for c in candidates}
    )
    space: dict[str, Any] = {"config": tune.choice(configs)}
    if any(c.family == "tile" for c in candidates):
        space["tile"] = tune.choice(sorted({c.tile for c in candidates if c.tile is not None}))
        space["fraction"] = tune.choice(
            sorted({c.fraction for c in candidates if c.fraction is not None})
        )
    else:
        space["groups"] = tune.choice(sorted({c.groups for c in candidates}))
    return space


def _screen_ray(
    candidates: Sequence[Candidate],
    pending: Sequence[Candidate],
    setup: SearchSetup,
    store: TrialStore,
    cfg: OptimizeConfig,
    bar: Any,
) -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress bar, not Tune's tables
    import ray
    from ray import tune

    started_here = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if cfg.address is None:
            kwargs["num_cpus"] = cfg.workers
        ray.init(address=cfg.address, **kwargs)
        started_here = True

    class _Saver(tune.Callback):
        """Stores each trial as soon as it completes (resume loses nothing)."""

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            if "record" not in result:
                return
            record = json.loads(result["record"])
            if not result.get("cached") and store.record(record["key"]) is None:
                checkpoint = trial.checkpoint
                if record["status"] == "ok" and checkpoint is None:
                    # No weights came back: not a finished trial (a resume redoes it).
                    log.warning("trial %s returned no checkpoint; not stored", record["label"])
                elif record["status"] == "ok":
                    with tempfile.TemporaryDirectory() as tmp:
                        store.save_record(record, Path(checkpoint.to_directory(tmp)))
                else:
                    store.save_record(record)
            bar.update(1)

    trainable = tune.with_resources(
        tune.with_parameters(
            _ray_trainable,
            setup=setup,
            objective=cfg.objective,
            store_root=str(store.root.resolve()),
        ),
        {"cpu": 1},
    )
    if cfg.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        param_space = _optuna_space(candidates)
        # The unpruned programs go first: a search whose samples all miss the budget still
        # has a program to return.
        dense = [
            {
                "config": "|".join((c.family, c.method, c.scope, c.criterion, c.target)),
                **(
                    {
                        "tile": c.tile or min(param_space["tile"].categories),
                        "fraction": min(param_space["fraction"].categories),
                    }
                    if "tile" in param_space
                    else {"groups": c.groups}
                ),
            }
            for c in candidates
            if c.method == "dense"
        ]
        tune_config = tune.TuneConfig(
            search_alg=OptunaSearch(
                metric="score", mode="min", seed=cfg.seed, points_to_evaluate=dense
            ),
            num_samples=cfg.trials or 1,
            max_concurrent_trials=cfg.workers,
            # A worker keeps its process, imports and loaded data from trial to trial.
            reuse_actors=True,
        )
    else:
        param_space = {"candidate": tune.grid_search([c.to_dict() for c in pending])}
        tune_config = tune.TuneConfig(max_concurrent_trials=cfg.workers, reuse_actors=True)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=f"screen-{int(time.time())}",
            storage_path=str((cfg.out_dir / "ray").resolve()),
            callbacks=[_Saver()],
            verbose=0,
        ),
    )
    try:
        results = tuner.fit()
        for error in results.errors:  # a trial that crashed outside screen()'s own handling
            log.error("a screening trial failed: %s", error)
    finally:
        if started_here:
            ray.shutdown()
            _wait_for_ray_exit()


def _ray_processes() -> int:
    """Ray processes still alive on this machine (Linux /proc; 0 where there is none)."""
    count = 0
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = entry.read_bytes()
        except OSError:
            continue
        if b"ray::" in command or b"raylet" in command or b"gcs_server" in command:
            count += 1
    return count


def _wait_for_ray_exit(timeout_s: float = 30.0) -> None:
    """Wait until the local Ray instance's processes are gone: the measurement stage that
    follows times the engine, and exiting workers would share its cores."""
    deadline = time.monotonic() + timeout_s
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)


# ----------------------------------------------------------------- stage 4: measurement


def _passes(metrics: dict[str, Any], constraints: Constraints, tolerance: float) -> bool:
    loose = Constraints(
        max_degradation=constraints.max_degradation,
        max_latency_s=None
        if constraints.max_latency_s is None
        else constraints.max_latency_s * (1 + tolerance),
        max_memory_bytes=None
        if constraints.max_memory_bytes is None
        else constraints.max_memory_bytes * (1 + tolerance),
        min_throughput=None
        if constraints.min_throughput is None
        else constraints.min_throughput / (1 + tolerance),
    )
    return not loose.violations(metrics)


def _metrics(record: dict[str, Any], source: str) -> dict[str, Any]:
    values = record[source]
    return {
        "degradation": record["degradation"],
        "latency_s": values["latency_s"],
        "memory_bytes": values["memory_bytes"],
        "throughput": values["throughput"],
    }


def _finalists(ok: Sequence[dict[str, Any]], cfg: OptimizeConfig) -> list[dict[str, Any]]:
    """The candidates to measure: within the budget and predicted to meet every constraint,
    best predicted objective first, one per program cost (candidates whose programs have the
    same operation counts cost the same: the one that loses least accuracy stands for them,
    so that noise between equal programs never decides). None predicted feasible: the
    candidates predicted closest to meeting every constraint, to be able to say why nothing
    qualifies."""
    promising = sorted(
        (r for r in ok if _passes(_metrics(r, "predicted"), cfg.constraints, PREDICTION_TOLERANCE)),
        key=lambda r: (objective_value(_metrics(r, "predicted"), cfg.objective), r["degradation"]),
    )
    chosen: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for r in promising:
        cost = (json.dumps(r["layers"], sort_keys=True), r["predicted"]["memory_bytes"])
        if cost not in seen:
            seen.add(cost)
            chosen.append(r)
    if not chosen:
        return sorted(ok, key=lambda r: _shortfall(r, cfg.constraints, "predicted"))[
            : cfg.measure_top
        ]
    return chosen[: cfg.measure_top]


def _shortfall(record: dict[str, Any], constraints: Constraints, source: str) -> float:
    """How far a candidate is from meeting every constraint: the sum of its relative misses."""
    return sum(
        float(v.excess / max(abs(v.limit), 1e-12))
        for v in constraints.violations(_metrics(record, source))
    )


def _front_keys(records: Sequence[dict[str, Any]], cost: str) -> list[str]:
    """The Pareto front of validation degradation against a predicted cost (every candidate
    has a prediction, and predictions compare with each other), as candidate keys."""
    front = pareto_front(
        records, lambda r: float(r["degradation"]), lambda r: float(r["predicted"][cost])
    )
    return [str(r["key"]) for r in front]


def _validation_images(loaders: Any, count: int) -> np.ndarray:
    """``count`` validation images (flattened); a validation split smaller than the batch is
    repeated, so that latency is always measured on the batch the constraints speak of."""
    xs: list[np.ndarray] = []
    for xb, _ in loaders.val:
        xs.append(xb.reshape(xb.shape[0], -1).double().numpy())
        if sum(len(v) for v in xs) >= count:
            break
    images = np.concatenate(xs)
    if len(images) < count:
        log.info("the validation split has %d images; repeating them to %d", len(images), count)
        images = np.resize(images, (count, images.shape[1]))
    return images[:count]


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "key",
        "label",
        "candidate",
        "val_metric",
        "degradation",
        "unit_sparsity",
        "live_units",
        "weight_sparsity",
        "predicted",
        "measured",
        "levels",
        "poly_degree",
        "layers",
        "seconds",
    )
    return {k: record[k] for k in keep if k in record}


# -------------------------------------------------------------------------- the search


def optimize(cfg: OptimizeConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole search; writes ``OUT/result.json``, ``OUT/report.html`` and the best
    program's bundle in ``OUT/bundle`` (see the module doc)."""
    from tqdm import tqdm

    started = time.perf_counter()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    m = resolve_model(cfg)
    candidates = _candidates(cfg, m)
    conv = _is_conv(m.model)
    batch = cfg.batch if cfg.batch is not None else (1 if conv else 256)
    setup = SearchSetup(
        model=m.model,
        task=m.task,
        baseline_val=m.baseline_val,
        load_loaders=m.load_loaders,
        train_config=m.train_config,
        budget=cfg.constraints.max_degradation,
        batch=batch,
        retrain_epochs=cfg.retrain_epochs,
        finetune_epochs=cfg.finetune_epochs,
        group_epochs=cfg.group_epochs,
        make_grouped=m.make_grouped,
        seed=cfg.seed,
        threads=cfg.threads,
    )
    _calibrate(setup, candidates, cfg.threads)
    share_loaders(setup, m.loaders)
    images = _validation_images(m.loaders, batch)
    setup.input_max = max(float(xb.abs().max()) for xb, _ in m.loaders.val)
    setup.search_id = _search_id(cfg, m, setup)
    store = TrialStore(cfg.out_dir)
    # The long trials first (the unpruned ones take no training): less idle tail at the end.
    pending = sorted(
        (c for c in candidates if store.record(setup.trial_key(c)) is None),
        key=lambda c: c.method == "dense",
    )
    log.info(
        "%d candidates, %d already screened; screening %d on %s with %d worker(s)",
        len(candidates),
        len(candidates) - len(pending),
        len(pending),
        cfg.executor,
        cfg.workers,
    )
    optuna = cfg.searcher == "optuna"
    total = (cfg.trials or 0) if optuna else len(candidates)
    screen_started = time.perf_counter()
    with tqdm(
        total=total,
        initial=0 if optuna else len(candidates) - len(pending),
        desc="screening",
        unit="trial",
        disable=not progress,
    ) as bar:
        if pending or optuna:
            if cfg.executor == "ray":
                _screen_ray(candidates, pending, setup, store, cfg, bar)
            else:
                _screen_local(pending, setup, store, bar)
    screen_s = time.perf_counter() - screen_started
    keys = {setup.trial_key(c) for c in candidates}
    records = [r for r in store.records() if r["key"] in keys]
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        raise InputError("every candidate failed; see the errors in " + str(store.trials))

    # Stage 4: measure the most promising candidates, one at a time.
    chosen = _finalists(ok, cfg)
    measure_started = time.perf_counter()
    fresh: dict[str, OpTimings] = {}
    failures: list[str] = []
    for record in tqdm(chosen, desc="measuring", unit="program", disable=not progress):
        if store.measured(record["key"]) is None:
            cand = Candidate.from_dict(record["candidate"])
            params = setup.parameters_for(cand)
            key = fingerprint(params)
            if key not in fresh:
                # Timed again right before the runs: the prediction error then measures the
                # cost model, not how the machine's speed drifted since the screening began.
                fresh[key] = calibrate(params, threads=cfg.threads)
            try:
                numbers = measure(
                    record,
                    store.folder(record["key"]),
                    setup,
                    images,
                    repeats=cfg.repeats,
                    timings=fresh[key],
                )
            except (FhepruneError, ValueError, RuntimeError, MemoryError) as exc:
                log.error("measuring %s failed: %s", record["label"], exc)
                failures.append(f"{record['label']}: {type(exc).__name__}: {exc}")
                continue
            store.save_measured(record["key"], numbers)
        record["measured"] = store.measured(record["key"])
    measure_s = time.perf_counter() - measure_started

    # Stage 5: the decision, on measured numbers only.
    measured = [r for r in chosen if r.get("measured")]
    if not measured:
        raise InputError("no candidate could be measured: " + "; ".join(failures))
    feasible = [r for r in measured if not cfg.constraints.violations(_metrics(r, "measured"))]
    best = min(
        feasible,
        key=lambda r: objective_value(_metrics(r, "measured"), cfg.objective),
        default=None,
    )
    result: dict[str, Any] = {
        "model": m.name,
        "objective": cfg.objective,
        "constraints": cfg.constraints.to_dict(),
        "trials": len(records),  # screened (the grid: every candidate; Optuna: its samples)
        "space": len(candidates),
        "failed_trials": len(records) - len(ok),
        "batch": batch,
        "baseline": {"val_metric": m.baseline_val},
        "best": None,
        "infeasible": None,
        "screened": [_summary(r) for r in records],
        "pareto": {
            "latency": _front_keys(ok, "latency_s"),
            "memory": _front_keys(ok, "memory_bytes"),
        },
        "selection": "validation split; test read once, for the chosen program only",
        "pareto_basis": "predicted latency and memory (every candidate, comparable); the "
        "finalists' measurements are in their records",
        "timing": {"screen_s": screen_s, "measure_s": measure_s},
        "workers": cfg.workers,
        "executor": cfg.executor,
        "seed": cfg.seed,
        "config": {
            "quick": cfg.quick,
            "retrain_epochs": cfg.retrain_epochs,
            "finetune_epochs": cfg.finetune_epochs,
            "group_epochs": cfg.group_epochs,
            "limit": cfg.limit,
            "repeats": cfg.repeats,
            "measure_top": cfg.measure_top,
        },
        "machine": machine_info(threads=cfg.threads),
    }
    for stale in ("bundle", "model"):  # a previous decision's outputs must not linger
        shutil.rmtree(cfg.out_dir / stale, ignore_errors=True)
    if best is not None:
        result["best"] = _finish(best, setup, m, cfg)
    else:
        closest = min(measured, key=lambda r: _shortfall(r, cfg.constraints, "measured"))
        violations = cfg.constraints.violations(_metrics(closest, "measured"))
        result["infeasible"] = {
            "closest": _summary(closest),
            "violations": [
                {
                    "constraint": v.constraint,
                    "limit": v.limit,
                    "value": v.value,
                    "excess": v.excess,
                    "message": v.describe(),
                }
                for v in violations
            ],
        }
    result["wall_s"] = time.perf_counter() - started
    write_json_atomic(cfg.out_dir / "result.json", result)
    from .report import write_report

    write_report(result, cfg.out_dir / "report.html")
    return result


def _finish(
    best: dict[str, Any], setup: SearchSetup, m: _Model, cfg: OptimizeConfig
) -> dict[str, Any]:
    """Bundle the chosen program, save its model and read the test split once."""
    from fheprune.runtime.bundle import save_bundle
    from fheprune.training import evaluate, permute_loaders

    cand = Candidate.from_dict(best["candidate"])
    folder = cfg.out_dir / "trials" / best["key"]
    art = load_artifacts(folder, cand, setup)
    compiled = compile_candidate(
        cand, art.model, setup.parameters_for(cand), art.input_perm, art.output_perm
    )
    bundle = save_bundle(compiled, cfg.out_dir / "bundle")
    model_dir = cfg.out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in ("weights.pt", "permutations.npz"):
        shutil.copy2(folder / name, model_dir / name)
    write_json_atomic(model_dir / "candidate.json", best["candidate"])
    with_test = m.load_test()
    test = permute_loaders(with_test, art.input_perm, art.output_perm).test
    test_metric = float(evaluate(art.model, test, m.task)) if test is not None else math.nan
    base_test = with_test.test
    base_metric = float(evaluate(m.model, base_test, m.task)) if base_test is not None else math.nan
    return {
        **_summary(best),
        "test_metric": test_metric,
        "baseline_test_metric": base_metric,
        "test_degradation": base_metric - test_metric,
        "bundle": str(bundle),
        "model": str(model_dir),
    }
