"""Fréchet distance between feature distributions (FID) with offline feature extractors.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017): || mu_1 - mu_2 ||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) between
Gaussians fitted to two sets of features.

Extractors:
- ``classifier``: the penultimate activations (the input of the final ``fc`` layer) of the judge
  classifier trained on the same data. Runs offline on any dataset; its values are NOT comparable
  to Inception FIDs in papers, and are recorded under their own name.
- a network file the user supplies (``diffusion.fid_features: /path/net.pt2``): a
  ``torch.export`` program (``.pt2``, batch dimension dynamic) or a TorchScript archive (other
  suffixes, e.g. the widely shared Inception-v3 feature network) mapping ``[0, 1]`` images
  ``N x 3 x S x S`` to ``N x D`` features. Grey images are repeated to 3 channels and resized to
  ``input_size`` (0 keeps the size). With Inception-v3 pool3 features this is the standard FID.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from salun.errors import SalunError


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature matrices (rows = samples); needs >= 2 rows each."""
    from scipy import linalg

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise SalunError(f"feature shapes do not match: {a.shape} vs {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise SalunError(f"FID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if caught or not np.isfinite(covmean).all():
        # singular product (fewer samples than dimensions): regularise, as is customary
        eps = 1e-6 * np.eye(len(s1))
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    return max(value, 0.0)


class ClassifierFeatures:
    """Penultimate features of a classifier whose last linear layer is ``fc``."""

    name = "classifier-penultimate"

    def __init__(self, classifier: nn.Module, batch_size: int = 512) -> None:
        if not isinstance(getattr(classifier, "fc", None), nn.Linear):
            raise SalunError("the FID classifier needs a final nn.Linear named 'fc'")
        self.model, self.batch_size = classifier, batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        grabbed: list[torch.Tensor] = []
        fc = cast(nn.Module, self.model.fc)
        hook = fc.register_forward_hook(lambda m, i, o: grabbed.append(i[0].detach()))
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            for chunk in images.split(self.batch_size):
                self.model(chunk.to(device))
        finally:
            hook.remove()
            self.model.train(was_training)
        return torch.cat(grabbed).flatten(1).cpu().numpy() if grabbed else np.zeros((0, 0))


LABELS = {"export": "torch.export program (.pt2)", "torchscript": "TorchScript archive"}


class NetworkFeatures:
    """Features from a user-supplied network file (e.g. Inception-v3 for standard FID)."""

    def __init__(self, path: str | Path, input_size: int = 299, batch_size: int = 64) -> None:
        import warnings

        path = Path(path)
        if not path.is_file():
            raise SalunError(f"FID feature network {str(path)!r} does not exist")
        kind = "export" if path.suffix == ".pt2" else "torchscript"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit in torch >= 2.10
                if kind == "export":
                    self.model: Any = torch.export.load(str(path)).module()
                else:
                    self.model = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise SalunError(
                f"FID feature network {str(path)!r} does not load as a {LABELS[kind]}: {e}"
            ) from e
        self.name = f"{kind}:{path.name}"
        self.input_size, self.batch_size = input_size, batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        feats = []
        for chunk in images.split(self.batch_size):
            x = chunk.float()
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            if self.input_size and x.shape[-1] != self.input_size:
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear")
            feats.append(self.model(x).flatten(1))
        return torch.cat(feats).numpy()


def feature_extractor(spec: str, classifier: nn.Module | None, input_size: int = 299):
    """``classifier`` -> :class:`ClassifierFeatures`; a file path -> :class:`NetworkFeatures`."""
    if spec == "classifier":
        if classifier is None:
            raise SalunError("fid_features=classifier needs the judge classifier")
        return ClassifierFeatures(classifier)
    return NetworkFeatures(spec, input_size=input_size)
