"""Datasets: local image data loading and indexed views."""

from salun.data.datasets import (
    DATASETS,
    DatasetBundle,
    ImageData,
    IndexedDataset,
    load_dataset,
)
from salun.data.splits import Split, make_split, resolve_class

__all__ = [
    "Split",
    "make_split",
    "resolve_class",
    "DATASETS",
    "DatasetBundle",
    "ImageData",
    "IndexedDataset",
    "load_dataset",
]
