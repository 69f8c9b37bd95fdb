"""Fréchet distance between feature distributions (FID) with offline feature extractors.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017): || mu_1 - mu_2 ||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) between
Gaussians fitted to two sets of features.

Extractors:
- ``classifier``: the penultimate activations (the input of the final ``fc`` layer) of the judge
  classifier trained on the same data. Runs offline on any dataset; its values are NOT comparable
  to Inception FIDs in papers, and are recorded under their own name.
- a feature network file the user supplies (``diffusion.fid_features: /path/net.safetensors``):
  safetensors weights of an architecture salun builds in code (one of :mod:`salun.models`,
  recorded in the file's metadata by :func:`save_feature_network`); its penultimate activations
  are the features. Grey images are repeated to 3 channels when the network takes 3 and resized
  to its recorded image size (or ``input_size``). Formats that can execute code on load
  (torch.export, TorchScript, pickles) are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from salun.core.errors import SalunError


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


FEATURE_FORMAT = "salun-features-v1"
ARCH_KEYS = ("model", "num_classes", "in_channels", "image_size", "width")


def save_feature_network(network: nn.Module, path: str | Path, **arch: Any) -> None:
    """Write a feature network as safetensors weights plus its architecture in the metadata.

    ``arch``: ``model`` (a name of :data:`salun.models.MODELS`), ``num_classes``,
    ``in_channels``, ``image_size`` and ``width`` (the arguments of ``build_model``).
    """
    from salun.core.io import save_tensors

    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise SalunError(f"feature network architecture lacks {', '.join(missing)}")
    meta = {"format": FEATURE_FORMAT, **{k: str(arch[k]) for k in ARCH_KEYS}}
    save_tensors(path, network.state_dict(), meta)


class NetworkFeatures(ClassifierFeatures):
    """Penultimate features of a salun architecture whose weights come from a safetensors file.

    Only data is read: the architecture (recorded in the file's metadata) is built in code by
    :func:`salun.models.build_model` and the weights are loaded with safetensors, which cannot
    run code. Executable formats (torch.export ``.pt2``, TorchScript, pickles) are refused:
    loading them can run arbitrary code (the ``torch.export`` loader unpickles parts of the archive).
    """

    def __init__(self, path: str | Path, input_size: int = 0, batch_size: int = 64) -> None:
        from salun.core.io import load_tensors, read_metadata
        from salun.models import MODELS, build_model

        path = Path(path)
        where = f"FID feature network {str(path)!r}"
        if path.suffix != ".safetensors":
            raise SalunError(
                f"{where} must be a .safetensors file written by save_feature_network; "
                "executable formats (torch.export, TorchScript, pickles) are refused"
            )
        if not path.is_file():
            raise SalunError(f"{where} does not exist")
        try:
            meta = read_metadata(path)
            state = load_tensors(path)
        except Exception as e:  # safetensors raises its own error types
            raise SalunError(f"{where} is not a readable safetensors file: {e}") from None
        if meta.get("format") != FEATURE_FORMAT or any(k not in meta for k in ARCH_KEYS):
            raise SalunError(
                f"{where} has no {FEATURE_FORMAT} architecture metadata ({', '.join(ARCH_KEYS)})"
            )
        if meta["model"] not in MODELS:
            raise SalunError(
                f"{where}: unknown model {meta['model']!r}; allowed: {', '.join(MODELS)}"
            )
        try:
            sizes = {k: int(meta[k]) for k in ARCH_KEYS[1:]}
        except ValueError:
            raise SalunError(f"{where}: architecture sizes must be integers") from None
        model = build_model(
            meta["model"],
            num_classes=sizes["num_classes"],
            in_channels=sizes["in_channels"],
            image_size=sizes["image_size"],
            width=sizes["width"],
        )
        own = model.state_dict()
        if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
            raise SalunError(f"{where}: weights do not match its recorded architecture")
        if any(v.is_floating_point() and not bool(v.isfinite().all()) for v in state.values()):
            raise SalunError(f"{where} holds non-finite weights (NaN or inf)")
        model.load_state_dict(state)
        super().__init__(model.eval(), batch_size)
        self.name = f"{meta['model']}:{path.name}"
        self.in_channels = sizes["in_channels"]
        self.input_size = input_size or sizes["image_size"]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = images.float()
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] != self.in_channels:
            raise SalunError(
                f"FID feature network expects {self.in_channels} channels, images have {x.shape[1]}"
            )
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear")
        return super().__call__(x)


def feature_extractor(spec: str, classifier: nn.Module | None, input_size: int = 0):
    """``classifier`` -> :class:`ClassifierFeatures`; a ``.safetensors`` path ->
    :class:`NetworkFeatures`. Nothing else is accepted (nothing executable is ever loaded)."""
    if spec == "classifier":
        if classifier is None:
            raise SalunError("fid_features=classifier needs the judge classifier")
        return ClassifierFeatures(classifier)
    return NetworkFeatures(spec, input_size=input_size)
