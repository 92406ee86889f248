from __future__ import annotations

from dataclasses import dataclass

import pytest

from rrec.config import ConfigError, load_config


@dataclass
class Cfg:
    lr: float = 1e-5
    steps: int = 10
    lora: bool = True
    name: str = "x"
    ks: tuple = (5, 10)
    seed: int | None = None


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 3e-4\nsteps: 5\n")
    cfg = load_config(Cfg, p, ["lora=false", "name=abc", "ks=[1,2]", "lr=2e-5", "seed=3"])
    assert cfg == Cfg(lr=2e-5, steps=5, lora=False, name="abc", ks=(1, 2), seed=3)


def test_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown config keys \\['stpes'\\]"):
        load_config(Cfg, None, ["stpes=3"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Cfg, None, ["steps=abc"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(Cfg, None, ["steps"])
