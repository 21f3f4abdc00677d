"""HE-friendly model zoo: HE-PEx's four networks and SpENCNN's LeNet-like CNN.

All models are :class:`HEModel` (an ``nn.Sequential`` with named children), so a compiler can
walk ``model.named_children()`` in forward order. Only polynomial activations, average pooling,
``nn.Linear``, ``nn.Conv2d`` and ``nn.Flatten`` appear.

Conventions shared with pruning and permutation code:

* prunable layers are the ``nn.Linear`` / ``nn.Conv2d`` children, addressed by name
  ("fc1", "conv1", ...); masks are ``dict[name, bool tensor shaped like .weight]``;
* :meth:`HEModel.neuron_chain` lists consecutive (producer, consumer) pairs sharing neurons or
  channels; for a (conv, fc) pair the flatten sits in between (``flatten_after`` names the
  conv) and channel ``k`` of the conv feeds FC inputs ``k*H*W .. (k+1)*H*W - 1`` where
  ``(C, H, W) = flatten_shape`` (``nn.Flatten`` of a channels-first tensor).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from .activations import make_activation

__all__ = [
    "DATASET_SHAPES",
    "MODEL_NAMES",
    "AutoEncoder",
    "CNNClassifier",
    "HEModel",
    "LeNetLike",
    "MLPClassifier",
    "Task",
    "build_model",
    "model_defaults",
    "normalize_dataset",
]

Task = Literal["classification", "reconstruction"]


class HEModel(nn.Sequential):
    """Base of every zoo model: a named ``nn.Sequential`` plus pruning metadata.

    Attributes:
        task: "classification" (logits out) or "reconstruction" (same shape as input out).
        input_shape: shape of one sample, without the batch axis: ``(features,)`` for FC-only
            models (inputs are flattened channels-first images), ``(C, H, W)`` for CNNs.
        flatten_after: name of the last conv layer before the flatten, or None (FC-only).
        flatten_shape: ``(C, H, W)`` of the tensor that is flattened, or None.
        arch: the constructor arguments (primitives only), enough to rebuild the model.
        model_name / dataset: registry name and dataset when built by :func:`build_model`.
    """

    task: Task = "classification"

    def __init__(self, layers: OrderedDict[str, nn.Module], input_shape: tuple[int, ...]) -> None:
        super().__init__(layers)
        self.input_shape: tuple[int, ...] = input_shape
        self.flatten_after: str | None = None
        self.flatten_shape: tuple[int, int, int] | None = None
        self.arch: dict[str, Any] = {}
        self.model_name: str | None = None
        self.dataset: str | None = None

    def prunable_modules(self) -> OrderedDict[str, nn.Linear | nn.Conv2d]:
        """Prunable layers by qualified name, in forward order."""
        found: OrderedDict[str, nn.Linear | nn.Conv2d] = OrderedDict()
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                found[name] = module
        return found

    def prunable_layers(self) -> list[str]:
        """Names of the ``nn.Linear`` / ``nn.Conv2d`` layers in forward order."""
        return list(self.prunable_modules())

    def neuron_chain(self) -> list[tuple[str, str]]:
        """Consecutive (producer, consumer) prunable pairs that share neurons / channels.

        Valid because every zoo model is a plain chain (no skips, no branches): the outputs of
        prunable layer i, after element-wise activations and per-channel pooling, are exactly
        the inputs of prunable layer i+1.
        """
        names = self.prunable_layers()
        return list(itertools.pairwise(names))


def _activation_name(activation: str) -> str:
    # Validate early so a bad name fails at construction with the list of valid ones.
    make_activation(activation)
    return activation.lower()


def _fc_stack(
    in_features: int, widths: Sequence[int], out_features: int, activation: str
) -> OrderedDict[str, nn.Module]:
    """fc1, act1, fc2, act2, ..., fc{k+1}: activations between layers, none after the last."""
    if in_features < 1 or out_features < 1 or any(w < 1 for w in widths):
        raise ValueError(
            f"layer widths must be positive, got in={in_features}, hidden={tuple(widths)}, "
            f"out={out_features}"
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    sizes = [in_features, *widths, out_features]
    for i in range(len(sizes) - 1):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if i < len(sizes) - 2:
            layers[f"act{i + 1}"] = make_activation(activation)
    return layers


class MLPClassifier(HEModel):
    """HE-PEx MLP-Classifier: FC layers with polynomial activations, logits out.

    MNIST: 784-128-10; CIFAR-10 / SVHN: 3072-256-128-10 (Table 2). Layers "fc1", "act1",
    "fc2", ...; inputs are flattened images ``[batch, in_features]``.
    """

    task: Task = "classification"

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (128,),
        classes: int = 10,
        activation: str = "tanh2",
    ) -> None:
        act = _activation_name(activation)
        super().__init__(_fc_stack(in_features, hidden, classes, act), (in_features,))
        self.arch = {
            "in_features": in_features,
            "hidden": tuple(int(w) for w in hidden),
            "classes": classes,
            "activation": act,
        }


class AutoEncoder(HEModel):
    """HE-PEx AE-Compressor and AE-Denoiser (same network; the denoiser sees noisy inputs).

    MNIST: 784-128-784; CIFAR-10 / SVHN: 3072-256-128-256-3072 (Table 2). The output layer is
    linear (no activation): the MSE target is the clean image in [0, 1], and a final
    polynomial would cost one more level under HE for no benefit. Layers "fc1", "act1", ...
    """

    task: Task = "reconstruction"

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (128,),
        activation: str = "tanh2",
    ) -> None:
        if not hidden:
            raise ValueError("an autoencoder needs at least one hidden layer")
        act = _activation_name(activation)
        super().__init__(_fc_stack(in_features, hidden, in_features, act), (in_features,))
        self.arch = {
            "in_features": in_features,
            "hidden": tuple(int(w) for w in hidden),
            "activation": act,
        }


def _conv_out(size: int, kernel: int, padding: int) -> int:
    return size + 2 * padding - kernel + 1


class CNNClassifier(HEModel):
    """HE-PEx CNN-Classifier: [conv -> x^2 -> avgpool] per width, then one FC to the classes.

    Table 2 gives only the activation (square), "32 HL input channels" for MNIST and
    {32, 64} for CIFAR-10 / SVHN. Our reading: one block per listed width, each a
    ``kernel x kernel`` convolution (stride 1, ``padding`` 0 by default), the activation, and
    a 2x2 average pooling (no max pooling, no ReLU), then flatten and a single FC layer.
    MNIST: conv1 1->32 5x5 (28->24) -> pool (12) -> fc1 4608->10.
    CIFAR-10 / SVHN: conv1 3->32 (32->28) -> pool (14) -> conv2 32->64 (10) -> pool (5)
    -> fc1 1600->10. Layers "conv1", "act1", "pool1", ..., "flatten", "fc1".
    """

    task: Task = "classification"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (32,),
        kernel: int = 5,
        classes: int = 10,
        activation: str = "square",
        padding: int = 0,
        pool: int = 2,
    ) -> None:
        if not channels:
            raise ValueError("a CNN needs at least one convolution width in `channels`")
        if min(in_channels, image_size, kernel, classes, pool, *channels) < 1 or padding < 0:
            raise ValueError("channels, sizes, kernel, classes and pool must be positive")
        act = _activation_name(activation)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        size, prev = image_size, in_channels
        for i, width in enumerate(channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(prev, width, kernel, padding=padding)
            layers[f"act{i}"] = make_activation(act)
            layers[f"pool{i}"] = nn.AvgPool2d(pool)
            size = _conv_out(size, kernel, padding) // pool
            if size < 1:
                raise ValueError(
                    f"image_size {image_size} is too small for {len(channels)} conv blocks "
                    f"(kernel {kernel}, padding {padding}, pool {pool})"
                )
            prev = width
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(prev * size * size, classes)
        super().__init__(layers, (in_channels, image_size, image_size))
        self.flatten_after = f"conv{len(channels)}"
        self.flatten_shape = (prev, size, size)
        self.arch = {
            "in_channels": in_channels,
            "image_size": image_size,
            "channels": tuple(int(c) for c in channels),
            "kernel": kernel,
            "classes": classes,
            "activation": act,
            "padding": padding,
            "pool": pool,
        }


class LeNetLike(HEModel):
    """SpENCNN's LeNet-like CNN (paper Table 2: conv 1->32 5x5, conv 32->64 5x5, FC 64->32,
    FC 32->10) with trainable ``a*x^2 + b*x + c`` activations and average pooling only.

    conv1 (5x5, padding 2: 28->28) -> act1 -> pool1 (avg 2: 14) -> conv2 (5x5: 10) -> act2
    -> pool2 (global average: 1x1, so the FC input is 64) -> flatten -> fc1 64->32 -> act3
    -> fc2 32->classes. Padding 2 on conv1 and the global pooling follow the authors' release;
    ``conv2_groups`` > 1 gives SpENCNN's HE-group convolution (``nn.Conv2d(groups=g)``).
    """

    task: Task = "classification"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        classes: int = 10,
        activation: str = "poly",
        channels: tuple[int, int] = (32, 64),
        hidden: int = 32,
        kernel: int = 5,
        conv2_groups: int = 1,
    ) -> None:
        c1, c2 = channels
        if min(in_channels, image_size, classes, c1, c2, hidden, kernel, conv2_groups) < 1:
            raise ValueError("channels, sizes, kernel, classes and groups must be positive")
        if c1 % conv2_groups or c2 % conv2_groups:
            raise ValueError(
                f"conv2_groups={conv2_groups} must divide both conv widths {c1} and {c2}"
            )
        act = _activation_name(activation)
        pad1 = kernel // 2
        size = _conv_out(image_size, kernel, pad1) // 2
        size = _conv_out(size, kernel, 0)
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for LeNetLike")
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, c1, kernel, padding=pad1)),
                ("act1", make_activation(act)),
                ("pool1", nn.AvgPool2d(2)),
                ("conv2", nn.Conv2d(c1, c2, kernel, groups=conv2_groups)),
                ("act2", make_activation(act)),
                ("pool2", nn.AvgPool2d(size)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(c2, hidden)),
                ("act3", make_activation(act)),
                ("fc2", nn.Linear(hidden, classes)),
            ]
        )
        super().__init__(layers, (in_channels, image_size, image_size))
        self.flatten_after = "conv2"
        self.flatten_shape = (c2, 1, 1)
        self.arch = {
            "in_channels": in_channels,
            "image_size": image_size,
            "classes": classes,
            "activation": act,
            "channels": (c1, c2),
            "hidden": hidden,
            "kernel": kernel,
            "conv2_groups": conv2_groups,
        }


# ---------------------------------------------------------------------------------------
# Registry

#: (channels, height/width, classes) per dataset.
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
    "svhn": (3, 32, 10),
}

_DATASET_ALIASES = {"cifar-10": "cifar10", "cifar": "cifar10"}

MODEL_NAMES: tuple[str, ...] = ("mlp", "ae-compressor", "ae-denoiser", "cnn", "lenet")

_MODEL_CLASSES: dict[str, Callable[..., HEModel]] = {
    "mlp": MLPClassifier,
    "ae-compressor": AutoEncoder,
    "ae-denoiser": AutoEncoder,
    "cnn": CNNClassifier,
    "lenet": LeNetLike,
}


def normalize_dataset(dataset: str) -> str:
    """Canonical dataset name ("mnist", "cifar10", "svhn"); raises ValueError otherwise."""
    key = dataset.lower()
    key = _DATASET_ALIASES.get(key, key)
    if key not in DATASET_SHAPES:
        raise ValueError(
            f"unknown dataset {dataset!r}; supported: {', '.join(sorted(DATASET_SHAPES))}"
        )
    return key


def _normalize_model(name: str) -> str:
    key = name.lower()
    if key not in _MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; supported: {', '.join(MODEL_NAMES)}")
    return key


def model_defaults(name: str, dataset: str = "mnist") -> dict[str, Any]:
    """Constructor arguments of model ``name`` for ``dataset`` (HE-PEx / SpENCNN Table 2)."""
    key, ds = _normalize_model(name), normalize_dataset(dataset)
    chans, size, classes = DATASET_SHAPES[ds]
    features = chans * size * size
    small = ds == "mnist"
    if key == "mlp":
        return {
            "in_features": features,
            "hidden": (128,) if small else (256, 128),
            "classes": classes,
            "activation": "tanh2",
        }
    if key in ("ae-compressor", "ae-denoiser"):
        return {
            "in_features": features,
            "hidden": (128,) if small else (256, 128, 256),
            "activation": "tanh2",
        }
    if key == "cnn":
        return {
            "in_channels": chans,
            "image_size": size,
            "channels": (32,) if small else (32, 64),
            "kernel": 5,
            "classes": classes,
            "activation": "square",
        }
    # SpENCNN defines LeNet-like for MNIST only; other datasets just change the input shape.
    return {"in_channels": chans, "image_size": size, "classes": classes, "activation": "poly"}


def build_model(
    name: str, dataset: str = "mnist", *, seed: int | None = None, **overrides: Any
) -> HEModel:
    """Build zoo model ``name`` with ``dataset``'s defaults, updated by ``overrides``.

    ``seed`` makes the initial weights reproducible without disturbing the global RNG.
    """
    key, ds = _normalize_model(name), normalize_dataset(dataset)
    kwargs = model_defaults(key, ds)
    kwargs.update(overrides)
    cls = _MODEL_CLASSES[key]
    try:
        if seed is None:
            model = cls(**kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = cls(**kwargs)
    except TypeError as exc:  # unknown override: name what is accepted
        raise TypeError(f"bad arguments for model {key!r}: {exc}") from exc
    model.model_name = key
    model.dataset = ds
    return model
