import copy

import pytest
import torch

from salun.config import load_config
from salun.run import prepare, train_model


def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: one thread is faster and robust to a loaded machine


@pytest.fixture(scope="session", autouse=True)
def _session_threads():
    # Session fixtures (digits_class) are set up before function-scoped autouse ones: without
    # this, the first test file to request them decided the thread count of their training,
    # and so the trained weights (`pytest tests/test_methods_contract.py tests/test_behaviour.py`
    # trained with every core, and GA and SalUn missed their thresholds).
    _one_thread()


@pytest.fixture(autouse=True)
def _threads():
    _one_thread()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits_class(cache_dir, _session_threads):
    """Class-wise forgetting of digit 3 on a 600-image digits subset, with a trained original."""
    cfg = load_config(
        "smoke/digits",
        [f"cache_dir={cache_dir}", "train.epochs=8", "model.width=8", "progress=false"],
    )
    exp = prepare(cfg)
    model, info = train_model(exp, "original")
    return exp, model, info


@pytest.fixture
def original(digits_class):
    return copy.deepcopy(digits_class[1])
