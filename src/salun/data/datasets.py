"""Image classification datasets read from local files (no downloads, no pickle).

Every loader returns a :class:`DatasetBundle` of float32 images in ``[0, 1]`` laid out as
``N x C x H x W`` and int64 labels. Supported names are listed in :data:`DATASETS`:

* ``digits``: scikit-learn's bundled 8x8 digits, split 80/20 (stratified, fixed seed).
* ``fashion-mnist``: the four IDX files (raw or ``.gz``); defaults to Debian's
  ``dataset-fashion-mnist`` folder.
* ``cifar10`` / ``cifar100``: the *binary* releases (``cifar-10-batches-bin``,
  ``cifar-100-binary``).
* ``svhn``: the cropped-digit ``train_32x32.mat`` / ``test_32x32.mat`` files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from salun.core.errors import SalunError
from salun.core.registry import DATASETS  # name -> DatasetSource, registered at the end

logger = logging.getLogger(__name__)


@dataclass
class ImageData:
    """One split of an image classification dataset, held fully in memory.

    Attributes:
        images: float32 tensor of shape ``N x C x H x W`` with values in ``[0, 1]``.
        labels: int64 tensor of shape ``N``.
        classes: Class names; ``classes[k]`` is the name of label ``k``.
        name: Dataset name (one of :data:`DATASETS`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be N x C x H x W, got shape {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes (length of :attr:`classes`)."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Number of image channels ``C``."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Image height ``H`` (images are square)."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class DatasetBundle:
    """Train and test splits of one dataset."""

    train: ImageData
    test: ImageData


@dataclass(frozen=True)
class DatasetSource:
    """How :func:`load_dataset` reads one registered dataset.

    Attributes:
        load: ``folder -> DatasetBundle`` (``folder`` is None when ``needs_folder`` is False).
        needs_folder: Whether the files live in a folder (``data.data_dir``).
        default_dir: The folder used when ``data.data_dir`` is not given (None: required).
        default_size: Image size when ``image_size`` is not given (None: native size).
    """

    load: Callable[[Path | None], DatasetBundle]
    needs_folder: bool = True
    default_dir: Path | None = None
    default_size: int | None = None


class IndexedDataset(Dataset):
    """Dataset over :class:`ImageData` restricted to given indices.

    ``__getitem__(i)`` returns ``(image, label, index)`` where ``index`` is the position of the
    sample in the underlying :class:`ImageData` (not ``i``), so unlearning code can tell which
    training samples a batch holds.

    Args:
        data: The underlying split.
        indices: Positions in ``data`` to expose, in order; ``None`` means all samples.
        relabel: Optional map from original label to the label to return; labels not in the map
            are returned unchanged.

    Attributes:
        data: The underlying split.
        indices: int64 tensor of the exposed positions.
        labels: int64 tensor of the (possibly relabelled) labels of the exposed samples.
    """

    def __init__(
        self,
        data: ImageData,
        indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        relabel: dict[int, int] | None = None,
    ) -> None:
        self.data = data
        n = len(data)
        if indices is None:
            idx = torch.arange(n, dtype=torch.long)
        else:
            idx = torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices)
            if idx.numel() == 0:
                idx = torch.zeros(0, dtype=torch.long)
            if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dtype.is_complex:
                raise SalunError(
                    f"indices must be integers, got dtype {idx.dtype}; pass sample positions"
                )
            idx = idx.reshape(-1).to(torch.long)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
                raise SalunError(f"index {bad} out of range for {data.name} split of size {n}")
        self.indices = idx
        labels = data.labels[idx].clone()
        if relabel:
            original = labels.clone()
            for old, new in relabel.items():
                labels[original == int(old)] = int(new)
        self.labels = labels

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        pos = int(self.indices[i])
        return self.data.images[pos], int(self.labels[i]), pos


def load_dataset(
    name: str, data_dir: str | Path | None = None, image_size: int | None = None
) -> DatasetBundle:
    """Load a dataset from local files.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Folder with the dataset files. Not used for ``digits``; optional for
            ``fashion-mnist`` (defaults to ``/usr/share/datasets/fashion-mnist``); required
            for the others.
        image_size: If given, resize images to ``image_size x image_size`` (bilinear).
            ``digits`` defaults to 16; other datasets keep their native size by default.

    Returns:
        The train and test splits.

    Raises:
        SalunError: Unknown name, missing or malformed files, or a bad ``image_size``.
    """
    source: DatasetSource = DATASETS.get(name)  # unknown names fail here, listing the others
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise SalunError(f"image_size must be a positive integer, got {image_size!r}")

    folder = _resolve_dir(name, data_dir, source.default_dir) if source.needs_folder else None
    bundle = source.load(folder)
    size = image_size if image_size is not None else source.default_size
    if size is not None:
        bundle = DatasetBundle(train=_resize(bundle.train, size), test=_resize(bundle.test, size))
    logger.info(
        "loaded %s: %d train / %d test images, %d x %d x %d, %d classes",
        name,
        len(bundle.train),
        len(bundle.test),
        bundle.train.in_channels,
        bundle.train.image_size,
        bundle.train.image_size,
        bundle.train.num_classes,
    )
    return bundle


def _resolve_dir(name: str, data_dir: str | Path | None, default: Path | None) -> Path:
    if data_dir is None:
        if default is not None:
            return default
        raise SalunError(
            f"dataset {name!r} needs data.data_dir=FOLDER (a key=value override, or data_dir "
            f"under data: in the config) pointing at a folder with its files"
        )
    return Path(data_dir).expanduser()


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux /proc/meminfo), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _resize(data: ImageData, size: int) -> ImageData:
    if data.image_size == size and data.images.shape[3] == size:
        return data
    need = len(data) * data.in_channels * size * size * 4
    free = _available_memory()
    if free is not None and need > free:
        raise SalunError(
            f"data.image_size={size} needs {need / 2**30:.1f} GiB for the {data.name} images, "
            f"more than the {free / 2**30:.1f} GiB of memory available; use a smaller image_size"
        )
    resized = F.interpolate(
        data.images, size=(size, size), mode="bilinear", align_corners=False, antialias=False
    ).clamp_(0.0, 1.0)
    return ImageData(images=resized, labels=data.labels, classes=data.classes, name=data.name)


# --------------------------------------------------------------------------- digits


# --------------------------------------------------------------------------- fashion-mnist


# --------------------------------------------------------------------------- cifar


# --------------------------------------------------------------------------- svhn
