"""The DDPM demo: class erasure from a class-conditional DDPM with several methods.

The ``ddpm`` task itself (model folders, the judge, evaluation) is
:class:`salun.tasks.ddpm.ddpm_task.Diffusion`, run by the standard pipeline (:mod:`salun.run`);
the model folders are :mod:`salun.tasks.ddpm.ddpm_folders`. Library code: it logs and returns
tables; the CLI prints them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from salun.config import load_config, save_config
from salun.core.catalog import display_name
from salun.core.io import check_out, write_json, write_text
from salun.core.results import markdown_table
from salun.eval.generation import DEFINITIONS, GEN_EVAL_VERSION, save_grid
from salun.methods import wants_mask
from salun.run import prepare, run_folder, train_model, unlearn_once, versions
from salun.tasks.ddpm.ddpm_task import (
    evaluate_ddpm,
    judge_for,
)

__all__ = ["DDPM_DEMO_METHODS", "run_ddpm_demo"]

log = logging.getLogger(__name__)


# -- demo ------------------------------------------------------------------------------------
# Settings of the DDPM demo's methods (digits 16x16, CPU budgets). Adam at lr 1e-4 as in the
# reference DDPM setting (Fan et al.), 10 passes. SalUn runs its alternating form (a pass over
# D_f with c' = next class, then a pass over D_r, 50 % mask): on this small UNet the paired
# ``form=paper`` with alpha = 1e-3 also erases the other classes (see docs/results.md). GA is shown
# at a learning rate where it forgets, which is also where it wrecks the model (as in the paper).
_ADAM = {"optimizer": "adam", "lr": 1e-4, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 64}
DDPM_DEMO_METHODS: dict[str, dict[str, Any]] = {
    "salun": {**_ADAM, "form": "reference", "epochs": 10},
    "rl": {**_ADAM, "epochs": 10},
    "ga": {**_ADAM, "lr": 5e-4, "epochs": 5},
    "ft": {**_ADAM, "epochs": 10},
    "esd": {"lr": 2e-4, "epochs": 15, "batch_size": 64, "eta": 1.0},
}


DEMO_COLUMNS = ("UA", "other-class acc", "FID (others)", "time (s)")


def _row(name: str, m: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    return {
        "name": name,
        "UA": m["UA"],
        "other-class acc": m["other_acc"],
        "FID (others)": m.get("FID", float("nan")),
        "time (s)": seconds,
    }


def run_ddpm_demo(
    out: str | Path,
    seed: int = 0,
    progress: bool = True,
    overrides: list[str] | None = None,
    methods: dict[str, dict[str, Any]] | None = None,
    retrain: bool = False,
    say: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a class-conditional DDPM on digits, erase one digit with each method, score them.

    ``say`` receives one line per step (the CLI prints them; library code only logs).

    Writes ``grid_<name>.png`` (one row per class), ``report.md`` and ``metrics.json``; the
    folder is built beside ``out`` and renamed onto it (complete or absent); a non-empty
    ``out`` is refused unless ``overwrite``.
    """
    out = Path(out)

    def tell(line: str) -> None:
        log.info(line)
        if say is not None:
            say(f"DDPM demo: {line}")

    cfg = load_config("demo-ddpm", [f"seed={seed}", f"progress={progress}", *(overrides or [])])
    check_out(out, overwrite, cfg.input_paths())
    methods = copy.deepcopy(DDPM_DEMO_METHODS if methods is None else methods)
    exp = prepare(cfg)
    with run_folder(out) as out:  # staged, renamed onto out at the end
        save_config(cfg, out / "config.yaml")
        exp.split.save(out / "split.json")
        tell(f"training the original DDPM, {cfg.train.epochs} epochs")
        original, orig_info = train_model(exp, "original")
        tell("training the judge classifier (or loading it from the cache)")
        judge, judge_info = judge_for(exp)
        tell("sampling and scoring the original")
        om, img, lab = evaluate_ddpm(exp, original)
        names = list(exp.bundle.train.classes)
        save_grid(img, lab, out / "grid_original.png", title="Original", class_names=names)
        rows = [_row("Original", om, orig_info.get("seconds"))]
        runs: dict[str, Any] = {"original": {"info": orig_info, "metrics": om}}
        if retrain:
            tell(f"training Retrain (without the forget class), {cfg.train.epochs} epochs")
            model, info = train_model(exp, "retrain")
            m, img, lab = evaluate_ddpm(exp, model)
            save_grid(img, lab, out / "grid_retrain.png", title="Retrain", class_names=names)
            rows.append(_row("Retrain", m, info.get("seconds")))
            runs["retrain"] = {"info": info, "metrics": m}
        for i, (name, params) in enumerate(methods.items(), 1):
            tell(f"unlearning with {display_name(name)} ({i}/{len(methods)}), then sampling")
            model, info = unlearn_once(exp, original, name, params, mask=wants_mask(name))
            info.pop("_calibration", None)  # the full record is for the classification demo
            m, img, lab = evaluate_ddpm(exp, model)
            save_grid(
                img, lab, out / f"grid_{name}.png", title=display_name(name), class_names=names
            )
            rows.append(_row(display_name(name), m, info["rte_seconds"]))
            runs[name] = {"run": info, "metrics": m}
            log.info("%s: UA %.1f other-class acc %.1f", name, m["UA"], m["other_acc"])
        fc = om["forget_class"]
        title = (
            f"DDPM class erasure on {cfg.data.name} (forget class {fc} "
            f"'{exp.bundle.train.classes[fc]}'), seed {seed}; judge test accuracy "
            f"{judge_info['test_acc']:.1f}%"
        )
        table = markdown_table(rows, DEMO_COLUMNS)
        result = {
            "title": title,
            "task": "ddpm",
            "seed": seed,
            "split_hash": exp.split.hash,
            "judge": judge_info,
            "runs": runs,
            "rows": rows,
            "definitions": DEFINITIONS,
            "evaluator_version": GEN_EVAL_VERSION,
            "sampling": om["sampling"],
            "fid_features": om.get("fid_features"),
            "versions": versions(),
        }
        write_json(out / "metrics.json", result)
        notes = "\n".join(f"- **{k}**: {v}" for k, v in DEFINITIONS.items())
        write_text(
            out / "report.md",
            f"# {title}\n\n{table}\n\nSampling: {om['sampling']}; FID features: "
            f"{om.get('fid_features')} (not comparable to Inception FID). Sample grids: "
            f"grid_<method>.png, one row per class.\n\n## Definitions ({GEN_EVAL_VERSION})\n\n"
            f"{notes}\n",
        )
        result["table"] = table
    return result
