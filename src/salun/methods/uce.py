"""UCE: unified concept editing, a closed-form edit of the cross-attention projections.

Gandikota, Orgad, Belinkov, Materzynska & Bau, "Unified Concept Editing in Diffusion Models",
WACV 2024. For every cross-attention key and value projection W (``attn2.to_k``, ``attn2.to_v``):
    W_new = (sum_{c in E} W c* c^T + lambda_p sum_{c in P} W c c^T + lam W)
            (sum_{c in E} c c^T + lambda_p sum_{c in P} c c^T + lam I)^{-1},
the least-squares solution that sends the text features c of the erased prompts (E) to what W
gives for their targets c* (so the UNet sees the target where the concept was asked for), keeps
W's output on the preserved prompts (P) and stays close to W (``lam``). No gradient steps.

Here c ranges over the token features (text-encoder hidden states, every position) of the forget
prompts; c* are the features at the same positions of each prompt's target (the task's
``relabel``: a retain prompt, the empty prompt or the next class) and P are the retain prompts.
With a saliency mask, only salient entries of W take the edit (the rest stay bit-identical).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from salun.core.errors import SalunError
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty


@METHODS.register("uce")
@dataclass
class UCE:
    tasks: ClassVar[tuple[str, ...]] = ("text_to_image",)
    erase_scale: float = 1.0
    preserve_scale: float = 1.0  # lambda_p: weight of the preserved (retain) prompts
    lam: float = 0.1  # ridge towards the original weights
    preserve: bool = True  # use the retain prompts as the preserved set

    def check(self) -> None:
        if self.erase_scale <= 0 or self.preserve_scale < 0 or self.lam < 0:
            raise SalunError(
                "uce needs erase_scale > 0, preserve_scale >= 0, lam >= 0 (got "
                f"{self.erase_scale}, {self.preserve_scale}, {self.lam})"
            )

    @torch.no_grad()
    def unlearn(self, model, data: UnlearnData, task, mask=None):
        require_nonempty(data, retain=self.preserve)
        forget_rows = torch.unique(task.labels_of(data.forget))
        g = torch.Generator().manual_seed(data.seed + 7919)
        target_rows = task.relabel(forget_rows, g, True)
        table = task.embeddings.double()  # (P + 1, L, D)
        erase = table[forget_rows].reshape(-1, table.shape[-1])  # tokens x D
        target = table[target_rows].reshape(-1, table.shape[-1])
        keep = torch.zeros(0, table.shape[-1], dtype=table.dtype)
        if self.preserve:
            rows = torch.unique(task.labels_of(data.retain))
            rows = rows[~torch.isin(rows, forget_rows)]
            keep = table[rows].reshape(-1, table.shape[-1])
        d = table.shape[-1]
        # shared right factor: sum c c^T over E and P, plus the ridge
        right = self.erase_scale * erase.T @ erase + self.preserve_scale * keep.T @ keep
        right = right + self.lam * torch.eye(d, dtype=right.dtype)
        cross = self.erase_scale * target.T @ erase + self.preserve_scale * keep.T @ keep
        edited = 0
        masks = None if mask is None else mask.masks
        for name, p in model.named_parameters():
            if ".attn2.to_k." not in name and ".attn2.to_v." not in name:
                continue
            if not name.endswith("weight") or p.shape[1] != d:
                continue
            w = p.detach().double()
            # W_new (right) = W (cross + lam I)  =>  solve right^T W_new^T = (W (cross + lam I))^T
            lhs = w @ (cross + self.lam * torch.eye(d, dtype=w.dtype))
            new = torch.linalg.solve(right.T, lhs.T).T.to(p.dtype)
            if masks is not None:
                new = torch.where(mask.get(name, p).to(p.device), new, p.detach())
            p.copy_(new)
            edited += 1
        if edited == 0:
            raise SalunError("uce found no cross-attention key/value projections (attn2.to_k/to_v)")
        model.eval()
        return model
