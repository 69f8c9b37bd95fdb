"""The built-in dataset sources, read from their standard on-disk formats and registered in
:data:`salun.core.registry.DATASETS`: scikit-learn's digits, Fashion-MNIST (IDX files, Debian's
``dataset-fashion-mnist``), CIFAR-10/100 (binary version) and SVHN (``.mat``)."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from salun.core.errors import SalunError
from salun.core.registry import DATASETS  # name -> DatasetSource, registered at the end
from salun.data.datasets import DatasetBundle, DatasetSource, ImageData

logger = logging.getLogger(__name__)

FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")


FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


IDX_IMAGES_MAGIC = 0x00000803


IDX_LABELS_MAGIC = 0x00000801


CIFAR10_DIRNAME = "cifar-10-batches-bin"


CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))


CIFAR10_TEST_FILE = "test_batch.bin"


CIFAR10_NAMES_FILE = "batches.meta.txt"


CIFAR100_DIRNAME = "cifar-100-binary"


CIFAR100_TRAIN_FILE = "train.bin"


CIFAR100_TEST_FILE = "test.bin"


CIFAR100_NAMES_FILE = "fine_label_names.txt"


CIFAR_PIXELS = 3 * 32 * 32


SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


DIGITS_DEFAULT_SIZE = 16


def _to_data(images_u8: np.ndarray, labels: np.ndarray, classes: list[str], name: str) -> ImageData:
    """Turn uint8 ``N x C x H x W`` pixels and integer labels into :class:`ImageData`."""
    pixels = np.array(images_u8, dtype=np.uint8, order="C", copy=True)  # writable, contiguous
    images = torch.from_numpy(pixels).to(torch.float32).div_(255.0)
    return ImageData(
        images=images,
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64).copy()),
        classes=list(classes),
        name=name,
    )


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise SalunError(
            f"{path}: labels must lie in 0..{num_classes - 1}, found "
            f"{int(labels.min())}..{int(labels.max())}; the file is corrupt or the wrong one"
        )


def _load_digits() -> DatasetBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    images = torch.from_numpy(np.asarray(raw.images, dtype=np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(raw.target, dtype=np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=raw.target
    )
    classes = [str(k) for k in range(10)]
    train_idx_t = torch.from_numpy(np.asarray(train_idx, dtype=np.int64))
    test_idx_t = torch.from_numpy(np.asarray(test_idx, dtype=np.int64))
    return DatasetBundle(
        train=ImageData(
            images[train_idx_t].clone(), labels[train_idx_t].clone(), classes, "digits"
        ),
        test=ImageData(images[test_idx_t].clone(), labels[test_idx_t].clone(), classes, "digits"),
    )


def _find_idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise SalunError(
        f"fashion-mnist file {stem} (or {stem}.gz) missing in {folder}; install Debian's "
        f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or give "
        f"data.data_dir=FOLDER holding the four IDX files"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise SalunError(f"cannot read {path}: {exc}") from exc


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes; return an array shaped by its header dims."""
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise SalunError(f"{path}: too short to be an IDX file ({len(buf)} bytes)")
    found = int.from_bytes(buf[:4], "big")
    if found != magic:
        raise SalunError(
            f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}; "
            f"the file is corrupt or not the expected IDX file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise SalunError(f"{path}: truncated IDX header ({len(buf)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(buf) != expected:
        raise SalunError(
            f"{path}: size {len(buf)} bytes does not match IDX dims {dims} "
            f"(expected {expected} bytes); the file is truncated or corrupt"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _load_fashion_split(folder: Path, images_stem: str, labels_stem: str) -> ImageData:
    images_path = _find_idx_file(folder, images_stem)
    labels_path = _find_idx_file(folder, labels_stem)
    images = _read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise SalunError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the files do not belong together"
        )
    _check_labels(labels, len(FASHION_MNIST_CLASSES), labels_path)
    return _to_data(images[:, None, :, :], labels, FASHION_MNIST_CLASSES, "fashion-mnist")


def _load_fashion_mnist(folder: Path) -> DatasetBundle:
    for stem in FASHION_MNIST_FILES.values():
        _find_idx_file(folder, stem)
    train = _load_fashion_split(
        folder, FASHION_MNIST_FILES["train_images"], FASHION_MNIST_FILES["train_labels"]
    )
    test = _load_fashion_split(
        folder, FASHION_MNIST_FILES["test_images"], FASHION_MNIST_FILES["test_labels"]
    )
    if tuple(train.images.shape[1:]) != tuple(test.images.shape[1:]):
        raise SalunError(
            f"fashion-mnist in {folder}: training images are {tuple(train.images.shape[2:])} but "
            f"test images are {tuple(test.images.shape[2:])}; the IDX files do not belong together"
        )
    return DatasetBundle(train=train, test=test)


def _cifar_folder(data_dir: Path, dirname: str, required: Sequence[str], name: str) -> Path:
    for candidate in (data_dir, data_dir / dirname):
        if all((candidate / f).is_file() for f in required):
            return candidate
    folder = data_dir / dirname if (data_dir / dirname).is_dir() else data_dir
    missing = [f for f in required if not (folder / f).is_file()]
    raise SalunError(
        f"{name}: missing {', '.join(missing)} in {folder} (expected {', '.join(required)} in "
        f"{data_dir} or {data_dir / dirname}); only the binary version ({dirname}) is read"
    )


def _read_cifar_records(path: Path, label_bytes: int, label_pos: int) -> tuple[np.ndarray, ...]:
    buf = _read_bytes(path)
    record = label_bytes + CIFAR_PIXELS
    if len(buf) == 0 or len(buf) % record:
        raise SalunError(
            f"{path}: size {len(buf)} bytes is not a positive multiple of the {record}-byte "
            f"record; is this the binary version of the dataset?"
        )
    rows = np.frombuffer(buf, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, label_pos].astype(np.int64)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32)
    return images, labels


def _read_class_names(path: Path, num_classes: int) -> list[str]:
    if not path.is_file():
        logger.warning("%s not found; using numeric class names", path)
        return [str(k) for k in range(num_classes)]
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise SalunError(f"cannot read {path}: {exc}") from exc
    names = [line.strip() for line in lines if line.strip()]
    if len(names) != num_classes:
        logger.warning(
            "%s lists %d names, expected %d; using numeric class names",
            path,
            len(names),
            num_classes,
        )
        return [str(k) for k in range(num_classes)]
    return names


def _cifar_split(
    paths: Sequence[Path], label_bytes: int, label_pos: int, classes: list[str], name: str
) -> ImageData:
    images_parts, labels_parts = [], []
    for path in paths:
        images, labels = _read_cifar_records(path, label_bytes, label_pos)
        _check_labels(labels, len(classes), path)
        images_parts.append(images)
        labels_parts.append(labels)
    return _to_data(np.concatenate(images_parts), np.concatenate(labels_parts), classes, name)


def _load_cifar10(data_dir: Path) -> DatasetBundle:
    required = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    folder = _cifar_folder(data_dir, CIFAR10_DIRNAME, required, "cifar10")
    classes = _read_class_names(folder / CIFAR10_NAMES_FILE, 10)
    return DatasetBundle(
        train=_cifar_split([folder / f for f in CIFAR10_TRAIN_FILES], 1, 0, classes, "cifar10"),
        test=_cifar_split([folder / CIFAR10_TEST_FILE], 1, 0, classes, "cifar10"),
    )


def _load_cifar100(data_dir: Path) -> DatasetBundle:
    required = (CIFAR100_TRAIN_FILE, CIFAR100_TEST_FILE)
    folder = _cifar_folder(data_dir, CIFAR100_DIRNAME, required, "cifar100")
    classes = _read_class_names(folder / CIFAR100_NAMES_FILE, 100)
    return DatasetBundle(
        train=_cifar_split([folder / CIFAR100_TRAIN_FILE], 2, 1, classes, "cifar100"),
        test=_cifar_split([folder / CIFAR100_TEST_FILE], 2, 1, classes, "cifar100"),
    )


def _load_svhn_split(path: Path) -> ImageData:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(str(path), variable_names=("X", "y"))
    except (OSError, ValueError, NotImplementedError, MatReadError) as exc:
        raise SalunError(f"cannot read {path} as a MATLAB v5 file: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise SalunError(f"{path}: expected variables 'X' and 'y', found {sorted(mat)}")
    x = np.asarray(mat["X"])
    y = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise SalunError(f"{path}: X must have shape 32 x 32 x 3 x N, got {x.shape}")
    if x.shape[3] != y.shape[0]:
        raise SalunError(f"{path}: X holds {x.shape[3]} images but y holds {y.shape[0]} labels")
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    y = np.where(y == 10, 0, y)
    _check_labels(y, 10, path)
    images = np.transpose(x, (3, 2, 0, 1))  # H W C N -> N C H W
    return _to_data(images, y, [str(k) for k in range(10)], "svhn")


def _load_svhn(folder: Path) -> DatasetBundle:
    paths = {split: folder / fname for split, fname in SVHN_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise SalunError(
            f"svhn: missing {', '.join(missing)} in {folder} (expected "
            f"{', '.join(SVHN_FILES.values())}, the cropped-digit format)"
        )
    return DatasetBundle(
        train=_load_svhn_split(paths["train"]), test=_load_svhn_split(paths["test"])
    )


def _folder(read: Callable[[Path], DatasetBundle]) -> Callable[[Path | None], DatasetBundle]:
    def load(folder: Path | None) -> DatasetBundle:
        assert folder is not None  # needs_folder=True: load_dataset resolved it
        return read(folder)

    return load


DATASETS.register("digits")(
    DatasetSource(lambda _: _load_digits(), needs_folder=False, default_size=DIGITS_DEFAULT_SIZE)
)
DATASETS.register("fashion-mnist")(
    DatasetSource(_folder(_load_fashion_mnist), default_dir=FASHION_MNIST_DEFAULT_DIR)
)
DATASETS.register("cifar10")(DatasetSource(_folder(_load_cifar10)))
DATASETS.register("cifar100")(DatasetSource(_folder(_load_cifar100)))
DATASETS.register("svhn")(DatasetSource(_folder(_load_svhn)))
