"""Models for any image shape: the built-ins size their layers from (C, H, W), user factories are
called as their signature says (batchlab/nn/models.py's docstring), bad input is one line."""

import pytest
import torch
from torch import nn

from batchlab.nn import models, names

CIFAR = (3, 32, 32)


@pytest.mark.parametrize("name", list(models.MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), CIFAR, (2, 30, 19), (4, 17, 45)])
def test_builtin_models_take_any_shape(name, shape):
    model = models.build(name, input_shape=shape, classes=7).eval()
    assert model(torch.randn(3, *shape)).shape == (3, 7)
    models.check_output(model, torch.randn(2, *shape), 7, name, "images")


def test_parameter_counts_follow_the_shape():
    """The layers are sized from the shape: first convolution's channels, the dense inputs."""
    at = {name: models.parameter_count(models.build(name, input_shape=CIFAR)) for name in models.MODELS}
    seed_dense = 64 * 5 * 5  # 32 → conv4 29 → pool 14 → conv4 11 → pool 5
    assert at["seed-cnn"] == (3 * 32 * 16 + 32) + (32 * 64 * 16 + 64) + (seed_dense * 500 + 500) + (500 * 10 + 10)
    keras_dense = 64 * 14 * 14  # 32 → conv3 30 → conv3 28 → pool 14
    assert at["keras-cnn"] == (3 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (keras_dense * 128 + 128) + (128 * 10 + 10)
    assert at["mlp"] == 3 * 32 * 32 * 500 + 500 + 500 * 10 + 10
    # seed-cnn: 2x30x19 → maps of 5 (rows) and 2 (columns)
    assert models.build("seed-cnn", input_shape=(2, 30, 19)).state_dict()["8.weight"].shape == (500, 64 * 5 * 2)


def test_catalogue_at_a_shape():
    assert [row[:2] for row in models.catalogue()] == [("seed-cnn", 550_886), ("keras-cnn", 1_199_882),
                                                        ("mlp", 397_510)]
    assert dict(row[:2] for row in models.catalogue(CIFAR))["seed-cnn"] == 839_910


@pytest.mark.parametrize("name, smallest", [("seed-cnn", 13), ("keras-cnn", 6)])
def test_shapes_too_small_are_refused_with_the_smallest(name, smallest):
    assert models.build(name, input_shape=(1, smallest, smallest)).eval()(torch.zeros(2, 1, smallest, smallest)).shape \
        == (2, 10)
    for shape in [(1, smallest - 1, 28), (3, 28, smallest - 1)]:
        with pytest.raises(models.ModelError) as error:
            models.build(name, input_shape=shape)
        message = str(error.value)
        assert f"at least {smallest}x{smallest}" in message and "x".join(map(str, shape)) in message
        assert "\n" not in message


def test_input_shape_must_be_three_positive_sizes():
    for bad in [(28, 28), (1, 0, 28), 10, "1x28x28"]:
        with pytest.raises(models.ModelError, match="channels, height, width"):
            models.build("mlp", input_shape=bad)


def test_build_takes_keywords_only():
    """build(name, classes) was the old call: a class count must not pass for a shape."""
    with pytest.raises(TypeError):
        models.build("mlp", 4)


# --- user factories, by signature --------------------------------------------------------------------

received = []


def record(*values, shape=(1, 28, 28), classes=10) -> nn.Module:
    """Note what the factory received; a linear classifier of `shape` images."""
    received.append(values)
    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], classes))


def two_positional(shape, count):
    return record(shape, count, shape=shape, classes=count)


def named_reversed(classes, input_shape):
    return record(input_shape, classes, shape=input_shape, classes=classes)


def named_keyword_only(*, input_shape, classes, width=8):
    return record(input_shape, classes, shape=input_shape, classes=classes)


def classes_only(classes):
    return record(classes, classes=classes)


def classes_and_option(classes, dropout=0.5):
    return record(classes, classes=classes)


class OptionalClasses(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.body = record(classes, classes=classes)

    def forward(self, images):
        return self.body(images)


def no_arguments():
    return record()


@pytest.fixture(autouse=True)
def fresh_record():
    received.clear()


@pytest.mark.parametrize("factory", ["two_positional", "named_reversed", "named_keyword_only"])
@pytest.mark.parametrize("shape", [(1, 28, 28), CIFAR])
def test_factory_of_shape_and_classes(factory, shape):
    model = models.build(f"test_model_shapes:{factory}", input_shape=list(shape), classes=5)
    assert received == [(shape, 5)] and type(received[0][0]) is tuple  # a tuple of ints, whatever was given
    assert model(torch.zeros(2, *shape)).shape == (2, 5)


@pytest.mark.parametrize("factory, call", [("classes_only", (4,)), ("classes_and_option", (4,)),
                                           ("OptionalClasses", (4,)), ("no_arguments", ())])
def test_factories_that_cannot_know_the_shape_take_1x28x28_only(factory, call):
    models.build(f"test_model_shapes:{factory}", classes=4)
    assert received == [call]
    received.clear()
    with pytest.raises(models.ModelError) as error:
        models.build(f"test_model_shapes:{factory}", input_shape=CIFAR, classes=4)
    takes = "only classes" if call else "no arguments"
    assert str(error.value) == (f"model test_model_shapes:{factory} takes {takes}; for 3x32x32 images it must be "
                                "factory(input_shape, classes)")
    assert received == []  # refused before it ran


def three_required(a, b, c):
    return record(a, b, c)


def required_keyword_only(classes, *, width):
    return record(classes)


def keywords_only(**options):
    return record()


def arguments_only(*values):
    return record(*values)


def classes_first(classes, shape):
    return record(shape, classes)


def shape_alone(input_shape):
    return record(input_shape)


@pytest.mark.parametrize("factory, signature, why", [
    ("three_required", "three_required(a, b, c)", "3 required parameters"),
    ("required_keyword_only", "required_keyword_only(classes, *, width)", "missing a required argument: 'width'"),
    ("keywords_only", "keywords_only(**options)", "only *args or **kwargs"),
    ("arguments_only", "arguments_only(*values)", "only *args or **kwargs"),
    ("classes_first", "classes_first(classes, shape)", "its parameter classes would receive the input_shape"),
    ("shape_alone", "shape_alone(input_shape)", "its parameter input_shape would receive the classes"),
])
def test_factory_signatures_batchlab_cannot_call(factory, signature, why):
    with pytest.raises(models.ModelError) as error:
        models.build(f"test_model_shapes:{factory}")
    message = str(error.value)
    assert message.startswith(f"model test_model_shapes:{factory}: batchlab cannot call {signature} ({why}); "
                              f"it calls {models.ACCEPTED}")
    assert "\n" not in message and received == []


def test_known_model_names_without_torch():
    assert names.is_known_model("torchvision:resnet18") and names.is_known_model("seed-cnn")
    assert names.is_known_model("pkg.mod:factory") and names.is_known_model("path/to/file.py:build")
    for unknown in ["torchvision:", "resnet18", "pkg.mod:", ":factory"]:
        assert not names.is_known_model(unknown), unknown
    assert names.is_torchvision_model("torchvision:resnet18") and not names.is_torchvision_model("mlp")
    with pytest.raises(models.ModelError, match="torchvision:NAME, package.module:factory"):
        models.build("resnet18")
