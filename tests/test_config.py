import pytest

from salun.config import Config, load_config, preset_names, save_config
from salun.core.errors import SalunError


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)


def test_overrides_and_roundtrip(tmp_path):
    cfg = load_config("smoke/digits", ["unlearn.method=ga", "unlearn.params.lr=1e-3", "seed=4"])
    assert cfg.unlearn.method == "ga" and cfg.unlearn.params["lr"] == 0.001 and cfg.seed == 4
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(str(tmp_path / "c.yaml"))
    assert again.to_dict() == cfg.to_dict()


def test_errors():
    with pytest.raises(SalunError, match="not key=value"):
        load_config("smoke/digits", ["seed"])
    with pytest.raises(SalunError, match="unknown config key in data"):
        load_config("smoke/digits", ["data.nmae=digits"])
    with pytest.raises(SalunError, match="does not exist"):
        load_config("nope.yaml")
    with pytest.raises(SalunError, match="mask.ratio"):
        load_config("smoke/digits", ["mask.ratio=0"])
