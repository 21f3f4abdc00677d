"""fheprune.importing: PyTorch (torch.fx) and ONNX models -> HEModel chains.

Every imported model is checked against the source model in plaintext; the FC and conv ones
are also compiled (tile and map layouts, insecure toy rings) and run through the slot
simulator. Unsupported graphs must fail with an error that names the node.
"""

from __future__ import annotations

import io
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the importer needs torch")

import torch.nn.functional as F  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from numpy.polynomial import Polynomial  # noqa: E402
from torch import nn  # noqa: E402

try:  # the ONNX half is optional: the torch importer works without onnx
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
except ImportError:
    onnx = None

needs_onnx = pytest.mark.skipif(onnx is None, reason="the ONNX importer needs onnx")

from fheprune.errors import InputError, MissingFileError  # noqa: E402
from fheprune.importing import (  # noqa: E402
    SUPPORTED_OPERATIONS,
    ImportedPoly,
    ModelFileError,
    UnsupportedOperationError,
    UntraceableModelError,
    build_imported,
    import_model,
    import_onnx,
    import_torch,
)
from fheprune.models import HEModel, TrainablePoly, build_model  # noqa: E402
from fheprune.models.activations import PolyActivation  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Reproducible random inputs in every test."""
    torch.manual_seed(1234)


# ---- Helpers and source models --------------------------------------------------------------


def forward(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        y: np.ndarray = model(x).detach().to(torch.float64).numpy()
    return y


def assert_same(
    imported: nn.Module, source: nn.Module, x: torch.Tensor, atol: float = 1e-5
) -> None:
    np.testing.assert_allclose(forward(imported, x), forward(source, x), rtol=1e-5, atol=atol)


def polys(model: nn.Module) -> list[tuple[float, float, float]]:
    return [m.coefficients() for m in model.children() if isinstance(m, PolyActivation)]


def onnx_bytes(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True) -> bytes:
    """The TorchScript exporter (dynamo=False; onnxscript is not installed)."""
    buffer = io.BytesIO()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            buffer,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=axes,
        )
    return buffer.getvalue()


def seeded(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory().eval()


class PolyMLP(nn.Module):
    """20 -> 12 -> 5 with its activation written as raw arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 12)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = 0.5 * h * h + 0.25 * h + 1
        return self.fc2(self.drop(h))


class ViewCNN(nn.Module):
    """1x8x8 -> conv (pad 1) -> x^2 -> avgpool -> grouped conv -> (x - 1)^2 / 4 -> avgpool
    -> x.view(x.size(0), -1) -> fc; the map layout takes it as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, groups=4)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.square(self.conv1(x))
        x = F.avg_pool2d(x, 2)
        x = self.conv2(x)
        x = (x - 1) ** 2 / 4
        x = nn.functional.avg_pool2d(x, kernel_size=2)
        x = x.view(x.size(0), -1)
        return self.fc(x)


class BatchNormNet(nn.Module):
    """conv -> BatchNorm2d -> x^2 -> pool -> flatten -> fc -> BatchNorm1d -> affine -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6, eps=0.1)  # eps large enough to matter in the checks
        self.pool = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(6 * 2 * 2, 7)
        self.bn1 = nn.BatchNorm1d(7, eps=0.05)
        self.fc2 = nn.Linear(7, 3)
        for bn in (self.bn1, self.bn2):  # non-trivial eval statistics
            with torch.no_grad():
                bn.running_mean.uniform_(-1.0, 1.0)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.bn2(self.conv(x)) ** 2)
        x = self.bn1(self.fc1(self.flatten(x)))
        return self.fc2(x - 3 - x / 2)


# ---- PyTorch import: plaintext equality ------------------------------------------------------


def test_mlp_with_arithmetic_polynomial() -> None:
    source = seeded(PolyMLP)
    model = import_torch(source, (20,))
    assert isinstance(model, HEModel)
    assert [type(m) for m in model.children()] == [nn.Linear, ImportedPoly, nn.Linear]
    assert list(dict(model.named_children())) == ["fc1", "act1", "fc2"]
    assert polys(model) == [(0.5, 0.25, 1.0)]
    assert model.input_shape == (20,)
    assert model.flatten_after is None and model.flatten_shape is None
    assert model.task == "classification" and model.model_name is None
    assert_same(model, source, torch.randn(9, 20))
    assert model.neuron_chain() == [("fc1", "fc2")]


def test_cnn_with_view_flatten_and_functional_pooling() -> None:
    source = seeded(ViewCNN)
    model = import_torch(source, (1, 8, 8), name="view-cnn")
    kinds = [type(m).__name__ for m in model.children()]
    assert kinds == [
        "Conv2d", "ImportedPoly", "AvgPool2d", "Conv2d", "ImportedPoly", "AvgPool2d", "Flatten",
        "Linear",
    ]  # fmt: skip
    assert polys(model) == [(1.0, 0.0, 0.0), (0.25, -0.5, 0.25)]
    assert (model.flatten_after, model.flatten_shape) == ("conv2", (8, 1, 1))
    assert model.model_name == "view-cnn"
    conv2 = model.get_submodule("conv2")
    assert isinstance(conv2, nn.Conv2d) and conv2.groups == 4
    assert_same(model, source, torch.randn(5, 1, 8, 8))


def test_batch_norm_is_folded() -> None:
    source = seeded(BatchNormNet)
    model = import_torch(source, (2, 8, 8))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert [n for n, _ in model.named_children()] == [
        "conv", "act1", "pool", "flatten", "fc1", "act2", "fc2",
    ]  # fmt: skip
    conv = model.get_submodule("conv")
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None  # the fold adds a bias
    assert polys(model) == [(1.0, 0.0, 0.0), (0.0, 0.5, -3.0)]  # the affine one is kept
    assert model.flatten_after == "conv" and model.flatten_shape == (6, 2, 2)
    assert_same(model, source, torch.randn(6, 2, 8, 8))


@pytest.mark.parametrize(
    ("name", "overrides"), [("mlp", {}), ("cnn", {}), ("lenet", {"conv2_groups": 8})]
)
def test_zoo_models_round_trip(name: str, overrides: dict[str, Any]) -> None:
    source = build_model(name, "mnist", seed=1, **overrides).eval()
    model = import_torch(source, source.input_shape)
    # Same children, names and activation classes; copies, not the same parameters.
    assert [(n, type(m)) for n, m in model.named_children()] == [
        (n, type(m)) for n, m in source.named_children()
    ]
    assert (model.flatten_after, model.flatten_shape) == (
        source.flatten_after,
        source.flatten_shape,
    )
    assert model.neuron_chain() == source.neuron_chain()
    src_params = {p.data_ptr() for p in source.parameters()}
    assert not any(p.data_ptr() in src_params for p in model.parameters())
    x = torch.rand(3, *source.input_shape)
    np.testing.assert_array_equal(forward(model, x), forward(source, x))


def test_import_copies_and_leaves_the_source_alone() -> None:
    source = seeded(BatchNormNet).train()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    model = import_torch(source, (2, 8, 8))
    assert source.training  # the import traces an eval-mode copy
    for key, value in source.state_dict().items():
        assert torch.equal(value, state[key])  # no running statistic moved
    with torch.no_grad():
        model.get_submodule("fc2").weight.zero_()
    assert torch.equal(source.fc2.weight, state["fc2.weight"])


def test_poly_modules_are_kept_or_composed() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 4)
            self.act = TrainablePoly(0.3, 0.8, 0.1)
            self.fc2 = nn.Linear(4, 4)
            self.act2 = TrainablePoly(0.2, 1.0, 0.0)
            self.fc3 = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.fc1(x))  # kept as the module itself (trainable)
            h = 2 * self.act2(self.fc2(h)) - 1  # composed: a fixed ImportedPoly
            return self.fc3(h) * 4 / 4  # an identity polynomial vanishes

    source = seeded(Net)
    model = import_torch(source, (4,))
    assert [(n, type(m)) for n, m in model.named_children()] == [
        ("fc1", nn.Linear), ("act", TrainablePoly), ("fc2", nn.Linear), ("act1", ImportedPoly),
        ("fc3", nn.Linear),
    ]  # fmt: skip
    np.testing.assert_allclose(polys(model)[1], (0.4, 2.0, -1.0), rtol=1e-7)
    assert_same(model, source, torch.randn(4, 4))


def test_functional_layers_and_mean_pooling() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(3, 1, 3, 3))
            self.b1 = nn.Parameter(torch.randn(3))
            self.head = nn.Linear(3, 2)
            self.scale = nn.Parameter(torch.tensor(0.7))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.conv2d(x, self.w1, self.b1, padding=1)
            x = self.scale * x * x - x
            x = x.mean(dim=(2, 3))
            return F.linear(x, self.head.weight, self.head.bias)

    source = seeded(Net)
    model = import_torch(source, (1, 6, 6))
    assert [type(m).__name__ for m in model.children()] == [
        "Conv2d", "ImportedPoly", "AvgPool2d", "Flatten", "Linear",
    ]  # fmt: skip
    assert "head" in dict(model.named_children())  # named after the weight's owner
    np.testing.assert_allclose(polys(model)[0], (0.7, -1.0, 0.0), rtol=1e-6)
    assert_same(model, source, torch.randn(2, 1, 6, 6))


def test_bias_vector_after_linear_is_folded() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 4, bias=False)
            self.offset = nn.Parameter(torch.randn(4))
            self.gain = nn.Parameter(torch.rand(4) + 0.5)
            self.out = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = (self.fc(x) + self.offset) / self.gain
            return self.out(h * h)

    source = seeded(Net)
    model = import_torch(source, (5,))
    assert [type(m) for m in model.children()] == [nn.Linear, ImportedPoly, nn.Linear]
    assert_same(model, source, torch.randn(3, 5))


FLATTENS: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
    ("torch.flatten", lambda x: torch.flatten(x, 1)),
    ("method", lambda x: x.flatten(1)),
    ("reshape-shape", lambda x: x.reshape(x.shape[0], -1)),
    ("view-minus-one", lambda x: x.view(-1, 3 * 2 * 2)),
    ("nn.Flatten", nn.Flatten()),
    ("adaptive-squeeze", lambda x: F.adaptive_avg_pool2d(x, 1).squeeze()),
]


@pytest.mark.parametrize("flatten", [f for _, f in FLATTENS], ids=[n for n, _ in FLATTENS])
def test_flatten_spellings(flatten: Callable[[torch.Tensor], torch.Tensor]) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AvgPool2d(2))
            self.flatten = flatten
            self.fc = nn.LazyLinear(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.size(0)  # read early: only the reshape may use it
            y = self.flatten(self.features(x) * 2)
            return self.fc(y.reshape(n, -1))

    source = seeded(Net)
    source(torch.zeros(1, 1, 6, 6))  # materialise the lazy layer
    model = import_torch(source, (1, 6, 6))
    names = [n for n, _ in model.named_children()]
    assert names[:3] == ["features_0", "features_1", "act1"]  # nested names, made flat
    assert [type(m).__name__ for m in model.children()][-2:] == ["Flatten", "Linear"]
    assert model.flatten_after == "features_0"
    assert_same(model, source, torch.randn(3, 1, 6, 6))
    if isinstance(flatten, nn.Module) and onnx is not None:  # the ONNX exporter's spelling
        assert_same(
            import_onnx(onnx_bytes(source, torch.randn(1, 1, 6, 6))),
            source,
            torch.randn(2, 1, 6, 6),
        )


def test_float64_models_stay_float64() -> None:
    source = seeded(PolyMLP).double()
    model = import_torch(source, [20])
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model.arch["dtype"] == "float64"
    x = torch.randn(4, 20, dtype=torch.float64)
    np.testing.assert_allclose(forward(model, x), forward(source, x), rtol=1e-12, atol=1e-12)


# ---- Symbolic polynomials (property) --------------------------------------------------------

_LINEAR_OPS = ("add", "radd", "sub", "rsub", "mul", "rmul", "div", "neg", "addx", "subx")
_SQUARING_OPS = ("square", "pow2", "torch_square", "mulx", "self_mul")


@st.composite
def poly_programs(draw: st.DrawFn) -> list[tuple[str, float]]:
    """Op chains on h (starting at the layer output x) that stay of degree <= 2."""
    steps: list[tuple[str, float]] = []
    degree = 1
    for _ in range(draw(st.integers(1, 7))):
        ops = _LINEAR_OPS + (_SQUARING_OPS if degree <= 1 else ())
        if degree == 2:  # h * x would be cubic; h +- x stays quadratic
            ops = _LINEAR_OPS
        op = draw(st.sampled_from(ops))
        c = draw(st.floats(-3.0, 3.0, allow_nan=False).filter(lambda v: abs(v) > 0.1))
        steps.append((op, round(c, 3)))
        if op in ("square", "pow2", "torch_square", "self_mul"):
            degree *= 2
        elif op == "mulx":
            degree += 1
    return steps


def apply_program(
    h: Any, x: Any, steps: list[tuple[str, float]], square: Callable[[Any], Any]
) -> Any:
    for op, c in steps:
        if op == "add":
            h = h + c
        elif op == "radd":
            h = c + h
        elif op == "sub":
            h = h - c
        elif op == "rsub":
            h = c - h
        elif op == "mul":
            h = h * c
        elif op == "rmul":
            h = c * h
        elif op == "div":
            h = h / c
        elif op == "neg":
            h = -h
        elif op == "addx":
            h = h + x
        elif op == "subx":
            h = h - x
        elif op in ("square", "self_mul"):
            h = h * h
        elif op == "pow2":
            h = h**2
        elif op == "torch_square":
            h = square(h)
        elif op == "mulx":
            h = h * x
    return h


class ProgramNet(nn.Module):
    def __init__(self, steps: list[tuple[str, float]]) -> None:
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(3, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.fc1(inputs)
        return self.fc2(apply_program(x, x, self.steps, torch.square))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(poly_programs())
def test_arithmetic_chains_become_one_polynomial(steps: list[tuple[str, float]]) -> None:
    x = Polynomial([0.0, 1.0])
    want = apply_program(x, x, steps, lambda p: p * p)
    coef = np.zeros(3)
    coef[: len(want.coef)] = want.coef
    c, b, a = coef
    source = seeded(lambda: ProgramNet(steps)).double()
    model = import_torch(source, (3,))
    found = polys(model)
    if np.allclose((a, b, c), (0.0, 1.0, 0.0), atol=1e-12) and not found:
        pass  # an identity polynomial is dropped
    else:
        assert len(found) == 1
        np.testing.assert_allclose(found[0], (a, b, c), rtol=1e-9, atol=1e-9)
    inputs = torch.randn(4, 3, dtype=torch.float64)
    np.testing.assert_allclose(
        forward(model, inputs), forward(source, inputs), rtol=1e-9, atol=1e-9
    )


# ---- ONNX import ----------------------------------------------------------------------------


@needs_onnx
@pytest.mark.parametrize(
    ("factory", "shape", "dynamic"),
    [
        (PolyMLP, (20,), True),
        (ViewCNN, (1, 8, 8), True),  # Shape -> Gather -> Unsqueeze -> Concat -> Reshape
        (ViewCNN, (1, 8, 8), False),  # a constant Reshape to (1, -1)
        (BatchNormNet, (2, 8, 8), True),  # BatchNormalization nodes (conv+bn is fused)
    ],
)
def test_onnx_export_matches_torch(
    factory: Callable[[], nn.Module], shape: tuple[int, ...], dynamic: bool
) -> None:
    source = seeded(factory)
    model = import_onnx(onnx_bytes(source, torch.randn(1, *shape), dynamic))
    assert model.input_shape == shape
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert_same(model, source, torch.randn(4, *shape))
    reference = import_torch(source, shape)
    assert [type(m) for m in model.children()] == [type(m) for m in reference.children()]
    assert model.flatten_shape == reference.flatten_shape


@needs_onnx
@pytest.mark.parametrize(
    ("name", "overrides"),
    [("mlp", {}), ("cnn", {"channels": (4,)}), ("lenet", {"conv2_groups": 8})],
)
def test_onnx_zoo_models(tmp_path: Path, name: str, overrides: dict[str, Any]) -> None:
    source = build_model(name, "mnist", seed=2, **overrides).eval()
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(onnx_bytes(source, torch.rand(1, *source.input_shape)))
    model = import_model(path)
    assert model.input_shape == source.input_shape
    assert model.prunable_layers() == source.prunable_layers()  # named after the ONNX nodes
    assert [type(m) for m in model.prunable_modules().values()] == [
        type(m) for m in source.prunable_modules().values()
    ]
    assert (model.flatten_after, model.flatten_shape) == (
        source.flatten_after,
        source.flatten_shape,
    )
    assert_same(model, source, torch.rand(2, *source.input_shape))


def _graph_model(
    nodes: list[Any],
    inits: dict[str, np.ndarray],
    in_shape: list[Any],
    out_shape: list[Any] | None,
    *,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
) -> Any:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, in_shape) for n in inputs or ["x"]],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, out_shape) for n in outputs or ["y"]],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _hand_built_mlp() -> Any:
    """MatMul + Add(bias) -> 0.5*(h^2) - (-h)/4 + c via Pow, Mul, Div, Neg, Sub and a Constant
    node -> Gemm (transB=0, alpha, beta)."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.normal(size=(6, 4)),
        "b1": rng.normal(size=(4,)),
        "two": np.array(2.0),
        "half": np.array([0.5]),
        "four": np.array(4.0),
        "w2": rng.normal(size=(4, 3)),
        "b2": rng.normal(size=(1, 3)),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["mm"], name="fc1/MatMul"),
        helper.make_node("Add", ["mm", "b1"], ["h"], name="fc1/Add"),
        helper.make_node("Pow", ["h", "two"], ["sq"], name="sq"),
        helper.make_node("Mul", ["half", "sq"], ["hs"], name="scale"),
        helper.make_node("Neg", ["h"], ["nh"], name="neg"),
        helper.make_node("Div", ["nh", "four"], ["q"], name="quarter"),
        helper.make_node("Sub", ["hs", "q"], ["p"], name="sub"),
        helper.make_node(
            "Constant", [], ["c"], name="const", value=numpy_helper.from_array(np.float32(0.3))
        ),
        helper.make_node("Add", ["p", "c"], ["act"], name="shift"),
        helper.make_node("Dropout", ["act"], ["d"], name="drop"),
        helper.make_node("Identity", ["d"], ["i"], name="ident"),
        helper.make_node(
            "Gemm", ["i", "w2", "b2"], ["y"], name="fc2/Gemm", alpha=0.5, beta=2.0, transB=0
        ),
    ]
    return _graph_model(nodes, inits, ["n", 6], ["n", 3])


@needs_onnx
def test_onnx_hand_built_matmul_add_pow() -> None:
    proto = _hand_built_mlp()
    model = import_onnx(proto, name="hand")
    assert [type(m) for m in model.children()] == [nn.Linear, ImportedPoly, nn.Linear]
    assert list(dict(model.named_children())) == ["fc1", "act1", "fc2"]
    np.testing.assert_allclose(polys(model)[0], (0.5, 0.25, 0.3), rtol=1e-6)
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    (want,) = ReferenceEvaluator(proto).run(None, {"x": x})
    np.testing.assert_allclose(forward(model, torch.from_numpy(x)), want, rtol=1e-5, atol=1e-5)


@needs_onnx
def test_onnx_hand_built_conv_pool_flatten() -> None:
    rng = np.random.default_rng(3)
    inits = {
        "w": rng.normal(size=(4, 1, 3, 3)),
        "b": rng.normal(size=(4,)),
        "shift": rng.normal(size=(1, 4, 1, 1)),  # a per-channel Add, folded into the conv
        "bn_s": rng.uniform(0.5, 1.5, size=(4,)),
        "bn_b": rng.normal(size=(4,)),
        "bn_m": rng.normal(size=(4,)),
        "bn_v": rng.uniform(0.5, 2.0, size=(4,)),
        "shape": np.array([0, -1]),
        "fw": rng.normal(size=(3, 4)),
    }
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1]
        ),
        helper.make_node("Add", ["c", "shift"], ["cs"], name="bias2"),
        helper.make_node(
            "BatchNormalization", ["cs", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3
        ),
        helper.make_node("Mul", ["bn", "bn"], ["sq"], name="square"),
        helper.make_node(
            "AveragePool", ["sq"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw"], ["y"], name="head", transB=1),
    ]
    inits["shape"] = inits["shape"].astype(np.int64)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array(v if k == "shape" else v.astype(np.float32), k)
            for k, v in inits.items()
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = import_onnx(proto.SerializeToString())
    assert [type(m).__name__ for m in model.children()] == [
        "Conv2d", "ImportedPoly", "AvgPool2d", "AvgPool2d", "Flatten", "Linear",
    ]  # fmt: skip
    assert model.flatten_shape == (4, 1, 1)
    x = np.random.default_rng(4).normal(size=(1, 1, 8, 8)).astype(np.float32)
    (want,) = ReferenceEvaluator(proto).run(None, {"x": x})
    np.testing.assert_allclose(forward(model, torch.from_numpy(x)), want, rtol=1e-4, atol=1e-5)


# ---- Compiled and simulated -----------------------------------------------------------------


def _params(n: int, levels: int) -> Any:
    core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")
    return core.Parameters(n, [50] + [40] * levels, [50], 40, insecure_for_testing=True)


@pytest.mark.parametrize("via_onnx", [False, pytest.param(True, marks=needs_onnx)])
def test_imported_mlp_compiles_tile_layout_and_simulates(via_onnx: bool) -> None:
    core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")
    from fheprune.runtime import SimulatedExecutor, compile_model

    source = seeded(PolyMLP).double()
    if via_onnx:  # float32 weights upcast exactly: the same model in float64
        model = import_onnx(onnx_bytes(seeded(PolyMLP), torch.randn(1, 20))).double()
    else:
        model = import_torch(source, (20,))
    compiled = compile_model(model, layout="tile", tile=(4, 4), parameters=_params(1024, 4))
    assert compiled.program.levels == 3  # fc1, square, fc2
    x = np.random.default_rng(1).uniform(-1.0, 1.0, (3, 20))
    want = forward(source, torch.from_numpy(x))
    np.testing.assert_allclose(compiled.plaintext_forward(x), want, rtol=1e-9, atol=1e-9)
    program = compiled.program
    sim = SimulatedExecutor(program, core.Context(compiled.parameters))
    out, _ = sim.run(program.pack_inputs(x))
    got = program.unpack_outputs(out, x.shape[0])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_imported_cnn_compiles_map_layout_and_simulates() -> None:
    core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")
    from fheprune.runtime import compile_model

    source = seeded(ViewCNN).double()
    model = import_torch(source, (1, 8, 8))
    compiled = compile_model(model, layout="map", parameters=_params(2048, 5))
    assert compiled.program.levels == 5  # conv, square, conv, square, fc
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    want = forward(source, x)
    np.testing.assert_allclose(compiled.plaintext_forward(x.numpy()), want, rtol=1e-9, atol=1e-12)
    sim = core.SimulatedExecutor(compiled.program, core.Context(compiled.parameters, 1))
    packed = compiled.map_spec.pack(x[:1].numpy())[0]
    slots, _ = sim.run(np.ascontiguousarray(packed))
    got = compiled.program.unpack_outputs(np.ascontiguousarray(slots), 1)
    np.testing.assert_allclose(got, want[:1], rtol=1e-9, atol=1e-12)


def test_imported_model_survives_pruned_model_files(tmp_path: Path) -> None:
    from fheprune.pruning import load_pruned_model, save_pruned_model

    model = import_torch(seeded(BatchNormNet), (2, 8, 8), name="bn-net")
    masks = {"fc1": torch.rand(7, 24) > 0.5}
    with torch.no_grad():
        model.get_submodule("fc1").weight.mul_(masks["fc1"])
    path = save_pruned_model(
        tmp_path / "m.npz", model, masks, model_name="bn-net", model_kwargs=model.arch
    )
    loaded = load_pruned_model(path, build_imported)
    assert loaded.model.flatten_after == "conv"
    x = torch.randn(3, 2, 8, 8)
    np.testing.assert_array_equal(forward(loaded.model, x), forward(model, x))


# ---- Unsupported graphs name the node --------------------------------------------------------


class Wrap(nn.Module):
    """fc1 -> body(h) -> fc2 (4 features throughout) for one-line unsupported bodies."""

    def __init__(self, body: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.body = body
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)
        self.fc3 = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.body(self, self.fc1(x)))


UNSUPPORTED_TORCH: list[tuple[str, Callable[..., torch.Tensor], str, str]] = [
    ("relu", lambda m, h: torch.relu(h), "relu", "TanhPoly2"),
    ("gelu", lambda m, h: F.gelu(h), "gelu", "TanhPoly2"),
    ("sigmoid", lambda m, h: h.sigmoid(), "sigmoid", "TanhPoly2"),
    ("cube", lambda m, h: h**3, "pow_1", "degree 3"),
    ("cube-product", lambda m, h: h * h * h, "mul_1", "degree 3"),
    ("residual", lambda m, h: m.fc3(h) + h, "add", "(the output of fx node 'fc3' (call_module"),
    ("residual-sub", lambda m, h: h - m.fc3(h), "sub", "residual adds are not supported"),
    ("product", lambda m, h: m.fc3(h) * h, "mul", "multiplies two different tensors"),
    ("branch", lambda m, h: m.fc3(h) - m.fc1(h), "fc1_1", "used twice"),
    ("divide-by-tensor", lambda m, h: 1 / h, "truediv", "not a polynomial"),
    ("slice", lambda m, h: h[:, :2].repeat(1, 2), "getitem", "indexing"),
    ("bad-reshape", lambda m, h: h.reshape(-1, 2).reshape(-1, 4), "reshape", "reshapes"),
]


@pytest.mark.parametrize(
    ("case", "body", "node", "message"), UNSUPPORTED_TORCH, ids=[c[0] for c in UNSUPPORTED_TORCH]
)
def test_unsupported_torch_operations_name_the_node(
    case: str, body: Callable[..., torch.Tensor], node: str, message: str
) -> None:
    with pytest.raises(UnsupportedOperationError) as info:
        import_torch(Wrap(body), (4,))
    err = info.value
    assert f"fx node '{node}'" in err.node
    assert f"fx node '{node}'" in str(err)
    assert message in str(err)
    assert SUPPORTED_OPERATIONS[0] in str(err)  # the message lists what would work
    assert isinstance(err, InputError)


UNSUPPORTED_MODULES: list[tuple[str, nn.Module, tuple[int, ...], str]] = [
    ("ReLU", nn.ReLU(), (4,), "TanhPoly2"),
    ("MaxPool2d", nn.MaxPool2d(2), (2, 4, 4), "average pooling"),
    ("dilation", nn.Conv2d(2, 2, 3, dilation=2, padding=2), (2, 6, 6), "dilation"),
    ("reflect", nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (2, 6, 6), "padding_mode"),
    ("same-even", nn.Conv2d(2, 2, 2, padding="same"), (2, 6, 6), "pads unevenly"),
    ("ceil_mode", nn.AvgPool2d(2, ceil_mode=True), (2, 5, 5), "ceil_mode"),
    ("bn-no-stats", nn.BatchNorm1d(4, track_running_stats=False), (4,), "running statistics"),
    ("Softmax", nn.Softmax(dim=1), (4,), "TanhPoly2"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    ("case", "layer", "shape", "message"),
    UNSUPPORTED_MODULES,
    ids=[c[0] for c in UNSUPPORTED_MODULES],
)
def test_unsupported_modules_name_the_node(
    case: str, layer: nn.Module, shape: tuple[int, ...], message: str
) -> None:
    first: nn.Module = nn.Linear(4, 4) if len(shape) == 1 else nn.Conv2d(shape[0], 2, 1)
    source = nn.Sequential(OrderedDict([("first", first), ("bad", layer), ("flat", nn.Flatten())]))
    with pytest.raises(UnsupportedOperationError) as info:
        import_torch(source, shape)
    assert "fx node 'bad'" in str(info.value) and "'bad'" in info.value.node
    assert message in str(info.value)


def test_unsupported_error_is_a_compile_error() -> None:
    core = pytest.importorskip("fheprune._core", reason="the C++ engine is not built")
    with pytest.raises(core.CompileError):
        import_torch(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), (3,))


def test_several_inputs_or_outputs_are_refused() -> None:
    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * 2 + self.fc(y)

    class TwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.fc(x)
            return h, h * h

    with pytest.raises(UnsupportedOperationError, match=r"takes 2 inputs \(x, y\)"):
        import_torch(TwoIn(), (3,))
    with pytest.raises(UnsupportedOperationError, match=r"fx node 'output'.*several outputs"):
        import_torch(TwoOut(), (3,))


def test_data_dependent_control_flow_is_untraceable() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            if h.sum() > 0:
                return h
            return h * h

    with pytest.raises(UntraceableModelError, match="cannot be used as inputs to control flow"):
        import_torch(Branchy(), (3,))


def test_wrong_input_shape_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"is input_shape=\(5,\) right"):
        import_torch(seeded(PolyMLP), (5,))
    with pytest.raises(InputError, match="positive"):
        import_torch(seeded(PolyMLP), (0,))


def _onnx_case(name: str) -> Any:
    """Hand-built ONNX graphs, one unsupported feature each."""
    w = np.ones((4, 2, 3, 3))
    fc = np.ones((4, 4))
    if name == "relu":
        nodes = [
            helper.make_node("Gemm", ["x", "fc"], ["h"], name="fc1", transB=1),
            helper.make_node("Relu", ["h"], ["y"], name="act"),
        ]
        return _graph_model(nodes, {"fc": fc}, ["n", 4], ["n", 4])
    if name == "residual":
        nodes = [
            helper.make_node("Gemm", ["x", "fc"], ["h"], name="fc1", transB=1),
            helper.make_node("Gemm", ["h", "fc"], ["g"], name="fc2", transB=1),
            helper.make_node("Add", ["g", "h"], ["y"], name="skip"),
        ]
        return _graph_model(nodes, {"fc": fc}, ["n", 4], ["n", 4])
    if name == "matmul-two-tensors":
        nodes = [
            helper.make_node("Gemm", ["x", "fc"], ["h"], name="fc1", transB=1),
            helper.make_node("MatMul", ["h", "h"], ["y"], name="gram"),
        ]
        return _graph_model(nodes, {"fc": fc}, ["n", 4], ["n", 4])
    if name == "two-inputs":
        nodes = [helper.make_node("Add", ["x", "z"], ["y"], name="join")]
        return _graph_model(nodes, {}, ["n", 4], ["n", 4], inputs=["x", "z"])
    if name == "two-outputs":
        nodes = [
            helper.make_node("Gemm", ["x", "fc"], ["y"], name="fc1", transB=1),
            helper.make_node("Neg", ["y"], ["z"], name="neg"),
        ]
        return _graph_model(nodes, {"fc": fc}, ["n", 4], ["n", 4], outputs=["y", "z"])
    conv_attrs: dict[str, Any] = {"pads": [1, 1, 1, 1]}
    pool_attrs: dict[str, Any] = {"kernel_shape": [2, 2], "strides": [2, 2]}
    pool = "AveragePool"
    if name == "asymmetric-pads":
        conv_attrs = {"pads": [0, 0, 1, 1]}
    elif name == "dilations":
        conv_attrs = {"dilations": [2, 2], "pads": [2, 2, 2, 2]}
    elif name == "ceil-mode":
        pool_attrs["ceil_mode"] = 1
    elif name == "maxpool":
        pool = "MaxPool"
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", **conv_attrs),
        helper.make_node(pool, ["c"], ["y"], name="pool", **pool_attrs),
    ]
    return _graph_model(nodes, {"w": w}, [1, 2, 6, 6], [1, 4, "h", "w"])


UNSUPPORTED_ONNX = [
    ("relu", "ONNX node 'act' (Relu)", "TanhPoly2"),
    ("residual", "ONNX node 'skip' (Add)", "residual adds are not supported"),
    ("matmul-two-tensors", "ONNX node 'gram' (MatMul)", "constant weight"),
    ("two-inputs", "ONNX graph", "2 input(s)"),
    ("two-outputs", "ONNX graph", "2 output(s)"),
    ("asymmetric-pads", "ONNX node 'conv' (Conv)", "pads asymmetrically"),
    ("dilations", "ONNX node 'conv' (Conv)", "dilation 1 only"),
    ("ceil-mode", "ONNX node 'pool' (AveragePool)", "ceil_mode"),
    ("maxpool", "ONNX node 'pool' (MaxPool)", "average pooling"),
]


@needs_onnx
@pytest.mark.parametrize(
    ("case", "node", "message"), UNSUPPORTED_ONNX, ids=[c[0] for c in UNSUPPORTED_ONNX]
)
def test_unsupported_onnx_graphs_name_the_node(case: str, node: str, message: str) -> None:
    with pytest.raises(UnsupportedOperationError) as info:
        import_onnx(_onnx_case(case))
    assert info.value.node.startswith(node)
    assert message in str(info.value) and "Supported operations" in str(info.value)


# ---- Files and dispatch ---------------------------------------------------------------------


@needs_onnx
def test_import_model_dispatch(tmp_path: Path) -> None:
    from fheprune.training import save_model

    zoo = build_model("cnn", "mnist", seed=0, channels=(4,)).eval()
    # A module: its own input_shape is used when none is given.
    imported = import_model(zoo)
    assert imported.input_shape == (1, 28, 28)
    with pytest.raises(InputError, match="pass input_shape"):
        import_model(seeded(PolyMLP))
    assert import_model(seeded(PolyMLP), (20,)).input_shape == (20,)
    # An ONNX path and an onnx.ModelProto.
    path = tmp_path / "mlp.onnx"
    path.write_bytes(onnx_bytes(seeded(PolyMLP), torch.randn(1, 20)))
    assert isinstance(import_model(path), HEModel)
    assert isinstance(import_model(onnx.load(path)), HEModel)
    # The project's own model file comes back as the zoo model.
    saved = save_model(zoo, tmp_path / "cnn.pt")
    loaded = import_model(saved, name="renamed")
    assert type(loaded).__name__ == "CNNClassifier" and loaded.model_name == "renamed"
    x = torch.rand(2, 1, 28, 28)
    np.testing.assert_array_equal(forward(loaded, x), forward(zoo, x))


def test_whole_module_files_need_allow_pickle(tmp_path: Path) -> None:
    source = nn.Sequential(nn.Linear(3, 4), TrainablePoly(0.2, 1.0, 0.1), nn.Linear(4, 2)).eval()
    path = tmp_path / "whole.pt"
    torch.save(source, path)
    with pytest.raises(ModelFileError, match="allow_pickle=True"):
        import_model(path, (3,))
    model = import_model(path, (3,), allow_pickle=True)
    assert_same(model, source, torch.randn(2, 3))


@pytest.mark.parametrize("suffix", [pytest.param(".onnx", marks=needs_onnx), ".pt"])
def test_missing_and_corrupt_files(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(MissingFileError):
        import_model(tmp_path / f"absent{suffix}")
    bad = tmp_path / f"corrupt{suffix}"
    bad.write_bytes(b"\x08\x96\x01 this is not a model \xff\xfe" * 7)
    with pytest.raises(ModelFileError) as info:
        import_model(bad, (3,))
    assert str(bad) in str(info.value) and isinstance(info.value, InputError)
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError):
        import_model(empty, (3,))


def test_state_dict_files_and_bad_sources(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(seeded(PolyMLP).state_dict(), path)
    with pytest.raises(ModelFileError, match="state_dict"):
        import_model(path, (20,))
    if onnx is not None:
        with pytest.raises(MissingFileError):
            import_onnx(tmp_path / "absent.onnx")
    with pytest.raises(TypeError):
        import_model(42)  # type: ignore[arg-type]
