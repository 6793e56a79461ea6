"""Model registry: the networks of the reproduced studies, plus any user model.

A user model is given as `package.module:factory` or `path/to/file.py:factory`; factory(classes)
(or factory() if it takes no argument) must return a torch.nn.Module mapping (N, 1, 28, 28) float
images to (N, classes) logits. `check_output` holds every model to that before it trains.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..core.errors import ModelError
from .layers import Dropout, Linear, MaxPool2d
from .names import BUILTIN_MODELS

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
assert tuple(MODELS) == BUILTIN_MODELS, "names.py lists the built-in models for torch-free callers"


def is_file_model(module_name: str) -> bool:
    """`path/to/file.py:factory`: users hand over files, not only importable packages."""
    return module_name.endswith(".py") or "/" in module_name


def import_file(module_name: str) -> object:
    """Import a user's Python file as a module named after it. Its folder goes on sys.path, so
    worker processes (spawned, they re-import by name) find the model's classes too."""
    path = Path(module_name).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"cannot load user model: no file {module_name}")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
        raise ModelError(f"cannot load user model {module_name}: a module named {name!r} is already "
                         "imported from elsewhere; rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    sys.path.insert(0, str(path.parent))
    return module


def load_factory(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    module_name, _, attribute = name.rpartition(":")
    if not module_name or not attribute:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, package.module:factory "
                         "or path/to/file.py:factory")
    try:
        module = import_file(module_name) if is_file_model(module_name) else importlib.import_module(module_name)
        factory = getattr(module, attribute)
    except (ImportError, AttributeError, SyntaxError) as error:
        raise ModelError(f"cannot load user model {name!r}: {type(error).__name__}: {error}") from None
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


def check_output(model: nn.Module, sample: torch.Tensor, classes: int, name: str, dataset: str) -> None:
    """Refuse a model that does not map `sample` (N images) to (N, classes) logits, before any
    training: a narrower output fails only at some later label, and a wider one would train and
    be stored as if it were right. The probe runs in eval mode without gradients (no dropout
    draws: the run's seeded random stream is untouched)."""
    training = model.training
    try:
        with torch.no_grad():
            output = model.eval()(sample)
    except Exception as error:  # any failure of the user's forward on this input
        first = (str(error).strip().splitlines() or [""])[0]
        raise ModelError(f"model {name} fails on {dataset} images of shape {tuple(sample.shape)}: "
                         f"{type(error).__name__}: {first}") from None
    finally:
        model.train(training)
    expected = (len(sample), classes)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(f"model {name} output {got} for {len(sample)} image(s) but {dataset} has {classes} "
                         f"classes: it must return {expected} logits")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def catalogue() -> list[tuple[str, int, str]]:
    """(name, parameters for 10 classes, first line of its description) for every built-in model."""
    return [(name, parameter_count(factory(10)), (factory.__doc__ or "").strip().splitlines()[0])
            for name, factory in MODELS.items()]
