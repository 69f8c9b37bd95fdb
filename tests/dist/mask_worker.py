"""Worker for the distributed saliency test; launched by torchrun (gloo, CPU).

Every rank builds the same model and forget set, computes the mask on its shard (the library
shards and all-reduces), and rank 0 writes the mask and the summed gradient.
"""

import sys

import torch
import torch.distributed as dist

from salun.config import load_config
from salun.run import prepare
from salun.methods.saliency import compute_saliency_mask, gradient_saliency
from salun.tasks.batches import WithPositions


def main(out: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    cfg = load_config("smoke/digits", ["progress=false"])
    exp = prepare(cfg)
    model = exp.new_model(seed=0)
    mask = compute_saliency_mask(model, exp.forget, exp.task, ratio=0.5, batch_size=16)
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = torch.utils.data.Subset(WithPositions(exp.forget), range(rank, len(exp.forget), world))
    scores, _ = gradient_saliency(model, exp.task.loader(shard, 16, False), exp.task, False)
    if rank == 0:
        torch.save({"masks": mask.masks, "scores": scores, "world": world}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
