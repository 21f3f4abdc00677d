"""Tests for fheprune.private_training.features: the public extractor and the private splits.

Everything runs on small synthetic images (MNIST-format files written to tmp_path where a
loader is involved); nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from test_data import idx_images, idx_labels, write_mnist

from fheprune.data import Dataset
from fheprune.errors import InputError, MissingFileError
from fheprune.private_training import features as features_module
from fheprune.private_training.features import (
    BIAS_LANE,
    ExtractorMismatchError,
    FeatureExtractor,
    PrivateSplits,
    build_or_load_extractor,
    split_private_data,
)

FEATURES = 15


def class_images(n: int, seed: int) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Noisy images whose label is a bright 7x7 square at one of ten places: learnable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        r, c = 3 + 12 * row, 1 + 5 * col
        images[i, r : r + 7, c : c + 5] = 255
    return images, labels


def class_dataset(n: int, seed: int) -> Dataset:
    images, labels = class_images(n, seed)
    return Dataset(images=images, labels=labels, name="synthetic", classes=10, split="train")


@pytest.fixture(scope="module")
def trained() -> FeatureExtractor:
    return FeatureExtractor.train(
        class_dataset(300, seed=1), features=FEATURES, epochs=2, seed=0, progress=False
    )


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


def test_rows_have_unit_norm_and_bias_lane(trained: FeatureExtractor) -> None:
    images, _ = class_images(50, seed=7)
    x = trained.extract(images)
    assert x.shape == (50, FEATURES + 1)
    assert x.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(x[:, -1] == 1 / math.sqrt(2))
    assert x[0, -1] == BIAS_LANE
    # The scaled backbone part carries the other half of the squared norm.
    np.testing.assert_allclose(np.sum(x[:, :-1] ** 2, axis=1), 0.5, atol=1e-12)


def test_extract_does_not_depend_on_batching(
    trained: FeatureExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One image's features are the same whatever it is batched with (float64 extraction)."""
    images, _ = class_images(5, seed=8)
    whole = trained.extract(images)
    one_by_one = np.concatenate([trained.extract(images[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(whole, one_by_one, rtol=0, atol=1e-12)
    monkeypatch.setattr(features_module, "_EXTRACT_BATCH", 2)  # chunks of 2, 2 and 1
    np.testing.assert_allclose(trained.extract(images), whole, rtol=0, atol=1e-12)


def test_zero_backbone_output_maps_to_unit_vector() -> None:
    backbone = features_module._backbone(4)
    with torch.no_grad():
        for p in backbone[-1].parameters():
            p.zero_()
    extractor = FeatureExtractor(backbone, 4)
    x = extractor.extract(np.zeros((3, 28, 28), np.uint8))
    expected = np.array([BIAS_LANE, 0, 0, 0, BIAS_LANE])
    np.testing.assert_array_equal(x, np.tile(expected, (3, 1)))


def test_extract_rejects_wrong_images(trained: FeatureExtractor) -> None:
    with pytest.raises(InputError, match="uint8"):
        trained.extract(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(InputError, match="28"):
        trained.extract(np.zeros((2, 32, 32), np.uint8))
    assert trained.extract(np.zeros((0, 28, 28), np.uint8)).shape == (0, FEATURES + 1)


def test_backbone_is_frozen(trained: FeatureExtractor) -> None:
    assert not trained.backbone.training
    assert all(not p.requires_grad for p in trained.backbone.parameters())
    assert trained.width == FEATURES + 1


def test_features_separate_the_classes(trained: FeatureExtractor) -> None:
    """A least-squares classifier on the features of held-out images beats chance (0.1)
    by far; constant or scrambled features could not."""
    train_x = trained.extract(class_images(300, seed=1)[0])
    train_y = class_images(300, seed=1)[1]
    test_images, test_y = class_images(200, seed=2)
    test_x = trained.extract(test_images)
    targets = np.eye(10)[train_y]
    weights, *_ = np.linalg.lstsq(train_x, targets, rcond=None)
    accuracy = float(np.mean((test_x @ weights).argmax(1) == test_y))
    assert accuracy > 0.6, accuracy
    means = np.stack([test_x[test_y == k].mean(0) for k in range(10)])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(10, 1)]
    assert gaps.min() > 1e-3


# --------------------------------------------------------------------------------------------
# digest, files
# --------------------------------------------------------------------------------------------


def test_digest_is_deterministic_per_seed() -> None:
    data = class_dataset(64, seed=3)

    def digest(seed: int) -> str:
        return FeatureExtractor.train(
            data, features=6, epochs=1, seed=seed, batch_size=32, progress=False
        ).digest

    first = digest(0)
    assert len(first) == 64 and int(first, 16) >= 0
    assert digest(0) == first
    assert digest(1) != first


def test_digest_ignores_the_callers_thread_count() -> None:
    data = class_dataset(32, seed=3)
    before = torch.get_num_threads()
    digests = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            digests.append(
                FeatureExtractor.train(data, features=4, epochs=1, progress=False).digest
            )
            assert torch.get_num_threads() == threads  # restored afterwards
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1]


def test_training_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    FeatureExtractor.train(class_dataset(16, seed=4), features=3, epochs=1, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_save_load_round_trip(trained: FeatureExtractor, tmp_path: Path) -> None:
    path = trained.save(tmp_path / "sub" / "extractor.pt")
    loaded = FeatureExtractor.load(path, expected_digest=trained.digest)
    assert loaded.digest == trained.digest
    assert loaded.features == FEATURES
    assert loaded.training == trained.training
    images, _ = class_images(20, seed=9)
    np.testing.assert_array_equal(loaded.extract(images), trained.extract(images))
    assert not loaded.backbone.training
    assert all(not p.requires_grad for p in loaded.backbone.parameters())
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write cleaned up


def test_tampered_weights_are_refused(trained: FeatureExtractor, tmp_path: Path) -> None:
    path = trained.save(tmp_path / "extractor.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["5.weight"][0, 0] += 0.01  # keep the stored digest
    torch.save(payload, path)
    with pytest.raises(ExtractorMismatchError) as info:
        FeatureExtractor.load(path)
    message = str(info.value)
    assert trained.digest in message  # what the file records
    assert "altered" in message
    assert isinstance(info.value, InputError)


def test_wrong_expected_digest_is_refused(trained: FeatureExtractor, tmp_path: Path) -> None:
    path = trained.save(tmp_path / "extractor.pt")
    wrong = "0" * 64
    with pytest.raises(ExtractorMismatchError, match=f"expected {wrong}") as info:
        FeatureExtractor.load(path, expected_digest=wrong)
    assert trained.digest in str(info.value)
    assert FeatureExtractor.load(path, expected_digest=trained.digest.upper()).digest == (
        trained.digest
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"format": "fheprune-model"},
        [1, 2, 3],
        {"format": "fheprune-feature-extractor-v1", "features": 0},
        {"format": "fheprune-feature-extractor-v1", "features": 4, "state_dict": {}},
    ],
    ids=["other-format", "not-a-dict", "bad-features", "missing-weights"],
)
def test_not_an_extractor_is_refused(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "thing.pt"
    torch.save(payload, path)
    with pytest.raises(ExtractorMismatchError, match="expected"):
        FeatureExtractor.load(path)


def test_shape_mismatch_and_garbage_are_refused(trained: FeatureExtractor, tmp_path: Path) -> None:
    path = trained.save(tmp_path / "extractor.pt")
    payload = torch.load(path, weights_only=True)
    payload["features"] = FEATURES + 1
    torch.save(payload, path)
    with pytest.raises(ExtractorMismatchError, match="do not fit"):
        FeatureExtractor.load(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ExtractorMismatchError, match="not a readable"):
        FeatureExtractor.load(garbage)
    with pytest.raises(MissingFileError):
        FeatureExtractor.load(tmp_path / "absent.pt")


def test_file_shapes_match_the_backbone() -> None:
    for features in (1, 15):
        state = features_module._backbone(features).state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == (
            features_module._backbone_shapes(features)
        )


def test_float64_weights_are_refused(trained: FeatureExtractor, tmp_path: Path) -> None:
    path = trained.save(tmp_path / "extractor.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = {k: v.double() for k, v in payload["state_dict"].items()}
    torch.save(payload, path)
    with pytest.raises(ExtractorMismatchError, match="float32"):
        FeatureExtractor.load(path)


def test_build_or_load_uses_a_valid_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = class_dataset(40, seed=5)
    cache = tmp_path / "cache" / "extractor.pt"
    built = build_or_load_extractor(data, cache, features=4, epochs=1, seed=0)
    assert cache.is_file()

    def no_training(*args: object, **kwargs: object) -> FeatureExtractor:
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(FeatureExtractor, "train", no_training)
        assert build_or_load_extractor(data, cache, features=4, epochs=1, seed=0).digest == (
            built.digest
        )
        # PrivateSplits train on their extractor part.
        splits = PrivateSplits(extractor=data, train=data, validation=data, test=data)
        assert build_or_load_extractor(splits, cache, features=4, epochs=1, seed=0).digest == (
            built.digest
        )

    # Other settings or other data: retrained and the cache replaced.
    other = build_or_load_extractor(data, cache, features=4, epochs=1, seed=1)
    assert other.digest != built.digest
    assert FeatureExtractor.load(cache).digest == other.digest
    assert build_or_load_extractor(class_dataset(40, seed=6), cache, features=4, epochs=1).digest
    # A tampered cache is not trusted: retrained (seed 0 again gives the first extractor).
    payload = torch.load(cache, weights_only=True)
    payload["state_dict"]["0.bias"][0] += 1.0
    torch.save(payload, cache)
    assert build_or_load_extractor(data, cache, features=4, epochs=1, seed=0).digest == (
        built.digest
    )


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------


def numbered_images(n: int, offset: int) -> NDArray[np.uint8]:
    """Images whose first two pixels spell their index (plus ``offset``), to track them."""
    images = np.zeros((n, 28, 28), np.uint8)
    ids = np.arange(n) + offset
    images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
    return images


def image_ids(data: Dataset) -> NDArray[np.int64]:
    return data.images[:, 0, 0].astype(np.int64) * 256 + data.images[:, 0, 1]


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    labels = (np.arange(300) % 10).astype(np.uint8)
    write_mnist(
        tmp_path / "mnist", "train", idx_images(numbered_images(300, 0)), idx_labels(labels)
    )
    write_mnist(
        tmp_path / "mnist", "test", idx_images(numbered_images(50, 1000)), idx_labels(labels[:50])
    )
    return tmp_path


def test_split_is_disjoint_and_extractor_is_the_prefix(mnist_dir: Path) -> None:
    splits = split_private_data(
        mnist_dir, extractor_samples=100, train_samples=120, validation_samples=60, seed=3
    )
    np.testing.assert_array_equal(image_ids(splits.extractor), np.arange(100))
    train, val = image_ids(splits.train), image_ids(splits.validation)
    assert len(train) == 120 and len(val) == 60
    assert len(set(train)) == 120 and len(set(val)) == 60
    assert not set(train) & set(val)
    assert min(train.min(), val.min()) >= 100
    # Labels travel with their images.
    np.testing.assert_array_equal(splits.train.labels, train % 10)
    np.testing.assert_array_equal(splits.validation.labels, val % 10)
    assert len(splits.test) == 50
    assert {s.split for s in (splits.extractor, splits.train, splits.validation, splits.test)} == {
        "extractor",
        "train",
        "validation",
        "test",
    }


def test_split_depends_on_seed_only(mnist_dir: Path) -> None:
    def train_ids(seed: int, test_samples: int | None = None) -> NDArray[np.int64]:
        splits = split_private_data(
            mnist_dir,
            extractor_samples=100,
            train_samples=50,
            validation_samples=50,
            test_samples=test_samples,
            seed=seed,
        )
        if test_samples is not None:
            np.testing.assert_array_equal(image_ids(splits.test), 1000 + np.arange(test_samples))
        return image_ids(splits.train)

    np.testing.assert_array_equal(train_ids(0), train_ids(0, test_samples=20))
    assert not np.array_equal(train_ids(0), train_ids(1))


def test_split_refuses_too_many_images(mnist_dir: Path) -> None:
    with pytest.raises(InputError, match="holds only 300"):
        split_private_data(
            mnist_dir, extractor_samples=100, train_samples=150, validation_samples=51
        )
    with pytest.raises(InputError, match="holds only 50"):
        split_private_data(
            mnist_dir, extractor_samples=0, train_samples=10, validation_samples=0, test_samples=51
        )
    with pytest.raises(InputError, match="train_samples"):
        split_private_data(mnist_dir, extractor_samples=0, train_samples=0, validation_samples=0)
    # Exactly all of them is fine.
    splits = split_private_data(
        mnist_dir, extractor_samples=100, train_samples=150, validation_samples=50
    )
    assert len(splits.train) + len(splits.validation) + len(splits.extractor) == 300
