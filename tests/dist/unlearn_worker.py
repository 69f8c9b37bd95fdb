"""Worker for the torchrun SalUn test (gloo, CPU): the real CLI under torch.distributed.

``salun unlearn`` runs on every rank with the rank's own --out (only rank 0 may create it);
a spy on ``unlearn_once`` keeps each rank's unlearned model and mask, which the worker writes
next to the run folders (safetensors, outside the library) for the test to compare.
"""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import salun.run
from salun.cli import main


def run(base: str, *items: str) -> int:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    kept = {}
    real = salun.run.unlearn_masked

    def spy(*a, **k):
        model, info, mask = real(*a, **k)
        kept["model"], kept["mask"] = model, mask
        return model, info, mask

    salun.run.unlearn_masked = spy
    rc = main(["unlearn", *items, "--out", str(Path(base) / f"run-rank{rank}")])
    tensors = {f"model.{k}": v.contiguous() for k, v in kept["model"].state_dict().items()}
    tensors.update({f"mask.{k}": v for k, v in kept["mask"].masks.items()})
    save_file(tensors, str(Path(base) / f"rank{rank}.safetensors"))
    return rc


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], *sys.argv[2:]))
