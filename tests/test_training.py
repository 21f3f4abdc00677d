"""Tests for fheprune.training: configs, data, metrics, masked and resumable training, caching.

Synthetic datasets keep these fast; one short run on real MNIST checks that training learns
(skipped when the MNIST files are not found).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the models and the trainer need torch")
import torch

from fheprune.data import Dataset, DatasetNotFoundError
from fheprune.models import HEModel, TrainablePoly, build_model
from fheprune.training import (
    CHECKPOINT_NAME,
    DEFAULT_BUDGET,
    CheckpointError,
    EpochShuffleSampler,
    Loaders,
    OptimizerName,
    TensorPairs,
    TrainConfig,
    TrainingDivergedError,
    TrainResult,
    check_masks,
    data_spec,
    default_config,
    degradation,
    evaluate,
    higher_is_better,
    load_loaders,
    load_model,
    load_weights,
    make_loaders,
    metric_is_better,
    save_model,
    train,
    within_budget,
)

torch.set_num_threads(2)


def synthetic(n: int, shape: tuple[int, ...] = (28, 28), seed: int = 0) -> Dataset:
    """Random images whose label is decided by the mean brightness of the left half."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    left = images[:, :, : shape[1] // 2].reshape(n, -1).mean(axis=1)
    labels = np.digitize(left, np.quantile(left, np.linspace(0, 1, 11)[1:-1])).astype(np.int64)
    return Dataset(images=images, labels=labels, name="synthetic", classes=10, split="train")


# --------------------------------------------------------------------------- config


def test_default_config_follows_hepex_table2() -> None:
    expected = {
        ("mlp", "mnist"): (1e-3, 64),
        ("mlp", "cifar10"): (1e-3, 128),
        ("mlp", "svhn"): (1e-4, 64),
        ("cnn", "cifar10"): (1e-3, 128),
        ("ae-compressor", "svhn"): (1e-4, 64),
        ("ae-denoiser", "mnist"): (1e-4, 32),
        ("ae-denoiser", "cifar10"): (1e-4, 64),
    }
    for (name, dataset), (lr, batch) in expected.items():
        cfg = default_config(name, dataset)
        assert (cfg.lr, cfg.batch_size) == (lr, batch), (name, dataset)
        assert (cfg.scheduler, cfg.t0, cfg.eta_min) == ("warm_restarts", 5, 1e-4)
        assert cfg.val_fraction == 0.1
    assert default_config("ae-denoiser", "mnist").noise_std > 0
    assert default_config("ae-compressor", "mnist").noise_std == 0
    lenet = default_config("lenet", "mnist")
    assert (lenet.optimizer, lenet.lr, lenet.batch_size, lenet.momentum) == ("sgd", 0.01, 64, 0.9)


def test_config_validation_and_roundtrip() -> None:
    cfg = TrainConfig(epochs=3, lr=0.5, optimizer="sgd")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(epochs=4).epochs == 4
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="unknown TrainConfig fields: bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="unknown model"):
        default_config("vgg", "mnist")


# --------------------------------------------------------------------------- data


def test_classification_loaders_split_and_limit() -> None:
    ds = synthetic(200)
    cfg = TrainConfig(batch_size=32, eval_batch_size=50)
    loaders = make_loaders(ds, ds, "mlp", cfg, limit=100, test_limit=30)
    assert loaders.input_shape == (784,)
    train_x = torch.cat([x for x, _ in loaders.train])
    assert loaders.val is not None and loaders.test is not None
    val_x = torch.cat([x for x, _ in loaders.val])
    assert (len(train_x), len(val_x)) == (90, 10)
    assert sum(len(y) for _, y in loaders.test) == 30
    assert train_x.dtype == torch.float32 and train_x.min() >= 0.0 and train_x.max() <= 1.0
    # Train and validation samples are disjoint rows of the source.
    rows = {tuple(r.tolist()) for r in train_x}
    assert not any(tuple(r.tolist()) in rows for r in val_x)
    x, y = next(iter(loaders.train))
    assert x.shape == (32, 784) and y.dtype == torch.int64


def test_cnn_inputs_are_channels_first_and_mlp_flattens_in_that_order() -> None:
    ds = synthetic(20, shape=(32, 32, 3))
    cfg = TrainConfig(val_fraction=0.0, batch_size=20)
    cnn = make_loaders(ds, None, "cnn", cfg)
    mlp = make_loaders(ds, None, "mlp", cfg)
    assert cnn.input_shape == (3, 32, 32) and mlp.input_shape == (3072,)
    assert cnn.val is None and cnn.test is None
    cnn_x, mlp_x = _inputs(cnn).float() / 255, _inputs(mlp).float() / 255
    expected = torch.from_numpy(ds.images).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(cnn_x, expected)
    assert torch.equal(mlp_x, expected.reshape(20, -1))


def _inputs(loaders: Loaders) -> torch.Tensor:
    data = loaders.train.dataset
    assert isinstance(data, TensorPairs)
    return data.inputs


def test_compressor_targets_equal_inputs_denoiser_inputs_are_noisy() -> None:
    ds = synthetic(60)
    cfg = default_config("ae-denoiser", "mnist").replace(val_fraction=0.0, batch_size=60)
    comp = make_loaders(ds, ds, "ae-compressor", cfg)
    den = make_loaders(ds, ds, "ae-denoiser", cfg)
    cx, cy = next(iter(comp.train))
    dx, dy = next(iter(den.train))
    assert torch.equal(cx, cy)
    assert not torch.equal(dx, dy)
    assert dx.min() >= 0.0 and dx.max() <= 1.0
    noise = (dx - dy)[(dy > 0.05) & (dy < 0.95)]
    assert float(noise.std()) == pytest.approx(cfg.noise_std, rel=0.2)
    # Same pairs from the same seed, different noise from another seed.
    again = make_loaders(ds, ds, "ae-denoiser", cfg)
    assert torch.equal(_inputs(den), _inputs(again))
    other = make_loaders(ds, ds, "ae-denoiser", cfg.replace(seed=1))
    assert not torch.equal(_inputs(den), _inputs(other))
    assert den.test is not None
    tx, ty = next(iter(den.test))
    assert not torch.equal(tx, ty)
    with pytest.raises(ValueError, match="noise_std"):
        make_loaders(ds, None, "ae-denoiser", cfg.replace(noise_std=0.0))


def test_data_spec_and_sampler() -> None:
    assert data_spec("ae-denoiser").noisy and data_spec("AE-DENOISER").flatten
    assert not data_spec("lenet").flatten
    with pytest.raises(ValueError, match="unknown model"):
        data_spec("gan")
    sampler = EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


# --------------------------------------------------------------------------- metrics


def test_degradation_semantics() -> None:
    assert higher_is_better("classification") and not higher_is_better("reconstruction")
    # Classification: absolute accuracy points (fractions in [0, 1]).
    assert degradation(0.98, 0.96, "classification") == pytest.approx(0.02)
    assert degradation(0.98, 0.99, "classification") == pytest.approx(-0.01)
    # Reconstruction: relative increase of the loss.
    assert degradation(0.010, 0.0103, "reconstruction") == pytest.approx(0.03)
    assert degradation(0.010, 0.009, "reconstruction") == pytest.approx(-0.1)
    assert DEFAULT_BUDGET == 0.025
    assert within_budget(0.98, 0.956, "classification")
    assert not within_budget(0.98, 0.95, "classification")
    assert within_budget(0.01, 0.01024, "reconstruction")
    assert not within_budget(0.01, 0.0103, "reconstruction")
    assert metric_is_better("classification", 0.9, 0.8)
    assert metric_is_better("reconstruction", 0.1, 0.2)
    assert not metric_is_better("reconstruction", 0.2, 0.2)
    with pytest.raises(ValueError, match="positive baseline"):
        degradation(0.0, 0.1, "reconstruction")
    with pytest.raises(ValueError, match="task"):
        degradation(1.0, 0.5, "regression")  # type: ignore[arg-type]


def test_evaluate_accuracy_and_mse() -> None:
    ds = synthetic(40)
    cfg = TrainConfig(val_fraction=0.0, eval_batch_size=7)
    loaders = make_loaders(ds, ds, "ae-compressor", cfg)
    assert loaders.test is not None
    identity = torch.nn.Identity()
    assert evaluate(identity, loaders.test, "reconstruction") == 0.0
    x = torch.from_numpy(ds.images).float().reshape(40, -1) / 255

    class Scale(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t * 0.5

    half = Scale()
    expected = float(((x * 0.5 - x) ** 2).double().mean())
    assert evaluate(half, loaders.test, "reconstruction") == pytest.approx(expected, rel=1e-6)
    cls = make_loaders(ds, ds, "mlp", cfg)
    assert cls.test is not None

    class Oracle(torch.nn.Module):
        """Scores the true label highest for the first 30 samples, label 0 after."""

        def __init__(self) -> None:
            super().__init__()
            self.seen = 0

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(len(t), 10)
            labels = torch.from_numpy(ds.labels[self.seen : self.seen + len(t)])
            keep = torch.arange(self.seen, self.seen + len(t)) < 30
            out[torch.arange(len(t)), torch.where(keep, labels, 0)] = 1.0
            self.seen += len(t)
            return out

    wrong_tail = int((ds.labels[30:] != 0).sum())
    assert evaluate(Oracle(), cls.test, "classification") == pytest.approx(1 - wrong_tail / 40)


# --------------------------------------------------------------------------- training


def _random_masks(model: HEModel, keep: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(module.weight.shape, generator=gen) < keep
        for name, module in model.prunable_modules().items()
    }


@pytest.mark.parametrize(
    ("name", "optimizer", "weight_decay"),
    [("mlp", "adam", 0.0), ("cnn", "sgd", 1e-2), ("lenet", "adam", 1e-2)],
)
def test_masked_weights_stay_exactly_zero(
    name: str, optimizer: OptimizerName, weight_decay: float
) -> None:
    ds = synthetic(96)
    cfg = TrainConfig(
        epochs=2,
        lr=0.01,
        batch_size=16,
        optimizer=optimizer,
        weight_decay=weight_decay,
    )
    loaders = make_loaders(ds, None, name, cfg)
    model = build_model(name, "mnist", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = _random_masks(model, keep=0.3, seed=1)
    result = train(model, loaders, cfg, masks=masks, progress=False)
    assert result.finished and result.epochs_completed == 2
    modules = model.prunable_modules()
    for layer, mask in masks.items():
        weight = modules[layer].weight
        assert torch.count_nonzero(weight[~mask]) == 0, layer
        # Unmasked weights did train.
        assert not torch.equal(weight[mask], before[f"{layer}.weight"][mask])


@pytest.mark.parametrize("name", ["mlp", "ae-compressor", "ae-denoiser", "cnn", "lenet"])
def test_every_model_trains_on_color_images(name: str) -> None:
    ds = synthetic(40, shape=(32, 32, 3))
    cfg = default_config(name, "cifar10").replace(epochs=1, batch_size=16, eval_batch_size=8)
    loaders = make_loaders(ds, ds, name, cfg, test_limit=8)
    model = build_model(name, "cifar10", seed=0)
    assert loaders.input_shape == model.input_shape
    result = train(model, loaders, cfg)  # progress bars stay off: pytest's stderr is no TTY
    assert result.finished and math.isfinite(result.history[0].train_loss)
    assert loaders.test is not None
    metric = evaluate(model, loaders.test, model.task)
    assert 0.0 <= metric <= 1.0 if model.task == "classification" else metric > 0.0


def test_check_masks_errors() -> None:
    model = build_model("mlp", "mnist")
    with pytest.raises(ValueError, match="not a prunable layer"):
        check_masks(model, {"act1": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        check_masks(model, {"fc1": torch.ones(784, 128, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool"):
        check_masks(model, {"fc1": torch.ones(128, 784)})


def _trained_state(
    tmp: Path, cfg: TrainConfig, loaders: Loaders, stop: int | None, seed: int
) -> tuple[dict[str, torch.Tensor], TrainResult]:
    model = build_model("cnn", "mnist", seed=seed, channels=(4,))
    masks = _random_masks(model, keep=0.5, seed=9)
    result = train(
        model,
        loaders,
        cfg,
        masks=masks,
        checkpoint_dir=tmp,
        progress=False,
        stop_after_epochs=stop,
    )
    return model.state_dict(), result


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path: Path) -> None:
    ds = synthetic(120)
    # t0=2 puts a warm restart inside the run; SGD momentum state must survive the resume.
    cfg = TrainConfig(epochs=3, lr=0.02, batch_size=16, optimizer="sgd", t0=2, eta_min=1e-3)
    loaders = make_loaders(ds, None, "cnn", cfg)
    full, full_result = _trained_state(tmp_path / "full", cfg, loaders, None, seed=0)
    # Interrupt after one epoch, then resume into a model with different initial weights:
    # everything must come from the checkpoint.
    _, part_result = _trained_state(tmp_path / "part", cfg, loaders, 1, seed=0)
    assert not part_result.finished and part_result.epochs_completed == 1
    resumed, result = _trained_state(tmp_path / "part", cfg, loaders, None, seed=123)
    assert result.resumed_from == 1 and result.finished
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key
    assert [r.train_loss for r in result.history] == [r.train_loss for r in full_result.history]
    files = sorted(p.name for p in (tmp_path / "part").iterdir())
    assert files == [CHECKPOINT_NAME]  # no temp files left behind
    # A finished checkpoint returns at once; a different config or masks is refused.
    again, again_result = _trained_state(tmp_path / "part", cfg, loaders, None, seed=5)
    assert again_result.resumed_from == 3 and len(again_result.history) == 3
    assert all(torch.equal(v, again[k]) for k, v in full.items())
    with pytest.raises(CheckpointError, match=r"different TrainConfig \(fields: lr\)"):
        _trained_state(tmp_path / "part", cfg.replace(lr=0.1), loaders, None, seed=0)
    model = build_model("cnn", "mnist", seed=0, channels=(4,))
    with pytest.raises(CheckpointError, match="masks"):
        train(model, loaders, cfg, checkpoint_dir=tmp_path / "part", progress=False)


def test_diverging_training_raises() -> None:
    ds = synthetic(32)
    cfg = TrainConfig(epochs=1, batch_size=16, val_fraction=0.0)
    loaders = make_loaders(ds, None, "mlp", cfg)
    model = build_model("mlp", "mnist", activation="square")
    with torch.no_grad():
        model.prunable_modules()["fc1"].weight.fill_(1e30)
    with pytest.raises(TrainingDivergedError, match="smaller learning rate"):
        train(model, loaders, cfg, progress=False)
    with pytest.raises(ValueError, match="task"):
        train(build_model("ae-compressor"), loaders, cfg, progress=False)


# --------------------------------------------------------------------------- model files


class _Pickled:
    """An arbitrary class: weights_only loading must refuse to construct it."""


def test_save_and_load_model_roundtrip(tmp_path: Path) -> None:
    model = build_model("lenet", "mnist", seed=4, conv2_groups=2)
    act = model.get_submodule("act1")
    assert isinstance(act, TrainablePoly)
    with torch.no_grad():
        act.a.fill_(0.5)  # a trained-looking coefficient must survive the round trip
    path = save_model(model, tmp_path / "m" / "lenet.pt", metadata={"test_accuracy": 0.97})
    loaded, meta = load_model(path)
    assert meta == {"test_accuracy": 0.97}
    assert type(loaded) is type(model) and loaded.arch == model.arch
    assert (loaded.model_name, loaded.dataset) == ("lenet", "mnist")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    fresh = build_model("lenet", "mnist", conv2_groups=2)
    assert load_weights(fresh, path) == {"test_accuracy": 0.97}
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(build_model("lenet", "mnist"), path)


def test_model_files_are_loaded_with_weights_only(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "fheprune-model", "payload": _Pickled()}, evil)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(evil)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(CheckpointError):
        load_model(plain)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(CheckpointError, match="not a fheprune-model"):
        load_model(other)


# --------------------------------------------------------------------------- real MNIST


def test_mlp_learns_real_mnist_quickly() -> None:
    cfg = default_config("mlp", "mnist").replace(epochs=1)
    try:
        loaders = load_loaders("mlp", "mnist", cfg, limit=10_000, test_limit=2000)
    except DatasetNotFoundError as exc:
        pytest.skip(f"MNIST not found ({exc}); set FHEPRUNE_DATA to run this test")
    model = build_model("mlp", "mnist", seed=0)
    result = train(model, loaders, cfg, progress=False)
    assert loaders.test is not None
    accuracy = evaluate(model, loaders.test, "classification")
    assert accuracy > 0.8, accuracy
    assert result.val_metric > 0.8 and not math.isnan(result.history[0].train_loss)
