"""Tests for salun.models: shapes, normalisation buffers, parameter counts, errors, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from salun.core.errors import SalunError
from salun.models import MODELS, Normalize, build_model


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    ("in_channels", "image_size", "num_classes"), [(1, 16, 10), (3, 32, 100), (3, 8, 5)]
)
def test_logits_shape(name: str, in_channels: int, image_size: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_channels, image_size, width=8).eval()
    x = torch.rand(2, in_channels, image_size, image_size)
    with torch.no_grad():
        out = model(x)
        out_cl = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    assert isinstance(model.normalize, Normalize)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == num_classes


@pytest.mark.parametrize("name", MODELS)
def test_normalisation_is_buffers(name: str) -> None:
    model = build_model(name, 10, 3, 16, width=8, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    param_names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("normalize.") for n in param_names)
    state = model.state_dict()
    assert state["normalize.mean"].shape == (1, 3, 1, 1)
    torch.testing.assert_close(state["normalize.mean"].flatten(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(state["normalize.std"].flatten(), torch.tensor([0.4, 0.5, 0.6]))


def test_normalize_default_and_forward() -> None:
    norm = Normalize(2)
    torch.testing.assert_close(norm.mean.flatten(), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(norm.std.flatten(), torch.tensor([0.5, 0.5]))
    x = torch.rand(3, 2, 4, 4)
    torch.testing.assert_close(norm(x), (x - 0.5) / 0.5)
    with pytest.raises(SalunError, match="channels"):
        Normalize(3, mean=[0.1, 0.2])
    with pytest.raises(SalunError, match="positive"):
        Normalize(1, std=[0.0])


def test_resnet18_standard_param_count() -> None:
    def conv_bn(cin: int, cout: int, k: int) -> int:
        return k * k * cin * cout + 2 * cout

    expected = conv_bn(3, 64, 3)  # CIFAR stem
    cin = 64
    for planes in (64, 128, 256, 512):
        for _ in range(2):
            expected += conv_bn(cin, planes, 3) + conv_bn(planes, planes, 3)
            if cin != planes:
                expected += conv_bn(cin, planes, 1)  # projection shortcut
            cin = planes
    expected += 512 * 10 + 10  # fc
    assert expected == 11_173_962
    assert _num_params(build_model("resnet18", 10, 3, 32, width=64)) == expected


def test_vgg16_bn_param_count() -> None:
    # 13 bias-free 3x3 convs + 13 BN (scale, shift) + a 512 -> 10 linear head. (The often-quoted
    # 14,728,266 also counts conv biases, which are redundant before BatchNorm.)
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    expected = (
        sum(9 * a * b + 2 * b for a, b in zip(chans[:-1], chans[1:], strict=True)) + 512 * 10 + 10
    )
    assert expected == 14_724_042
    assert _num_params(build_model("vgg16_bn", 10, 3, 32, width=64)) == expected


def test_vgg_skips_pools_on_small_inputs() -> None:
    pools = lambda m: sum(isinstance(x, nn.MaxPool2d) for x in m.modules())  # noqa: E731
    assert pools(build_model("vgg16_bn", 10, 3, 32, width=8)) == 5
    assert pools(build_model("vgg16_bn", 10, 1, 16, width=8)) == 4
    assert pools(build_model("vgg16_bn", 10, 1, 28, width=8)) == 4
    assert pools(build_model("vgg16_bn", 10, 1, 8, width=8)) == 3


def test_unknown_model_suggests_close_name() -> None:
    with pytest.raises(SalunError, match="'resnet18'"):
        build_model("resnet-18", 10)


@pytest.mark.parametrize(
    "kwargs", [{"num_classes": 0}, {"in_channels": 0}, {"image_size": 4}, {"width": 0}]
)
def test_bad_sizes_rejected(kwargs: dict[str, int]) -> None:
    args = {"num_classes": 10} | kwargs
    with pytest.raises(SalunError):
        build_model("cnn", **args)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name: str) -> None:
    torch.manual_seed(0)
    src = build_model(name, 10, 3, 16, width=8, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25])
    src.train()
    with torch.no_grad():  # move BN running stats away from their defaults
        src(torch.rand(8, 3, 16, 16))
    torch.manual_seed(1)
    dst = build_model(name, 10, 3, 16, width=8)
    dst.load_state_dict(src.state_dict())
    src.eval()
    dst.eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_cnn_has_no_dead_weights() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 10, 1, 16, width=8).train()
    x = torch.rand(16, 1, 16, 16)
    y = torch.randint(0, 10, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert p.grad.abs().sum() > 0, n


def test_a_registered_model_builds_by_name(monkeypatch):
    """build_model looks names up in the MODELS registry: an entry added there (as a plugin
    would, with @MODELS.register) builds by name, and unknown names list the registered ones."""
    from salun.core.errors import SalunError

    def tiny(num_classes, in_channels, image_size, width, mean, std):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    MODELS.names()  # load the registry before patching it
    monkeypatch.setitem(MODELS._items, "tiny", tiny)
    model = build_model("tiny", num_classes=3, in_channels=1, image_size=8)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert "tiny" in MODELS
    with pytest.raises(SalunError, match="allowed: cnn, resnet18, tiny, vgg16_bn"):
        build_model("tinny", num_classes=3)
