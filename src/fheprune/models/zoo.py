"""HE-friendly model zoo: HE-PEx's four networks and SpENCNN's LeNet-like, HEFNet and VGG-5.

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

from fheprune.errors import InputError, InputTypeError

from .activations import make_activation

__all__ = [
    "DATASET_SHAPES",
    "MODEL_NAMES",
    "VGG5",
    "AutoEncoder",
    "CNNClassifier",
    "HEFNet",
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
        raise InputError(
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
            raise InputError("an autoencoder needs at least one hidden layer")
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
            raise InputError("a CNN needs at least one convolution width in `channels`")
        if min(in_channels, image_size, kernel, classes, pool, *channels) < 1 or padding < 0:
            raise InputError("channels, sizes, kernel, classes and pool must be positive")
        act = _activation_name(activation)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        size, prev = image_size, in_channels
        for i, width in enumerate(channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(prev, width, kernel, padding=padding)
            layers[f"act{i}"] = make_activation(act)
            layers[f"pool{i}"] = nn.AvgPool2d(pool)
            size = _conv_out(size, kernel, padding) // pool
            if size < 1:
                raise InputError(
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
            raise InputError("channels, sizes, kernel, classes and groups must be positive")
        if c1 % conv2_groups or c2 % conv2_groups:
            raise InputError(
                f"conv2_groups={conv2_groups} must divide both conv widths {c1} and {c2}"
            )
        act = _activation_name(activation)
        pad1 = kernel // 2
        size = _conv_out(image_size, kernel, pad1) // 2
        size = _conv_out(size, kernel, 0)
        if size < 1:
            raise InputError(f"image_size {image_size} is too small for LeNetLike")
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


def _check_groups(groups: int, widths: Sequence[int]) -> None:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise InputError(f"groups must be a positive integer, got {groups!r}")
    bad = [w for w in widths if w % groups]
    if bad:
        raise InputError(f"groups={groups} must divide every grouped conv width, not {bad}")


def _conv_chain(
    in_channels: int,
    image_size: int,
    channels: Sequence[int],
    pools: Sequence[bool],
    kernel: int,
    groups: int,
    activation: str,
) -> tuple[OrderedDict[str, nn.Module], int]:
    """conv_i -> act_i [-> pool_i] per width; padding ``kernel // 2`` on conv1 only (the
    multi-channel layout pads the client's input and nothing else), ``groups`` on every conv
    but the first (its input is the image). Returns the layers and the last map's side."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    size, prev = image_size, in_channels
    for i, (width, pool) in enumerate(zip(channels, pools, strict=True), start=1):
        pad = kernel // 2 if i == 1 else 0
        g = 1 if i == 1 else groups
        layers[f"conv{i}"] = nn.Conv2d(prev, width, kernel, padding=pad, groups=g)
        layers[f"act{i}"] = make_activation(activation)
        size = _conv_out(size, kernel, pad)
        if pool:
            layers[f"pool{i}"] = nn.AvgPool2d(2)
            size //= 2
        if size < 1:
            raise InputError(f"image_size {image_size} is too small for {len(channels)} convs")
        prev = width
    return layers, size


class HEFNet(HEModel):
    """SpENCNN's HEFNet (Table 2: conv 3->64, 64->128, 128->256, 256->256, all 3x3; one FC;
    4 activations), adapted to the multi-channel layout (registry name "hefnet-mnist").

    MNIST: conv1 1->64 (3x3, padding 1: 28) -> act1 -> pool1 (avg 2: 14) -> conv2 64->128
    (12) -> act2 -> pool2 (6) -> conv3 128->256 (4) -> act3 -> conv4 256->256 (2) -> act4 ->
    pool4 (global average) -> flatten -> fc1 256->classes. Trainable ``a*x^2+b*x+c``
    activations, average pooling only, padding on conv1 only and global pooling before the FC
    (the paper's FC1 1024x10 reads a 2x2x256 map; ours reads the pooled 256 channels) are
    our adaptations so that :func:`fheprune.layouts.channels.plan_layout` accepts the network.
    ``groups`` > 1 makes conv2..conv4 HE-group convolutions (SpENCNN Sec. 3.1).
    """

    task: Task = "classification"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        classes: int = 10,
        activation: str = "poly",
        channels: Sequence[int] = (64, 128, 256, 256),
        kernel: int = 3,
        groups: int = 1,
    ) -> None:
        widths = tuple(int(c) for c in channels)
        if len(widths) != 4 or min(in_channels, image_size, classes, kernel, *widths) < 1:
            raise InputError("HEFNet takes four positive conv widths and positive sizes")
        _check_groups(groups, widths)
        act = _activation_name(activation)
        layers, size = _conv_chain(
            in_channels, image_size, widths, (True, True, False, False), kernel, groups, act
        )
        layers["pool4"] = nn.AvgPool2d(size)
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(widths[-1], classes)
        super().__init__(layers, (in_channels, image_size, image_size))
        self.flatten_after = "conv4"
        self.flatten_shape = (widths[-1], 1, 1)
        self.arch = {
            "in_channels": in_channels,
            "image_size": image_size,
            "classes": classes,
            "activation": act,
            "channels": widths,
            "kernel": kernel,
            "groups": groups,
        }


class VGG5(HEModel):
    """SpENCNN's VGG-5 (Table 2: conv 3->64, 64->128, 128->128, all 3x3; three FC; 5
    activations), adapted to the multi-channel layout (registry name "vgg5-mnist").

    MNIST: conv1 1->64 (3x3, padding 1: 28) -> act1 -> pool1 (avg 2: 14) -> conv2 64->128
    (12) -> act2 -> pool2 (6) -> conv3 128->128 (4) -> act3 -> pool3 (global average) ->
    flatten -> fc1 128->h1 -> act4 -> fc2 h1->h2 -> act5 -> fc3 h2->classes. The paper's FC1
    is 8192x4096 (an 8x8x128 map of CIFAR-10); after global pooling our FC input is 128, and
    the hidden widths default to (256, 256) (our choice, a CPU-trainable size; the layout
    holds up to ``slots`` outputs per FC). Trainable ``a*x^2+b*x+c`` activations, average
    pooling only, padding on conv1 only. ``groups`` > 1 makes conv2 and conv3 HE-group
    convolutions (SpENCNN Sec. 3.1).
    """

    task: Task = "classification"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        classes: int = 10,
        activation: str = "poly",
        channels: Sequence[int] = (64, 128, 128),
        hidden: Sequence[int] = (256, 256),
        kernel: int = 3,
        groups: int = 1,
    ) -> None:
        widths = tuple(int(c) for c in channels)
        fc = tuple(int(h) for h in hidden)
        if len(widths) != 3 or len(fc) != 2:
            raise InputError("VGG5 takes three conv widths and two hidden FC widths")
        if min(in_channels, image_size, classes, kernel, *widths, *fc) < 1:
            raise InputError("channels, widths, sizes, kernel and classes must be positive")
        _check_groups(groups, widths)
        act = _activation_name(activation)
        layers, size = _conv_chain(
            in_channels, image_size, widths, (True, True, False), kernel, groups, act
        )
        layers["pool3"] = nn.AvgPool2d(size)
        layers["flatten"] = nn.Flatten()
        for name, module in _fc_stack(widths[-1], fc, classes, act).items():
            # fc1, act1, fc2, act2, fc3 -> activations continue the conv numbering (act4, act5)
            layers[f"act{int(name[3:]) + 3}" if name.startswith("act") else name] = module
        super().__init__(layers, (in_channels, image_size, image_size))
        self.flatten_after = "conv3"
        self.flatten_shape = (widths[-1], 1, 1)
        self.arch = {
            "in_channels": in_channels,
            "image_size": image_size,
            "classes": classes,
            "activation": act,
            "channels": widths,
            "hidden": fc,
            "kernel": kernel,
            "groups": groups,
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

MODEL_NAMES: tuple[str, ...] = (
    "mlp",
    "ae-compressor",
    "ae-denoiser",
    "cnn",
    "lenet",
    "hefnet-mnist",
    "vgg5-mnist",
)

_MODEL_CLASSES: dict[str, Callable[..., HEModel]] = {
    "mlp": MLPClassifier,
    "ae-compressor": AutoEncoder,
    "ae-denoiser": AutoEncoder,
    "cnn": CNNClassifier,
    "lenet": LeNetLike,
    "hefnet-mnist": HEFNet,
    "vgg5-mnist": VGG5,
}


def normalize_dataset(dataset: str) -> str:
    """Canonical dataset name ("mnist", "cifar10", "svhn"); raises ValueError otherwise."""
    key = dataset.lower()
    key = _DATASET_ALIASES.get(key, key)
    if key not in DATASET_SHAPES:
        raise InputError(
            f"unknown dataset {dataset!r}; supported: {', '.join(sorted(DATASET_SHAPES))}"
        )
    return key


def _normalize_model(name: str) -> str:
    key = name.lower()
    if key not in _MODEL_CLASSES:
        raise InputError(f"unknown model {name!r}; supported: {', '.join(MODEL_NAMES)}")
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
    # SpENCNN defines LeNet-like for MNIST only (HEFNet / VGG-5 for CIFAR-10; the "-mnist"
    # variants are our MNIST adaptations): other datasets just change the input shape.
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
        raise InputTypeError(f"bad arguments for model {key!r}: {exc}") from exc
    model.model_name = key
    model.dataset = ds
    return model
