"""--model torchvision:NAME. torchvision is optional and, on a machine with PyPI's build beside a
CPU torch, does not even import: batchlab's side (the import error, names, builder options, grey
images) is tested everywhere with a stand-in torchvision; the tests marked `real` take the real
one and are skipped, with the reason, where it does not import."""

import sys
import types

import pytest
import torch
from torch import nn

from batchlab.nn import models, vision


def real_torchvision():
    """torchvision.models, or a skip saying why not (a build for another torch raises RuntimeError
    on import, which pytest.importorskip would not catch)."""
    try:
        import torchvision.models
    except Exception as error:
        pytest.skip(f"torchvision does not import here ({type(error).__name__}: {str(error).splitlines()[0]}); "
                    f"{vision.matching_torchvision()}")
    return torchvision.models


# --- torchvision missing or broken --------------------------------------------------------------------

def assert_install_advice(message: str, cause: str):
    assert "\n" not in message
    assert message.startswith(f"--model torchvision:resnet18 needs torchvision, which is missing or does not match "
                              f"torch {torch.__version__} (")
    assert cause in message and 'pip install "batchlab[vision]"' in message


def test_torchvision_missing_is_one_line_with_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    with pytest.raises(models.ModelError) as error:
        models.build("torchvision:resnet18")
    assert_install_advice(str(error.value), "ModuleNotFoundError: ")


def test_torchvision_for_another_torch_is_one_line_with_the_install(monkeypatch, tmp_path):
    """What PyPI's torchvision does beside torch 2.13.0+cpu."""
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(models.ModelError) as error:
        models.build("torchvision:resnet18", input_shape=(3, 32, 32))
    assert_install_advice(str(error.value), "RuntimeError: operator torchvision::nms does not exist")


@pytest.mark.parametrize("version, advice", [
    ("2.13.0+cpu", "for torch 2.13.0+cpu: pip install torchvision==0.28.0 --index-url "
                   "https://download.pytorch.org/whl/cpu"),
    ("2.14.1+cu128", "for torch 2.14.1+cu128: pip install torchvision==0.29.1 --index-url "
                     "https://download.pytorch.org/whl/cu128"),
    ("2.9.0", "for torch 2.9.0: pip install torchvision==0.24.0"),
])
def test_the_matching_torchvision_build(monkeypatch, version, advice):
    monkeypatch.setattr(torch, "__version__", version)
    assert vision.matching_torchvision() == f'pip install "batchlab[vision]", or {advice}'


# --- batchlab's side, with a stand-in torchvision -------------------------------------------------------

class RGBNet(nn.Module):
    """A torchvision-like classifier: a stem convolution on 3 colours, then a head."""

    def __init__(self, num_classes=1000, **options):
        super().__init__()
        self.options = options
        self.stem = nn.Sequential(nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, images):
        return self.head(self.stem(images))


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in torchvision whose models are RGBNet; `calls` records get_model's arguments."""
    package = types.ModuleType("torchvision")
    package.models = types.ModuleType("torchvision.models")
    classifiers = ["resnet18", "resnet34", "mobilenet_v3_small", "googlenet", "vit_b_16", "maxvit_t"]
    calls = []

    def list_models(module=None):
        return sorted(classifiers if module is package.models else classifiers + ["fasterrcnn_resnet50_fpn"])

    def get_model(name, **config):
        calls.append((name, config))
        return RGBNet(**config)

    package.models.list_models, package.models.get_model, package.models.calls = list_models, get_model, calls
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", package.models)
    return package.models


def test_classifier_built_untrained_with_the_class_count(fake_torchvision):
    model = models.build("torchvision:resnet18", input_shape=(3, 32, 32), classes=7)
    assert fake_torchvision.calls == [("resnet18", {"weights": None, "num_classes": 7})]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name, options", [
    ("googlenet", {"aux_logits": False, "init_weights": True}),  # else training returns (logits, aux, aux)
    ("vit_b_16", {"image_size": 32}),  # else built for 224×224 only
    ("maxvit_t", {"input_size": (32, 32)}),
])
def test_builder_options_for_the_image(fake_torchvision, name, options):
    models.build(f"torchvision:{name}", input_shape=(3, 32, 32), classes=10)
    assert fake_torchvision.calls == [(name, {"weights": None, "num_classes": 10, **options})]


def test_unknown_name_suggests_close_ones(fake_torchvision):
    with pytest.raises(models.ModelError) as error:
        models.build("torchvision:resnet81")
    assert str(error.value) == ("unknown torchvision model 'resnet81'; did you mean torchvision:resnet18, "
                                "torchvision:resnet34?")
    with pytest.raises(models.ModelError, match="^not a torchvision classification model 'fasterrcnn_resnet50_fpn'"):
        models.build("torchvision:fasterrcnn_resnet50_fpn")
    with pytest.raises(models.ModelError, match=r"^unknown torchvision model 'xyz' \(6 classifiers: googlenet, "):
        models.build("torchvision:xyz")
    assert fake_torchvision.calls == []


def test_grey_images_go_to_a_one_channel_first_convolution(fake_torchvision):
    """The grey model is the RGB model fed the grey image in all three channels, with
    torchvision's parameter names and a third of the first convolution's inputs."""
    torch.manual_seed(0)
    rgb = models.build("torchvision:resnet18", input_shape=(3, 28, 28))
    torch.manual_seed(0)
    grey = models.build("torchvision:resnet18", input_shape=(1, 28, 28))
    assert list(grey.state_dict()) == list(rgb.state_dict())
    assert grey.stem[0].weight.shape == (8, 1, 3, 3) and grey.stem[0].bias is not None
    images = torch.randn(4, 1, 28, 28)
    assert torch.allclose(grey(images), rgb(images.repeat(1, 3, 1, 1)), atol=1e-6)
    models.check_output(grey, images[:2], 10, "torchvision:resnet18", "fashion-mnist")


def test_torchvision_convolutions_become_batchlab_layers(fake_torchvision):
    from batchlab.nn.layers import Conv2d

    for shape in ((3, 32, 32), (1, 28, 28)):  # the grey model's new first convolution too
        model = models.build("torchvision:resnet18", input_shape=shape)
        assert type(model.stem[0]) is Conv2d


def test_a_model_without_an_rgb_first_convolution_is_refused():
    with pytest.raises(models.ModelError, match="^model torchvision:odd cannot take 1-channel images"):
        vision.adapt_input_channels(nn.Sequential(nn.Conv2d(4, 8, 3)), 1, "torchvision:odd")
    with pytest.raises(models.ModelError, match="cannot take 2-channel images"):
        vision.adapt_input_channels(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), 2, "torchvision:odd")


# --- the real torchvision -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_real_small_networks_on_small_images(name, shape):
    real_torchvision()
    torch.manual_seed(0)
    model = models.build(f"torchvision:{name}", input_shape=shape, classes=10)
    images = torch.randn(4, *shape)
    models.check_output(model, images[:2], 10, f"torchvision:{name}", "images")
    first = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    assert first.in_channels == shape[0]
    loss = nn.functional.cross_entropy(model.train()(images), torch.arange(4))
    loss.backward()  # trains: batch statistics over 4 images
    assert torch.isfinite(loss)


def test_real_names_and_a_shape_too_small():
    tv_models = real_torchvision()
    assert "resnet18" in tv_models.list_models(module=tv_models)
    with pytest.raises(models.ModelError, match="did you mean torchvision:resnet18"):
        models.build("torchvision:resnet81")
    model = models.build("torchvision:inception_v3", input_shape=(3, 32, 32))
    with pytest.raises(models.ModelError, match=r"^model torchvision:inception_v3 fails on cifar10 images of shape "
                                                r"\(2, 3, 32, 32\)"):
        models.check_output(model, torch.randn(2, 3, 32, 32), 10, "torchvision:inception_v3", "cifar10")


def test_real_vision_transformer_on_32x32():
    real_torchvision()
    model = models.build("torchvision:vit_b_32", input_shape=(3, 32, 32), classes=10)
    models.check_output(model, torch.randn(2, 3, 32, 32), 10, "torchvision:vit_b_32", "cifar10")
