"""The torch-free catalog (salun list, --help) agrees with the real registries."""

import dataclasses

from salun.core import catalog
from salun.core.registry import METHODS
from salun.data import DATASETS
from salun.methods import list_methods, method_tasks
from salun.models import MODELS


def test_catalog_matches_method_registry():
    assert catalog.method_names() == list_methods()
    for name in list_methods():
        cls = METHODS.get(name)
        _, tasks, params = catalog.METHODS[name]
        assert set(tasks) == set(method_tasks(cls)), name
        assert params == tuple(f.name for f in dataclasses.fields(cls)), name
    for task in catalog.TASKS:
        assert catalog.method_names(task) == list_methods(task)


def test_catalog_matches_models_and_datasets():
    assert list(MODELS) == sorted(catalog.MODELS)
    assert list(DATASETS) == sorted(catalog.DATASETS)


def test_display_names_are_unique_and_prefix_labels():
    shown = [catalog.display_name(n) for n in catalog.METHODS]
    assert len(set(shown)) == len(shown)
    assert catalog.display_name("salun") == "SalUn"
    assert catalog.display_name("l1_sparse") == "l1-sparse"
    assert catalog.display_name("salun-lr0.005") == "SalUn-lr0.005"
    assert catalog.display_name("unknown label") == "unknown label"


def test_catalog_tasks_match_the_task_registry():
    from salun.core.registry import TASKS

    builtin = [n for n in TASKS.names() if TASKS.get(n).__module__.startswith("salun.")]
    assert sorted(catalog.TASKS) == sorted(builtin)
