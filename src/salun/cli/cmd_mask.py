"""``salun mask``: compute a SalUn weight-saliency mask; its parser and handler."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from salun.cli.cli_options import _common, _config, _load, _print_cache, _sub, _task


def add_parser(sub: Any) -> None:
    """Add the ``mask`` subcommand to ``sub``; ``func`` is the handler."""
    p = _sub(
        sub,
        "mask",
        "compute a SalUn weight-saliency mask",
        "Rank the weights by the gradient of the forgetting loss on the forget set and keep the "
        "top mask.ratio (default 0.5) as salient; writes mask.safetensors (bool).",
        "salun mask smoke/digits --model runs/orig/model.safetensors --out runs/mask",
    )
    _common(p)
    p.add_argument("--model", help="original model (safetensors); default: train or cache")
    p.set_defaults(func=cmd_mask)


def cmd_mask(args: argparse.Namespace) -> int:
    from salun.config import save_config
    from salun.core.io import check_out  # lazy: salun --help stays torch-free
    from salun.methods.saliency import compute_saliency_mask
    from salun.run import prepare, run_folder, train_model

    cfg = _config(args)
    check_out(args.out, args.overwrite, [args.split, args.model, *cfg.input_paths()])
    runs = _task(cfg.task).pipeline
    if runs is not None:
        mask = runs.run_mask(cfg, args.out, args.model)
        print(runs.mask_line(mask, args.out))
        return 0
    exp = prepare(cfg, args.split)
    model = _load(exp, args.model) if args.model else None
    with run_folder(args.out) as out:
        save_config(cfg, out / "config.yaml")
        exp.split.save(out / "split.json")
        if model is None:
            model, info = train_model(exp, "original")
            _print_cache("original", info)
        m = cfg.mask
        mask = compute_saliency_mask(
            model, exp.forget, exp.task, m.ratio, m.per_layer, m.batch_size, exp.split.hash
        )
        mask.save(out / "mask.safetensors")
    print(
        f"mask: {mask.selected} of {mask.total} weights salient ({100 * mask.fraction:.2f}%) "
        f"in {mask.meta['seconds']}s -> {Path(args.out) / 'mask.safetensors'}"
    )
    return 0
