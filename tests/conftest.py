import copy

import pytest
import torch

from salun.config import load_config
from salun.run import prepare, train_model


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny models: one thread is faster and robust to a loaded machine


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits_class(cache_dir):
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
