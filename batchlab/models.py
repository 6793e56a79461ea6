"""Model registry: the networks of the reproduced studies, plus any user model.

A user model is given as `package.module:factory`; factory(classes) (or factory() if it takes no
argument) must return a torch.nn.Module mapping (N, 1, 28, 28) float images to (N, classes) logits.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from torch import nn

from .layers import Dropout, Linear, MaxPool2d


# The studies write convolution → ReLU → max-pool. ReLU is monotonic, so max-pooling first and
# applying ReLU to the pooled map gives the same outputs and the same gradients, with ReLU (and its
# backward) touching a quarter of the elements: on the CPU these element-wise passes over large
# activations cost as much as the convolutions (docs/performance.md). Parameter names are
# unchanged, so weights saved with either order load into the other. tests/test_models.py checks it.


class CroppedInput(nn.Sequential):
    """nn.Sequential that first crops its (N, C, H, W) input to the top-left `size`×`size`
    pixels: the rows and columns beyond never reach the output of a network of 'valid'
    convolutions and flooring max-pools, so computing them is wasted work. Parameter names are
    those of nn.Sequential."""

    def __init__(self, size: int, *layers: nn.Module):
        super().__init__(*layers)
        self.size = size

    def forward(self, images):
        return super().forward(images[..., :self.size, :self.size])


def seed_cnn(classes: int = 10) -> nn.Module:
    """The TensorFlow batch-size study's CNN: 550,886 parameters for 10 classes, 'valid' padding
    (28 → conv4 25 → pool 12 → conv4 9 → pool 4). The paper does not give the dropout rate;
    0.5 is our documented choice. Pooling before ReLU: see above.

    Working back from the 4×4 map the dense layer reads: pool 2 needs 8×8, conv 4×4 needs 11×11,
    pool 2 needs 22×22, conv 4×4 needs 25×25. The last 3 rows and columns of a 28×28 image never
    reach the output (in the study's network too), so seed-cnn crops them: the same outputs and
    gradients with 23% less work in the first convolution and pooling, 21% less in the second."""
    return CroppedInput(
        25,
        nn.Conv2d(1, 32, kernel_size=4), MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=4), MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), Dropout(0.5),
        Linear(64 * 4 * 4, 500), nn.ReLU(), Dropout(0.5),
        Linear(500, classes),
    )


def keras_cnn(classes: int = 10) -> nn.Module:
    """The Keras MNIST example CNN (1,199,882 parameters for 10 classes)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3), nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3), MaxPool2d(2), nn.ReLU(), Dropout(0.25),
        nn.Flatten(), Linear(64 * 12 * 12, 128), nn.ReLU(), Dropout(0.5),
        Linear(128, classes),
    )


def mlp(classes: int = 10) -> nn.Module:
    """784-500-classes perceptron with one ReLU hidden layer."""
    return nn.Sequential(nn.Flatten(), Linear(784, 500), nn.ReLU(), Linear(500, classes))


MODELS: dict[str, Callable[[int], nn.Module]] = {"seed-cnn": seed_cnn, "keras-cnn": keras_cnn, "mlp": mlp}


class ModelError(ValueError):
    """A model name or user factory cannot be used; the message is one line for the user."""


def is_known_model(name: str) -> bool:
    return name in MODELS or ":" in name


def load_factory(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} or package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"cannot load user model {name!r}: {error}") from None
    if not callable(factory):
        raise ModelError(f"user model {name!r} is not callable")
    return factory


def build(name: str, classes: int = 10) -> nn.Module:
    factory = load_factory(name)
    takes_classes = bool(inspect.signature(factory).parameters)
    model = factory(classes) if takes_classes else factory()
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def catalogue() -> list[tuple[str, int, str]]:
    """(name, parameters for 10 classes, first line of its description) for every built-in model."""
    return [(name, parameter_count(factory(10)), (factory.__doc__ or "").strip().splitlines()[0])
            for name, factory in MODELS.items()]
