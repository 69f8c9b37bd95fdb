"""Command line: ``salun train | mask | unlearn | eval | sample | bench | tune | report | list |
config | demo``. ``--task ddpm`` switches train/mask/unlearn/eval/demo to class-conditional DDPMs.

Bad input exits with code 2 and one line on stderr; a run folder this command created is
removed again when it fails, so no partial results are left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from salun.core.errors import SalunError


def _split_items(items: Sequence[str]) -> tuple[str | None, list[str]]:
    preset, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif preset is None:
            preset = item
        else:
            raise SalunError(f"two presets given ({preset!r}, {item!r}); give one, then key=value")
    return preset, overrides


def _config(args: argparse.Namespace):
    from salun.config import load_config

    preset, overrides = _split_items(args.items)
    task = getattr(args, "task", None)
    if task is not None:
        if preset is None:
            preset = _task(task).default_preset  # e.g. ddpm: digits 16x16, small UNet
        overrides.insert(0, f"task={task}")
    from salun.core import distributed, runtime
    from salun.experiment import set_refresh

    # --retrain: re-train cached models and replace their cache entries (this command only)
    set_refresh(bool(getattr(args, "retrain", False)))

    if getattr(args, "no_progress", False) or not distributed.is_main():
        overrides.append("progress=false")  # under torchrun only rank 0 shows progress
    cfg = load_config(preset, overrides)
    runtime.configure(cfg)  # precision, compile, determinism, checkpoint_every for the loops
    return cfg


def _task(name: str):
    """The registered task ``name`` (one-line error naming the registered ones)."""
    from salun.core.registry import TASKS

    return TASKS.get(name)


def _print_cache(kind: str, info: dict[str, Any]) -> None:
    from salun.experiment import cache_note

    note = cache_note(kind, info)
    if note:
        print(note)


def _print_metrics(title: str, m: dict[str, Any]) -> None:
    if "other_acc" in m:  # generator: UA by the judge, other-class accuracy, FID
        print(title)
        fid = f"  FID ({m.get('fid_features')}) {m['FID']:.2f}" if "FID" in m else ""
        print(f"  UA {m['UA']:.2f}  other-class acc {m['other_acc']:.2f}{fid}")
        return
    keys = ("UA", "MIA-Efficacy", "RA", "TA")
    print(title)
    print("  " + "  ".join(f"{k} {m[k]:.2f}" for k in keys))


def _load(exp, path: str):
    """A model for ``exp`` from ``path`` (safetensors, or a diffusers folder for DDPMs)."""
    return exp.task.load_model(exp, path)


LISTS = (
    "methods",
    "tasks",
    "ddpm-methods",
    "text_to_image-methods",
    "models",
    "datasets",
    "presets",
)


def cmd_list(args: argparse.Namespace) -> int:
    from salun.config import preset_names
    from salun.core import catalog  # a static table: salun list imports no torch

    tables = {"methods": catalog.method_names(), "tasks": list(catalog.TASKS)}
    for task in catalog.TASKS:
        tables[f"{task}-methods"] = catalog.method_names(task)
    tables.update(
        models=list(catalog.MODELS), datasets=list(catalog.DATASETS), presets=preset_names()
    )
    if args.what != "all" and args.what not in tables:
        raise SalunError(f"unknown list {args.what!r}; allowed: all, {', '.join(tables)}")
    if args.long and args.what in ("all", "methods", "ddpm-methods", "text_to_image-methods"):
        names = tables["methods" if args.what == "all" else args.what]
        for name in names:
            shown, tasks, params = catalog.METHODS[name]
            print(f"{name:<13} {shown:<11} tasks: {','.join(tasks)}")
            print(f"{'':<13} hyperparameters: {' '.join(params)}")
        return 0
    for name, values in tables.items():
        if args.what in ("all", name):
            print(f"{name}: {' '.join(values)}" if args.what == "all" else "\n".join(values))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    tree = _config(args).to_dict()
    from salun.core.registry import TASKS

    sections = {n: getattr(TASKS.get(n), "config_section", None) for n in TASKS.names()}
    used = sections.get(tree["task"])
    for section in set(sections.values()) - {None, used}:
        tree.pop(section, None)  # another task's settings: this config does not use them
    print(yaml.safe_dump(tree, sort_keys=False), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from salun.config import save_config
    from salun.core.io import check_out, write_json  # lazy: salun --help stays torch-free
    from salun.run import check_finite_weights, prepare, run_folder, train_model, versions

    check_out(args.out, args.overwrite)
    cfg = _config(args)
    runs = _task(cfg.task).pipeline
    if runs is not None:
        runs.run_train(cfg, args.out)
    exp = prepare(cfg, args.split)
    with run_folder(args.out) as out:
        save_config(cfg, out / "config.yaml")
        exp.split.save(out / "split.json")
        model, info = train_model(exp, args.kind)
        check_finite_weights(model)
        target = Path(args.out) / exp.task.save_model(exp, model, out).relative_to(out)
        metrics = exp.task.evaluate(exp, model, out, args.kind)
        write_json(
            out / "metrics.json",
            {
                "kind": args.kind,
                "info": info,
                "metrics": metrics,
                "split_hash": exp.split.hash,
                "versions": versions(),
            },
        )
    fit_figure = (
        f"noise MSE {info['train_mse']:.4f}"
        if "train_mse" in info
        else f"train accuracy {info['train_acc']:.2f}%"
    )
    _print_cache(args.kind, info)
    print(f"{args.kind} model: {fit_figure}  -> {target}")
    _print_metrics("evaluation on the split:", metrics)
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    from salun.config import save_config
    from salun.core.io import check_out  # lazy: salun --help stays torch-free
    from salun.methods.saliency import compute_saliency_mask
    from salun.run import prepare, run_folder, train_model

    check_out(args.out, args.overwrite)
    cfg = _config(args)
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


def cmd_unlearn(args: argparse.Namespace) -> int:
    from salun.run import run_unlearn

    cfg = _config(args)
    r = run_unlearn(
        cfg,
        args.out,
        args.model,
        args.mask,
        args.split,
        compare=not args.no_compare,
        overwrite=args.overwrite,
        force=args.force,
    )
    runs = _task(cfg.task).pipeline
    if runs is not None:
        print("\n".join(runs.unlearn_lines(cfg, r, args.out)))
        return 0
    _print_cache("original", r["original"]["info"])
    if "retrain" in r:
        _print_cache("retrain", r["retrain"]["info"])
    print(
        f"{cfg.unlearn.method} on {cfg.data.name} ({cfg.data.scenario}), seed {cfg.seed}: "
        f"RTE {r['run']['rte_seconds']:.2f}s"
    )
    _print_metrics("unlearned:", r["metrics"])
    if "retrain" in r:
        _print_metrics("retrain:", r["retrain"]["metrics"])
        gap = r["gap"]["Avg. Gap"]
        print(f"Avg. Gap to Retrain: {gap:.2f}")
        if "noise_floor" in r:
            from salun.core.results import floor_note

            print(floor_note(r["noise_floor"]["floor"], gap))
    cal = r["run"].get("calibration")
    if cal and "skipped" not in cal:
        print(
            f"calibration ({cal['scenario']}): lr {cal['lr']:.3g}, epoch {cal['epoch']}, "
            f"estimated Avg. Gap {cal['estimate']:.2f} -> calibration.json, calibration.png"
        )
        if cal.get("no_safe_step"):
            print(
                "WARNING: no safe step: every lr and epoch tried moved the model further from "
                "Retrain (by the Retrain-free estimate) than the original; the original was "
                "returned unchanged. Try FT or l1-sparse, or a smaller lr."
            )
    print(f"run folder: {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from salun.core.io import write_json
    from salun.run import evaluate, prepare

    cfg = _config(args)
    runs = _task(cfg.task).pipeline
    if runs is not None:
        runs.run_eval(cfg)
    exp = prepare(cfg, args.split)
    model = _load(exp, args.model)
    metrics = evaluate(exp, model)
    if args.out:
        write_json(
            Path(args.out) / "eval.json",
            {"checkpoint": args.model, "metrics": metrics, "split_hash": exp.split.hash},
        )
    if args.json:
        keys = exp.task.headline
        print(json.dumps({k: metrics[k] for k in keys if k in metrics}))
    else:
        _print_metrics(f"{args.model}:", metrics)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib
    import inspect

    task = _task(args.task)
    module, name = task.demo.split(":")
    run = getattr(importlib.import_module(module), name)
    out = args.out if args.out != "runs/demo" else task.demo_out
    offered = {
        "seed": args.seed,
        "dataset": args.dataset,
        "progress": not args.no_progress,
        "overrides": args.items,
        "retrain": args.retrain,
        "say": lambda line: print(line, flush=True),
    }
    accepted = inspect.signature(run).parameters
    if "retrain" not in accepted:  # a demo without its own meaning of --retrain: refresh caches
        from salun.experiment import set_refresh

        set_refresh(args.retrain)
    r = run(out, **{k: v for k, v in offered.items() if k in accepted})
    for one in r if isinstance(r, list) else [r]:
        print(f"\n## {one['title']}\n")
        print(one["table"])
    print(f"\n{task.demo_files} under {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from salun.core.io import check_out, staged_folder  # lazy: salun --help stays torch-free
    from salun.eval.generation import sample
    from salun.tasks.ddpm.ddpm_folders import load_ddpm

    check_out(args.out, args.overwrite)
    if not math.isfinite(args.guidance if args.guidance is not None else 0.0):
        raise SalunError(f"--guidance must be a finite number, got {args.guidance}")
    if args.steps < 1 or args.seed < 0:
        raise SalunError(f"--steps must be >= 1 and --seed >= 0, got {args.steps}, {args.seed}")
    unet, scheduler, meta = load_ddpm(args.model)
    k = int(meta.get("num_classes", unet.config.num_class_embeds - 1))
    if args.classes:
        try:
            classes = [int(c) for c in args.classes.split(",")]
        except ValueError:
            raise SalunError(
                f"--classes must be comma-separated integers, got {args.classes!r}"
            ) from None
        bad = [c for c in classes if not 0 <= c < k]
        if bad:
            raise SalunError(f"class {bad[0]} out of range; allowed: 0..{k - 1}")
    else:
        classes = list(range(k))
    if args.n < 1:
        raise SalunError(f"--n must be >= 1, got {args.n}")
    labels = torch.tensor(classes).repeat_interleave(args.n)
    w = meta.get("guidance", 2.0) if args.guidance is None else args.guidance
    images = sample(
        unet,
        labels,
        scheduler,
        int(meta.get("null_label", k)),
        guidance=w,
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if not bool(images.isfinite().all()):
        raise SalunError(f"model {args.model!r} produced non-finite samples (NaN or inf)")
    with staged_folder(args.out) as out:
        _save_samples(out, images, labels, w, args)
    print(f"{len(labels)} samples (classes {classes}, w={w}, {args.sampler} {args.steps} steps)")
    grid = Path(args.out) / f"grid_{_model_name(args.model)}.png"
    print(f"grid: {grid}  tensors: {Path(args.out) / 'samples.safetensors'}")
    return 0


def _model_name(model: str) -> str:
    """The method (or kind) that made a DDPM folder, from its run folder's metrics.json; grids
    are named grid_<method>.png everywhere."""
    try:
        m = json.loads((Path(model).parent / "metrics.json").read_text(encoding="utf-8"))
        name = str(m.get("method") or m.get("kind") or "model")
    except (OSError, ValueError, AttributeError):
        return "model"
    return name if name.replace("_", "").isalnum() else "model"


def _save_samples(out: Path, images, labels, w: float, args: argparse.Namespace) -> None:
    from salun.core.catalog import display_name
    from salun.core.io import save_tensors
    from salun.eval.generation import save_grid

    name = _model_name(args.model)
    save_grid(
        images,
        labels,
        out / f"grid_{name}.png",
        per_row=min(args.n, 16),
        title=f"{display_name(name)}: w={w}, {args.sampler} {args.steps} steps, seed {args.seed}",
    )
    save_tensors(
        out / "samples.safetensors",
        {"images": images.contiguous(), "labels": labels},
        {
            "guidance": str(w),
            "steps": str(args.steps),
            "sampler": args.sampler,
            "seed": str(args.seed),
            "model": str(args.model),
        },
    )


def cmd_bench(args: argparse.Namespace) -> int:
    import yaml

    from salun.bench import build_report, run_bench

    cfg = _config(args)
    cluster_args = {}
    for item in args.cluster_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SalunError(f"--cluster-arg must be KEY=VALUE, got {item!r}")
        cluster_args[key] = yaml.safe_load(value)
    counts = run_bench(
        cfg,
        args.out,
        cache_dir=args.cache,
        progress=not args.no_progress,
        timeout=args.timeout,
        jobs=args.jobs,
        executor=args.executor,
        cluster_args=cluster_args,
    )
    print(
        f"bench {args.out}: {counts['done']} run, {counts['skipped']} already done, "
        f"{counts['failed']} failed"
    )
    report = build_report(args.out)
    print(f"report: {Path(args.out) / 'report.md'} ({report['runs']} runs)")
    return 0 if counts["failed"] == 0 else 1


def cmd_tune(args: argparse.Namespace) -> int:
    from salun.bench.tune import run_tune

    cfg = _config(args)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    result = run_tune(
        cfg,
        args.out,
        seeds=seeds,
        search=args.search,
        budget=args.budget,
        cache_dir=args.cache,
        progress=not args.no_progress,
    )
    print(f"tuned on seeds {result['tuning_seeds']} ({result['search']} search):")
    for label, trials in result["trials"].items():
        best = trials[0]
        print(
            f"  {label}: {best['params']}  Avg. Gap {best['avg_gap']:.2f} (best of {len(trials)})"
        )
    print(f"selected preset: {Path(args.out) / 'selected.yaml'}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from salun.core.audit import verify_audit

    r = verify_audit(args.folder)
    f = r["forgotten"]
    what = (
        f"class {f['forget_class']} ({f['forget_class_name']})"
        if f.get("forget_class") is not None
        else f"{f['count']} training images"
    )
    print(
        f"run {args.folder}: {r['method']} on {f['dataset']} ({f['scenario']}), created {r['created']}"
    )
    print(f"  forgotten: {what}; forget indices sha256 {f['indices_hash']}")
    print(f"  original model sha256 {r['original_model_hash']}")
    print(f"  result model sha256   {r['result_model_hash']}")
    for name, m in r.get("metrics", {}).items():
        print(f"  {name}: " + "  ".join(f"{k} {v:.2f}" for k, v in m.items()))
    print(f"  versions: {', '.join(f'{k} {v}' for k, v in r.get('versions', {}).items())}")
    print(f"  {len(r['files'])} files verified (sha256 as recorded)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from salun.core.results import demo_report, is_demo_folder

    folders = [Path(f) for f in args.folders]
    if len(folders) > 1 or is_demo_folder(folders[0]):
        print(demo_report(folders), end="")
        return 0
    from salun.bench import build_report

    build_report(folders[0], plots=not args.no_plots)
    print((folders[0] / "report.md").read_text(encoding="utf-8"), end="")
    return 0


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    _items(p)
    p.add_argument("--split", help="use this split.json instead of drawing one")
    _task_option(p)
    p.add_argument(
        "--retrain",
        action="store_true",
        help="re-train cached models (original, Retrain, judge) and replace their cache entries",
    )
    _no_progress(p)
    if out:
        p.add_argument("--out", required=True, help="run folder (new or empty)")
        p.add_argument(
            "--overwrite", action="store_true", help="replace a non-empty --out (atomically)"
        )
        p.add_argument(
            "--resume", action="store_true", help="continue a killed run from its checkpoints"
        )


def _items(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "items",
        nargs="*",
        metavar="PRESET|key=value",
        help="a preset name (salun list presets) or YAML file, then overrides such as "
        "unlearn.method=ga",
    )


def _task_option(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--task",
        default=default,
        help="a registered task (salun list tasks): model family (ddpm: class-conditional diffusion, default preset demo-ddpm; "
        "text_to_image: Stable Diffusion, default preset demo-sd)"
        + (f"; default {default}" if default else ""),
    )


def _no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


_DESCRIPTION = (
    "Machine unlearning with SalUn (Fan et al., ICLR 2024) and its baselines: train a model, "
    "make it forget a set of training images or a class, and measure how close it gets to "
    "retraining from scratch. --task ddpm (or text_to_image) switches train, mask, unlearn, eval "
    "and demo to class-conditional diffusion models (or Stable Diffusion)."
)

_EPILOG = """\
examples:
  salun demo --out runs/demo                      the Fashion-MNIST demo (two scenarios)
  salun unlearn smoke/digits --out runs/salun     one method, compared with Retrain
  salun list                                      methods, models, datasets, presets
  salun COMMAND --help                            options and an example of one command

Bad input exits with code 2 and one line on stderr; a run folder the command created is removed
again when it fails, so no partial results are left behind.
"""


def _sub(sub: Any, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
    """A subcommand with a one-line help, a description and an example (shown by --help)."""
    return sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, 88),
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salun",
        description=textwrap.fill(_DESCRIPTION, 88),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress to stderr (anywhere on the line)"
    )
    from salun import __version__

    parser.add_argument(
        "--version", action="version", version=f"salun {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below"
    )

    p = _sub(
        sub,
        "train",
        "train the original model (or Retrain) on a split",
        "Draw (or read) the split, train the original model (--kind original) or Retrain, the "
        "model trained on the retain set only (--kind retrain), evaluate it and write "
        "model.safetensors (a DDPM: model/), split.json, config.yaml and metrics.json.",
        "salun train smoke/digits --out runs/orig",
    )
    _common(p)
    p.add_argument(
        "--kind",
        default="original",
        choices=["original", "retrain"],
        help="original: on the whole training split; retrain: on the retain set only "
        "(default original)",
    )
    p.set_defaults(func=cmd_train)

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

    p = _sub(
        sub,
        "unlearn",
        "run one unlearning method and evaluate it",
        "Run unlearn.method (salun list methods) on the original model, evaluate UA, "
        "MIA-Efficacy, RA and TA and compare with Retrain and the original (Avg. Gap); writes "
        "the model, metrics.json, audit.json and log.txt into --out.",
        "salun unlearn smoke/digits unlearn.method=rl unlearn.params.lr=0.01 --out runs/rl",
    )
    _common(p)
    p.add_argument("--model", help="original model (safetensors); default: train or cache")
    p.add_argument("--mask", help="saliency mask (safetensors); default: computed when used")
    p.add_argument("--no-compare", action="store_true", help="skip original/Retrain metrics")
    p.add_argument(
        "--force", action="store_true", help="use a --mask recorded for another model anyway"
    )
    p.set_defaults(func=cmd_unlearn)

    p = _sub(
        sub,
        "eval",
        "evaluate a model on a split (UA, MIA-Efficacy, RA, TA)",
        "Evaluate a checkpoint on the split of the config (or --split): UA, MIA-Efficacy, RA and "
        "TA for classifiers; UA by a judge, other-class accuracy and FID for DDPMs.",
        "salun eval smoke/digits --model runs/salun/model.safetensors "
        "--split runs/salun/split.json",
    )
    _common(p, out=False)
    p.add_argument("--model", required=True, help="model (safetensors, or a DDPM folder)")
    p.add_argument("--out", help="folder for eval.json")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = _sub(
        sub,
        "sample",
        "sample a class-conditional DDPM folder into a PNG grid",
        "Draw --n samples per class from a DDPM model folder with classifier-free guidance; "
        "writes grid_<method>.png (one row per class; the method that made the model, or "
        "model) and samples.safetensors.",
        "salun sample --model runs/ddpm/model --classes 0,1 --n 8 --out runs/samples",
    )
    p.add_argument("--model", required=True, help="DDPM folder (unet/, scheduler/, salun.json)")
    p.add_argument(
        "--out", required=True, help="folder for grid_<method>.png and samples.safetensors"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--classes", help="comma-separated class indices (default: all)")
    p.add_argument("--n", type=int, default=8, help="samples per class (default 8)")
    p.add_argument("--guidance", type=float, help="CFG weight w (default: the model's)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument(
        "--sampler",
        default="ddim",
        help="ddim (deterministic, eta = 0) or ddpm (stochastic); default ddim",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="sampling seed: same seed, same images (default 0)"
    )
    _no_progress(p)
    p.set_defaults(func=cmd_sample)

    p = _sub(
        sub,
        "bench",
        "run a grid of methods x scenarios x seeds (resumable)",
        "Run every (scenario, seed, method) of a bench preset in its own process and folder, "
        "then write report.md, report.csv, report.json and plots. Re-running skips finished "
        "runs.",
        "salun bench digits-random10 --out runs/bench --jobs 2",
    )
    _items(p)
    p.add_argument("--out", required=True, help="bench folder (reruns skip finished runs)")
    p.add_argument("--cache", help="model cache shared across benches (default: OUT/cache)")
    p.add_argument("--timeout", type=float, help="seconds allowed per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument(
        "--executor",
        default="subprocess",
        choices=["subprocess", "local", "slurm"],
        help="subprocess: child processes here; slurm: submitit jobs; local: submitit locally",
    )
    p.add_argument(
        "--cluster-arg",
        action="append",
        metavar="KEY=VALUE",
        help="submitit parameter, e.g. slurm_partition=gpu, gpus_per_node=1 (repeatable)",
    )
    _no_progress(p)
    p.set_defaults(func=cmd_bench)

    p = _sub(
        sub,
        "tune",
        "search method hyperparameters on seeds never reported",
        "Search the list-valued method parameters of a bench preset on tuning seeds, pick each "
        "method's setting by mean Avg. Gap to Retrain and write selected.yaml, a preset whose "
        "reporting seeds were never used for selection.",
        "salun tune fmnist-random10-search --seeds 100,101 --out runs/tune",
    )
    _items(p)
    p.add_argument(
        "--out", required=True, help="tuning folder: trial runs and selected.yaml (the preset)"
    )
    p.add_argument("--seeds", help="tuning seeds, comma-separated (default 100)")
    p.add_argument(
        "--search",
        default="grid",
        choices=["grid", "random"],
        help="grid: every combination; random: --budget draws (default grid)",
    )
    p.add_argument("--budget", type=int, help="most candidates per method")
    p.add_argument("--cache", help="model cache (default: OUT/cache)")
    _no_progress(p)
    p.set_defaults(func=cmd_tune)

    p = _sub(
        sub,
        "audit",
        "print a run's audit.json and verify every file's sha256",
        "Print what an unlearning run forgot, the models' hashes and metrics, and check every "
        "file of the run folder against the sha256 recorded in audit.json (exit 2 if one "
        "changed, is missing or was added).",
        "salun audit runs/salun",
    )
    p.add_argument("folder", help="an unlearning run folder (holds audit.json)")
    p.set_defaults(func=cmd_audit)

    p = _sub(
        sub,
        "report",
        "tables and plots from a bench or demo folder",
        "Recompute the tables from the run folders' metrics.json and print them. A bench "
        "folder: report.md, report.csv, report.json and plots are written into it. A demo folder "
        "(salun demo --out DIR): its scenarios' tables again. Several demo folders (one per "
        "seed): one table per scenario with mean ± std over the seeds.",
        "salun report runs/fmnist-random10\n"
        "salun report runs/demo-s0 runs/demo-s1 runs/demo-s2   # mean ± std over 3 seeds",
    )
    p.add_argument(
        "folders",
        nargs="+",
        metavar="FOLDER",
        help="a bench folder, or one or more demo folders (combined: mean ± std over seeds)",
    )
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.set_defaults(func=cmd_report)

    p = _sub(
        sub,
        "list",
        "list methods, models, datasets or presets",
        "Print the names a config accepts. Nothing is imported beyond a static table, so this "
        "answers at once.",
        "salun list ddpm-methods\nsalun list methods --long   # display names, tasks, "
        "hyperparameters",
    )
    p.add_argument(
        "what",
        nargs="?",
        default="all",
        metavar="WHAT",
        help=f"one of: all (default), {', '.join(LISTS)}",
    )
    p.add_argument(
        "--long",
        "-l",
        action="store_true",
        help="methods: also display name, tasks and hyperparameter names",
    )
    p.set_defaults(func=cmd_list)

    p = _sub(
        sub,
        "config",
        "print the resolved config",
        "Resolve a preset (or YAML file) and key=value overrides, check them and print the "
        "resulting config as YAML (the config.yaml a run would save). Sections for another "
        "task (diffusion, text_to_image) are left out.",
        "salun config smoke/digits unlearn.method=ga\nsalun config --task ddpm",
    )
    _items(p)
    _task_option(p)
    p.set_defaults(func=cmd_config)

    p = _sub(
        sub,
        "demo",
        "the Fashion-MNIST demo (random 10%% and class-wise); --task ddpm: DDPM",
        "Train the original model and Retrain, run FT, GA, RL, l1-sparse and SalUn and print a "
        "table per scenario: random 10 %% forgetting and class-wise forgetting on Fashion-MNIST "
        "(class-wise on scikit-learn's digits without Fashion-MNIST). --task ddpm erases a digit "
        "from a class-conditional DDPM; --task text_to_image from a tiny Stable Diffusion "
        "pipeline.",
        "salun demo --seed 1 --out runs/demo-s1\nsalun demo --task ddpm --retrain",
    )
    p.add_argument("items", nargs="*", metavar="key=value", help="overrides of the demo preset")
    p.add_argument(
        "--out",
        default="runs/demo",
        help="demo folder, one subfolder per scenario (default runs/demo; runs/demo-ddpm and "
        "runs/demo-sd for the other tasks)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data subset, split, initialisation and methods (default 0)",
    )
    p.add_argument(
        "--dataset",
        default="auto",
        choices=["auto", "fashion-mnist", "digits"],
        help="auto: Fashion-MNIST when installed, else digits (default auto)",
    )
    p.add_argument(
        "--task",
        default="classification",
        help="a registered task (salun list tasks; default classification)",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="ddpm: also train Retrain (slower); classification: re-train the cached original, "
        "Retrain and Retrain' instead of loading them",
    )
    _no_progress(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # -v works anywhere on the line (before or after the subcommand)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    args, extra = parser.parse_known_args([a for a in argv if a not in ("-v", "--verbose")])
    args.verbose = verbose
    # key=value items may come after options (argparse stops collecting positionals there).
    bad = [e for e in extra if e.startswith("-") or not hasattr(args, "items")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.items = [*args.items, *extra]
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("salun").setLevel(logging.INFO)
    out: str | None = getattr(args, "out", None)
    # A folder this command created is removed when the input was bad; bench folders are kept
    # (they are resumable), and so are folders of crashed runs (their log helps).
    fresh = out is not None and args.command not in ("bench", "tune") and not Path(out).exists()
    func: Callable[[argparse.Namespace], int] = args.func
    if args.command == "list":  # torch-free: no process group, no runtime session
        try:
            return func(args)
        except SalunError as e:
            print(f"salun: error: {_one_line(e)}", file=sys.stderr)
            return 2
        finally:
            logging.getLogger().removeHandler(handler)
    from salun.core import distributed

    # under torchrun: one process group; rank 0 prints and writes, the others compute
    started = distributed.init_from_env()
    main_rank = distributed.is_main()
    if not main_rank:
        logging.getLogger("salun").setLevel(logging.WARNING)
    folder = out if args.command in ("train", "mask", "unlearn") else None
    try:
        return _run(func, args, out, fresh, folder, main_rank)
    finally:
        logging.getLogger().removeHandler(handler)  # main() may run many times in one process
        if started:
            distributed.shutdown()


def _run(
    func: Callable[[argparse.Namespace], int],
    args,
    out: str | None,
    fresh: bool,
    folder: str | None,
    main_rank: bool,
) -> int:
    from salun.core import runtime

    try:
        quiet = sys.stdout if main_rank else open(os.devnull, "w")  # noqa: SIM115
        resume = getattr(args, "resume", False)
        with contextlib.redirect_stdout(quiet), runtime.session(folder, resume=resume):
            return func(args)
    except KeyboardInterrupt:
        if fresh and out and main_rank:
            shutil.rmtree(out, ignore_errors=True)
        print("salun: interrupted; no result was written for this command", file=sys.stderr)
        return 130
    except (SalunError, OSError, MemoryError, RuntimeError) as e:
        line = _one_line(e)
        if line is None:
            raise  # a bug, not bad input: keep the traceback
        if fresh and out and main_rank:
            shutil.rmtree(out, ignore_errors=True)
        print(f"salun: error: {line}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str | None:
    """The one-line message for bad input or a failing machine; None for anything else."""
    if isinstance(e, SalunError):
        return " ".join(str(e).split())
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        if e.errno == errno.ENOSPC:
            return f"no space left on device{where}; free some space and run again"
        return f"{e.strerror or e}{where}"
    if isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e):
        return "out of memory; use a smaller data.image_size, batch size or model"
    return None


if __name__ == "__main__":
    sys.exit(main())
