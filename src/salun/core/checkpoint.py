"""Checkpoints and exact resume for the one loop (``methods/_fit.py``), without pickles.

A checkpoint is one safetensors file per loop, written atomically (temporary file + rename)
every ``runtime.checkpoint_every`` steps and when the loop ends. Tensors: the model's state,
the optimizer's per-parameter state (momentum, Adam moments and steps) flattened to
``optim.<param index>.<key>``, the mask, and the RNG states (torch, CUDA, numpy's key, the
loaders' and cycled loaders' generators, the task's noise generator). The rest (position,
optimizer scalars and param groups, python's RNG, numpy's scalars, the GradScaler) is JSON in
the file's metadata. Loading reads tensors and JSON only: nothing is unpickled.

The position is (epoch, phase, batch): on resume the loop restores each loader's generator to
its state at the start of the interrupted pass, re-draws the same order, skips the batches
already done (they are loaded, not computed), then restores the global RNG states, so a
resumed run on CPU ends bit-identical to an uninterrupted one.

Which loop a file belongs to is keyed by (description, hyperparameters, starting weights):
a resumed run re-enters the same loops in the same order with the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch
from torch import nn

from salun.core.errors import SalunError
from salun.core.io import hash_obj, hash_state, load_tensors, read_metadata, save_tensors

log = logging.getLogger(__name__)

FORMAT = "salun-checkpoint-v1"


class Cycle:
    """Endless iteration over a loader (a fresh order each pass) whose position can be saved.

    Created by ``methods._fit.cycle``; the next ``fit`` claims every cycle made since the last
    one, so a method's cycled forget loader is part of its checkpoint.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self._it: Iterator | None = None
        self.consumed = 0
        self._start_gen: torch.Tensor | None = None
        self._start_epoch: int | None = None
        _NEW_CYCLES.append(self)

    def __iter__(self) -> Cycle:
        return self

    def __next__(self) -> Any:
        for _ in range(2):
            if self._it is None:
                self._start()
            try:
                batch = next(self._it)  # type: ignore[arg-type]
                self.consumed += 1
                return batch
            except StopIteration:
                self._it = None
        raise SalunError("cannot cycle over an empty loader")

    def _start(self) -> None:
        self._start_gen = _loader_gen_state(self.loader)
        self._start_epoch = getattr(getattr(self.loader, "sampler", None), "epoch", None)
        self._it = iter(self.loader)
        self.consumed = 0

    def state(self) -> tuple[dict[str, Any], torch.Tensor | None]:
        if self._it is None:  # between passes: the next pass starts from the current state
            sampler = getattr(self.loader, "sampler", None)
            epoch = getattr(sampler, "epoch", None)
            return {"started": False, "epoch": epoch}, _loader_gen_state(self.loader)
        info = {"started": True, "consumed": self.consumed, "epoch": self._start_epoch}
        return info, self._start_gen

    def restore(self, info: dict[str, Any], gen: torch.Tensor | None) -> None:
        _set_loader_gen_state(self.loader, gen)
        sampler = getattr(self.loader, "sampler", None)
        if info.get("epoch") is not None and sampler is not None:
            sampler.epoch = info["epoch"]
        self._it = None
        if info["started"]:
            self._start()
            for _ in range(info["consumed"]):
                next(self._it)  # type: ignore[arg-type,call-overload]
            self.consumed = info["consumed"]


_NEW_CYCLES: list[Cycle] = []


def claim_cycles() -> list[Cycle]:
    """The cycles made since the last call (those of the loop about to start)."""
    out = list(_NEW_CYCLES)
    _NEW_CYCLES.clear()
    return out


_NEW_GENERATORS: list[torch.Generator] = []


def method_generator(seed: int) -> torch.Generator:
    """A seeded generator a method draws from inside its loss (e.g. fresh random labels per
    batch); the next ``fit`` claims it, so its state is part of that loop's checkpoint."""
    g = torch.Generator().manual_seed(seed)
    _NEW_GENERATORS.append(g)
    return g


def claim_generators() -> list[torch.Generator]:
    """The method generators made since the last call (those of the loop about to start)."""
    out = list(_NEW_GENERATORS)
    _NEW_GENERATORS.clear()
    return out


def _loader_gen_state(loader: Any) -> torch.Tensor | None:
    g = getattr(loader, "generator", None)
    return g.get_state() if isinstance(g, torch.Generator) else None


def _set_loader_gen_state(loader: Any, state: torch.Tensor | None) -> None:
    g = getattr(loader, "generator", None)
    if state is not None and isinstance(g, torch.Generator):
        g.set_state(state)


def _args_key(args: Any) -> Any:
    return asdict(args) if is_dataclass(args) and not isinstance(args, type) else repr(args)


@dataclass
class Position:
    epoch: int = 0
    phase: int = 0
    batch: int = 0  # batches of that phase already done in that epoch
    step: int = 0


class Checkpointer:
    """Saves and restores one ``fit`` loop. Built by :func:`for_fit`; None without a session."""

    def __init__(
        self,
        path: Path,
        every: int,
        model: nn.Module,
        opt,
        scaler,
        mask,
        task,
        resume,
        epochs: int | None = None,
        fingerprint: dict[str, Any] | None = None,
    ):
        self.path, self.every, self.resume = path, every, resume
        self.epochs, self.fingerprint = epochs, fingerprint
        self.started, self.before, self.resumes = time.perf_counter(), 0.0, 0
        self.model, self.opt, self.scaler, self.mask, self.task = model, opt, scaler, mask, task
        self.cycles = claim_cycles()
        self.generators = claim_generators()
        self.pass_start: dict[int, torch.Tensor | None] = {}  # phase -> generator at its iter
        self.active_phase: int | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._pending_tensors: dict[str, torch.Tensor] = {}

    # -- iteration ----------------------------------------------------------------------------
    def iterate(self, loader: Iterable, epoch: int, phase: int, skip: int) -> Iterator:
        """Iterate one phase's loader, remembering its generator at the start of the pass."""
        sampler = getattr(loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.pass_start[phase] = _loader_gen_state(loader)
        self.active_phase = phase
        it = iter(loader)
        for _ in range(skip):
            next(it)
        if self._pending_rng is not None:  # resumed: now the RNG state of the saved step
            self._restore_rng()
        return it

    def finish_resume(self) -> None:
        if self._pending_rng is not None:
            self._restore_rng()

    # -- save ---------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, pos: Position, phases: list, running: float, count: int) -> None:
        from salun.core.distributed import is_main

        if not is_main():
            return
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            tensors[f"model.{k}"] = v
        sd = self.opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for i, state in sd["state"].items():
            for k, v in state.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{i}.{k}"] = v
                else:
                    scalars.setdefault(str(i), {})[k] = v
        if self.mask is not None:
            for k, m in self.mask.masks.items():
                tensors[f"mask.{k}"] = m.to(torch.bool)
        rng, rng_tensors = _rng_state(self.task)
        tensors.update(rng_tensors)
        for i, g in enumerate(self.generators):
            tensors[f"rng.method.{i}"] = g.get_state()
        loaders = []
        for i, (loader, _) in enumerate(phases):
            if i == self.active_phase and i in self.pass_start:
                gen = self.pass_start[i]
            else:
                gen = _loader_gen_state(loader)
            if gen is not None:
                tensors[f"rng.loader.{i}"] = gen
            loaders.append(gen is not None)
        cycles = []
        for i, c in enumerate(self.cycles):
            info, gen = c.state()
            if gen is not None:
                tensors[f"rng.cycle.{i}"] = gen
            cycles.append(info)
        meta = {
            "format": FORMAT,
            "position": asdict(pos),
            "running": running,
            "count": count,
            "optim": {"param_groups": sd["param_groups"], "scalars": scalars},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng,
            "cycles": cycles,
            "has_mask": self.mask is not None,
            "fingerprint": self.fingerprint,
            "seconds": self.before + (time.perf_counter() - self.started),
            "resumes": self.resumes,
        }
        save_tensors(self.path, tensors, {"salun": json.dumps(meta, default=_json)})
        log.debug("checkpoint %s at step %d", self.path, pos.step)

    # -- load ---------------------------------------------------------------------------------
    def load(self) -> tuple[Position, float, int] | None:
        """Restore everything but the loaders' positions and RNG (those come at iteration)."""
        if not self.resume or not self.path.is_file():
            return None
        try:
            meta = json.loads(read_metadata(self.path)["salun"])
            tensors = load_tensors(self.path)
        except Exception as e:
            raise SalunError(f"checkpoint {str(self.path)!r} is not readable: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise SalunError(f"checkpoint {str(self.path)!r} has format {got!r}")
        self._check_run(meta)
        pos, running, count = self._check_meta(meta)
        try:
            self._restore(meta, tensors)
        except SalunError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            raise SalunError(
                f"checkpoint {str(self.path)!r} is corrupt ({type(e).__name__}: {e}); run "
                "without --resume to start over"
            ) from None
        from salun.core import runtime

        self.before, self.resumes = float(meta.get("seconds", 0.0)), int(meta.get("resumes", 0)) + 1
        self.started = time.perf_counter()
        runtime.current().resumed.append((self.before, self.resumes))
        log.info(
            "resumed %s at step %d (epoch %d; resume %d, %.2fs before)",
            self.path.name,
            pos.step,
            pos.epoch + 1,
            self.resumes,
            self.before,
        )
        return pos, running, count

    def _check_run(self, meta: dict[str, Any]) -> None:
        """Refuse a checkpoint of another run (another config or split): name what differs."""
        theirs, ours = meta.get("fingerprint"), self.fingerprint
        if theirs == ours:
            return
        if not isinstance(theirs, dict) or not isinstance(ours, dict):
            what = "it records no run fingerprint" if ours else "this run has no fingerprint"
        else:
            keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
            shown = [f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in keys[:3]]
            more = f"; {len(keys) - 3} more" if len(keys) > 3 else ""
            what = "; ".join(shown) + more
        raise SalunError(
            f"checkpoint {str(self.path)!r} is from another run ({what}); resume with the same "
            "settings, or run without --resume to start over"
        )

    def _check_meta(self, meta: dict[str, Any]) -> tuple[Position, float, int]:
        """Types and ranges of the position, loss sums, time and resume count."""

        def bad(what: str, value: Any, allowed: str) -> SalunError:
            return SalunError(
                f"checkpoint {str(self.path)!r} has {what} {value!r}; allowed: {allowed}"
            )

        raw = meta.get("position")
        fields = {"epoch", "phase", "batch", "step"}
        if not isinstance(raw, dict) or set(raw) != fields:
            raise bad("position", raw, "a dict of integers epoch, phase, batch, step")
        top = self.epochs if isinstance(self.epochs, int) else None
        for key in ("epoch", "phase", "batch", "step"):
            v = raw[key]
            if not _is_int(v) or v < 0 or (key == "epoch" and top is not None and v > top):
                span = f"0..{top}" if key == "epoch" and top is not None else "an integer >= 0"
                raise bad(f"position.{key}", v, span)
        running, count = meta.get("running"), meta.get("count")
        if not isinstance(running, int | float) or isinstance(running, bool):
            raise bad("running loss", running, "a finite number")
        if not math.isfinite(running):
            raise bad("running loss", running, "a finite number")
        if not _is_int(count) or count < 0:
            raise bad("count", count, "an integer >= 0")
        seconds, resumes = meta.get("seconds", 0.0), meta.get("resumes", 0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise bad("seconds", seconds, "a finite number >= 0")
        if not math.isfinite(seconds) or seconds < 0:
            raise bad("seconds", seconds, "a finite number >= 0")
        if not _is_int(resumes) or resumes < 0:
            raise bad("resumes", resumes, "an integer >= 0")
        return Position(**raw), float(running), int(count)

    def check_phases(self, pos: Position, phases: list) -> None:
        """The resumed position must lie inside the epoch's phases and their batches."""
        if pos.phase >= len(phases):
            raise SalunError(
                f"checkpoint {str(self.path)!r} has position.phase {pos.phase}; allowed: "
                f"0..{len(phases) - 1}"
            )
        try:
            n = len(phases[pos.phase][0])
        except TypeError:
            return
        if pos.batch > n:
            raise SalunError(
                f"checkpoint {str(self.path)!r} has position.batch {pos.batch}; allowed: 0..{n}"
            )

    def _restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if meta["has_mask"] != (self.mask is not None) or (
            self.mask is not None
            and any(not torch.equal(tensors[f"mask.{k}"], m) for k, m in self.mask.masks.items())
        ):
            raise SalunError(f"checkpoint {str(self.path)!r} was made with a different mask")
        dev = next(iter(self.model.state_dict().values())).device
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v.to(dev) if v.dim() > 0 else v
        for i, s in meta["optim"]["scalars"].items():
            state.setdefault(int(i), {}).update(s)
        self.opt.load_state_dict({"state": state, "param_groups": meta["optim"]["param_groups"]})
        if meta["scaler"] is not None:
            self.scaler.load_state_dict(meta["scaler"])
        for j, (c, info) in enumerate(zip(self.cycles, meta["cycles"], strict=True)):
            c.restore(info, tensors.get(f"rng.cycle.{j}"))
        self._loader_states = {
            int(k.rsplit(".", 1)[1]): v for k, v in tensors.items() if k.startswith("rng.loader.")
        }
        self._pending_rng = meta["rng"]
        self._pending_tensors = {k: v for k, v in tensors.items() if k.startswith("rng.")}

    def restore_loaders(self, phases: list) -> None:
        for i, (loader, _) in enumerate(phases):
            _set_loader_gen_state(loader, self._loader_states.get(i))

    def _restore_rng(self) -> None:
        _set_rng_state(self._pending_rng or {}, self._pending_tensors, self.task)
        for i, g in enumerate(self.generators):
            state = self._pending_tensors.get(f"rng.method.{i}")
            if state is not None:
                g.set_state(state)
        self._pending_rng = None


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _json(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _rng_state(task: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    g = getattr(task, "generator", None)
    if isinstance(g, torch.Generator):
        tensors["rng.task"] = g.get_state()
    info = {
        "numpy": [name, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    return info, tensors


def _set_rng_state(info: dict[str, Any], tensors: dict[str, torch.Tensor], task: Any) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    name, pos, has_gauss, gauss = info["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, gauss))
    version, internal, gauss_next = info["python"]
    random.setstate((version, tuple(internal), gauss_next))
    g = getattr(task, "generator", None)
    if "rng.task" in tensors and isinstance(g, torch.Generator):
        g.set_state(tensors["rng.task"])


def for_fit(desc: str, args: Any, model: nn.Module, opt, scaler, mask) -> Checkpointer | None:
    """The checkpointer of this loop under the current runtime session, or None."""
    from salun.core import runtime

    rt = runtime.current()
    folder = rt.checkpoint_dir
    if folder is None:
        claim_cycles()
        claim_generators()
        return None
    key = hash_obj({"desc": desc, "args": _args_key(args), "weights": hash_state(model)})[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in desc)
    path = Path(folder) / f"{safe}-{key}.safetensors"
    epochs = getattr(args, "epochs", None)
    return Checkpointer(
        path,
        rt.checkpoint_every,
        model,
        opt,
        scaler,
        mask,
        rt.task,
        rt.resume,
        epochs,
        rt.fingerprint,
    )
