"""Class-wise unlearning accuracy of a text-to-image model with an ImageNet classifier.

SalUn (Fan et al., ICLR 2024) and ESD judge Imagenette class erasure by classifying images
generated for "an image of {class}" with an ImageNet ResNet-50: UA = share of the erased class's
images NOT classified as that class; the other classes' accuracy measures what is kept. The
classifier is any ``transformers`` image classifier with ImageNet-1k outputs, loaded from a local
``save_pretrained`` folder (safetensors only, offline) or from a hub id the user names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from salun.core.errors import SalunError, unknown_choice
from salun.eval._images import check_safetensors_folder, to_pil

log = logging.getLogger(__name__)

#: Imagenette's ten classes and their ImageNet-1k indices
IMAGENETTE: dict[str, int] = {
    "tench": 0,
    "English springer": 217,
    "cassette player": 482,
    "chain saw": 491,
    "church": 497,
    "French horn": 566,
    "garbage truck": 569,
    "gas pump": 571,
    "golf ball": 574,
    "parachute": 701,
}
IMAGENETTE_CLASSES = tuple(IMAGENETTE)


class ImageNetClassifier:
    """An ImageNet-1k ``transformers`` classifier with its image processor."""

    def __init__(
        self, name_or_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 32
    ) -> None:
        try:
            from transformers import AutoImageProcessor, AutoModelForImageClassification
        except ImportError as e:
            raise SalunError(
                f"the ImageNet classifier needs transformers: pip install 'salun[sd-eval]' ({e})"
            ) from e
        path = Path(name_or_dir)
        local = path.exists()
        if local:
            check_safetensors_folder(path, "ImageNet classifier")
        elif str(name_or_dir).count("/") != 1 or str(name_or_dir).startswith(("/", ".")):
            raise SalunError(
                f"ImageNet classifier {str(name_or_dir)!r} is neither a local folder nor a hub "
                "id of the form 'owner/name'"
            )
        kw: dict[str, Any] = {"local_files_only": True} if local else {}
        try:
            self.model = AutoModelForImageClassification.from_pretrained(
                name_or_dir, use_safetensors=True, trust_remote_code=False, **kw
            )
            self.processor = AutoImageProcessor.from_pretrained(
                name_or_dir, trust_remote_code=False, **kw
            )
        except (OSError, ValueError, KeyError) as e:
            raise SalunError(
                f"ImageNet classifier {str(name_or_dir)!r} does not load: {str(e).splitlines()[0]}"
            ) from e
        n = int(self.model.config.num_labels)
        if n != 1000:
            raise SalunError(f"ImageNet classifier {str(name_or_dir)!r} has {n} labels, not 1000")
        self.name = str(name_or_dir) if not local else path.name
        self.device, self.batch_size = torch.device(device), batch_size
        self.model.to(self.device).eval()

    @torch.no_grad()
    def logits(self, images: Any) -> torch.Tensor:
        """N x 1000 logits for PIL images or an N x C x H x W float tensor in [0, 1]."""
        pil = to_pil(images)
        out = []
        for start in range(0, len(pil), self.batch_size):
            batch = self.processor(images=pil[start : start + self.batch_size], return_tensors="pt")
            pixels = batch["pixel_values"].to(self.device)
            out.append(self.model(pixel_values=pixels).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 1000)

    def predict(self, images: Any, restrict: bool = False) -> torch.Tensor:
        """ImageNet indices (top-1 over all 1000, or over the ten Imagenette classes)."""
        logits = self.logits(images)
        if not restrict:
            return logits.argmax(1)
        idx = torch.tensor(list(IMAGENETTE.values()))
        return idx[logits[:, idx].argmax(1)]


def _class_index(name: str) -> int:
    if name not in IMAGENETTE:
        raise unknown_choice("Imagenette class", name, IMAGENETTE)
    return IMAGENETTE[name]


def class_accuracy(
    classifier: ImageNetClassifier,
    images_by_class: dict[str, Any],
    erased: str | None = None,
    restrict: bool = False,
) -> dict[str, Any]:
    """Per-class top-1 accuracy (%) of generated images; with ``erased``, its UA and the rest's mean.

    ``images_by_class`` maps an Imagenette class name to the images generated for it.
    ``restrict`` takes the argmax over the ten Imagenette logits only (the reference uses all
    1000); the choice is recorded.
    """
    if erased is not None:
        _class_index(erased)
    per_class: dict[str, dict[str, Any]] = {}
    for name, images in images_by_class.items():
        target = _class_index(name)
        pred = classifier.predict(images, restrict=restrict)
        if len(pred) == 0:
            raise SalunError(f"no images for Imagenette class {name!r}")
        acc = 100.0 * float((pred == target).double().mean())
        per_class[name] = {"accuracy": acc, "n": len(pred), "imagenet_index": target}
    result: dict[str, Any] = {
        "classifier": classifier.name,
        "restrict_to_imagenette": restrict,
        "per_class": per_class,
    }
    if erased is not None:
        if erased not in per_class:
            raise SalunError(f"no images for the erased class {erased!r}")
        result["erased"] = erased
        result["ua"] = 100.0 - per_class[erased]["accuracy"]
        others = [v["accuracy"] for k, v in per_class.items() if k != erased]
        result["other_accuracy"] = sum(others) / len(others) if others else None
    log.info("class accuracy: %s", {k: round(v["accuracy"], 2) for k, v in per_class.items()})
    return result


def class_ua(
    classifier: ImageNetClassifier, images: Any, erased: str, restrict: bool = False
) -> float:
    """UA (%) of the images generated for the erased class: share not classified as it."""
    return class_accuracy(classifier, {erased: images}, erased=erased, restrict=restrict)["ua"]
