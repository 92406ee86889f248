from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def test_every_shipped_recipe_config_loads_into_its_dataclass():
    # an unknown or misspelt key in a shipped YAML is an error at load time: catch it here, not on a GPU
    from recipes import (
        compare,
        demo,
        evaluate,
        grpo_like_dislike,
        make_traces,
        recllm_r1,
        recone,
        reczero,
        train_allpos,
        train_baseline,
        train_contrastive,
        train_recpo,
    )

    configs = Path(__file__).resolve().parents[1] / "recipes" / "configs"
    by_prefix = {
        "recpo_": train_recpo.RecPOConfig, "contrastive_": train_contrastive.ContrastiveConfig,
        "compare_": compare.Config, "evaluate_": evaluate.Config, "baseline_": train_baseline.Config,
        "demo_recpo_": train_recpo.RecPOConfig, "demo_": demo.DemoConfig,
        "like_dislike_": grpo_like_dislike.LikeDislikeConfig,
        "reczero_": reczero.RecZeroConfig, "recone_": recone.RecOneConfig,
        "make_traces_": make_traces.MakeTracesConfig, "recllm_r1_": recllm_r1.RecLLMR1Config,
        "allpos_": train_allpos.AllPosConfig,
    }  # fmt: skip
    checked = 0
    for path in sorted(configs.glob("*.yaml")):
        if path.name.startswith("accelerate_"):
            continue  # accelerate's own format (tests/test_distributed.py)
        cls = next(c for prefix, c in by_prefix.items() if path.name.startswith(prefix))
        load_config(cls, path)
        checked += 1
    assert checked >= 19  # every recipe config above, the three H100 ones included
