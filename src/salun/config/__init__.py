"""Typed run configuration: dataclass schemas, YAML presets, ``key=value`` overrides.

A config is resolved once (preset -> overrides -> validation) and saved as ``config.yaml`` in every
run folder, so a run can be reproduced from that file alone. Unknown keys and bad values fail
loudly with a one-line :class:`~salun.core.errors.SalunError`.

- :mod:`.schema`: the dataclasses (the schema) and the allowed values;
- :mod:`.presets`: presets, overrides, loading and saving;
- :mod:`.validation`: the checks every load ends in;
- :mod:`.yaml_reader`: the one YAML reader (size, depth, alias and duplicate-key limits) and
  writer.
"""

from salun.config.presets import (
    config_from_dict,
    load_config,
    parse_override,
    preset_names,
    save_config,
)
from salun.config.schema import (
    OPTIMIZERS,
    PRECISIONS,
    SCENARIOS,
    SCHEDULES,
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
from salun.config.validation import check_choice, check_device, validate
from salun.config.yaml_reader import dump_yaml, read_yaml, read_yaml_file

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "SCENARIOS",
    "SCHEDULES",
    "BenchConfig",
    "Config",
    "DataConfig",
    "DiffusionConfig",
    "EvalConfig",
    "MaskConfig",
    "ModelConfig",
    "RuntimeConfig",
    "TextToImageConfig",
    "TrainConfig",
    "UnlearnConfig",
    "check_choice",
    "check_device",
    "config_from_dict",
    "dump_yaml",
    "load_config",
    "parse_override",
    "preset_names",
    "read_yaml",
    "read_yaml_file",
    "save_config",
    "validate",
]
