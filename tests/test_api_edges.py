"""API edges a new user hits: a Series of histories, removed items in histories, the two temperatures,
seeded sampling, the default device and dtype, loading from another working directory, checkpoint
folders as models, continuing a saved adapter in RecPO, and the README's imports."""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from rrec.backbone import apply_lora
from rrec.model import ReasoningRecommender
from tests.conftest import make_tiny_lm
from tests.recipe_fixtures import tiny_model_dir, tiny_prepared

REPO = Path(__file__).resolve().parents[1]


def catalog(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"item_id": [str(i) for i in range(n)], "title": [f"Film {i}" for i in range(n)]})


@pytest.fixture()
def rec(tokenizer):
    model = ReasoningRecommender(
        make_tiny_lm(tokenizer), copy.deepcopy(tokenizer), catalog(), max_new_tokens=6
    )
    model.build_item_table(batch_size=16)
    return model


def test_recommend_batch_takes_a_series(rec):
    df = pd.DataFrame({"history": [["1", "2"], ["5"]]}, index=[10, 20])  # not a 0-based index
    got = rec.recommend_batch(df["history"], k=4)
    want = rec.recommend_batch([["1", "2"], ["5"]], k=4)
    assert [r.item_ids for r in got] == [r.item_ids for r in want]
    assert rec.recommend_batch(pd.Series([], dtype=object), k=4) == []


def test_removed_items_stay_known_to_prompts_and_are_never_recommended(tmp_path, rec):
    rec.update_items(removed=["3", "7"])
    assert "Film 3" in rec.user_prompt(["3", "1"])
    assert set(rec.removed_items) == {"3", "7"} and "3" not in rec.catalog
    out = rec.recommend(["3", "1"], k=20, exclude_history=False)  # every item left, history included
    assert len(out.item_ids) == 10 and not {"3", "7"} & set(out.item_ids)
    rec.build_item_table(batch_size=16)  # a rebuild encodes the catalog: the removed items stay out
    assert not {"3", "7"} & set(rec.item_ids)
    rec.save_pretrained(tmp_path / "m")
    loaded = ReasoningRecommender.from_pretrained(tmp_path / "m")
    assert loaded.recommend(["3", "1"], k=20).item_ids == rec.recommend(["3", "1"], k=20).item_ids
    rec.update_items(added=catalog(8).iloc[[7]])  # an id added back is live again
    assert "7" in rec.item_ids and "7" not in rec.removed_items


def test_sampling_and_score_temperatures_have_different_names(rec):
    out = rec.recommend(["1"], k=3, do_sample=True, sampling_temperature=0.7, seed=0)
    assert len(out.item_ids) == 3 and rec.config.temperature == 0.02  # the score divisor is untouched
    with pytest.raises(TypeError, match="temperature"):
        rec.recommend(["1"], k=3, do_sample=True, temperature=0.7)


def test_seed_makes_sampled_reasoning_reproducible(rec):
    kw = dict(k=5, do_sample=True, sampling_temperature=1.5)
    a, b = rec.recommend(["1", "2"], seed=3, **kw), rec.recommend(["1", "2"], seed=3, **kw)
    assert a.reasoning == b.reasoning and a.item_ids == b.item_ids and a.scores == b.scores
    others = [rec.recommend(["1", "2"], seed=s, **kw).reasoning for s in (4, 5, 6)]
    assert any(r != a.reasoning for r in others)  # 6 tokens from a 49k vocabulary at temperature 1.5
    # row b of a batch draws with seed + b: the same reasoning as alone with that seed
    batch = rec.recommend_batch([["9"], ["1", "2"]], seed=2, **kw)
    assert batch[1].reasoning == a.reasoning


def test_default_device_and_dtype(monkeypatch):
    from rrec import backbone
    from rrec.persistence import resolve_device_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device_dtype() == (torch.device("cuda"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_device_dtype() == (torch.device("cuda"), torch.float16)
    assert resolve_device_dtype("cpu") == (torch.device("cpu"), torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backbone, "cpu_has_fast_bf16", lambda: True)  # even where bf16 would be fast
    assert resolve_device_dtype() == (torch.device("cpu"), torch.float32)
    assert resolve_device_dtype(None, torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)


def test_saved_adapter_loads_from_another_working_directory(tmp_path, tokenizer, monkeypatch):
    tiny_model_dir(tmp_path / "base", tokenizer)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    model = ReasoningRecommender.from_pretrained("base", catalog=catalog(), max_new_tokens=4)  # relative
    model.lm = apply_lora(model.lm, rank=2)
    model.build_item_table(batch_size=16)
    before = model.recommend(["1"], k=5)
    model.save_pretrained("m")
    saved = json.loads((tmp_path / "m" / "rrec_config.json").read_text())["base_model"]
    assert saved == str((tmp_path / "base").resolve())
    monkeypatch.chdir(tmp_path / "elsewhere")
    after = ReasoningRecommender.from_pretrained(tmp_path / "m").recommend(["1"], k=5)
    assert after.item_ids == before.item_ids and after.reasoning == before.reasoning


def test_checkpoint_folder_loads_without_its_half_refreshed_table(tmp_path, tokenizer):
    from rrec import checkpoint

    base = tiny_model_dir(tmp_path / "base", tokenizer)
    rec = ReasoningRecommender.from_pretrained(base, catalog=catalog(), max_new_tokens=4)
    rec.lm = apply_lora(rec.lm, rank=2)
    rec.build_item_table(batch_size=16)
    opt = torch.optim.AdamW([p for p in rec.lm.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    where = checkpoint.save_checkpoint(tmp_path / "checkpoint-1", model=rec, optimizer=opt, scheduler=sched,
                                       step=1, rng_states=[checkpoint.rng_state()])  # fmt: skip
    with warnings.catch_warnings(record=True) as seen:  # not pytest.warns: it re-raises peft's FutureWarning
        warnings.simplefilter("always", UserWarning)
        loaded = ReasoningRecommender.from_pretrained(where)
    assert loaded.rec_head is None
    assert any("training checkpoint: its item table is half-refreshed" in str(w.message) for w in seen)
    assert checkpoint.is_checkpoint(where) and not checkpoint.is_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="no item table yet: call build_item_table first"):
        loaded.recommend(["1"], k=3)
    loaded.build_item_table(batch_size=16)
    assert len(loaded.recommend(["1"], k=3).item_ids) == 3


def test_train_recpo_continues_a_saved_adapter(tmp_path, tokenizer):
    from recipes.train_recpo import RecPOConfig, setup

    data = tiny_prepared(tmp_path / "data")
    model = ReasoningRecommender.from_pretrained(tiny_model_dir(tmp_path / "base", tokenizer))
    model.lm = apply_lora(model.lm, rank=2, alpha=4, trainable_tokens=[model.answer_id])
    with torch.no_grad():
        for n, p in model.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapted")
    trained = {n: p.detach().clone() for n, p in model.lm.named_parameters() if p.requires_grad}

    cfg = RecPOConfig(model=str(tmp_path / "adapted"), prepared=str(data), device="cpu", dtype="float32",
                      eval_users=1)  # fmt: skip
    cont, _, _ = setup(cfg)
    names = [n for n, _ in cont.lm.named_parameters()]
    assert not any("base_model.model.base_model" in n for n in names)  # one LoRA level, not two
    now = {n: p for n, p in cont.lm.named_parameters() if p.requires_grad}
    assert set(now) == set(trained)  # the adapter's rank 2 LoRA and <answer> rows train, nothing else
    for n, p in now.items():
        assert torch.equal(p, trained[n]), n  # continued from the saved values
    with pytest.raises(ValueError, match="holds a LoRA adapter: continue it with lora=true"):
        setup(RecPOConfig(model=str(tmp_path / "adapted"), prepared=str(data), device="cpu", lora=False))


def test_readme_quickstart_imports_only_the_library():
    import recipes.prepare
    import rrec.data

    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Ten lines of Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    imports = [line for line in block.splitlines() if line.startswith(("from ", "import "))]
    assert imports and not [line for line in imports if "recipes" in line]
    exec("\n".join(imports), {})
    assert recipes.prepare.ensure_default is rrec.data.ensure_default  # the old import still works
    recipe_default = recipes.prepare.default_out_dir(recipes.prepare.Config())
    assert recipe_default == rrec.data.default.default_prepared_dir()  # one folder for both
