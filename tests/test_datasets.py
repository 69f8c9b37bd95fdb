"""Tests for salun.data.datasets: loaders for local files and IndexedDataset."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from salun.core.errors import SalunError
from salun.data import DATASETS, DatasetBundle, ImageData, IndexedDataset, load_dataset

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- helpers


def _write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _write_fashion(folder: Path, gz: bool, n_train: int = 6, n_test: int = 4) -> dict:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) + 3) % 10,
    }
    for stem, arr in arrays.items():
        magic = 0x00000803 if arr.ndim == 3 else 0x00000801
        _write_idx(folder / stem, arr, magic, gz)
    return arrays


def _cifar_record(label_bytes: list[int], pixels: np.ndarray) -> bytes:
    assert pixels.shape == (3, 32, 32)
    return bytes(label_bytes) + pixels.astype(np.uint8).tobytes()


def _pixels_with_marker(channel: int, row: int, col: int, value: int) -> np.ndarray:
    pixels = np.zeros((3, 32, 32), dtype=np.uint8)
    pixels[channel, row, col] = value
    return pixels


# --------------------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_classes() -> None:
    bundle = load_dataset("digits")
    assert isinstance(bundle, DatasetBundle)
    train, test = bundle.train, bundle.test
    assert len(train) + len(test) == 1797
    assert len(test) == 360
    for split in (train, test):
        assert split.images.dtype == torch.float32
        assert split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (1, 16, 16)
        assert split.in_channels == 1
        assert split.image_size == 16
        assert split.num_classes == 10
        assert split.classes == [str(k) for k in range(10)]
        assert float(split.images.min()) >= 0.0
        assert float(split.images.max()) <= 1.0
        assert split.name == "digits"
    # stratified: every class is in the test split, in roughly the right share
    counts = torch.bincount(test.labels, minlength=10)
    assert int(counts.min()) >= 34 and int(counts.max()) <= 38


def test_digits_is_deterministic_and_splits_disjoint() -> None:
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.labels, b.test.labels)
    # no test image appears verbatim among training images of the native split
    native = load_dataset("digits", image_size=8)
    train_rows = {tuple(x.flatten().tolist()) for x in native.train.images[:200]}
    test_rows = [tuple(x.flatten().tolist()) for x in native.test.images]
    assert len(test_rows) == 360
    assert sum(r in train_rows for r in test_rows) < 10  # digits has a few exact duplicates


def test_digits_native_values_and_resize() -> None:
    native = load_dataset("digits", image_size=8)
    assert native.train.images.shape[1:] == (1, 8, 8)
    # values are k/16 for integer k
    scaled = native.train.images * 16
    assert torch.allclose(scaled, scaled.round(), atol=1e-5)
    resized = load_dataset("digits", image_size=12)
    assert resized.train.images.shape[1:] == (1, 12, 12)
    assert torch.equal(resized.train.labels, native.train.labels)
    expected = torch.nn.functional.interpolate(
        native.train.images[:5], size=(12, 12), mode="bilinear", align_corners=False
    )
    assert torch.allclose(resized.train.images[:5], expected, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "16", True])
def test_bad_image_size(bad: object) -> None:
    with pytest.raises(SalunError, match="image_size"):
        load_dataset("digits", image_size=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fashion-mnist


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_idx_from_tmp(tmp_path: Path, gz: bool) -> None:
    arrays = _write_fashion(tmp_path, gz)
    bundle = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert bundle.train.images.shape == (6, 1, 28, 28)
    assert bundle.test.images.shape == (4, 1, 28, 28)
    assert bundle.train.classes[0] == "T-shirt/top"
    assert bundle.train.classes[9] == "Ankle boot"
    assert bundle.train.num_classes == 10
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32) / 255.0)
    assert torch.allclose(bundle.train.images[:, 0], expected)
    assert bundle.train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert bundle.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert bundle.test.labels.dtype == torch.int64


def test_fashion_resize(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=True)
    bundle = load_dataset("fashion-mnist", data_dir=str(tmp_path), image_size=32)
    assert bundle.train.images.shape == (6, 1, 32, 32)
    assert bundle.train.image_size == 32


def test_fashion_missing_file(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(SalunError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte" in msg
    assert str(tmp_path) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "\n" not in msg


def test_fashion_bad_magic(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=False)
    labels = np.zeros(6, dtype=np.uint8)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, 0x00000803, gz=False)
    with pytest.raises(SalunError, match="magic"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_truncated(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SalunError, match="truncated"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_count_mismatch(tmp_path: Path) -> None:
    _write_fashion(tmp_path, gz=False)
    _write_idx(
        tmp_path / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8), 0x00000801, gz=False
    )
    with pytest.raises(SalunError, match="6 images"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_system_copy() -> None:
    bundle = load_dataset("fashion-mnist")
    assert bundle.train.images.shape == (60000, 1, 28, 28)
    assert bundle.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(bundle.train.labels).tolist() == [6000] * 10
    assert torch.bincount(bundle.test.labels).tolist() == [1000] * 10
    assert float(bundle.test.images.min()) == 0.0
    assert float(bundle.test.images.max()) == 1.0


# --------------------------------------------------------------------------- cifar


def _write_cifar10(folder: Path, with_names: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # batch 1: 7 records; record k has label k % 10 and a marker pixel
    records = [
        _cifar_record([k % 10], _pixels_with_marker(k % 3, k, 31 - k, 100 + k)) for k in range(7)
    ]
    (folder / "data_batch_1.bin").write_bytes(b"".join(records))
    for i in range(2, 6):  # batches 2..5: one record each, label i
        (folder / f"data_batch_{i}.bin").write_bytes(
            _cifar_record([i], _pixels_with_marker(2, 0, 0, 200 + i))
        )
    (folder / "test_batch.bin").write_bytes(
        _cifar_record([9], _pixels_with_marker(1, 5, 7, 255))
        + _cifar_record([0], np.full((3, 32, 32), 51, dtype=np.uint8))
    )
    if with_names:
        names = ["airplane", "automobile", "bird", "cat", "deer"]
        names += ["dog", "frog", "horse", "ship", "truck"]
        (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_binary_layout(tmp_path: Path, nested: bool) -> None:
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    _write_cifar10(folder)
    bundle = load_dataset("cifar10", data_dir=tmp_path)
    train, test = bundle.train, bundle.test
    assert train.images.shape == (11, 3, 32, 32)
    assert test.images.shape == (2, 3, 32, 32)
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5]
    assert test.labels.tolist() == [9, 0]
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    assert train.num_classes == 10
    for k in range(7):
        image = train.images[k]
        assert image[k % 3, k, 31 - k].item() == pytest.approx((100 + k) / 255)
        assert int((image > 0).sum()) == 1
    assert train.images[7, 2, 0, 0].item() == pytest.approx(202 / 255)
    assert test.images[0, 1, 5, 7].item() == 1.0
    assert int((test.images[0] > 0).sum()) == 1
    assert torch.allclose(test.images[1], torch.full((3, 32, 32), 0.2))


def test_cifar10_without_names_and_resize(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, with_names=False)
    bundle = load_dataset("cifar10", data_dir=tmp_path, image_size=16)
    assert bundle.train.classes == [str(k) for k in range(10)]
    assert bundle.train.images.shape == (11, 3, 16, 16)


def test_cifar10_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar10(folder)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(SalunError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = str(info.value)
    assert "data_batch_4.bin" in msg
    assert str(folder) in msg
    assert "binary" in msg


def test_cifar10_bad_record_size(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(SalunError, match="binary"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar100_binary_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    train = [
        _cifar_record([k % 20, 10 * k + 3], _pixels_with_marker(2, 31, k, 10 * k + 1))
        for k in range(7)
    ]
    (folder / "train.bin").write_bytes(b"".join(train))
    (folder / "test.bin").write_bytes(_cifar_record([19, 99], _pixels_with_marker(0, 1, 2, 77)))
    names = [f"class_{k}" for k in range(100)]
    (folder / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    bundle = load_dataset("cifar100", data_dir=tmp_path)
    assert bundle.train.labels.tolist() == [10 * k + 3 for k in range(7)]
    assert bundle.test.labels.tolist() == [99]
    assert bundle.train.num_classes == 100
    assert bundle.train.classes[99] == "class_99"
    for k in range(7):
        assert bundle.train.images[k, 2, 31, k].item() == pytest.approx((10 * k + 1) / 255)
        assert int((bundle.train.images[k] > 0).sum()) == 1
    assert bundle.test.images[0, 0, 1, 2].item() == pytest.approx(77 / 255)


def test_cifar100_default_names(tmp_path: Path) -> None:
    (tmp_path / "train.bin").write_bytes(_cifar_record([0, 5], np.zeros((3, 32, 32))))
    (tmp_path / "test.bin").write_bytes(_cifar_record([0, 6], np.zeros((3, 32, 32))))
    bundle = load_dataset("cifar100", data_dir=tmp_path)
    assert bundle.train.classes == [str(k) for k in range(100)]


def test_cifar100_missing(tmp_path: Path) -> None:
    with pytest.raises(SalunError) as info:
        load_dataset("cifar100", data_dir=tmp_path)
    msg = str(info.value)
    assert "train.bin" in msg and "test.bin" in msg
    assert str(tmp_path) in msg


# --------------------------------------------------------------------------- svhn


def _write_svhn(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    n = 5
    x = np.zeros((32, 32, 3, n), dtype=np.uint8)
    for k in range(n):
        x[k, 2 * k, k % 3, k] = 10 + k  # row k, col 2k, channel k%3 in image k
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    savemat(str(folder / "train_32x32.mat"), {"X": x, "y": y})
    savemat(str(folder / "test_32x32.mat"), {"X": x[..., :2], "y": y[:2]})
    return x, y


def test_svhn_layout_and_labels(tmp_path: Path) -> None:
    _write_svhn(tmp_path)
    bundle = load_dataset("svhn", data_dir=tmp_path)
    assert bundle.train.images.shape == (5, 3, 32, 32)
    assert bundle.test.images.shape == (2, 3, 32, 32)
    assert bundle.train.labels.tolist() == [0, 1, 2, 0, 9]
    assert bundle.test.labels.tolist() == [0, 1]
    assert bundle.train.labels.dtype == torch.int64
    assert bundle.train.classes == [str(k) for k in range(10)]
    for k in range(5):
        assert bundle.train.images[k, k % 3, k, 2 * k].item() == pytest.approx((10 + k) / 255)
        assert int((bundle.train.images[k] > 0).sum()) == 1


def test_svhn_missing(tmp_path: Path) -> None:
    _write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(SalunError) as info:
        load_dataset("svhn", data_dir=tmp_path)
    assert "test_32x32.mat" in str(info.value)
    assert str(tmp_path) in str(info.value)


# --------------------------------------------------------------------------- names / dirs


def test_datasets_tuple() -> None:
    assert set(DATASETS) == {"digits", "fashion-mnist", "cifar10", "cifar100", "svhn"}


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(SalunError) as info:
        load_dataset("fashion_mnist")
    msg = str(info.value)
    assert "'fashion_mnist'" in msg
    assert "Did you mean" in msg and "'fashion-mnist'" in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_data_dir_required(name: str) -> None:
    with pytest.raises(SalunError, match="needs data.data_dir=FOLDER"):
        load_dataset(name)


# --------------------------------------------------------------------------- IndexedDataset


def _toy_data(n: int = 10) -> ImageData:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone() / n
    labels = torch.arange(n, dtype=torch.int64) % 3
    return ImageData(images=images, labels=labels, classes=["a", "b", "c"], name="toy")


def test_imagedata_properties() -> None:
    data = _toy_data()
    assert len(data) == 10
    assert data.num_classes == 3
    assert data.in_channels == 1
    assert data.image_size == 2


def test_indexed_dataset_returns_underlying_index() -> None:
    data = _toy_data()
    ds = IndexedDataset(data, indices=np.array([7, 2, 5]))
    assert len(ds) == 3
    assert ds.indices.dtype == torch.int64
    assert ds.data is data
    image, label, index = ds[0]
    assert index == 7
    assert label == 7 % 3
    assert torch.equal(image, data.images[7])
    assert [ds[i][2] for i in range(3)] == [7, 2, 5]


@pytest.mark.parametrize(
    "indices", [[1, 4], np.array([1, 4]), torch.tensor([1, 4]), range(1, 5, 3)]
)
def test_indexed_dataset_index_types(indices: object) -> None:
    ds = IndexedDataset(_toy_data(), indices=indices)  # type: ignore[arg-type]
    assert ds.indices.tolist() == [1, 4]


def test_indexed_dataset_all_and_empty() -> None:
    data = _toy_data()
    assert len(IndexedDataset(data)) == 10
    assert IndexedDataset(data).indices.tolist() == list(range(10))
    assert len(IndexedDataset(data, indices=[])) == 0


def test_indexed_dataset_relabel_and_loader() -> None:
    data = _toy_data()
    ds = IndexedDataset(data, indices=[0, 1, 2, 3], relabel={0: 2, 2: 0})
    assert [ds[i][1] for i in range(4)] == [2, 1, 0, 2]
    assert data.labels[:4].tolist() == [0, 1, 2, 0]  # underlying data untouched
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    images, labels, index = next(iter(loader))
    assert images.shape == (4, 1, 2, 2)
    assert labels.tolist() == [2, 1, 0, 2]
    assert index.tolist() == [0, 1, 2, 3]


def test_indexed_dataset_bad_indices() -> None:
    data = _toy_data()
    with pytest.raises(SalunError, match="out of range"):
        IndexedDataset(data, indices=[0, 10])
    with pytest.raises(SalunError, match="out of range"):
        IndexedDataset(data, indices=[-1])
    with pytest.raises(SalunError, match="integers"):
        IndexedDataset(data, indices=np.array([0.5]))


def test_a_registered_dataset_loads_by_name(monkeypatch, tmp_path):
    """load_dataset looks names up in the DATASETS registry: a source registered there loads
    by name, with its default size applied and its folder resolved from data_dir."""
    from salun.data.datasets import DatasetSource

    def read(folder):
        assert folder == tmp_path
        images = torch.rand(4, 1, 8, 8)
        data = ImageData(images, torch.tensor([0, 1, 0, 1]), ["a", "b"], "toy")
        return DatasetBundle(train=data, test=data)

    DATASETS.names()  # load the registry before patching it
    monkeypatch.setitem(DATASETS._items, "toy", DatasetSource(read, default_size=4))
    bundle = load_dataset("toy", tmp_path)
    assert bundle.train.images.shape == (4, 1, 4, 4)
    with pytest.raises(SalunError, match=r"dataset 'toy' needs data.data_dir"):
        load_dataset("toy")
