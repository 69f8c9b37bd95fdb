"""FMN: Forget-Me-Not, attention re-steering.

Zhang, Wang, Xu, Wang & Shi, "Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion
Models", 2023 (arXiv 2303.17591). Objective, on images of the concept with its prompt:
    min_theta  sum_layers || A_l(z_t, c_f)[:, :, concept tokens] ||^2,
A_l the cross-attention probabilities of layer l, so no spatial position attends to the concept's
tokens any more. Only the cross-attention weights (``attn2``) are trained (``train="xattn"``,
the paper's default) unless ``train="full"``.

Concept tokens are the forget prompts' tokens that appear in no retain prompt (special tokens
excluded), e.g. "nude" in "a photo of a nude person" against "a photo of a person wearing
clothes"; when there are none, every non-special token of the forget prompt. The attention maps
are read through diffusers' classic ``AttnProcessor`` with the layer's ``get_attention_scores``
wrapped for the run and restored afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from salun.core.errors import SalunError, unknown_choice
from salun.core.registry import METHODS
from salun.methods import UnlearnData, require_nonempty
from salun.methods._fit import Optim, fit

TRAIN = ("xattn", "full")


def concept_positions(task, forget_rows: torch.Tensor, retain_rows: torch.Tensor) -> torch.Tensor:
    """Bool ``(P + 1, L)``: the concept-token positions of each forget prompt row."""
    if task.token_ids is None:
        raise SalunError("fmn needs the task's token ids (build the task with token_ids)")
    ids = task.token_ids
    specials = ids[task.null_label].unique()  # the empty prompt: start, end and padding tokens
    retain_tokens = ids[retain_rows].unique() if len(retain_rows) else torch.zeros(0).long()
    out = torch.zeros(ids.shape, dtype=torch.bool)
    for r in forget_rows.tolist():
        content = ~torch.isin(ids[r], specials)
        unique = content & ~torch.isin(ids[r], retain_tokens)
        out[r] = unique if bool(unique.any()) else content
    return out


@METHODS.register("fmn")
@dataclass
class FMN(Optim):
    tasks: ClassVar[tuple[str, ...]] = ("text_to_image",)
    epochs: int = 5
    lr: float = 1e-5
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 8
    train: str = "xattn"  # xattn | full

    def check(self) -> None:
        super().check()
        if self.train not in TRAIN:
            raise unknown_choice("fmn train", self.train, TRAIN)

    def unlearn(self, model, data: UnlearnData, task, mask=None):
        from diffusers.models.attention_processor import AttnProcessor

        require_nonempty(data, retain=False)
        forget_rows = torch.unique(task.labels_of(data.forget))
        retain_rows = (
            torch.unique(task.labels_of(data.retain)) if len(data.retain) else forget_rows[:0]  # type: ignore[arg-type]
        )
        positions = concept_positions(task, forget_rows, retain_rows).to(task.device)
        layers = [m for n, m in model.named_modules() if n.endswith("attn2")]
        if not layers:
            raise SalunError("fmn needs cross-attention layers (attn2); this model has none")
        maps: list[torch.Tensor] = []
        state: dict[str, torch.Tensor] = {}

        def probe(attn):
            original = attn.get_attention_scores

            def scores(query, key, attention_mask=None):
                probs = original(query, key, attention_mask)  # (batch * heads, queries, tokens)
                sel = state["sel"].repeat_interleave(probs.shape[0] // len(state["sel"]), dim=0)
                maps.append((probs * sel[:, None, :]).pow(2).sum(-1).mean())
                return probs

            return scores

        saved_procs = {id(m): m.processor for m in layers}
        saved_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for m in layers:
            m.set_processor(AttnProcessor())
            m.get_attention_scores = probe(m)
        if self.train == "xattn":
            for n, p in model.named_parameters():
                p.requires_grad_(".attn2." in n)

        def loss(model, batch):
            z_t, t, _, y = task.noised(batch)
            state["sel"] = positions[y].float()
            maps.clear()
            task.predict(model, z_t, t, y)
            return torch.stack(maps).sum()

        try:
            forget = task.loader(data.forget, self.batch_size, True, data.seed)
            return fit(model, lambda e: [(forget, loss)], self, mask, task.progress, "FMN")
        finally:
            for m in layers:
                del m.get_attention_scores
                m.set_processor(saved_procs[id(m)])
            for n, p in model.named_parameters():
                p.requires_grad_(saved_grad[n])
