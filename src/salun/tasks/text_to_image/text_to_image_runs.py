"""Runs of the ``text_to_image`` task (Stable Diffusion): config checks, data, mask, unlearn, eval.

One experiment = a pipeline (:func:`salun.tasks.text_to_image.text_to_image_io.load_pipeline`, or the tiny one built in code), a
prompt table and cached forget/retain latents, behind a
:class:`~salun.tasks.text_to_image.text_to_image_objective.TextToImageTask`. Two scenarios:

- ``concept`` (the reference's nudity setting): D_f = images generated from ``forget_prompts``,
  D_r = images generated from ``retain_prompts`` (``forget_size`` / ``retain_size`` each, round
  robin over the prompts); c' = a retain prompt (``relabel: retain``); SalUn's alpha 0.1.
- ``class`` (Imagenette-style): prompts ``template.format(class)``; D_f = the forget class's
  images, D_r = the other classes' (round robin); c' = the next class; alpha 0.5.

Images come from the original pipeline (classifier-free guidance ``guidance``, DDIM ``steps``),
or from ``image_folder`` (``forget/`` and ``retain/`` captioned folders), and are cached as
latents under ``cache_dir`` keyed by the UNet's weights, prompts, sizes and seed.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salun.config import Config, save_config
from salun.core.catalog import display_name
from salun.core.errors import SalunError, unknown_choice
from salun.core.io import hash_obj, hash_state, load_tensors, save_tensors, write_json
from salun.experiment import run_folder, versions
from salun.methods import UnlearnData, check_task, get_method, method_params, wants_mask
from salun.methods.saliency import SaliencyMask, compute_saliency_mask
from salun.tasks.text_to_image.text_to_image_objective import (
    PRECISIONS,
    RELABEL,
    TARGETS,
    LatentSet,
    TextToImageTask,
)

log = logging.getLogger(__name__)

SCENARIOS = ("concept", "class")


def check_config(cfg: Config) -> None:
    """Checks of the ``text_to_image`` section that need no pipeline (one line each)."""
    t = cfg.text_to_image
    if t.scenario not in SCENARIOS:
        raise unknown_choice("text_to_image.scenario", t.scenario, SCENARIOS)
    if t.relabel is not None and t.relabel not in RELABEL:
        raise unknown_choice("text_to_image.relabel", t.relabel, RELABEL)
    if t.target not in TARGETS:
        raise unknown_choice("text_to_image.target", t.target, TARGETS)
    if t.precision not in PRECISIONS:
        raise unknown_choice("text_to_image.precision", t.precision, PRECISIONS)
    if t.scenario == "class":
        if len(t.classes) < 2:
            raise SalunError("text_to_image.classes needs >= 2 class names for scenario=class")
        class_index(t.classes, t.forget_class)
        if "{}" not in t.template:
            raise SalunError(f"text_to_image.template must contain {{}}, got {t.template!r}")
    elif t.image_folder is None and (not t.forget_prompts or not t.retain_prompts):
        raise SalunError("text_to_image needs forget_prompts and retain_prompts (scenario=concept)")
    if t.forget_size < 1 or t.retain_size < 1 or t.steps < 1 or t.generate_batch_size < 1:
        raise SalunError(
            "text_to_image forget_size, retain_size, steps and generate_batch_size must be >= 1"
        )
    if not 0 <= t.p_uncond < 1:
        raise SalunError(f"text_to_image.p_uncond must be in [0, 1), got {t.p_uncond!r}")
    if cfg.bench is not None or cfg.eval.ulira or cfg.eval.epsilon:
        raise SalunError(
            "bench, eval.ulira and eval.epsilon are for classifiers; not text_to_image"
        )


def class_index(classes: list[str], forget_class: int | str | None) -> int:
    if isinstance(forget_class, int) and not isinstance(forget_class, bool):
        if 0 <= forget_class < len(classes):
            return forget_class
        raise SalunError(
            f"forget_class {forget_class} out of range; allowed: 0..{len(classes) - 1}"
        )
    if forget_class in classes:
        return classes.index(str(forget_class))
    raise unknown_choice("text_to_image.forget_class", forget_class, classes)


@dataclass
class T2IExperiment:
    cfg: Config
    pipe: Any
    task: TextToImageTask
    forget: LatentSet
    retain: LatentSet
    data_hash: str
    forget_rows: list[int]

    @property
    def unet(self) -> nn.Module:
        return self.pipe.unet


def prompt_table(cfg: Config) -> tuple[list[str], list[int], list[int]]:
    """(prompts, forget rows, retain rows) of the scenario."""
    t = cfg.text_to_image
    if t.scenario == "class":
        prompts = [t.template.format(c) for c in t.classes]
        k = class_index(t.classes, t.forget_class)
        return prompts, [k], [i for i in range(len(prompts)) if i != k]
    prompts = list(dict.fromkeys([*t.forget_prompts, *t.retain_prompts]))
    forget = [prompts.index(p) for p in dict.fromkeys(t.forget_prompts)]
    retain = [i for i in range(len(prompts)) if i not in forget]
    if not retain:
        raise SalunError("text_to_image.retain_prompts are all among the forget prompts")
    return prompts, forget, retain


def round_robin(rows: list[int], n: int) -> torch.Tensor:
    return torch.tensor([rows[i % len(rows)] for i in range(n)], dtype=torch.long)


def _folder_sets(cfg: Config, pipe) -> tuple[list[str], list[int], list[int], Any, Any]:
    from salun.tasks.text_to_image.text_to_image_files import read_caption_folder
    from salun.tasks.text_to_image.text_to_image_io import encode_images

    folder = Path(cfg.text_to_image.image_folder or "")
    vae_cfg = pipe.vae.config
    size = int(pipe.unet.config.sample_size) * 2 ** (len(vae_cfg.block_out_channels) - 1)
    read = {part: read_caption_folder(folder / part, size) for part in ("forget", "retain")}
    parts = {}
    for part, (images, captions) in read.items():  # both folders read before any encoding
        if int(vae_cfg.in_channels) == 1:
            images = images.mean(1, keepdim=True)
        parts[part] = (encode_images(pipe, images), captions)
    prompts = list(dict.fromkeys(parts["forget"][1] + parts["retain"][1]))
    f_rows = sorted({prompts.index(c) for c in parts["forget"][1]})
    r_rows = [i for i in range(len(prompts)) if i not in f_rows]
    if not r_rows:
        raise SalunError("every retain caption is also a forget caption")
    f = LatentSet(parts["forget"][0], torch.tensor([prompts.index(c) for c in parts["forget"][1]]))
    r = LatentSet(parts["retain"][0], torch.tensor([prompts.index(c) for c in parts["retain"][1]]))
    return prompts, f_rows, r_rows, f, r


def build_pipeline(cfg: Config, source: str | Path | None = None):
    from salun.tasks.batches import resolve_device
    from salun.tasks.text_to_image.text_to_image_io import load_pipeline, tiny_pipeline

    t = cfg.text_to_image
    src = str(source) if source is not None else t.pipeline
    if src == "tiny":
        words = [*t.forget_prompts, *t.retain_prompts, *t.eval_prompts, t.template, *t.classes]
        return tiny_pipeline(words, seed=cfg.seed).to(resolve_device(cfg.device))
    return load_pipeline(src, resolve_device(cfg.device))


def prepare_t2i(cfg: Config, pipeline: str | Path | None = None, pipe=None) -> T2IExperiment:
    """Pipeline, prompt table, task and the cached forget/retain latents of ``cfg``."""
    from salun.tasks.batches import resolve_device
    from salun.tasks.text_to_image.text_to_image_io import (
        encode_prompts,
        generate_latents,
        training_scheduler,
    )

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t = cfg.text_to_image
    pipe = pipe if pipe is not None else build_pipeline(cfg, pipeline)
    if t.image_folder:
        prompts, f_rows, r_rows, forget, retain = _folder_sets(cfg, pipe)
    else:
        prompts, f_rows, r_rows = prompt_table(cfg)
    emb, ids = encode_prompts(pipe, prompts)
    relabel = t.relabel or ("next" if t.scenario == "class" else "retain")
    task = TextToImageTask(
        embeddings=emb,
        prompts=prompts,
        scheduler=training_scheduler(pipe),
        num_classes=len(prompts),
        retain_ids=tuple(r_rows),
        token_ids=ids,
        device=resolve_device(cfg.device),
        progress=cfg.progress,
        p_uncond=t.p_uncond,
        relabel_mode=relabel,
        target=t.target,
        precision=t.precision,
        gradient_checkpointing=t.gradient_checkpointing,
        seed=cfg.seed,
        retain_weight=0.5 if t.scenario == "class" else 0.1,
    )
    if not t.image_folder:
        f_labels, r_labels = round_robin(f_rows, t.forget_size), round_robin(r_rows, t.retain_size)
        key = hash_obj(
            {
                "unet": hash_state(pipe.unet),
                "text": hash_obj(emb.numpy().round(5).tolist()),
                "prompts": prompts,
                "rows": [f_rows, r_rows],  # which prompts are forgotten (the forget class)
                "sizes": [t.forget_size, t.retain_size],
                "sampling": [t.guidance, t.steps, cfg.seed],
            }
        )[:20]
        path = Path(cfg.cache_dir) / f"t2i-data-{key}.safetensors"
        if path.is_file():
            cached = load_tensors(path)
            zf, zr = cached["forget"], cached["retain"]
            log.info("forget/retain latents from cache %s", path)
        else:
            start = time.perf_counter()
            gen: dict[str, Any] = dict(
                guidance=t.guidance,
                steps=t.steps,
                batch_size=t.generate_batch_size,
                progress=cfg.progress,
            )
            zf = generate_latents(pipe, pipe.unet, emb, f_labels, seed=cfg.seed, **gen)
            zr = generate_latents(pipe, pipe.unet, emb, r_labels, seed=cfg.seed + 1, **gen)
            save_tensors(path, {"forget": zf.contiguous(), "retain": zr.contiguous()})
            log.info(
                "generated %d + %d latents in %.1fs", len(zf), len(zr), time.perf_counter() - start
            )
        forget, retain = LatentSet(zf, f_labels), LatentSet(zr, r_labels)
    data_hash = hash_obj([prompts, hash_obj(forget.latents.numpy().round(4).tolist()[:64])])[:20]
    return T2IExperiment(cfg, pipe, task, forget, retain, data_hash, f_rows)


def mask_for(exp: T2IExperiment, unet: nn.Module) -> SaliencyMask:
    m = exp.cfg.mask
    return compute_saliency_mask(
        unet, exp.forget, exp.task, m.ratio, m.per_layer, min(m.batch_size, 64), exp.data_hash
    )


def unlearn_t2i(
    exp: T2IExperiment,
    method_name: str,
    params: dict[str, Any] | None = None,
    mask: SaliencyMask | bool | None = None,
    unet: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, Any], SaliencyMask | None]:
    """Unlearn a copy of the UNet (or ``unet`` in place); returns (unet, info, mask used)."""
    check_task(method_name, "text_to_image")
    method = get_method(method_name, **(params or {}))
    model = copy.deepcopy(exp.unet) if unet is None else unet
    exp.task.reseed(exp.cfg.seed)
    start = time.perf_counter()
    mask_seconds = 0.0
    if mask is True:
        mask = mask_for(exp, model)
        mask_seconds = time.perf_counter() - start
    elif mask is False:
        mask = None
    data = UnlearnData(forget=exp.forget, retain=exp.retain, seed=exp.cfg.seed)
    model = method.unlearn(model, data, exp.task, mask=mask)
    info = {
        "method": method_name,
        "params": method_params(method),
        "mask": None if mask is None else {**mask.meta, "fraction": mask.fraction},
        "mask_seconds": round(mask_seconds, 4),
        "rte_seconds": round(time.perf_counter() - start, 4),
    }
    return model, info, mask


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def sample_prompts(
    exp: T2IExperiment,
    unet: nn.Module,
    prompts: list[str],
    n: int,
    seed: int | None = None,
    guidance: float | None = None,
    steps: int | None = None,
) -> torch.Tensor:
    """``n`` images in [0, 1] per prompt (prompt-major order), same noise for every model."""
    from salun.tasks.text_to_image.text_to_image_io import (
        decode_latents,
        encode_prompts,
        generate_latents,
    )

    t = exp.cfg.text_to_image
    emb, _ = encode_prompts(exp.pipe, prompts)
    labels = torch.arange(len(prompts)).repeat_interleave(n)
    z = generate_latents(
        exp.pipe,
        unet,
        emb,
        labels,
        t.guidance if guidance is None else guidance,
        t.steps if steps is None else steps,
        exp.cfg.seed if seed is None else seed,
        t.generate_batch_size,
    )
    return decode_latents(exp.pipe, z)


def nudity_eval(exp: T2IExperiment, unet: nn.Module, rows: list | None = None) -> dict[str, Any]:
    """NudeNet on images of an I2P-format CSV (each row's prompt, seed and guidance; ``rows``
    when the caller read the file already)."""
    from salun.eval.nudity import nudenet_exposed
    from salun.eval.prompts import read_i2p_csv

    t = exp.cfg.text_to_image
    assert t.i2p_csv is not None  # the caller checked it is set
    rows = read_i2p_csv(t.i2p_csv) if rows is None else rows
    images = torch.cat(
        [sample_prompts(exp, unet, [r.prompt], 1, seed=r.seed, guidance=r.guidance) for r in rows]
    )
    return nudenet_exposed(images, thresholds=tuple(t.nudenet_thresholds))


def run_unlearn_t2i(
    cfg: Config,
    out: str | Path,
    model_path: str | Path | None = None,
    mask_path: str | Path | None = None,
    compare: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Unlearn with ``cfg.unlearn``; write ``model/`` (a diffusers pipeline folder),
    ``mask.safetensors``, sample grids of the forget, eval and retain prompts, and metrics.
    A mask file made for another UNet or forget set is refused unless ``force``."""
    from salun.eval.generation import save_grid
    from salun.eval.prompts import read_i2p_csv
    from salun.tasks.text_to_image.text_to_image_io import save_pipeline

    t = cfg.text_to_image
    i2p = read_i2p_csv(t.i2p_csv) if t.i2p_csv else None  # a bad file fails before any work
    exp = prepare_t2i(cfg, model_path)
    mask: SaliencyMask | bool | None = wants_mask(cfg.unlearn.method, cfg.unlearn.use_mask)
    if mask_path:
        mask = SaliencyMask.load(mask_path, exp.unet)
        mask.meta["file"] = str(mask_path)
        mask.check_data_hash(exp.data_hash, "the config's forget prompts or images", force)
        mask.check_model_hash(exp.unet, force)
    with run_folder(out) as out:
        save_config(cfg, out / "config.yaml")
        model, info, used = unlearn_t2i(
            exp, cfg.unlearn.method, cfg.unlearn.params, mask, None if compare else exp.unet
        )
        if used is not None:
            used.save(out / "mask.safetensors")
        meta = {
            "format": "salun-t2i-v1",
            "method": cfg.unlearn.method,
            "forget_prompts": [exp.task.prompts[r] for r in exp.forget_rows],
        }
        save_pipeline(exp.pipe, out / "model", unet=model, meta=meta)
        shown = list(
            dict.fromkeys(
                [exp.task.prompts[r] for r in exp.forget_rows]
                + list(t.eval_prompts)
                + [exp.task.prompts[r] for r in exp.task.retain_ids][:4]
            )
        )
        n = t.eval_samples
        labels = torch.arange(len(shown)).repeat_interleave(n)
        method = cfg.unlearn.method
        save_grid(
            sample_prompts(exp, model, shown, n),
            labels,
            out / f"grid_{method}.png",
            per_row=n,
            title=display_name(method),
            class_names=shown,
            row_format="{}",  # rows are prompts
        )
        result: dict[str, Any] = {
            "task": "text_to_image",
            "method": cfg.unlearn.method,
            "pipeline": str(model_path or t.pipeline),
            "seed": cfg.seed,
            "data_hash": exp.data_hash,
            "grid_prompts": shown,
            "run": info,
            "forget_mse": exp.task.mean_loss(model, exp.forget),
            "retain_mse": exp.task.mean_loss(model, exp.retain),
            "versions": versions(),
        }
        if compare:
            save_grid(
                sample_prompts(exp, exp.unet, shown, n),
                labels,
                out / "grid_original.png",
                per_row=n,
                title="Original",
                class_names=shown,
                row_format="{}",
            )
            result["original"] = {
                "forget_mse": exp.task.mean_loss(exp.unet, exp.forget),
                "retain_mse": exp.task.mean_loss(exp.unet, exp.retain),
            }
        if t.i2p_csv:
            result["nudity"] = nudity_eval(exp, model, i2p)
        write_json(out / "metrics.json", result)
    return result


def run_mask_t2i(cfg: Config, out: str | Path, model_path: str | Path | None = None):
    exp = prepare_t2i(cfg, model_path)
    with run_folder(out) as out:
        save_config(cfg, out / "config.yaml")
        mask = mask_for(exp, exp.unet)
        mask.save(out / "mask.safetensors")
    return mask


class T2IRuns:
    """The ``text_to_image`` runs: they fine-tune an existing pipeline, so the task brings its
    own unlearn and mask runs instead of the pipeline's (``salun.run``)."""

    @staticmethod
    def run_unlearn(
        cfg: Config,
        out: str | Path,
        model_path: str | Path | None = None,
        mask_path: str | Path | None = None,
        split_path: str | Path | None = None,
        compare: bool = True,
        force: bool = False,
    ) -> dict[str, Any]:
        return run_unlearn_t2i(cfg, out, model_path, mask_path, compare, force)

    @staticmethod
    def run_mask(cfg: Config, out: str | Path, model_path: str | Path | None = None):
        return run_mask_t2i(cfg, out, model_path)

    @staticmethod
    def run_train(cfg: Config, *args: Any, **kwargs: Any) -> Any:
        raise SalunError(
            "task text_to_image fine-tunes an existing pipeline (text_to_image.pipeline); "
            "`salun demo --task text_to_image` trains the small demo pipeline"
        )

    @staticmethod
    def run_eval(cfg: Config, *args: Any, **kwargs: Any) -> Any:
        raise SalunError("salun eval has no text_to_image evaluation yet; use salun unlearn")

    @staticmethod
    def unlearn_lines(cfg: Config, r: dict[str, Any], out: str | Path) -> list[str]:
        """What ``salun unlearn`` prints for a text-to-image run."""
        lines = [
            f"{cfg.unlearn.method} on {r['pipeline']}, seed {cfg.seed}: "
            f"RTE {r['run']['rte_seconds']:.2f}s",
            f"  noise MSE forget {r['forget_mse']:.4f}  retain {r['retain_mse']:.4f}",
        ]
        for th, v in r.get("nudity", {}).get("per_threshold", {}).items():
            lines.append(f"  NudeNet >= {th}: {v.get('images_flagged')} images flagged")
        lines.append(f"run folder: {out} (model/ is a diffusers pipeline)")
        return lines

    @staticmethod
    def mask_line(mask: SaliencyMask, out: str | Path) -> str:
        return (
            f"mask: {mask.selected} of {mask.total} UNet weights salient "
            f"({100 * mask.fraction:.2f}%) -> {Path(out) / 'mask.safetensors'}"
        )
