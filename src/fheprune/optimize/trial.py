"""One trial: prune a candidate, score it on validation, compile it, predict its cost; and,
for the candidates that pass screening, measure it encrypted.

:func:`screen` runs inside a Ray worker (or in-process): it only needs the picklable
:class:`SearchSetup`. Everything it decides with is validation data; the test split is never
loaded here. It writes the pruned weights (and the client-side permutations) to a folder so
that :func:`measure` and the final bundle rebuild exactly the screened model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fheprune.errors import FhepruneError, InputError
from fheprune.models.zoo import Task
from fheprune.runtime.compiler import CompiledModel, compile_model
from fheprune.runtime.cost import OpTimings, predict, summarize_cost
from fheprune.training import Loaders, TrainConfig, degradation, evaluate

from .space import Candidate

__all__ = [
    "SearchSetup",
    "TrialArtifacts",
    "compile_candidate",
    "load_artifacts",
    "measure",
    "predicted_metrics",
    "screen",
]

log = logging.getLogger(__name__)

#: Fine-tunes a sub-block pruning trial may spend (Hunter and Artemis bisect their fraction
#: in 5 steps of one fine-tune each).
SUBBLOCK_STEPS = 8

ARTIFACT_WEIGHTS = "weights.pt"
ARTIFACT_PERMUTATIONS = "permutations.npz"


@dataclass
class SearchSetup:
    """What every trial shares: the trained model, its data, the training budget of every
    method (the same for all of them), and the calibrated per-operation timings."""

    model: nn.Module  # the trained, unpruned model (an HEModel chain)
    task: Task
    baseline_val: float  # the unpruned model's validation metric
    load_loaders: Callable[[], Loaders]  # the train / validation loaders (no test split)
    train_config: TrainConfig  # fine-tuning schedule; ``epochs`` is set per step below
    budget: float  # max degradation on validation
    batch: int  # images per measured batch (latency is per batch)
    input_max: float = 0.0  # the largest |input| of the data (validation split)
    retrain_epochs: int = 2  # HE-PEx schemes: epochs per retrain step
    finetune_epochs: int = 1  # rotation-aware methods: epochs per fine-tune
    group_epochs: int = 2  # HE-group convolution warm-up
    make_grouped: Callable[[int], nn.Module] | None = None  # zoo models with conv2_groups
    seed: int = 0
    threads: int = 1
    # Calibrated seconds per operation and evaluation-key bytes, by parameter fingerprint
    # (measured once in the driver so that trials running side by side do not disturb them).
    timings: dict[str, OpTimings] = field(default_factory=dict)
    key_bytes: dict[str, tuple[int, int]] = field(default_factory=dict)  # (base, per rotation)
    # Engine parameters (serialized: Ray pickles the setup) by :func:`parameters_key`.
    parameters: dict[str, bytes] = field(default_factory=dict)
    # What makes one search's trials reusable by another (model, data, schedules, budget,
    # batch, threads, repeats, parameters): part of every trial's key, so a folder searched
    # under other settings is never read back as if it were this search's.
    search_id: str = ""

    def trial_key(self, candidate: Candidate) -> str:
        text = json.dumps([candidate.to_dict(), self.search_id], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def parameters_for(self, candidate: Candidate) -> Any:
        from fheprune import _core

        return _core.Parameters.from_bytes(self.parameters[parameters_key(candidate)])


@dataclass
class TrialArtifacts:
    model: nn.Module
    input_perm: np.ndarray | None
    output_perm: np.ndarray | None


_LOADERS: dict[str, Loaders] = {}


def _loaders_key(setup: SearchSetup) -> str:
    # Keyed by what the factory loads, not by its identity: a Ray worker runs many trials,
    # each with its own unpickled copy of the setup.
    return repr(getattr(setup.load_loaders, "args", id(setup.load_loaders)))


def share_loaders(setup: SearchSetup, loaders: Loaders) -> None:
    """Hand this process's already loaded data to the trials it runs (in-process screening)."""
    _LOADERS.clear()
    _LOADERS[_loaders_key(setup)] = loaders


def _loaders(setup: SearchSetup) -> Loaders:
    """One data load per process."""
    key = _loaders_key(setup)
    if key not in _LOADERS:
        _LOADERS.clear()
        _LOADERS[key] = setup.load_loaders()
    return _LOADERS[key]


def parameters_key(candidate: Candidate) -> str:
    """Candidates of one tile shape (tile family), or of one other layout, share parameters."""
    return f"tile{candidate.tile}" if candidate.family == "tile" else candidate.family


def _architecture(setup: SearchSetup, groups: int) -> nn.Module:
    if groups == 1:
        return copy.deepcopy(setup.model)
    if setup.make_grouped is None:
        raise InputError(
            "HE groups need a model the optimizer can rebuild with grouped convolutions (a zoo "
            "model with conv2_groups); search groups=1 for imported models"
        )
    return setup.make_grouped(groups)


def _prune(
    candidate: Candidate, setup: SearchSetup, loaders: Loaders
) -> tuple[nn.Module, Loaders, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """The pruned model, the loaders as it sees the data, its permutations and facts."""
    torch.manual_seed(setup.seed)
    if candidate.family == "diagonal":
        return copy.deepcopy(setup.model), loaders, None, None, {}
    if candidate.family == "tile":
        if candidate.method == "dense":
            return copy.deepcopy(setup.model), loaders, None, None, {}
        from fheprune.experiments.hepex import SchemeSpec, default_permute_fn, run_hepex_scheme
        from fheprune.pruning.permute import PermutationResult

        spec = SchemeSpec(candidate.method, candidate.scope, candidate.criterion, candidate.target)
        assert candidate.tile is not None and candidate.fraction is not None
        model, result, permuted = run_hepex_scheme(
            setup.model,
            loaders,
            spec,
            candidate.tile,
            candidate.fraction,
            retrain_config=setup.train_config.replace(epochs=setup.retrain_epochs),
            seed=setup.seed,
            permute_fn=default_permute_fn(),
        )
        info = result.permutation
        arrays = info.as_arrays() if isinstance(info, PermutationResult) else None
        facts = {
            "weight_sparsity": float(result.weight_sparsity.sparsity),
        }
        pin = None if arrays is None else np.asarray(arrays["input"])
        pout = None if arrays is None else np.asarray(arrays["output"])
        return model, permuted, pin, pout, facts
    model, facts = _prune_map(candidate, setup, loaders)
    return model, loaders, None, None, facts


def _prune_map(
    candidate: Candidate, setup: SearchSetup, loaders: Loaders
) -> tuple[nn.Module, dict[str, Any]]:
    """A rotation-aware method on the map layout (after HE grouping when groups > 1)."""
    from fheprune.pruning import rotation_aware as ra

    harness = ra.TrainerHarness(loaders, setup.train_config, split="val", progress=False)
    model = copy.deepcopy(setup.model)
    # The units pruning sees must be the program's: same slot count as the parameters.
    slots = int(setup.parameters_for(candidate).poly_degree) // 2
    facts: dict[str, Any] = {}
    if candidate.groups > 1:
        grouped = ra.he_group_conv(
            lambda g: _architecture(setup, g),
            candidate.groups,
            harness,
            epochs=setup.group_epochs,
            dense=setup.model,
            baseline=setup.baseline_val,
            slots=slots,
        )
        model = grouped.model
        facts["grouped_val"] = grouped.accuracy
    budget, baseline, epochs = setup.budget, setup.baseline_val, setup.finetune_epochs
    result: ra.RotationAwareResult | None = None
    if candidate.method == "hunter":
        result = ra.hunter_prune(
            model, harness, budget=budget, baseline=baseline, finetune_epochs=epochs, slots=slots
        )
    elif candidate.method == "subblock":
        # About an eighth of the units per step (halved on an over-budget step), at most
        # SUBBLOCK_STEPS fine-tunes: about the effort of the other methods' fraction search,
        # whatever the model's size.
        units = sum(u.count for u in ra.model_units(model, slots=slots).values())
        result = ra.subblock_prune(
            model,
            harness,
            budget=budget,
            baseline=baseline,
            finetune_epochs=epochs,
            per_iteration=max(1, units // 8),
            max_iterations=SUBBLOCK_STEPS,
            slots=slots,
        )
    elif candidate.method in ("artemis-positional", "artemis-diagonal"):
        result = ra.artemis_prune(
            model,
            harness,
            budget=budget,
            baseline=baseline,
            variant="position" if candidate.method == "artemis-positional" else "diagonal",
            reg_epochs=epochs,
            finetune_epochs=epochs,
            slots=slots,
        )
    if result is not None:
        model = result.model
        facts["weight_sparsity"] = float(result.weight_sparsity)
        facts["alive_units"] = {k: [int(v[0]), int(v[1])] for k, v in result.alive_units.items()}
    return model, facts


def compile_candidate(
    candidate: Candidate,
    model: nn.Module,
    parameters: Any,
    input_perm: np.ndarray | None,
    output_perm: np.ndarray | None,
) -> CompiledModel:
    if candidate.family == "tile":
        assert candidate.tile is not None
        return compile_model(
            model,
            layout="tile",
            tile=(candidate.tile, candidate.tile),
            parameters=parameters,
            input_perm=input_perm,
            output_perm=output_perm,
        )
    if candidate.family == "diagonal":
        return compile_model(model, layout="diagonal", parameters=parameters)
    return compile_model(model, layout="map", parameters=parameters)


def fingerprint(parameters: Any) -> str:
    """A short id of engine parameters (timings and key sizes are filed under it)."""
    return hashlib.sha256(bytes(parameters.to_bytes())).hexdigest()[:16]


def predicted_metrics(compiled: CompiledModel, setup: SearchSetup) -> dict[str, Any]:
    """Latency, memory and throughput the cost model predicts for one batch.

    Latency: the program's operation counts times the calibrated per-operation seconds.
    Memory: plaintexts and evaluation keys (their sizes from the program and the calibrated
    key sizes) plus the peak of ciphertexts held, which the slot simulator reports for the
    batch: it runs the same executor on cleartext vectors, in a fraction of a second.
    """
    from fheprune import _core
    from fheprune.runtime import SimulatedExecutor

    program = compiled.program
    key = fingerprint(compiled.parameters)
    groups = -(-setup.batch // int(program.samples_per_group))
    seconds = float(predict(program, setup.timings[key], groups)["seconds"])
    base, per_rotation = setup.key_bytes[key]
    plaintext = sum(int(r["plaintext_bytes"]) for r in summarize_cost(program, groups))
    context = _core.Context(compiled.parameters, 1)
    simulator = SimulatedExecutor(program, context, encode_on_demand=True)
    inputs = np.zeros((int(program.input_ciphertexts) * groups, int(context.slots)))
    _, stats = simulator.run(inputs)
    ciphertext = int(stats["peak_ciphertext_bytes"])
    keys = base + per_rotation * len(program.rotation_steps())
    return {
        "latency_s": seconds,
        "memory_bytes": plaintext + keys + ciphertext,
        "throughput": setup.batch / seconds if seconds > 0 else math.inf,
        "plaintext_bytes": plaintext,
        "evaluation_key_bytes": keys,
        "peak_ciphertext_bytes": ciphertext,
        "rotation_keys": len(program.rotation_steps()),
    }


def _layers(compiled: CompiledModel) -> list[dict[str, Any]]:
    """Per layer, per group of samples: units kept, operations and their lower bounds."""
    return [
        {
            "name": r["name"],
            "kind": r["kind"],
            "units": int(r["units"]),
            "total_units": int(r["total_units"]),
            "rotate": int(r["ops"].get("rotate", 0)),
            "mul_plain": int(r["ops"].get("mul_plain", 0)),
            "rotation_lower_bound": int(r["rotation_lower_bound"]),
            "mul_plain_lower_bound": int(r["mul_plain_lower_bound"]),
            "plaintext_bytes": int(r["plaintext_bytes"]),
        }
        for r in summarize_cost(compiled.program, 1)
    ]


def _check_input_range(compiled: CompiledModel, input_max: float) -> None:
    """A program whose proven input range (``Program.input_range``, the bound clients check
    before encrypting) is below the data's cannot be deployed: refuse it at screening."""
    from fheprune.runtime.roles import ClientSpec

    bound = ClientSpec.from_compiled(compiled).max_input
    if bound is not None and bound < input_max:
        raise InputError(
            f"the program holds inputs up to |x| = {bound:.3g} at its parameters, but the data "
            f"reach {input_max:.3g}: clients would be refused (InputRangeError)"
        )


def _live_units(
    candidate: Candidate, record: dict[str, Any], model: nn.Module, params: Any
) -> dict[str, list[int]]:
    """Per layer, [live, total] pruning units: weight tiles of the tile layout or diagonals of
    the diagonal layout (as the program keeps them), or the rotation-aware methods' units of
    the map layout."""
    if candidate.family in ("tile", "diagonal"):  # weight tiles / diagonals the program keeps
        return {
            r["name"]: [r["units"], r["total_units"]] for r in record["layers"] if r["total_units"]
        }
    if "alive_units" in record:
        return {k: [int(v[0]), int(v[1])] for k, v in record["alive_units"].items()}
    from fheprune.pruning import rotation_aware as ra

    units = ra.model_units(model, slots=int(params.poly_degree) // 2)
    return {name: [u.count, u.count] for name, u in units.items()}


def save_artifacts(folder: Path, artifacts: TrialArtifacts) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(artifacts.model.state_dict(), folder / ARTIFACT_WEIGHTS)
    perms = {
        k: v
        for k, v in (("input", artifacts.input_perm), ("output", artifacts.output_perm))
        if v is not None
    }
    np.savez(folder / ARTIFACT_PERMUTATIONS, **perms)  # type: ignore[arg-type]


def load_artifacts(folder: Path, candidate: Candidate, setup: SearchSetup) -> TrialArtifacts:
    """Rebuild a screened model from its trial folder (the architecture from the setup)."""
    model = _architecture(setup, candidate.groups)
    try:
        state = torch.load(folder / ARTIFACT_WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        with np.load(folder / ARTIFACT_PERMUTATIONS) as perms:
            pin = np.asarray(perms["input"]) if "input" in perms else None
            pout = np.asarray(perms["output"]) if "output" in perms else None
    except FileNotFoundError as exc:
        raise InputError(
            f"trial folder {folder} is incomplete ({exc.filename} is missing)"
        ) from exc
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"trial folder {folder} holds a corrupt model: {exc}") from exc
    return TrialArtifacts(model.eval(), pin, pout)


def screen(candidate: Candidate, setup: SearchSetup, folder: Path) -> dict[str, Any]:
    """Prune, validate, compile and predict one candidate; its record (JSON-safe).

    A candidate the method cannot produce (a layout error, training that diverges) is a
    failed record with the reason, not a failed search.
    """
    started = time.perf_counter()
    torch.set_num_threads(1)
    record: dict[str, Any] = {
        "key": setup.trial_key(candidate),
        "candidate": candidate.to_dict(),
        "label": candidate.label,
        "status": "ok",
    }
    try:
        loaders = _loaders(setup)
        model, seen, pin, pout, facts = _prune(candidate, setup, loaders)
        assert seen.val is not None, "the optimizer's loaders always hold a validation split"
        val = float(evaluate(model, seen.val, setup.task))
        params = setup.parameters_for(candidate)
        compiled = compile_candidate(candidate, model, params, pin, pout)
        _check_input_range(compiled, setup.input_max)
        save_artifacts(folder, TrialArtifacts(model, pin, pout))
        record.update(facts)
        record["val_metric"] = val
        record["degradation"] = degradation(setup.baseline_val, val, setup.task)
        record["predicted"] = predicted_metrics(compiled, setup)
        record["layers"] = _layers(compiled)
        record["levels"] = int(compiled.program.levels)
        record["poly_degree"] = int(compiled.parameters.poly_degree)
        record["live_units"] = _live_units(candidate, record, model, params)
        alive = sum(a for a, _ in record["live_units"].values())
        total = sum(t for _, t in record["live_units"].values())
        record["unit_sparsity"] = 1 - alive / total if total else 0.0
    except (FhepruneError, ValueError, RuntimeError) as exc:
        log.warning("trial %s failed: %s", candidate.label, exc)
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug, not a bad candidate: keep the trace in the record
        log.exception("trial %s failed unexpectedly", candidate.label)
        record["status"] = "failed"
        record["error"] = "".join(traceback.format_exception(exc))[-4000:]
    record["seconds"] = time.perf_counter() - started
    return record


def measure(
    record: dict[str, Any],
    folder: Path,
    setup: SearchSetup,
    images: np.ndarray,
    *,
    repeats: int = 3,
    timings: OpTimings | None = None,
) -> dict[str, Any]:
    """Run a screened candidate encrypted on ``images`` (validation images) and measure it.

    ``prediction_error`` compares the measured latency with the cost model's prediction from
    ``timings`` (calibrated next to this measurement; the screening's when None);
    ``screening_prediction_error`` with the prediction the screening ranked by."""
    from fheprune.runtime.pipeline import encrypted_run

    candidate = Candidate.from_dict(record["candidate"])
    art = load_artifacts(folder, candidate, setup)
    params = setup.parameters_for(candidate)
    compiled = compile_candidate(candidate, art.model, params, art.input_perm, art.output_perm)
    run = encrypted_run(
        compiled, images, threads=setup.threads, calibrate_timings=False, repeats=repeats
    )
    y = run.pop("outputs")
    x = images if art.input_perm is None else images[:, art.input_perm]
    shape = getattr(art.model, "input_shape", None)
    xt = torch.as_tensor(x, dtype=torch.float32)
    if isinstance(shape, tuple) and len(shape) == 3:
        xt = xt.reshape(-1, *shape)
    with torch.no_grad():
        plain = art.model(xt).double().numpy()
    if art.output_perm is not None:
        plain = plain[:, np.argsort(art.output_perm)]
    screened = float(record["predicted"]["latency_s"])
    predicted = screened
    if timings is not None:
        groups = -(-images.shape[0] // int(compiled.program.samples_per_group))
        predicted = float(predict(compiled.program, timings, groups)["seconds"])
    return {
        "latency_s": run["latency_s"],
        "latency_runs_s": run["latency_runs_s"],
        "memory_bytes": run["memory_bytes"],
        "memory": run["memory"],
        "memory_prediction_error": (record["predicted"]["memory_bytes"] - run["memory_bytes"])
        / run["memory_bytes"],
        "throughput": images.shape[0] / run["latency_s"],
        "images": int(images.shape[0]),
        "ops_match_cost_model": bool(run["ops_match_cost_model"]),
        "argmax_agreement": float(np.mean(np.argmax(y, 1) == np.argmax(plain, 1))),
        "max_abs_error": float(np.max(np.abs(y - plain))),
        "predicted_latency_s": predicted,
        "prediction_error": (predicted - run["latency_s"]) / run["latency_s"],
        "screening_prediction_error": (screened - run["latency_s"]) / run["latency_s"],
        "keygen_s": run["keygen_s"],
        "server_setup_s": run["server_setup_s"],
    }
