"""Behaviour on real data (digits, class-wise forgetting of one digit)."""

import copy

import pytest

from salun.eval.accuracy import predict
from salun.methods import UnlearnData, get_method

# Off the knife edge (issue 11): measured on the digits_class original trained with 1 and with 2
# threads, GA lr 5e-3 left 47.5 % forget accuracy (threshold 50) and SalUn lr 0.01 kept 90.2 %
# retain accuracy (bound 90); GA lr 6e-3 gives 0.0 / 0.0 and SalUn lr 5e-3 95.5 / 95.0.
# Re-measured on 2026-12-04 (another machine of the same kind): GA lr 6e-3 left 82.0 % forget
# accuracy with 1 thread (0.0 with 2), lr 8e-3 0.0 / 0.0 and lr 1e-2 0.0 / 0.0: GA runs at 1e-2.
SETTINGS = {
    "ga": {"epochs": 5, "lr": 1e-2, "batch_size": 32},
    "rl": {"epochs": 3, "lr": 0.01, "batch_size": 64},
    "salun": {"epochs": 3, "lr": 5e-3, "batch_size": 64},
    "salun-paper": {"epochs": 3, "lr": 0.01, "batch_size": 64, "form": "paper", "alpha": 1.0},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_forgetting_lowers_forget_accuracy(name, digits_class):
    exp, original, _ = digits_class
    before_f = predict(original, exp.forget, exp.task).accuracy
    before_r = predict(original, exp.retain, exp.task).accuracy
    assert before_f > 90  # the original knows the class
    method = get_method(name.split("-")[0], **SETTINGS[name])
    model = method.unlearn(copy.deepcopy(original), UnlearnData(exp.forget, exp.retain), exp.task)
    after_f = predict(model, exp.forget, exp.task).accuracy
    after_r = predict(model, exp.retain, exp.task).accuracy
    assert after_f < before_f - 50, (name, before_f, after_f)
    if name.startswith("salun"):
        # stated bound: SalUn keeps retain accuracy within 10 points of the original. Re-measured
        # (issue 11, original trained with 1 / 2 threads): 95.5 / 95.0 (reference form, lr 5e-3)
        # and 95.9 / 94.6 (paper form) from 100.
        assert after_r >= before_r - 10, (before_r, after_r)
