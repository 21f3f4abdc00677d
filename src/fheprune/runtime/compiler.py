"""Compile a (pruned, permuted) PyTorch model into a packed CKKS program.

The pipeline reads like the method:

1. **lower**: walk the model in forward order into a chain of dense linear layers and
   polynomial activations (anything else is a ``CompileError`` naming the layer and the
   supported list);
2. **fold**: make every activation a bare square by moving its constants into the
   neighbouring linear layers: ``a*x^2 + b*x + c = a*(x + b/2a)^2 + (c - b^2/4a)``, so the
   shift joins the previous bias and ``a`` and the constant join the next layer; an affine
   activation (``a = 0``) disappears into the next layer entirely. One level per activation;
3. **choose parameters** (dry run): the program's depth and slot needs pick the smallest
   secure ring (:mod:`fheprune.runtime.params`), reported before any key exists;
4. **pack**: the C++ ``Program`` cuts every weight into the layout's units (tiles, or
   diagonals) and keeps only the non-zero ones; its rotation steps are the exact Galois key set.

The client-side permutations from HE-PEx's co-permutation travel with the compiled model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fheprune import _core
from fheprune.ckks.presets import BootstrapPreset
from fheprune.models.activations import PolyActivation

from .params import ParameterChoice, choose_bootstrappable, choose_parameters

__all__ = [
    "SUPPORTED_LAYERS",
    "CompileError",
    "CompiledModel",
    "LayoutName",
    "LinearStep",
    "SquareStep",
    "compile_model",
    "fold_activations",
    "lower_model",
]

log = logging.getLogger(__name__)

CompileError = _core.CompileError
LayoutName = Literal["tile", "diagonal", "map"]
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

SUPPORTED_LAYERS = (
    "nn.Linear",
    "nn.Conv2d and nn.AvgPool2d (layout='map')",
    "nn.Flatten (before the first linear layer)",
    "nn.Identity",
    "polynomial activations (Square, TanhPoly2, TrainablePoly: a*x^2 + b*x + c)",
)


@dataclass
class LinearStep:
    name: str
    weight: FloatArray  # [out, in]
    bias: FloatArray  # [out]


@dataclass
class SquareStep:
    name: str


@dataclass
class _PolyStep:
    name: str
    a: float
    b: float
    c: float


Step = LinearStep | SquareStep


def _unsupported(name: str, module: nn.Module) -> CompileError:
    return CompileError(
        f"layer '{name}' ({type(module).__name__}) is not supported by the packed runtime; "
        f"supported: {', '.join(SUPPORTED_LAYERS)}"
    )


def lower_model(model: nn.Module) -> list[LinearStep | _PolyStep]:
    """The model's forward chain as dense linear layers and polynomial activations."""
    steps: list[LinearStep | _PolyStep] = []
    children = list(model.named_children()) if isinstance(model, nn.Sequential) else []
    if not children:
        raise CompileError(
            f"the compiler takes an nn.Sequential chain of layers, got {type(model).__name__}"
        )
    for name, module in children:
        if isinstance(module, nn.Linear):
            w = module.weight.detach().to(torch.float64).cpu().numpy()
            b = (
                module.bias.detach().to(torch.float64).cpu().numpy()
                if module.bias is not None
                else np.zeros(w.shape[0])
            )
            steps.append(LinearStep(name, np.ascontiguousarray(w), np.ascontiguousarray(b)))
        elif isinstance(module, PolyActivation):
            pa, pb, pc = module.coefficients()
            steps.append(_PolyStep(name, float(pa), float(pb), float(pc)))
        elif isinstance(module, nn.Identity):
            continue
        elif isinstance(module, nn.Flatten):
            if any(isinstance(s, LinearStep) for s in steps):
                raise _unsupported(name, module)
        else:
            raise _unsupported(name, module)
    if not any(isinstance(s, LinearStep) for s in steps):
        raise CompileError("the model has no linear layer to compile")
    return steps


def fold_activations(steps: Sequence[LinearStep | _PolyStep]) -> list[Step]:
    """Fold each activation's constants into its neighbours; activations become bare squares."""
    out: list[Step] = []
    pending: tuple[float, float] | None = None  # (scale, constant) for the next linear layer
    for step in steps:
        if isinstance(step, LinearStep):
            w, b = step.weight.copy(), step.bias.copy()
            if pending is not None:
                scale, const = pending
                b = b + const * w.sum(axis=1)
                w = w * scale
                pending = None
            out.append(LinearStep(step.name, w, b))
            continue
        if pending is not None:
            raise CompileError(
                f"activation '{step.name}' follows another activation; put a linear layer between"
            )
        prev = out[-1] if out else None
        if step.a == 0.0:
            # Affine: x -> b*x + c, nothing to evaluate under encryption.
            pending = (step.b, step.c)
            continue
        if not isinstance(prev, LinearStep):
            raise CompileError(
                f"activation '{step.name}' has no linear layer before it to absorb its shift"
            )
        prev.bias = np.asarray(prev.bias + step.b / (2.0 * step.a), dtype=np.float64)
        out.append(SquareStep(step.name))
        pending = (step.a, step.c - step.b * step.b / (4.0 * step.a))
    if pending is not None:
        scale, const = pending
        last = out[-1]
        if isinstance(last, SquareStep):
            if (scale, const) != (1.0, 0.0):
                raise CompileError(
                    "the model ends with a polynomial activation other than x^2; its constants "
                    "need a linear layer after it"
                )
        else:
            last.weight = last.weight * scale
            last.bias = last.bias * scale + const
    return out


@dataclass
class CompiledModel:
    """A program plus everything the client needs around it."""

    program: Any  # fheprune._core.Program
    choice: ParameterChoice
    layout: LayoutName
    tile: tuple[int, int] | None
    input_perm: IntArray | None = None
    output_perm: IntArray | None = None
    steps: list[Step] = field(default_factory=list)
    map_spec: Any = None  # conv_lowering.MapProgramSpec (layout "map")

    @property
    def parameters(self) -> Any:
        return self.program.parameters

    def permute_inputs(self, x: FloatArray) -> FloatArray:
        """Client side: the permuted model's inputs (``x[:, input_perm]``)."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        return x if self.input_perm is None else np.ascontiguousarray(x[:, self.input_perm])

    def unpermute_outputs(self, y: FloatArray) -> FloatArray:
        """Client side: the original model's outputs from the permuted model's."""
        if self.output_perm is None:
            return y
        return np.ascontiguousarray(y[:, np.argsort(self.output_perm)])

    def plaintext_forward(self, x: FloatArray) -> FloatArray:
        """The folded chain in float64 numpy (what the encrypted program computes)."""
        if self.map_spec is not None:
            from .conv_lowering import simulate

            spec = self.map_spec
            images = np.asarray(x, dtype=np.float64).reshape(
                -1, spec.input.channels, spec.input.height, spec.input.width
            )
            return np.asarray(spec.unpack(simulate(spec, spec.pack(images))))
        h = self.permute_inputs(x)
        for step in self.steps:
            h = h @ step.weight.T + step.bias if isinstance(step, LinearStep) else h * h
        return self.unpermute_outputs(h)


def _build_program(
    steps: Sequence[Step],
    params: Any,
    layout: LayoutName,
    tile: tuple[int, int] | None,
    in_features: int,
) -> Any:
    if layout == "tile":
        assert tile is not None
        t1, t2 = tile
        slots = params.poly_degree // 2
        if slots % (t1 * t2):
            raise CompileError(
                f"a {t1}x{t2} tile does not divide {slots} slots; use power-of-two tile sides "
                f"with t1*t2 <= {slots}"
            )
        program = _core.Program.tile(params, t2, t1, slots // (t1 * t2), in_features)
    else:
        program = _core.Program.diagonal(params, in_features)
    for step in steps:
        if isinstance(step, LinearStep):
            program.add_linear(step.name, step.weight, step.bias)
        else:
            program.add_square(step.name)
    return program


def _layer_levels(steps: Sequence[Step], layout: LayoutName) -> list[int]:
    """Levels of each layer before parameters exist: the C++ program's own count."""
    kinds = ["linear" if isinstance(step, LinearStep) else "square" for step in steps]
    return [int(v) for v in _core.layer_levels(layout, kinds)]


def _parameter_choice(
    levels: int,
    min_slots: int,
    parameters: Any | None,
    scale_bits: int | None,
    poly_degree: int | None,
    layer_levels: Sequence[int] = (),
    bootstrap: bool | BootstrapPreset = False,
) -> ParameterChoice:
    """The dry run: choose parameters for ``levels`` and ``min_slots``, or check given ones.
    With ``bootstrap``, a chain too short for the model is no error: the choice carries the
    bootstrappable preset (given, or the dry run's) its refreshes are placed with."""
    if isinstance(bootstrap, BootstrapPreset):
        if parameters is not None:
            raise CompileError("pass either parameters or a bootstrap preset, not both")
        choice = ParameterChoice(
            bootstrap.parameters,
            levels,
            f"needs {levels} levels; bootstrapping with {bootstrap.levels_left} levels left per "
            f"refresh (N={bootstrap.parameters.poly_degree}, log2 QP = {bootstrap.log_qp})",
            bootstrap,
        )
    elif parameters is None:
        try:
            choice = choose_parameters(
                levels, min_slots, scale_bits=scale_bits, poly_degree=poly_degree
            )
        except CompileError:
            if not bootstrap:
                raise
            b = choose_bootstrappable(layer_levels)
            choice = ParameterChoice(b.preset.parameters, levels, b.message, b.preset)
    else:
        have = len(parameters.chain_bits) - 1
        if have < levels:
            raise _core.LevelError(
                f"the model needs {levels} levels; the given parameters give {have} "
                f"(chain of {len(parameters.chain_bits)} primes). Pass parameters=None to "
                "choose them automatically"
            )
        choice = ParameterChoice(parameters, levels, f"needs {levels} levels; using {parameters}")
    log.info("dry run: %s", choice.message)
    return choice


def compile_model(
    model: nn.Module,
    *,
    layout: LayoutName = "tile",
    tile: tuple[int, int] | None = (16, 16),
    parameters: Any | None = None,
    input_perm: Sequence[int] | IntArray | None = None,
    output_perm: Sequence[int] | IntArray | None = None,
    scale_bits: int | None = None,
    poly_degree: int | None = None,
    client_shifts: bool = False,
    compact: bool = True,
    bootstrap: bool | BootstrapPreset = False,
) -> CompiledModel:
    """Compile ``model`` for ``layout``.

    ``tile`` = (t1, t2): weight tiles of t1 output rows x t2 input columns (the pruning's
    :class:`~fheprune.layouts.TileShape`); the ciphertext tile is [t2, t1, slots / (t1*t2)]
    so the first layer's tiles are exactly the pruning's. ``parameters`` = None chooses them
    automatically (the dry-run report is logged and kept in ``choice.message``).
    ``client_shifts`` (map layout): the client sends one pre-rotated copy of its image per
    kernel position of the first convolution, which then needs no rotation (more upload, less
    server time; see :func:`fheprune.runtime.conv_lowering.lower_conv_model`). ``compact``
    (map layout): compact maps after the first pool (sub-maps, see
    :mod:`fheprune.layouts.channels`); ``False`` keeps every map dilated in place.
    ``bootstrap`` (tile and diagonal layouts): ``True`` lets a model deeper than any chain
    run with refreshes on the dry run's bootstrappable preset
    (:func:`~fheprune.runtime.params.choose_bootstrappable`); a ``BootstrapPreset`` places them
    on that preset (``parameters`` must then be None). See docs/runtime.md, "Refreshes".
    """
    if layout not in ("tile", "diagonal", "map"):
        raise CompileError(f"unknown layout {layout!r}; choose 'tile', 'diagonal' or 'map'")
    if layout == "map":
        if bootstrap is not False:
            raise CompileError("bootstrap is supported in the tile and diagonal layouts")
        if input_perm is not None or output_perm is not None:
            raise CompileError("the map layout takes no input / output permutations")
        return _compile_map(model, parameters, scale_bits, poly_degree, client_shifts, compact)
    if client_shifts:
        raise CompileError("client_shifts is an option of the map layout only")
    if not compact:
        raise CompileError("compact is an option of the map layout only")
    if layout == "tile":
        if tile is None or len(tile) != 2:
            raise CompileError("the tile layout needs tile=(t1, t2)")
        t1, t2 = int(tile[0]), int(tile[1])
        if t1 < 1 or t2 < 1 or t1 & (t1 - 1) or t2 & (t2 - 1):
            raise CompileError(f"tile sides must be powers of two, got {t1}x{t2}")
        tile = (t1, t2)
    steps = fold_activations(lower_model(model))
    first = next(s for s in steps if isinstance(s, LinearStep))
    in_features = int(first.weight.shape[1])
    layer_levels = _layer_levels(steps, layout)
    levels = sum(layer_levels)
    if layout == "tile":
        assert tile is not None
        min_slots = tile[0] * tile[1]
    else:
        widths = [in_features] + [
            int(s.weight.shape[0]) for s in steps if isinstance(s, LinearStep)
        ]
        min_slots = max(1 << (w - 1).bit_length() for w in widths)
    choice = _parameter_choice(
        levels, min_slots, parameters, scale_bits, poly_degree, layer_levels, bootstrap
    )
    program = _build_program(steps, choice.parameters, layout, tile, in_features)
    if program.depth != levels:  # the C++ schedule is the truth; keep the two in step
        raise AssertionError(f"level schedule mismatch: {program.depth} != {levels}")
    if choice.bootstrap is not None:
        placed = program.place_refreshes(choice.bootstrap.config)
        log.info("placed %d refresh(es); inputs at level %d", placed, program.input_level)

    def perm(p: Sequence[int] | IntArray | None, n: int, what: str) -> IntArray | None:
        if p is None:
            return None
        arr = np.asarray(p, dtype=np.int64)
        if arr.shape != (n,) or not np.array_equal(np.sort(arr), np.arange(n)):
            raise CompileError(f"{what} must be a permutation of 0..{n - 1}")
        return arr

    return CompiledModel(
        program=program,
        choice=choice,
        layout=layout,
        tile=tile if layout == "tile" else None,
        input_perm=perm(input_perm, in_features, "input_perm"),
        output_perm=perm(output_perm, int(program.out_features), "output_perm"),
        steps=list(steps),
    )


def _map_levels(model: nn.Module) -> int:
    """Depth of a conv chain after folding, before it is lowered (the dry run needs it to pick
    the ring the lowering then runs on): Conv2d / Linear are linear layers, an activation that
    is not affine a square, pools rotate sums; the program's rule prices each."""
    kinds = []
    for m in model.children():
        if isinstance(m, nn.Conv2d | nn.Linear):
            kinds.append("linear")
        elif isinstance(m, PolyActivation) and float(m.coefficients()[0]) != 0.0:
            kinds.append("square")
        elif isinstance(m, nn.AvgPool2d):
            kinds.append("rotate_sum")
    return int(sum(_core.layer_levels("map", kinds)))


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    shape = getattr(model, "input_shape", None)
    if not isinstance(shape, tuple) or len(shape) != 3:
        raise CompileError(
            "the map layout needs the model's input shape (C, H, W) as model.input_shape"
        )
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _map_choice(
    model: nn.Module,
    levels: int,
    parameters: Any | None,
    scale_bits: int | None,
    poly_degree: int | None,
    compact: bool,
) -> ParameterChoice:
    """The map layout's dry run: the ring must hold the model's levels and its largest
    channel block."""
    from fheprune.layouts.channels import LayoutError, block_slots

    try:
        min_slots = block_slots(model, _input_shape(model), compact=compact)
    except LayoutError as exc:
        raise CompileError(str(exc)) from exc
    return _parameter_choice(levels, min_slots, parameters, scale_bits, poly_degree)


def map_slots(model: nn.Module, compact: bool = True) -> int:
    """The slots :func:`compile_model` gives a conv network on automatic parameters (the map
    layout), before lowering it: what pruning sizes its units by."""
    choice = _map_choice(model, _map_levels(model), None, None, None, compact)
    return int(choice.parameters.poly_degree) // 2


def _compile_map(
    model: nn.Module,
    parameters: Any | None,
    scale_bits: int | None,
    poly_degree: int | None,
    client_shifts: bool = False,
    compact: bool = True,
) -> CompiledModel:
    """Conv networks (single sample, several ciphertexts): the multi-channel layout of
    :mod:`fheprune.layouts.channels`, lowered by :mod:`fheprune.runtime.conv_lowering`."""
    from fheprune.layouts.channels import LayoutError

    from .conv_lowering import build_program, lower_conv_model

    shape = _input_shape(model)
    levels = _map_levels(model)
    choice = _map_choice(model, levels, parameters, scale_bits, poly_degree, compact)
    slots = int(choice.parameters.poly_degree) // 2
    try:
        spec = lower_conv_model(model, slots, shape, client_shifts=client_shifts, compact=compact)
    except LayoutError as exc:
        raise CompileError(str(exc)) from exc
    # The lowering is the truth. It can only need fewer levels than counted (an activation
    # that folds to a constant costs none); the parameters then have a level to spare.
    if spec.levels > levels:
        raise CompileError(
            f"the lowered program needs {spec.levels} levels, more than the {levels} counted "
            "from the model; please report this model"
        )
    program = build_program(spec, choice.parameters)
    return CompiledModel(program=program, choice=choice, layout="map", tile=None, map_spec=spec)
