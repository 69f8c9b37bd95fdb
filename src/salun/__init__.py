"""salun: machine unlearning with weight saliency (SalUn, Fan et al., ICLR 2024) and baselines."""

__version__ = "0.1.0"

from salun.api import evaluate, unlearn  # noqa: E402
from salun.methods import get_method, list_methods  # noqa: E402
from salun.saliency import SaliencyMask, compute_saliency_mask  # noqa: E402

__all__ = [
    "SaliencyMask",
    "compute_saliency_mask",
    "evaluate",
    "get_method",
    "list_methods",
    "unlearn",
]
