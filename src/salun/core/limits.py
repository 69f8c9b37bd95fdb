"""The stated limits on user input, in one place; each is checked before any work starts.

=====================  ==============  =====================================================
limit                  value           what it bounds
=====================  ==============  =====================================================
``MAX_CONFIG_BYTES``   1 MiB           a YAML config file, a ``key=value`` override value and
                                       a ``--cluster-arg`` value (checked before reading)
``MAX_YAML_DEPTH``     50              nesting of lists and mappings in any YAML we read
``YAML_ALIASES``       0               anchors (``&a``) and aliases (``*a``): refused in
                                       config files (no shipped preset uses them), which
                                       rules out alias bombs and recursive aliases
``MAX_INT``            2**63 - 1       magnitude of every integer field (config sections and
                                       method parameters): what torch and numpy can hold
``MAX_SEED``           2**32 - 1       seeds (``seed``, ``data.split_seed``,
                                       ``eval.mia_seed``, bench and tuning seeds)
``MAX_IMAGE_SIZE``     4096            ``data.image_size``, ``diffusion.fid_input_size``
``MAX_GRID_RUNS``      10,000          runs of a bench grid or candidates of a tuning search,
                                       counted from the axis sizes before the grid expands
=====================  ==============  =====================================================

Floats must be finite everywhere (NaN and infinities are refused by
:func:`salun.core.checks.check_value`); duplicate keys in a YAML mapping are refused at any
level. A ``--timeout`` must be a finite number of seconds above zero.
"""

from __future__ import annotations

MAX_CONFIG_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 50
YAML_ALIASES = 0
MAX_INT = 2**63 - 1
MAX_SEED = 2**32 - 1
MAX_IMAGE_SIZE = 4096
MAX_GRID_RUNS = 10_000

#: Config fields with a stated upper limit (checked by salun.config.validation): an integer too
#: large for any field is reported with the field's own range.
FIELD_RANGES: dict[str, tuple[int, int]] = {
    "seed": (0, MAX_SEED),
    "data.split_seed": (0, MAX_SEED),
    "eval.mia_seed": (0, MAX_SEED),
    "data.image_size": (1, MAX_IMAGE_SIZE),
    "diffusion.fid_input_size": (0, MAX_IMAGE_SIZE),
}


def show_number(value: object) -> str:
    """``repr(value)``, shortened for an integer of over about 40 digits (to its length), so a
    400-digit number still gives a one-line message (and one past Python's 4300-digit
    ``str`` limit does not raise)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 133:
        sign = "a negative" if value < 0 else "an"
        try:
            return f"{sign} integer of {len(str(abs(value)))} digits"
        except ValueError:  # past Python's int-to-str limit: estimate from the bit length
            return f"{sign} integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return repr(value)
