"""Trained models that ship inside the package (offline; on top of the embedded SmolLM2 base).

``ReasoningRecommender.from_pretrained("rrec:ml100k-allpos")`` loads the default: a LoRA adapter (with the
trained ``<answer>`` rows) and per-item ID vectors, trained by all-position training on MovieLens-100K
(``recipes/train_allpos.py``). Each folder holds ``model_card.json``: the exact command, the machine, the
data fingerprint and the measured test metrics. The base model is checked by checksum on load. The item
table is not shipped (it is the base model's text states plus the ID vectors): ``build_item_table()``
encodes it in about a minute on 2 CPU cores.

Retrain and repackage the default (see the README)::

    python -m recipes.train_allpos recipes/configs/allpos_smollm2_ml100k.yaml out_dir=runs/allpos
    python -m recipes.package_default runs/allpos
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "rrec:"
HERE = Path(__file__).parent
DEFAULT = "ml100k-allpos"


def available() -> list[str]:
    """Names of the shipped models (``rrec:<name>``)."""
    return sorted(p.parent.name for p in HERE.glob("*/rrec_config.json"))


def resolve(path: str | Path) -> Path:
    """``rrec:<name>`` -> the shipped folder; any other path is returned as a ``Path``.

    Raises ``FileNotFoundError`` naming the shipped models when ``<name>`` is not one of them."""
    s = str(path)
    if not s.startswith(PREFIX):
        return Path(path)
    name = s[len(PREFIX) :]
    folder = HERE / name
    if not (folder / "rrec_config.json").exists():
        raise FileNotFoundError(
            f"no shipped model {s!r}; shipped: {[PREFIX + n for n in available()] or 'none'}"
        )
    return folder


def model_card(path: str | Path = PREFIX + DEFAULT) -> dict:
    """The ``model_card.json`` of a shipped (or packaged) model folder."""
    import json

    return json.loads((resolve(path) / "model_card.json").read_text())
