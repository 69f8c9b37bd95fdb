"""Runtime options of the loop: mixed precision keeps the masked-update guarantee; bad values fail."""

import copy

import pytest
import torch

from salun.config import load_config
from salun.core import runtime
from salun.core.errors import SalunError
from salun.methods import UnlearnData, get_method
from salun.methods.saliency import compute_saliency_mask


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_non_salient_weights_bit_identical(digits_class, precision):
    exp, original, _ = digits_class
    model = copy.deepcopy(original)
    mask = compute_saliency_mask(model, exp.forget, exp.task, ratio=0.3)
    data = UnlearnData(exp.forget, exp.retain, seed=0)
    cfg = load_config("smoke/digits", [f"runtime.precision={precision}"])
    with runtime.session(None):
        runtime.configure(cfg)
        out = get_method("salun", epochs=1, lr=0.01, weight_decay=5e-4).unlearn(
            model, data, exp.task, mask=mask
        )
    moved = 0
    for name, p in out.named_parameters():
        before = dict(original.named_parameters())[name]
        m = mask.masks[name]
        assert torch.equal(p.detach()[~m], before.detach()[~m]), name
        moved += int((p.detach()[m] != before.detach()[m]).sum())
        assert torch.isfinite(p).all()
    assert moved > 0  # salient weights did train


def test_runtime_config_is_checked():
    with pytest.raises(SalunError, match="unknown runtime.precision 'fp8'"):
        load_config("smoke/digits", ["runtime.precision=fp8"])
    with pytest.raises(SalunError, match="checkpoint_every must be an integer >= 0"):
        load_config("smoke/digits", ["runtime.checkpoint_every=-1"])
