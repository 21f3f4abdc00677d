"""Co-permutation: the kernel through its binding (and the numpy reference), and the network
step: the function never changes, the tile sparsity never drops, conventions hold."""

from __future__ import annotations

import copy
import importlib.util
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from fheprune.pruning import copermute_ref
from fheprune.pruning.permute import (
    PermutationResult,
    PermuteError,
    copermute_network,
    neuron_sets,
    permute_input,
    unpermute_output,
)

HAVE_CORE = importlib.util.find_spec("fheprune._core") is not None
needs_core = pytest.mark.skipif(not HAVE_CORE, reason="the C++ extension is not built")
BACKENDS = [pytest.param("cpp", marks=needs_core), "numpy"]


def _core() -> object:
    from fheprune import _core

    return _core


# ------------------------------------------------------------------------------------------
# Independent references


def naive_nonzero(mask: np.ndarray, t1: int, t2: int) -> int:
    """Non-zero tiles straight from the definition (conv weights as kh*kw matrices)."""
    mats = (
        [mask]
        if mask.ndim == 2
        else [mask[:, :, i, j] for i in range(mask.shape[2]) for j in range(mask.shape[3])]
    )
    count = 0
    for m in mats:
        for r in range(0, m.shape[0], t1):
            for c in range(0, m.shape[1], t2):
                count += bool(m[r : r + t1, c : c + t2].any())
    return count


def naive_total(mask: np.ndarray, t1: int, t2: int) -> int:
    p = 1 if mask.ndim == 2 else mask.shape[2] * mask.shape[3]
    return p * -(-mask.shape[0] // t1) * -(-mask.shape[1] // t2)


def exhaustive_rows(mask: np.ndarray, t1: int, t2: int) -> int:
    """Fewest non-zero tiles over all row permutations (vectorized over the permutations)."""
    rows, cols = mask.shape
    strips, groups = -(-rows // t1), -(-cols // t2)
    occupancy = np.zeros((rows + 1, groups * t2), dtype=bool)  # row `rows`: zero padding
    occupancy[:rows, :cols] = mask
    occupancy = occupancy.reshape(rows + 1, groups, t2).any(axis=2)
    perms = np.array(list(itertools.permutations(range(rows))))
    perms = np.pad(perms, ((0, 0), (0, strips * t1 - rows)), constant_values=rows)
    tiles = occupancy[perms].reshape(len(perms), strips, t1, groups).any(axis=2)
    return int(tiles.sum(axis=(1, 2)).min())


# ------------------------------------------------------------------------------------------
# The kernel


def kernel(backend: str) -> Callable[..., np.ndarray]:
    if backend == "cpp":
        return _core().copermute_rows_blocks  # type: ignore[attr-defined, no-any-return]
    return copermute_ref.copermute_rows_blocks


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_returns_a_permutation_never_worse(backend: str) -> None:
    rng = np.random.default_rng(0)
    for trial in range(12):
        rows, cols = int(rng.integers(1, 70)), int(rng.integers(1, 50))
        t1, t2 = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        mask = rng.random((rows, cols)) < rng.uniform(0.02, 0.3)
        perm = kernel(backend)([mask], [(t1, t2, 0)], seed=trial)
        assert perm.dtype == np.int64
        assert sorted(perm.tolist()) == list(range(rows))
        before, after = naive_nonzero(mask, t1, t2), naive_nonzero(mask[perm], t1, t2)
        assert after <= before
        if after == before:
            assert perm.tolist() == list(range(rows))  # identity unless strictly better


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_finds_the_exhaustive_optimum_on_small_masks(backend: str) -> None:
    rng = np.random.default_rng(1)
    for trial, (rows, cols, t1, t2) in enumerate([(8, 12, 2, 3), (8, 12, 4, 3), (7, 9, 2, 3)] * 3):
        mask = rng.random((rows, cols)) < 0.2
        perm = kernel(backend)([mask], [(t1, t2, 0)], seed=trial)
        assert naive_nonzero(mask[perm], t1, t2) == exhaustive_rows(mask, t1, t2)


@needs_core
def test_binding_counts_agree_with_the_reference_for_any_blocks() -> None:
    core = _core()
    rng = np.random.default_rng(2)
    for _ in range(30):
        rows = int(rng.integers(1, 25))
        blocks, tilings = [], []
        for _ in range(int(rng.integers(1, 4))):
            segment = int(rng.integers(1, 6))
            block = rng.random((rows, segment * int(rng.integers(1, 4)))) < 0.2
            if rng.random() < 0.5:  # a transposed (strided) view
                block = np.ascontiguousarray(block.T).T
            blocks.append(block.astype(np.uint8) if rng.random() < 0.3 else block)
            tilings.append(
                (
                    int(rng.choice([1, 2, 4])),
                    int(rng.integers(1, 5)),
                    segment if rng.random() < 0.5 else 0,
                )
            )
        perm = rng.permutation(rows).astype(np.int64)
        got = core.count_nonzero_tiles_blocks(blocks, tilings, perm)  # type: ignore[attr-defined]
        assert got == copermute_ref.count_nonzero_tiles_blocks(blocks, tilings, perm)


@needs_core
def test_binding_accepts_views_tensors_and_rejects_bad_input() -> None:
    core = _core()
    rng = np.random.default_rng(3)
    mask = rng.random((48, 64)) < 0.08
    strided = core.copermute_rows(mask.T, 8, 4, seed=5)  # type: ignore[attr-defined]
    dense = core.copermute_rows(np.ascontiguousarray(mask.T), 8, 4, seed=5)  # type: ignore[attr-defined]
    from_torch = core.copermute_rows(torch.from_numpy(mask.T.copy()), 8, 4, seed=5)  # type: ignore[attr-defined]
    assert np.array_equal(strided, dense) and np.array_equal(dense, from_torch)
    with pytest.raises(TypeError, match="bool or uint8"):
        core.copermute_rows(mask.astype(np.float32), 8, 8)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="rows"):
        core.copermute_rows_blocks([mask, mask[:10]], [(8, 8, 0), (8, 8, 0)])  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="nest"):
        core.copermute_rows_blocks([mask, mask], [(8, 8, 0), (3, 8, 0)])  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="segment"):
        core.copermute_rows_blocks([mask], [(8, 8, 5)])  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="tilings"):
        core.copermute_rows_blocks([mask], [])  # type: ignore[attr-defined]


@needs_core
def test_binding_matrix_alternation_is_consistent_and_deterministic() -> None:
    core = _core()
    rng = np.random.default_rng(4)
    scale = np.exp(rng.normal(0, 0.8, 96))[:, None] * np.exp(rng.normal(0, 0.8, 80))[None, :]
    weights = np.abs(rng.normal(size=(96, 80))) * scale
    mask = weights > np.quantile(weights, 0.9)
    rp, cp, total, before, after, rounds = core.copermute_matrix(mask, 8, 8, seed=1)  # type: ignore[attr-defined]
    assert total == naive_total(mask, 8, 8)
    assert before == naive_nonzero(mask, 8, 8)
    assert after == naive_nonzero(mask[rp][:, cp], 8, 8) < before
    assert 1 <= rounds <= 5
    again = core.copermute_matrix(mask, 8, 8, seed=1)  # type: ignore[attr-defined]
    assert np.array_equal(again[0], rp) and np.array_equal(again[1], cp)


# ------------------------------------------------------------------------------------------
# Models built here, exposing the conventions (prunable_layers, neuron_chain, flatten_after)


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class ChainNet(nn.Sequential):
    def __init__(self, layers: OrderedDict[str, nn.Module], flatten_after: str | None = None):
        super().__init__(layers)
        self.flatten_after = flatten_after

    def prunable_layers(self) -> list[str]:
        return [n for n, m in self.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]

    def neuron_chain(self) -> list[tuple[str, str]]:
        return list(itertools.pairwise(self.prunable_layers()))


def mlp(sizes: list[int], act: Callable[[], nn.Module] = Square) -> ChainNet:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(len(sizes) - 1):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if i < len(sizes) - 2:
            layers[f"act{i + 1}"] = act()
    return ChainNet(layers)


def cnn(conv2_kernel: int = 3, conv2_pad: int = 1, pool2: int = 2, groups: int = 1) -> ChainNet:
    """3x8x8 -> conv1 3->8 (k3 p1) -> x^2 -> avgpool 2 (4x4) -> conv2 8->16 -> x^2 -> avgpool
    pool2 -> flatten -> fc1 -> x^2 -> fc2 (10 classes)."""
    side = (4 + 2 * conv2_pad - conv2_kernel + 1) // pool2
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1),
        act1=Square(),
        pool1=nn.AvgPool2d(2),
        conv2=nn.Conv2d(8, 16, conv2_kernel, padding=conv2_pad, groups=groups),
        act2=Square(),
        pool2=nn.AvgPool2d(pool2),
        flatten=nn.Flatten(),
        fc1=nn.Linear(16 * side * side, 24),
        act3=Square(),
        fc2=nn.Linear(24, 10),
    )
    return ChainNet(layers, flatten_after="conv2")


def prune(model: ChainNet, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Magnitude pruning of weights given uneven neuron scales (as trained weights have), with
    the zeros written into the model."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in model.prunable_layers():
            w = modules[name].weight
            w.mul_(
                torch.exp(0.8 * torch.randn(w.shape[0], generator=g)).view(-1, *[1] * (w.ndim - 1))
            )
            w.mul_(
                torch.exp(0.8 * torch.randn(w.shape[1], generator=g)).view(
                    1, -1, *[1] * (w.ndim - 2)
                )
            )
            w.mul_(0.5 / w.abs().max())
            k = max(1, int(w.numel() * fraction))
            masks[name] = w.abs() > w.abs().flatten().kthvalue(k).values
            w.mul_(masks[name])
    return masks


def check_function(
    model: nn.Module, x: torch.Tensor, result: PermutationResult, expected: torch.Tensor
) -> None:
    """permuted(x[:, input_perm]) == model(x)[:, output_perm], and unpermute_output undoes it."""
    with torch.no_grad():
        y = model(permute_input(x, result))
    torch.testing.assert_close(
        y, expected[:, torch.as_tensor(result.output_perm)], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(unpermute_output(y, result), expected, rtol=1e-5, atol=1e-5)


def check_tiles(model: ChainNet, result: PermutationResult, t1: int, t2: int) -> None:
    modules = dict(model.named_modules())
    nonzero = total = 0
    for name in model.prunable_layers():
        mask = result.masks[name].numpy()
        weight = modules[name].weight.detach().numpy()
        assert not np.any((weight != 0) & ~mask)  # the zeros moved with the mask
        nonzero += naive_nonzero(mask, t1, t2)
        total += naive_total(mask, t1, t2)
    assert result.total_tiles == total
    assert result.zero_tiles_after == total - nonzero
    assert result.zero_tiles_after >= result.zero_tiles_before
    assert result.tile_sparsity_after == pytest.approx(result.zero_tiles_after / total)


MODELS: dict[str, Callable[[], tuple[ChainNet, torch.Tensor]]] = {
    "mlp": lambda: (mlp([64, 48, 32, 10]), torch.randn(5, 64)),
    "autoencoder": lambda: (mlp([64, 32, 16, 32, 64]), torch.rand(5, 64)),
    "cnn": lambda: (cnn(), torch.randn(3, 3, 8, 8)),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("tile", [(4, 4), (4, 8), (8, 4)])
def test_function_preserved_and_sparsity_never_drops(name: str, tile: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model, x = MODELS[name]()
    masks = prune(model, 0.85, seed=1)
    with torch.no_grad():
        expected = model(x)
    original = {n: m.clone() for n, m in masks.items()}
    result = copermute_network(model, tile, masks, seed=3)
    check_function(model, x, result, expected)
    check_tiles(model, result, *tile)
    assert all(torch.equal(masks[n], original[n]) for n in masks)  # inputs untouched
    assert result.zero_tiles_after > result.zero_tiles_before  # it found something
    assert 1 <= result.rounds <= 5 and len(result.history) == result.rounds


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_numpy_reference_backend(name: str) -> None:
    torch.manual_seed(0)
    model, x = MODELS[name]()
    masks = prune(model, 0.85, seed=1)
    with torch.no_grad():
        expected = model(x)
    result = copermute_network(model, (4, 8), masks, seed=3, backend="numpy", restarts=0)
    assert result.backend == "numpy"
    check_function(model, x, result, expected)
    check_tiles(model, result, 4, 8)
    assert result.zero_tiles_after > result.zero_tiles_before


@pytest.mark.parametrize(
    ("conv2_kernel", "conv2_pad", "pool2", "tile"),
    [
        (3, 1, 4, (4, 8)),  # global pooling: H*W = 1
        (3, 1, 2, (4, 8)),  # H*W = 4 divides t2: FC tiles span 2 channels
        (3, 1, 1, (4, 8)),  # H*W = 16, t2 divides it: channel order cannot matter to the FC
        (2, 0, 1, (4, 8)),  # H*W = 9: FC tiles straddle channels (checked exactly)
    ],
)
def test_conv_to_fc_boundary(
    conv2_kernel: int, conv2_pad: int, pool2: int, tile: tuple[int, int]
) -> None:
    torch.manual_seed(2)
    model = cnn(conv2_kernel, conv2_pad, pool2)
    x = torch.randn(4, 3, 8, 8)
    masks = prune(model, 0.8, seed=2)
    with torch.no_grad():
        expected = model(x)
    result = copermute_network(model, tile, masks, seed=0)
    check_function(model, x, result, expected)
    check_tiles(model, result, *tile)
    spatial = {s.name: s.spatial for s in result.sets}
    side = (4 + 2 * conv2_pad - conv2_kernel + 1) // pool2
    assert spatial["conv2"] == (side * side,)


def test_convention_on_a_hand_made_permutation_of_the_input() -> None:
    """input_perm / output_perm use numpy's gather order: column i of the first layer is old
    column input_perm[i], row i of the last layer is old row output_perm[i]."""
    torch.manual_seed(4)
    model = mlp([16, 12, 6])
    masks = prune(model, 0.7, seed=4)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    result = copermute_network(model, (4, 4), masks, seed=0)
    hidden = result.permutations["fc1"]
    assert torch.equal(model.fc1.weight, w1[hidden][:, result.input_perm])
    assert torch.equal(model.fc2.weight, w2[result.output_perm][:, hidden])
    assert torch.equal(result.masks["fc1"], masks["fc1"][hidden][:, result.input_perm])


def test_masks_default_to_nonzero_weights_and_flags_turn_off_io_permutations() -> None:
    torch.manual_seed(5)
    model = mlp([32, 24, 8])
    prune(model, 0.85, seed=5)
    x = torch.randn(4, 32)
    with torch.no_grad():
        expected = model(x)
    result = copermute_network(model, (4, 4), permute_input=False, permute_output=False)
    assert np.array_equal(result.input_perm, np.arange(32))
    assert np.array_equal(result.output_perm, np.arange(8))
    assert [s.name for s in result.sets] == ["fc1"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_deterministic_given_seed() -> None:
    torch.manual_seed(6)
    model = mlp([48, 40, 24, 10])
    masks = prune(model, 0.85, seed=6)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ra = copermute_network(a, (4, 4), masks, seed=11)
    rb = copermute_network(b, (4, 4), masks, seed=11)
    assert all(np.array_equal(ra.permutations[k], rb.permutations[k]) for k in ra.permutations)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def pair_orders(n: int) -> Iterator[list[int]]:
    """One ordering of 0..n-1 per partition into consecutive pairs."""
    if n == 0:
        yield []
        return

    def rec(rest: list[int]) -> Iterator[list[int]]:
        if not rest:
            yield []
            return
        for b in rest[1:]:
            for tail in rec([x for x in rest if x not in (rest[0], b)]):
                yield [rest[0], b, *tail]

    yield from rec(list(range(n)))


@pytest.mark.parametrize("seed", range(6))
def test_fig3_network_reaches_the_exhaustive_optimum(seed: int) -> None:
    """HE-PEx Fig. 3: layers of 6, 4, 8, 4 neurons, 2x2 tiles, 54 of 88 weights pruned (22
    tiles). Exhaustive search over every pairing of every neuron set (15*3*105*3 networks)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(88, dtype=bool)
    keep[rng.choice(88, 34, replace=False)] = True
    m1, m2, m3 = keep[:24].reshape(4, 6), keep[24:56].reshape(8, 4), keep[56:].reshape(4, 8)
    a_, b_, c_, d_ = (list(pair_orders(n)) for n in (6, 4, 8, 4))
    t1 = np.array([[naive_nonzero(m1[b][:, a], 2, 2) for a in a_] for b in b_])
    t2 = np.array([[naive_nonzero(m2[c][:, b], 2, 2) for b in b_] for c in c_])
    t3 = np.array([[naive_nonzero(m3[d][:, c], 2, 2) for c in c_] for d in d_])
    optimum = min(t1[b].min() + t2[c, b] + t3[:, c].min() for b in range(3) for c in range(105))
    model = mlp([6, 4, 8, 4])
    masks = {n: torch.from_numpy(m) for n, m in (("fc1", m1), ("fc2", m2), ("fc3", m3))}
    plain = copermute_network(copy.deepcopy(model), (2, 2), masks, seed=seed)
    assert plain.total_tiles == 22
    assert plain.zero_tiles_after >= plain.zero_tiles_before
    assert 22 - plain.zero_tiles_after >= optimum
    best = copermute_network(model, (2, 2), masks, seed=seed, network_restarts=4)
    assert 22 - best.zero_tiles_after == optimum
    assert best.zero_tiles_after >= plain.zero_tiles_after


def test_batchnorm_and_prelu_follow_their_channels() -> None:
    torch.manual_seed(7)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        fc1=nn.Linear(20, 16),
        bn1=nn.BatchNorm1d(16),
        act1=nn.PReLU(16),
        fc2=nn.Linear(16, 12),
        act2=Square(),
        fc3=nn.Linear(12, 5),
    )
    model = ChainNet(layers)
    with torch.no_grad():
        model.bn1.running_mean.normal_()
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.normal_()
        model.bn1.bias.normal_()
        model.act1.weight.uniform_(-1, 1)
    model.eval()
    masks = prune(model, 0.8, seed=7)
    x = torch.randn(6, 20)
    with torch.no_grad():
        expected = model(x)
    result = copermute_network(model, (4, 4), masks, seed=0)
    assert not np.array_equal(result.permutations["fc1"], np.arange(16))
    check_function(model, x, result, expected)


class PerNeuronScale(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def test_unknown_per_neuron_modules_are_refused_unless_declared() -> None:
    torch.manual_seed(8)

    def build() -> ChainNet:
        torch.manual_seed(8)
        return ChainNet(
            OrderedDict(
                fc1=nn.Linear(20, 16), scale=PerNeuronScale(16), act=Square(), fc2=nn.Linear(16, 6)
            )
        )

    model = build()
    masks = prune(model, 0.8, seed=8)
    with pytest.raises(PermuteError, match="per_channel"):
        copermute_network(model, (4, 4), masks)
    x = torch.randn(3, 20)
    with torch.no_grad():
        expected = model(x)
    result = copermute_network(model, (4, 4), masks, per_channel={"fc1": ["scale.weight"]})
    check_function(model, x, result, expected)


def test_per_feature_tensors_before_the_first_layer_block_input_permutation() -> None:
    model = ChainNet(
        OrderedDict(
            norm=PerNeuronScale(12), fc1=nn.Linear(12, 8), act=Square(), fc2=nn.Linear(8, 4)
        )
    )
    with pytest.raises(PermuteError, match="permute_input=False"):
        copermute_network(model, (4, 4))
    result = copermute_network(model, (4, 4), permute_input=False)
    assert np.array_equal(result.input_perm, np.arange(12))


def test_grouped_convolution_channels_stay_in_place() -> None:
    torch.manual_seed(9)
    model = cnn(groups=2)
    masks = prune(model, 0.8, seed=9)
    names = [s.name for s in neuron_sets(model)]
    assert "conv1" not in names and "conv2" not in names  # both touch the grouped conv2
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    result = copermute_network(model, (4, 4), masks)
    check_function(model, x, result, expected)
    check_tiles(model, result, 4, 4)


def test_bad_input_gets_clear_errors() -> None:
    model = mlp([8, 6, 4])
    masks = {"fc1": torch.ones(6, 8, dtype=torch.bool)}
    with pytest.raises(PermuteError, match="no entry for prunable layer 'fc2'"):
        copermute_network(model, (2, 2), masks)
    masks["fc2"] = torch.ones(4, 5, dtype=torch.bool)
    with pytest.raises(PermuteError, match="shape"):
        copermute_network(model, (2, 2), masks)
    with pytest.raises(ValueError, match="t1"):
        copermute_network(model, (0, 2))
    with pytest.raises(PermuteError, match="prunable_layers"):
        copermute_network(nn.Sequential(nn.Linear(4, 4)), (2, 2))
    with pytest.raises(ValueError, match="backend"):
        copermute_network(model, (2, 2), backend="gpu")  # type: ignore[arg-type]


def test_zoo_models_if_present() -> None:
    zoo = pytest.importorskip("fheprune.models.zoo")
    for model, x in (
        (zoo.LeNetLike(), torch.randn(2, 1, 28, 28)),
        (zoo.AutoEncoder(64, (32, 16, 32)), torch.rand(3, 64)),
    ):
        torch.manual_seed(10)
        masks = prune(model, 0.85, seed=10)
        with torch.no_grad():
            expected = model(x)
        result = copermute_network(model, (4, 8), masks, seed=1)
        check_function(model, x, result, expected)
        assert result.zero_tiles_after >= result.zero_tiles_before
