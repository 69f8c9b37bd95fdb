"""One job on many processes: torch.distributed plumbing shared by the loop, loaders and runs.

Launch any subcommand under ``torchrun --nproc_per_node N -m salun train|mask|unlearn ...``;
:func:`init_from_env` starts the process group (NCCL on GPUs, gloo on CPUs) from the variables
torchrun sets. Then:

- the loop in ``methods/_fit.py`` wraps the model in DistributedDataParallel (plain PyTorch DDP;
  no Accelerate/FSDP: every model here fits on one device, and DDP adds no dependency);
- shuffled task loaders use :class:`EpochSampler` (a DistributedSampler reseeded per epoch),
  each rank taking ``batch_size / world`` samples per step so the global batch, and so the
  learning-rate semantics, stay those of one process;
- every rank runs the whole pipeline (evaluation included, on the full sets: the models are
  identical, so the metrics are too) and only rank 0 writes files, logs and progress bars.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

log = logging.getLogger(__name__)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0 (or without torch.distributed): the one process that writes."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun on GPUs each process takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and is_dist() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_env(device: str = "auto") -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); idempotent.

    Backend: NCCL when CUDA is used, gloo otherwise. Returns whether distributed is on.
    """
    if is_dist():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    log.info("torch.distributed: rank %d of %d (%s)", rank(), world(), backend)
    return True


def shutdown() -> None:
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def agree(flag: bool) -> bool:
    """Rank 0's answer, broadcast: every rank takes the same branch (e.g. a cache hit)."""
    if not is_dist():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_comm_device())
    dist.broadcast(t, 0)
    return bool(t.item())


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) everywhere, as DDP's next forward would."""
    if not is_dist():
        return
    dev = _comm_device()
    for t in model.buffers():
        buf = t.detach().to(dev)
        dist.broadcast(buf, 0)
        if buf is not t:
            t.copy_(buf)


@torch.no_grad()
def check_in_sync(model: nn.Module, what: str = "model") -> None:
    """Fail loudly if the ranks' parameters differ (they must stay bit-identical under DDP)."""
    if not is_dist():
        return
    dev = _comm_device()
    # a weighted checksum of the raw bits: equal weights give equal sums on every rank
    total = torch.zeros(1, dtype=torch.float64, device=dev)
    for i, p in enumerate(model.parameters()):
        total += (p.detach().double() * (1 + (i % 7))).sum().to(dev)
    lo, hi = total.clone(), total.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if float(lo) != float(hi):
        raise RuntimeError(f"{what}: parameters differ across ranks ({float(lo)} vs {float(hi)})")


def wrap_ddp(model: nn.Module) -> nn.Module:
    """DistributedDataParallel around ``model`` when torch.distributed is on, else ``model``."""
    if not is_dist():
        return model
    params = list(model.parameters())
    dev = params[0].device if params else torch.device("cpu")
    ids = [dev.index] if dev.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class GlobalBatchSampler(Sampler[list[int]]):
    """Each rank's part of the global batches one process would draw, in the same order.

    The order comes from ``sampler`` (the RandomSampler of a single-process loader, on the same
    generator), cut into global batches of ``batch_size``; rank r takes positions r, r + W, ...
    of each. So the union over ranks of step k's batches is exactly step k's single-process
    batch, DDP's mean of the per-rank mean gradients is that batch's mean gradient (equal
    shares), and resuming needs only the generator's state. A global batch smaller than the
    world size is shared round-robin (some samples then count twice in that step).
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self) -> Iterator[list[int]]:
        r, w = rank(), world()
        batch: list[int] = []
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield batch[r::w]
                batch = []
        if batch and not self.drop_last:
            yield batch[r::w] if len(batch) >= w else [batch[r % len(batch)]]

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class EpochSampler(DistributedSampler):
    """DistributedSampler whose shuffle is seeded by (seed, epoch).

    ``fit`` calls :meth:`set_epoch` before each epoch; a loader iterated outside it (a cycled
    forget loader) advances its own epoch on every pass, so each pass gets a fresh order.
    """

    def __init__(self, dataset, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=world(), rank=rank(), shuffle=shuffle, seed=seed)
        self._explicit = False

    def set_epoch(self, epoch: int) -> None:
        self._explicit = True
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator:
        it = super().__iter__()
        if not self._explicit:
            self.epoch += 1
        self._explicit = False
        return it


def per_rank_batch(batch_size: int) -> int:
    """Each rank's share of a global batch (the global batch stays ``batch_size``)."""
    return max(1, math.ceil(batch_size / world()))
