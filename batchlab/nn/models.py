"""Model registry: the networks of the reproduced studies, torchvision's classifiers, and any user model.

`build(name, input_shape=(C, H, W), classes=N)` returns a torch.nn.Module mapping (N, C, H, W)
float images to (N, classes) logits; `check_output` holds every model to that before it trains.

- Built-in (`seed-cnn`, `keras-cnn`, `mlp`): layer sizes derived from the input shape; at 1x28x28
  they are exactly the studies' networks (parameter counts, names and outputs).
- `torchvision:NAME`: any classification model of torchvision.models, untrained (weights=None),
  with the dataset's class count; torchvision is optional (`pip install "batchlab[vision]"`) and
  imported only here, on use. See `torchvision_model`.
- User model: `package.module:factory` or `path/to/file.py:factory`. batchlab reads the factory's
  signature and calls it one of three ways:
  * `factory(input_shape=(C, H, W), classes=N)` when it has parameters named `input_shape` and
    `classes` (in any order, positional or keyword-only: they are passed by name);
  * otherwise by its required positional parameters: two → `factory((C, H, W), N)`; one →
    `factory(N)`; none → `factory(N)` if it has an optional positional parameter (e.g.
    `Net(classes=10)`), else `factory()`.
  `input_shape` is a tuple of three ints. `factory(classes)` and `factory()` cannot know the
  image shape, so they are accepted only for 1x28x28 images (the built-in datasets); any other
  signature (three required parameters, required keyword-only ones, only *args/**kwargs, or a
  parameter named input_shape or classes that would receive the other value) is refused with a
  ModelError naming the signature.

torchvision's and user models run their plain nn.Conv2d layers as batchlab's Conv2d (layers.py):
the same parameters and results up to rounding, faster on the CPU where a map is no larger than
the kernel (ResNet-18's last stages on 32×32 images: 1.5x its training there).
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
from torch.nn.modules.lazy import LazyModuleMixin

from ..core.errors import ModelError
from .layers import Conv2d, Dropout, Linear, MaxPool2d, with_fast_convolutions
from .names import BUILTIN_MODELS, MODEL_FORMS, is_torchvision_model
from .texts import failure, shape_text
from .vision import torchvision_model

# The shape of the built-in datasets' images (MNIST, Fashion-MNIST), the default everywhere, and
# the only one a factory(classes) or factory() can be assumed to take.
MNIST_SHAPE = (1, 28, 28)

# The studies write convolution → ReLU → max-pool. ReLU is monotonic, so max-pooling first and
# applying ReLU to the pooled map gives the same outputs and the same gradients, with ReLU (and its
# backward) touching a quarter of the elements: on the CPU these element-wise passes over large
# activations cost as much as the convolutions (docs/performance.md). Parameter names are
# unchanged, so weights saved with either order load into the other. tests/test_models.py checks it.


class CroppedInput(nn.Sequential):
    """nn.Sequential that first crops its (N, C, H, W) input to the top-left `height`×`width`
    pixels: the rows and columns beyond never reach the output of a network of 'valid'
    convolutions and flooring max-pools, so computing them is wasted work. Parameter names are
    those of nn.Sequential."""

    def __init__(self, height: int, width: int, *layers: nn.Module):
        super().__init__(*layers)
        self.height, self.width = height, width

    def forward(self, images):
        return super().forward(images[..., :self.height, :self.width])


def shape_of(input_shape) -> tuple[int, int, int]:
    """`input_shape` as a (channels, height, width) tuple of positive ints, or a ModelError."""
    try:
        shape = tuple(int(size) for size in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(f"input shape must be (channels, height, width), got {input_shape!r}")
    return shape


def refuse_small(model: str, shape: tuple[int, int, int], smallest: int) -> None:
    if min(shape[1:]) < smallest:
        raise ModelError(f"model {model} needs images of at least {smallest}x{smallest} pixels (height and width), "
                         f"got {shape_text(shape)}")


# seed-cnn per spatial dimension n: conv 4 'valid' → n - 3, pool 2 → ⌊(n - 3)/2⌋, conv 4 → minus 3,
# pool 2 → SEED_MAP(n) = ⌊(⌊(n - 3)/2⌋ - 3)/2⌋ = ⌊(n - 9)/4⌋. Working back from that map, the input
# rows that reach the output are ((map·2 + 3)·2 + 3) = 4·map + 9: 25 of 28, 29 of 32, 13 of 13.
SEED_CNN_SMALLEST = 13  # the smallest size that leaves a 1×1 map for the dense layer


def seed_cnn_map(size: int) -> int:
    """Rows (or columns) of the map seed-cnn's dense layer reads, for `size` input rows."""
    return ((size - 3) // 2 - 3) // 2


def seed_cnn_used(size: int) -> int:
    """Input rows (or columns) that reach seed-cnn's output: the rest is cropped."""
    return (seed_cnn_map(size) * 2 + 3) * 2 + 3


def seed_cnn(input_shape=MNIST_SHAPE, classes: int = 10) -> nn.Module:
    """The TensorFlow batch-size study's CNN: 550,886 parameters at 1x28x28, 10 classes.
    'Valid' padding (28 → conv4 25 → pool 12 → conv4 9 → pool 4); other shapes size the first
    convolution's channels and the dense layer's input (64 × map height × map width) from the
    image. The paper does not give the dropout rate; 0.5 is our documented choice. Pooling before
    ReLU: see above.

    Working back from the 4×4 map the dense layer reads: pool 2 needs 8×8, conv 4×4 needs 11×11,
    pool 2 needs 22×22, conv 4×4 needs 25×25. The last 3 rows and columns of a 28×28 image never
    reach the output (in the study's network too), so seed-cnn crops them: the same outputs and
    gradients with 23% less work in the first convolution and pooling, 21% less in the second.
    Other shapes crop per dimension likewise (seed_cnn_used: 29 of 32)."""
    channels, height, width = shape = shape_of(input_shape)
    refuse_small("seed-cnn", shape, SEED_CNN_SMALLEST)
    return CroppedInput(
        seed_cnn_used(height), seed_cnn_used(width),
        Conv2d(channels, 32, kernel_size=4), MaxPool2d(2), nn.ReLU(),
        Conv2d(32, 64, kernel_size=4), MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), Dropout(0.5),
        Linear(64 * seed_cnn_map(height) * seed_cnn_map(width), 500), nn.ReLU(), Dropout(0.5),
        Linear(500, classes),
    )


KERAS_CNN_SMALLEST = 6  # conv3, conv3: n - 4; pool 2: ⌊(n - 4)/2⌋ ≥ 1


def keras_cnn(input_shape=MNIST_SHAPE, classes: int = 10) -> nn.Module:
    """The Keras MNIST example CNN (1,199,882 parameters at 1x28x28, 10 classes).
    conv3, conv3, pool 2, dense 128: the dense input, 64 × ⌊(H - 4)/2⌋ × ⌊(W - 4)/2⌋, follows the
    image."""
    channels, height, width = shape = shape_of(input_shape)
    refuse_small("keras-cnn", shape, KERAS_CNN_SMALLEST)
    return nn.Sequential(
        Conv2d(channels, 32, kernel_size=3), nn.ReLU(),
        Conv2d(32, 64, kernel_size=3), MaxPool2d(2), nn.ReLU(), Dropout(0.25),
        nn.Flatten(), Linear(64 * ((height - 4) // 2) * ((width - 4) // 2), 128), nn.ReLU(), Dropout(0.5),
        Linear(128, classes),
    )


def mlp(input_shape=MNIST_SHAPE, classes: int = 10) -> nn.Module:
    """784-500-classes perceptron with one ReLU hidden layer (C·H·W inputs for other shapes)."""
    channels, height, width = shape_of(input_shape)
    return nn.Sequential(nn.Flatten(), Linear(channels * height * width, 500), nn.ReLU(), Linear(500, classes))


MODELS: dict[str, Callable[..., nn.Module]] = {"seed-cnn": seed_cnn, "keras-cnn": keras_cnn, "mlp": mlp}
assert tuple(MODELS) == BUILTIN_MODELS, "names.py lists the built-in models for torch-free callers"


# --- user models ------------------------------------------------------------------------------------

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
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, {MODEL_FORMS}")
    try:
        module = import_file(module_name) if is_file_model(module_name) else importlib.import_module(module_name)
        factory = getattr(module, attribute)
    except (ImportError, AttributeError, SyntaxError) as error:
        raise ModelError(f"cannot load user model {name!r}: {type(error).__name__}: {error}") from None
    if not callable(factory):
        raise ModelError(f"user model {name!r} is not callable")
    return factory


ROLES = ("input_shape", "classes")  # the values batchlab passes, by these names where a factory has both
ACCEPTED = "factory(input_shape, classes), factory(classes) or factory()"


def factory_arguments(factory: Callable, name: str, shape: tuple[int, int, int],
                      classes: int) -> tuple[tuple, dict]:
    """(args, kwargs) to call the user's `factory` with, read from its signature (module
    docstring), or a ModelError naming the signature."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        raise ModelError(f"model {name}: cannot read the signature of {factory!r}; batchlab calls {ACCEPTED}") from None
    parameters = list(signature.parameters.values())
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]

    called = getattr(factory, "__name__", "factory")

    def refused(why: str) -> ModelError:
        return ModelError(f"model {name}: batchlab cannot call {called}{signature} ({why}); it calls {ACCEPTED}, "
                          "with parameters named input_shape and classes passed by name")

    if set(ROLES) <= named:
        args, kwargs, roles = (), {"input_shape": shape, "classes": classes}, ()
    elif len(required) > 2:
        raise refused(f"{len(required)} required parameters")
    elif len(required) == 2:
        args, kwargs, roles = (shape, classes), {}, ROLES
    elif required or positional:
        args, kwargs, roles = (classes,), {}, ROLES[1:]
    elif any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        raise refused("only *args or **kwargs")
    else:
        args, kwargs, roles = (), {}, ()
    for parameter, role in zip(positional, roles):
        if parameter.name in ROLES and parameter.name != role:
            raise refused(f"its parameter {parameter.name} would receive the {role}")
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise refused(str(error)) from None
    if "input_shape" not in kwargs and len(args) < 2 and shape != MNIST_SHAPE:
        takes = "only classes" if args else "no arguments"
        raise ModelError(f"model {name} takes {takes}; for {shape_text(shape)} images it must be "
                         "factory(input_shape, classes)")
    return args, kwargs


def build(name: str, *, input_shape=MNIST_SHAPE, classes: int = 10) -> nn.Module:
    """The model `name` for (C, H, W) = `input_shape` images and `classes` classes (module
    docstring). Keyword arguments only: a positional class count, as build() once took, would
    otherwise pass for a shape."""
    shape = shape_of(input_shape)
    if name in MODELS:
        model = MODELS[name](shape, classes)
    elif is_torchvision_model(name):
        model = torchvision_model(name, shape, classes)
    else:
        factory = load_factory(name)
        args, kwargs = factory_arguments(factory, name, shape, classes)
        model = factory(*args, **kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return materialized(with_fast_convolutions(model), shape)


def materialized(model: nn.Module, shape: tuple[int, int, int]) -> nn.Module:
    """A model with lazy layers (nn.LazyLinear, ...) given its parameters' shapes by one forward pass
    on 2 zero images (eval mode, no gradients: no statistics move), as torch asks: placing, copying
    or counting an uninitialised parameter fails. Their values come from the seeded generator, as
    every layer's do."""
    if not any(isinstance(module, LazyModuleMixin) for module in model.modules()):
        return model
    training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, *shape))
    return model.train(training)


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
        raise ModelError(f"model {name} fails on {dataset} images of shape {tuple(sample.shape)}: "
                         f"{failure(error)}") from None
    finally:
        model.train(training)
    expected = (len(sample), classes)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(f"model {name} output {got} for {len(sample)} image(s) but {dataset} has {classes} "
                         f"classes: it must return {expected} logits")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def catalogue(input_shape=MNIST_SHAPE) -> list[tuple[str, int, str]]:
    """(name, parameters for 10 classes and `input_shape` images, first line of its description)
    for every built-in model."""
    return [(name, parameter_count(factory(input_shape, 10)), (factory.__doc__ or "").strip().splitlines()[0])
            for name, factory in MODELS.items()]
