"""Loading a configuration: YAML presets (shipped in ``salun/config/presets``), ``key=value``
overrides, conversion from a dict and saving; every load ends in :func:`validate`."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from salun.config.schema import (
    BenchConfig,
    Config,
    DataConfig,
    DiffusionConfig,
    EvalConfig,
    MaskConfig,
    ModelConfig,
    RuntimeConfig,
    TextToImageConfig,
    TrainConfig,
    UnlearnConfig,
)
from salun.config.validation import validate
from salun.config.yaml_reader import dump_yaml, quoted, read_yaml, read_yaml_file
from salun.core.checks import check_value, field_types
from salun.core.errors import SalunError, unknown_choice


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, type-checking every field from its annotation."""
    if not isinstance(data, dict):
        got = "null" if data is None else repr(data)
        raise SalunError(f"{where or 'config'} must be a mapping, got {got}")
    names = {f.name: f for f in fields(cls)}
    types_ = field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            raise unknown_choice(f"config key in {where or 'config'}", key, names)
        f = names[key]
        sub = _nested_type(cls, f)
        here = f"{where}.{key}".strip(".")
        if sub is not None and value is None and key not in _NULLABLE:
            raise SalunError(
                f"{here} must be a mapping, got null; leave the section out for its defaults"
            )
        if sub is not None and value is not None:
            kwargs[key] = _from_dict(sub, value, here)
        else:
            kwargs[key] = check_value(value, types_.get(key, Any), here)
    return cls(**kwargs)


_NESTED = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "retrain": TrainConfig,
    "mask": MaskConfig,
    "unlearn": UnlearnConfig,
    "eval": EvalConfig,
    "diffusion": DiffusionConfig,
    "text_to_image": TextToImageConfig,
    "bench": BenchConfig,
    "runtime": RuntimeConfig,
}


#: Sections where null means something: ``retrain: null`` is "the train recipe", ``bench: null``
#: is "no grid". Any other section set to null is refused (leave it out for its defaults).
_NULLABLE = ("retrain", "bench")


def _nested_type(cls: type, f: dataclasses.Field) -> type | None:
    return _NESTED.get(f.name) if cls is Config else None


def preset_names() -> list[str]:
    root = resources.files("salun.config") / "presets"
    out = []
    for sub in ("", "smoke/"):
        folder = root / sub if sub else root
        for p in folder.iterdir():
            if p.name.endswith(".yaml"):
                out.append(sub + p.name[: -len(".yaml")])
    return sorted(out)


def _read_preset(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        what = f"config file {name!r}"
        data = read_yaml_file(path, what)
    else:
        if name not in preset_names():
            raise unknown_choice("preset", name, preset_names())
        text = (resources.files("salun.config") / "presets" / f"{name}.yaml").read_text(
            encoding="utf-8"
        )
        what = f"preset {name!r}"
        data = read_yaml(text, what)
    data = data or {}
    if not isinstance(data, dict):
        raise SalunError(f"{what} is not a mapping of config keys")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise SalunError(f"override {item!r} is not key=value (e.g. unlearn.method=ga)")
    key, raw = item.split("=", 1)
    if not key or "" in key.split("."):
        raise SalunError(f"override {item!r} has an empty key")
    return key.split("."), read_yaml(raw, f"override {quoted(item)}") if raw != "" else None


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve a preset name or YAML path plus ``key=value`` overrides into a checked Config."""
    tree: dict[str, Any] = _read_preset(preset) if preset else {}
    parsed = [parse_override(item) for item in overrides or []]
    preset_unlearn = dict(tree["unlearn"]) if isinstance(tree.get("unlearn"), dict) else {}
    for keys, value in parsed:
        _set(tree, keys, value)
    _drop_foreign_params(tree, preset_unlearn, [keys for keys, _ in parsed])
    return validate(_from_dict(Config, tree, ""))


def _drop_foreign_params(
    tree: dict[str, Any], preset_unlearn: dict[str, Any], override_keys: list[list[str]]
) -> None:
    """Preset ``unlearn.params`` belong to the preset's method: when an override switches
    ``unlearn.method`` to another one, they are dropped (logged), so they never leak to it.
    Parameters the user gave as overrides stay (and a wrong one is a one-line error)."""
    unlearn = tree.get("unlearn")
    if not isinstance(unlearn, dict) or ["unlearn", "method"] not in override_keys:
        return
    old = preset_unlearn.get("method", UnlearnConfig.method)
    params = unlearn.get("params")
    if unlearn.get("method") == old or not isinstance(params, dict):
        return
    if ["unlearn", "params"] in override_keys:
        return  # the whole params mapping was given on the command line
    user = {k[2] for k in override_keys if len(k) == 3 and k[:2] == ["unlearn", "params"]}
    dropped = sorted(k for k in params if k not in user)
    if dropped:
        logging.getLogger(__name__).info(
            "unlearn.method=%s: dropping the preset's unlearn.params of %s (%s)",
            unlearn.get("method"),
            old,
            ", ".join(dropped),
        )
        unlearn["params"] = {k: v for k, v in params.items() if k in user}


def config_from_dict(tree: dict[str, Any]) -> Config:
    return validate(_from_dict(Config, tree, ""))


def save_config(cfg: Config, path: str | Path) -> None:
    from salun.core.io import write_text

    write_text(path, dump_yaml(cfg.to_dict()))
