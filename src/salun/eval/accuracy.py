"""One inference pass: per-sample predictions, true-label confidence and loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Predictions:
    labels: torch.Tensor  # true labels
    predicted: torch.Tensor
    true_prob: torch.Tensor  # softmax probability of the true label
    loss: torch.Tensor  # per-sample cross-entropy
    probs: torch.Tensor  # softmax probabilities, N x K

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, labels), the input of the MIA family."""
        return self.probs, self.labels

    @property
    def accuracy(self) -> float:
        """Percentage of correct predictions (nan for an empty set)."""
        if len(self.labels) == 0:
            return float("nan")
        return 100.0 * float((self.predicted == self.labels).float().mean())


@torch.no_grad()
def predict(model: nn.Module, dataset, task, batch_size: int = 512) -> Predictions:
    """Run ``model`` in eval mode over ``dataset`` (items ``(x, y, ...)``)."""
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"y": [], "p": [], "c": [], "l": [], "q": []}
    for batch in task.loader(dataset, batch_size, shuffle=False):
        x, y, _ = task.batch(batch)
        logits = task.logits(model, x).float()
        if not bool(logits.isfinite().all()):
            from salun.core.errors import SalunError

            raise SalunError(
                "the model's outputs are not finite (NaN or inf); refusing to evaluate it "
                "(diverged training? lower the learning rate)"
            )
        logp = F.log_softmax(logits, dim=1)
        out["y"].append(y.cpu())
        out["p"].append(logits.argmax(1).cpu())
        out["c"].append(logp.gather(1, y[:, None]).squeeze(1).exp().cpu())
        out["l"].append(F.nll_loss(logp, y, reduction="none").cpu())
        out["q"].append(logp.exp().cpu())
    model.train(was_training)
    cat = {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}
    return Predictions(cat["y"].long(), cat["p"].long(), cat["c"], cat["l"], cat["q"])
