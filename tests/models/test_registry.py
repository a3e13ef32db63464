"""Every registered model: output shape, fx traceability, deepcopy/pickle round trips, option errors."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.fx

from netcompress import models
from netcompress.core.errors import ConfigError

# large-input models are checked on smaller images (they end in global average pooling) to stay fast
SMALL_SHAPES = {"food_cnn": (3, 64, 64), "food_cnn_dws": (3, 64, 64), "resnet18": (3, 64, 64)}
NAMES = models.list()


def _example(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *SMALL_SHAPES.get(name, models.input_shape(name)))


def test_registry_holds_the_contract_names() -> None:
    expected = {
        "cifar_vgg",
        "cifar_resnet20",
        "cifar_resnet56",
        "cifar_resnet18",
        "resnet18",
        "mobilenet_student",
        "food_cnn",
        "food_cnn_dws",
        "sincnet",
        "mlp",
        "lenet",
        "digits_cnn",
        "vit_tiny",
    }
    assert set(NAMES) == expected
    assert NAMES == sorted(NAMES) == models.MODELS.names()


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_with_num_classes(name: str) -> None:
    model = models.create(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(_example(name))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_gives_identical_outputs(name: str) -> None:
    model = models.create(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = _example(name)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_and_pickle_round_trip(name: str) -> None:
    model = models.create(name).eval()
    x = _example(name, batch=1)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(loaded(x), ref)
        assert torch.equal(copied(x), ref)
    assert type(loaded) is type(model)


@pytest.mark.parametrize("name", NAMES)
def test_describe_is_json_and_matches_input_shape(name: str) -> None:
    info = json.loads(json.dumps(models.describe(name)))
    assert info["name"] == name
    assert tuple(info["input_shape"]) == models.input_shape(name)
    assert "num_classes" in info["options"] and info["description"]


def test_unknown_model_name_lists_known_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'cifar_vgg16'.*Known: .*cifar_resnet20.*sincnet"):
        models.create("cifar_vgg16")


def test_unknown_option_is_named_with_hint() -> None:
    with pytest.raises(
        ConfigError, match=r"'cifar_resnet20' has no option 'num_clases' \(did you mean 'num_classes'\?\)"
    ):
        models.create("cifar_resnet20", num_clases=10)
    with pytest.raises(ConfigError, match="no option 'depth'"):
        models.input_shape("digits_cnn", depth=3)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("cifar_vgg", {"cfg": [64, "X", 128]}, r"cfg\[1\]='X'"),
        ("cifar_vgg", {"cfg": "vgg17"}, "unknown VGG cfg name 'vgg17'"),
        ("cifar_vgg", {"cfg": ["M"]}, "no conv layer"),
        ("cifar_resnet20", {"width": 0}, "width=0 must be a positive number"),
        ("digits_cnn", {"num_classes": 0}, r"num_classes=0 must be within \[1"),
        ("mlp", {"hidden": (32, 2.5)}, r"hidden\[1\]=2.5 must be an integer"),
        ("mobilenet_student", {"blocks": [(64, 3)]}, r"blocks\[0\] stride=3 is not one of \[1, 2\]"),
        ("mobilenet_student", {"act": "gelu"}, "act='gelu' is not one of"),
        ("sincnet", {"channels": (64, 64), "kernel_sizes": (25,)}, "must be non-empty and of equal length"),
        ("sincnet", {"sinc_kernel_size": 100}, "sinc kernel_size=100 must be odd"),
        ("lenet", {"input_size": 4}, r"input_size=4 must be within \[8"),
    ],
)
def test_bad_option_values_raise_config_error(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        models.create(name, **kwargs)


def test_spec_call_equals_create_and_input_shapes() -> None:
    spec = models.MODELS.get("digits_cnn")
    torch.manual_seed(1)
    a = spec(num_classes=4)
    torch.manual_seed(1)
    b = models.create("digits_cnn", num_classes=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert models.input_shape("cifar_vgg", in_channels=1) == (1, 32, 32)
    assert models.input_shape("sincnet", input_length=4000) == (1, 4000)
    assert models.input_shape("lenet", input_size=8) == (1, 8, 8)
    assert models.input_shape("food_cnn") == (3, 256, 256)
    assert models.input_shape("resnet18") == (3, 224, 224)
