"""HE-friendly models: polynomial activations and the model zoo (needs torch)."""

from .activations import (
    ACTIVATIONS,
    PolyActivation,
    Square,
    TanhPoly2,
    TrainablePoly,
    fit_tanh_poly2,
    make_activation,
)
from .zoo import (
    DATASET_SHAPES,
    MODEL_NAMES,
    VGG5,
    AutoEncoder,
    CNNClassifier,
    HEFNet,
    HEModel,
    LeNetLike,
    MLPClassifier,
    Task,
    build_model,
    model_defaults,
    normalize_dataset,
)

__all__ = [
    "ACTIVATIONS",
    "DATASET_SHAPES",
    "MODEL_NAMES",
    "VGG5",
    "AutoEncoder",
    "CNNClassifier",
    "HEFNet",
    "HEModel",
    "LeNetLike",
    "MLPClassifier",
    "PolyActivation",
    "Square",
    "TanhPoly2",
    "Task",
    "TrainablePoly",
    "build_model",
    "fit_tanh_poly2",
    "make_activation",
    "model_defaults",
    "normalize_dataset",
]
