"""The FID Inception-v3 feature extractor (2048-d pool features), built in code.

FID (Heusel et al., NeurIPS 2017) is defined on the pool3 features of the TensorFlow Inception
graph of 2015-12-05 (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016). The
widely used PyTorch port of that graph differs from the ImageNet Inception-v3 in four blocks:
average pools exclude padding (Mixed_5b-5d, 6b-6e, 7b) and the last block (Mixed_7c) max-pools
its pool branch. This module writes that architecture out (no torchvision), with parameter
names of the usual ``Inception3`` state dict, so the FID weights converted to safetensors load
as they are (``fc.*`` and ``*.num_batches_tracked`` entries, present in some files, are ignored).

Weights load only from ``.safetensors`` with a strict key and shape check; they are not shipped.
Images in [0, 1] are resized to 299 x 299 (bilinear) and mapped to [-1, 1], as the FID port does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from salun.core.errors import SalunError
from salun.eval.fid import frechet_distance

log = logging.getLogger(__name__)

FEATURE_DIM = 2048
#: state-dict entries a weights file may carry that the feature extractor does not use
IGNORED_KEYS = ("fc.weight", "fc.bias")


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU."""

    def __init__(self, cin: int, cout: int, **kw: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # the TF graph's average pools ignore the zero padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool`` selects the pool branch: False for Mixed_7b, True for Mixed_7c (FID port)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.max_pool:
            pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pool = _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to the 2048-d average pool, in the FID variant; ``forward`` -> N x 2048."""

    def __init__(self, resize_input: bool = True) -> None:
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: N x 3 x H x W in [0, 1] -> N x 2048 pool features."""
        if self.resize_input:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_fid_inception(path: str | Path, resize_input: bool = True) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load its weights from a ``.safetensors`` file (strict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise SalunError(f"Inception weights {str(path)!r} must be a .safetensors file")
    if not path.is_file():
        raise SalunError(f"Inception weights {str(path)!r} do not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SalunError(f"Inception weights {str(path)!r} do not load as safetensors: {e}") from e
    model = FIDInceptionV3(resize_input=resize_input)
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    unexpected = sorted(
        k
        for k in state
        if k not in own and k not in IGNORED_KEYS and not k.endswith("num_batches_tracked")
    )
    missing = sorted(k for k in own if k not in state and k not in optional)
    if missing or unexpected:
        raise SalunError(
            f"Inception weights {str(path)!r} do not match the FID Inception-v3: "
            f"{len(missing)} missing (first: {missing[:1]}), {len(unexpected)} unexpected "
            f"(first: {unexpected[:1]})"
        )
    for k, v in own.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            raise SalunError(
                f"Inception weights {str(path)!r}: {k} has shape {tuple(state[k].shape)}, "
                f"expected {tuple(v.shape)}"
            )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    log.info("FID Inception-v3 weights loaded from %s", path)
    return model.eval()


class InceptionFeatures:
    """FID feature extractor with the interface of :mod:`salun.eval.fid`'s extractors."""

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 50,
        device: str | torch.device = "cpu",
        resize_input: bool = True,
    ) -> None:
        self.model = load_fid_inception(path, resize_input=resize_input).to(device)
        self.name = f"fid-inception-v3:{Path(path).name}"
        self.batch_size, self.device = batch_size, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """``images``: N x C x H x W float in [0, 1] (C = 1 is repeated) -> N x 2048 features."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise SalunError(
                f"images must be N x C x H x W with C in (1, 3), got {tuple(images.shape)}"
            )
        feats = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(self.device, torch.float32)
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            feats.append(self.model(x).double().cpu())
        return torch.cat(feats).numpy() if feats else np.zeros((0, FEATURE_DIM))


def fid_from_features(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between two feature sets (reuses :func:`salun.eval.fid.frechet_distance`)."""

    def to_np(x: np.ndarray | torch.Tensor) -> np.ndarray:
        return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    return frechet_distance(to_np(a), to_np(b))
