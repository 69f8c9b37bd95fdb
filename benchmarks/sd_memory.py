"""Memory of SalUn on Stable Diffusion v1.4's UNet per option (fp32, bf16, checkpointing, 8-bit Adam).

SalUn for text-to-image (Fan et al., ICLR 2024) fine-tunes the whole UNet with Adam (lr 1e-5,
batch 8 at 512 x 512, i.e. 64 x 64 latents); one step back-propagates the forgetting term
||eps(x_t, c_f) - sg eps(x_t, c')||^2 and alpha * the retain loss, so two graphs of 8 samples are
alive at once (the target eps(x_t, c') runs without gradients).

CPU mode (default, no GPU needed) -- the table is an ESTIMATE:
- weights, gradients, Adam states, the bool mask and MaskGuard's anchor copy (the pre-unlearning
  values of every parameter whose mask is not all-true: every parameter at a 50 % mask) are
  computed from the parameter counts of SD v1.4's UNet, built on the meta device from its config;
  8-bit Adam (bitsandbytes) keeps 2 bytes of state per parameter for tensors of >= 4096 elements
  and 8 bytes below that, plus an fp32 absmax per 256-element block (assumed);
- activations are measured: the bytes of every tensor autograd saves for backward (a
  saved-tensors hook, storages counted once, parameters and autocast's casts of parameters
  excluded) on SD-v1.4-shaped UNets of 1/10 and 1/5 width at 16-32 px latents, batch 2, divided
  by 2 (with 8 px latents in the fit the held-out error was 9 %, so they are left out), fitted as
  r^2 (a w + c) + d (w = width fraction, r = latent side) and extrapolated to full width at 64 x 64;
  a held-out point checks the fit. With gradient checkpointing the retained bytes are those saved
  outside the checkpointed blocks plus each block's inputs, and the backward adds one block's
  recomputed activations (the largest block, measured by attributing saved tensors to blocks);
- bf16 autocast adds the bf16 copies of conv/linear weights that backward keeps (2 bytes each,
  counted from the parameters; the log compares the count with the copies the hook sees).
The estimate sums the components, an upper bound of the peak (transient buffers of kernels,
the optimizer's foreach temporaries and allocator fragmentation are not in it).

GPU mode (``--gpu``): the same estimate (activations measured on the GPU, under CUDA's autocast
policy) and, per option, the measured peak (``torch.cuda.max_memory_allocated``) and mean step
time of a few real SalUn steps on a randomly initialised SD-v1.4-shaped UNet, with gradients
masked and non-salient weights restored by ``salun.methods.saliency.MaskGuard``.

Usage: PYTHONPATH=src python benchmarks/sd_memory.py [--gpu] [--out table.md] [--steps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

GIB = 2**30
BATCH, LATENT, GRAPHS = 8, 64, 2  # batch 8 at 512 x 512, forget + retain graphs per step
# (width fraction, latent side) points of the activation fit, and the held-out check point;
# sides must be multiples of 8 (three 2x downsamplings). The GPU can afford larger ones.
FIT_CPU, CHECK_CPU = ((0.1, 16), (0.1, 32), (0.2, 16)), (0.2, 32)
FIT_GPU, CHECK_GPU = ((0.1, 16), (0.1, 32), (0.2, 16), (0.2, 32)), (0.2, 24)
BNB_MIN_8BIT, BNB_BLOCK = 4096, 256


def sd14_unet_config(width: float = 1.0) -> dict[str, Any]:
    """SD v1.4's UNet config (CompVis/stable-diffusion-v1-4, unet/config.json), width-scaled."""
    channels = tuple(int(round(c * width)) for c in (320, 640, 1280, 1280))
    if any(c % 32 for c in channels):
        raise ValueError(f"width {width} gives channels {channels}, not multiples of 32")
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
        act_fn="silu",
        center_input_sample=False,
        downsample_padding=1,
        flip_sin_to_cos=True,
        freq_shift=0,
        mid_block_scale_factor=1,
        norm_eps=1e-5,
    )


def build_unet(width: float = 1.0, device: str | torch.device = "cpu") -> nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**sd14_unet_config(width))


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts the memory formulas need."""
    params = list(model.parameters())
    cast = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    )  # weights autocast keeps in bf16 for backward
    small = sum(p.numel() for p in params if p.numel() < BNB_MIN_8BIT)
    return {"params": sum(p.numel() for p in params), "cast_weights": cast, "small": small}


def frozen_encoder_params() -> dict[str, int]:
    """Parameters of SD v1.4's frozen CLIP ViT-L/14 text encoder and VAE (meta device)."""
    out: dict[str, int] = {}
    with torch.device("meta"):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        out["vae"] = sum(p.numel() for p in vae.parameters())
        try:
            from transformers import CLIPTextConfig, CLIPTextModel

            text = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=49408,
                    hidden_size=768,
                    intermediate_size=3072,
                    num_hidden_layers=12,
                    num_attention_heads=12,
                    max_position_embeddings=77,
                    hidden_act="quick_gelu",
                )
            )
            out["text_encoder"] = sum(p.numel() for p in text.parameters())
        except ImportError:
            pass
    return out


# ------------------------------------------------------------------ activation measurement
def _is_weight_copy(t: torch.Tensor) -> bool:
    """A cast of a parameter (autocast's bf16 weight copies): ToCopy of an AccumulateGrad leaf."""
    fn = t.grad_fn
    if fn is None or type(fn).__name__ != "ToCopyBackward0":
        return False
    return any(type(n).__name__ == "AccumulateGrad" for n, _ in fn.next_functions if n is not None)


def saved_bytes(
    unet: nn.Module, batch: int, side: int, autocast: bool, device: torch.device
) -> dict[str, Any]:
    """Bytes autograd keeps for backward after one forward + MSE loss (see module docstring).

    Returns ``plain`` (no checkpointing), ``ckpt_retained`` (checkpointing: outside the blocks
    plus block inputs), per-block ``blocks`` bytes (recomputed one at a time in backward) and
    ``weight_copies`` (autocast's casts of parameters, kept apart: they do not grow with batch).
    """
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    outer: dict[int, int] = {}
    inputs: dict[int, int] = {}
    copies: dict[int, int] = {}
    blocks: dict[int, dict[int, int]] = {}
    current: list[int | None] = [None]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in params or not storage.nbytes():
            return t
        if _is_weight_copy(t):
            copies[ptr] = storage.nbytes()
        else:
            target = outer if current[0] is None else blocks[current[0]]
            target[ptr] = storage.nbytes()
        return t

    def attribute(module: nn.Module, *args: Any) -> Any:
        # diffusers calls this for each checkpointed block; we run the block normally and
        # record which saved tensors belong to it (nested calls belong to the outermost block)
        if current[0] is not None:
            return module(*args)
        for a in args:
            if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() not in params:
                inputs[a.untyped_storage().data_ptr()] = a.untyped_storage().nbytes()
        key = len(blocks)
        blocks[key] = {}
        current[0] = key
        try:
            return module(*args)
        finally:
            current[0] = None

    unet.enable_gradient_checkpointing(gradient_checkpointing_func=attribute)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 4, side, side, generator=g).to(device)
    ctx = torch.randn(batch, 77, 768, generator=g).to(device)
    steps = torch.full((batch,), 500, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
        out = unet(x, steps, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(out.float(), torch.zeros_like(out, dtype=torch.float32))
    retained = {**outer, **inputs}
    plain = dict(outer)
    for b in blocks.values():
        plain.update(b)
    result = {
        "plain": float(sum(plain.values())),
        "ckpt_retained": float(sum(retained.values())),
        "ckpt_block": max(
            (float(sum(v for p, v in b.items() if p not in retained)) for b in blocks.values()),
            default=0.0,
        ),
        "weight_copies": float(sum(copies.values())),
    }
    del loss, out
    unet.disable_gradient_checkpointing()
    return result


def fit_activations(
    device: torch.device,
    log: Callable[[str], None],
    fit_points: tuple[tuple[float, int], ...],
    check: tuple[float, int],
    batch: int = 2,
) -> dict[bool, dict[str, Any]]:
    """Fit per-sample bytes = r^2 (a w + c) + d on small widths/sides; extrapolate to SD v1.4.

    Per-sample bytes = saved bytes at ``batch`` / batch, weight copies excluded; one forward per
    point and precision. Returns, for fp32 (False) and bf16 autocast (True), the full-size
    prediction of each quantity, the fit's error on the held-out point, and the measured weight
    copies against the count 2 x (conv + linear weights) of each small UNet.
    """
    points: dict[tuple[bool, float, int], dict[str, float]] = {}
    copies: dict[float, tuple[float, int]] = {}
    for width in sorted({w for w, _ in (*fit_points, check)}):
        torch.manual_seed(0)
        unet = build_unet(width, device)
        for bf16 in (False, True):
            for w, side in (*fit_points, check):
                if w == width:
                    got = saved_bytes(unet, batch, side, bf16, device)
                    points[(bf16, w, side)] = {k: v / batch for k, v in got.items()}
                    if bf16:
                        copies[w] = (got["weight_copies"], 2 * param_counts(unet)["cast_weights"])
        del unet
    design = np.array([[r * r * w, r * r, 1.0] for (w, r) in fit_points])
    result: dict[bool, dict[str, Any]] = {}
    for bf16 in (False, True):
        out: dict[str, Any] = {
            "points": {f"w={w} r={r}": points[(bf16, w, r)] for (w, r) in (*fit_points, check)}
        }
        for key in ("plain", "ckpt_retained", "ckpt_block"):
            y = np.array([points[(bf16, w, r)][key] for (w, r) in fit_points])
            coef, *_ = np.linalg.lstsq(design, y, rcond=None)

            def predict(w: float, r: int, coef: np.ndarray = coef) -> float:
                return float(coef @ np.array([r * r * w, r * r, 1.0]))

            held_out = points[(bf16, *check)][key]
            out[key] = {
                "coef": coef.tolist(),
                "full": predict(1.0, LATENT),
                "check_error": abs(predict(*check) - held_out) / max(held_out, 1.0),
            }
            log(
                f"  {'bf16' if bf16 else 'fp32'} {key}: {out[key]['full'] / 2**20:.1f} MiB per "
                f"sample at full width, 64x64 (held-out error {out[key]['check_error']:.1%})"
            )
        result[bf16] = out
    for w, (seen, counted) in copies.items():
        log(
            f"  width {w}: bf16 weight copies saved {seen / 2**20:.2f} MiB, counted {counted / 2**20:.2f}"
        )
    result[True]["weight_copies_seen_vs_counted"] = {str(w): v for w, v in copies.items()}
    return result


# ------------------------------------------------------------------ the estimate
OPTIONS = {  # name: (bf16 autocast, gradient checkpointing, 8-bit Adam)
    "fp32": (False, False, False),
    "bf16 autocast": (True, False, False),
    "grad checkpointing": (False, True, False),
    "bf16 + checkpointing": (True, True, False),
    "8-bit Adam": (False, False, True),
    "bf16 + ckpt + 8-bit Adam": (True, True, True),
}


def estimate(
    counts: dict[str, int], acts: dict[bool, dict[str, Any]], option: str
) -> dict[str, float]:
    bf16, ckpt, adam8 = OPTIONS[option]
    n, fit = counts["params"], acts[bf16]
    samples = BATCH * GRAPHS
    if ckpt:
        # backward recomputes one block of one graph (batch 8) at a time
        activ = samples * fit["ckpt_retained"]["full"] + BATCH * fit["ckpt_block"]["full"]
    else:
        activ = samples * fit["plain"]["full"]
    if adam8:
        big = n - counts["small"]
        adam = 2 * big + 8 * counts["small"] + 2 * 4 * big / BNB_BLOCK
    else:
        adam = 8 * n
    row = {
        "weights": 4 * n,
        "grads": 4 * n,
        "adam": adam,
        "mask": n,  # bool
        "anchor": 4 * n,  # MaskGuard's copy of every partially masked parameter
        "bf16_weights": 2 * counts["cast_weights"] if bf16 else 0,
        "activations": activ,
    }
    row["total"] = sum(row.values())
    row["frozen_target"] = (2 if bf16 else 4) * n
    return row


COLUMNS = [
    ("weights", "weights"),
    ("grads", "grads"),
    ("adam", "Adam states"),
    ("mask", "mask (bool)"),
    ("anchor", "MaskGuard anchor"),
    ("bf16_weights", "bf16 weight copies (all conv/linear)"),
    ("activations", f"activations ({GRAPHS}x{BATCH} @ {LATENT}x{LATENT})"),
    ("total", "est. total"),
    ("frozen_target", "+ frozen target"),
]


def markdown(rows: dict[str, dict[str, Any]], measured: bool) -> str:
    head = ["option", *(label for _, label in COLUMNS)]
    if measured:
        head += ["measured peak", "step (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name] + [f"{row[k] / GIB:.2f}" for k, _ in COLUMNS]
        if measured:
            peak = row.get("peak")
            cells += [
                f"{peak / GIB:.2f}" if peak is not None else row.get("skip", "n/a"),
                f"{row['step_s']:.3f}" if row.get("step_s") is not None else "n/a",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ GPU measurement
def gpu_measure(option: str, unet: nn.Module, steps: int, log: Callable[[str], None]) -> dict:
    """Peak memory and step time of real SalUn steps (batch 8, 64x64 latents) for one option."""
    from salun.methods.saliency import MaskGuard, SaliencyMask

    bf16, ckpt, adam8 = OPTIONS[option]
    device = next(unet.parameters()).device
    if adam8:
        try:
            import bitsandbytes as bnb  # noqa: F401
        except ImportError:
            return {"peak": None, "step_s": None, "skip": "no bitsandbytes"}
    if ckpt:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    unet.train()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    g = torch.Generator(device=device).manual_seed(0)
    masks = {
        name: torch.rand(p.shape, generator=g, device=device) < 0.5
        for name, p in unet.named_parameters()
    }
    if adam8:
        import bitsandbytes as bnb

        opt: torch.optim.Optimizer = bnb.optim.Adam8bit(unet.parameters(), lr=1e-5)
    else:
        opt = torch.optim.Adam(unet.parameters(), lr=1e-5)
    guard = MaskGuard(unet, SaliencyMask(masks=masks), opt)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    times = []
    for i in range(steps + 1):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        shape = (BATCH, 4, LATENT, LATENT)
        x_f, x_r = (torch.randn(shape, generator=g, device=device) for _ in range(2))
        noise = torch.randn(shape, generator=g, device=device)
        c_f, c_p, c_r = (torch.randn(BATCH, 77, 768, generator=g, device=device) for _ in range(3))
        t = torch.randint(0, 1000, (BATCH,), generator=g, device=device)
        with amp:
            with torch.no_grad():
                target = unet(x_f, t, encoder_hidden_states=c_p).sample
            forget = F.mse_loss(
                unet(x_f, t, encoder_hidden_states=c_f).sample.float(), target.float()
            )
            retain = F.mse_loss(unet(x_r, t, encoder_hidden_states=c_r).sample.float(), noise)
            loss = forget + 0.1 * retain
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guard.before_step()
        opt.step()
        guard.after_step()
        torch.cuda.synchronize(device)
        if i:  # the first step allocates the optimizer state and warms up kernels
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device)
    log(f"  {option}: peak {peak / GIB:.2f} GiB, {np.mean(times):.3f} s/step")
    opt.zero_grad(set_to_none=True)
    del opt, guard, masks
    unet.disable_gradient_checkpointing()
    torch.cuda.empty_cache()
    return {"peak": float(peak), "step_s": float(np.mean(times))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="measure real-size steps on CUDA")
    ap.add_argument("--out", type=Path, help="write the Markdown table (and .json) here")
    ap.add_argument("--steps", type=int, default=3, help="timed SalUn steps per option (--gpu)")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    if args.gpu and not torch.cuda.is_available():
        log("--gpu: no CUDA device")
        return 2
    device = torch.device("cuda" if args.gpu else "cpu")
    if not args.gpu:
        torch.manual_seed(0)
    counts = param_counts(build_unet(1.0, "meta"))
    encoders = frozen_encoder_params()
    log(f"SD v1.4 UNet: {counts['params']:,} parameters; frozen encoders: {encoders}")
    fit_points, check = (FIT_GPU, CHECK_GPU) if args.gpu else (FIT_CPU, CHECK_CPU)
    log(f"activation fit on {device}: (width, side) points {fit_points}, held out {check}")
    acts = fit_activations(device, log, fit_points, check)
    rows = {name: estimate(counts, acts, name) for name in OPTIONS}
    if args.gpu:
        torch.manual_seed(0)
        unet = build_unet(1.0, device)
        log(f"real-size UNet on {torch.cuda.get_device_name(device)}; {args.steps} timed steps:")
        for name in OPTIONS:
            rows[name].update(gpu_measure(name, unet, args.steps, log))
    table = markdown(rows, measured=args.gpu)
    env = (
        f"torch {torch.__version__}, {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if args.gpu else "")
        + f", python {platform.python_version()}, {time.perf_counter() - start:.0f} s"
    )
    note = (
        f"SalUn step on SD v1.4's UNet ({counts['params']:,} parameters): Adam, batch {BATCH} at "
        f"512x512 ({LATENT}x{LATENT} latents), forget + retain graphs in one backward, 50 % mask. "
        f"GiB. Estimate = sum of components; activations fitted on (width, latent side) "
        f"{list(fit_points)}, held out {check} "
        f"(held-out error fp32 {acts[False]['plain']['check_error']:.1%}, bf16 "
        f"{acts[True]['plain']['check_error']:.1%}). Frozen encoders if kept on the device: "
        + ", ".join(
            f"{k} {v / 1e6:.1f}M params ({4 * v / GIB:.2f} GiB fp32)" for k, v in encoders.items()
        )
        + f". {env}.\n"
    )
    print(table + "\n" + note, end="")
    if args.out is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from salun.core.io import write_json, write_text

        write_text(args.out, table + "\n" + note)
        write_json(
            args.out.with_suffix(".json"),
            {
                "counts": counts,
                "encoders": encoders,
                "activation_fit": {str(k): v for k, v in acts.items()},
                "rows": rows,
                "env": env,
            },
        )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
