"""Training checkpoints for exact resume, written atomically and verified on load.

A checkpoint is a folder ``checkpoint-{step}`` holding:

* what ``ReasoningRecommender.save_pretrained`` writes (``adapter/`` or ``model/``, ``tokenizer/``,
  ``items.parquet``, ``item_index/`` = the item table as it stood, ``rrec_config.json``): the folder loads
  as a model (``rrec evaluate model=.../checkpoint-100``) but without its item table, which RecPO left
  half-refreshed (fresh target rows written in each step, the rest from older weights): ``from_pretrained``
  warns and leaves ``rec_head`` empty (``is_checkpoint``); resume restores the table as it stood;
* ``trainable.pt``: every trainable parameter by name (resume copies these back, bit for bit; for full
  fine-tuning this repeats ``model/``, the price of one exact path for LoRA and full weights);
* ``optimizer.pt``: the optimiser's ``state_dict``;
* ``trainer_state.pt``: step (= the data position: batches consumed), the scheduler's ``state_dict``, the
  RNG states of every process (python, numpy, torch CPU and CUDA, the rollout generator) and the
  recipe's extras;
* ``manifest.json``, written last: format, version, step, number of processes, and the size and sha256 of
  every other file.

Atomicity (``rrec.atomic_files.atomic_folder``): everything goes to ``.checkpoint-{step}.tmp-*`` beside
the target, is fsynced, and the folder is renamed into place; a crash leaves at most a temporary folder
(removed on the next save) and never a half-written ``checkpoint-{step}``. Loading checks every file
against the manifest before reading any; a missing, truncated or altered file raises
:class:`CheckpointError` naming it and the newest earlier checkpoint that verifies. Older checkpoints
are removed (``prune_checkpoints``) only after a new one is complete. ``trainer_state.pt`` is unpickled
(``weights_only=False``): load only checkpoints you wrote.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rrec.atomic_files import atomic_folder

FORMAT, VERSION = "rrec-checkpoint", 1
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, truncated, corrupted or does not fit the run; names the file."""


class TrainerState(NamedTuple):
    """What ``load_checkpoint`` hands back besides the weights and optimiser it restores in place."""

    step: int  # optimiser steps done = batches consumed (``sample_batches(..., start=step)``)
    rng: dict  # this process's RNG states, for ``set_rng_state``
    extra: dict  # the recipe's extras, as saved


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state(generator: torch.Generator | None = None) -> dict:
    """This process's RNG states: python, numpy, torch CPU, every CUDA device, and ``generator``."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what ``rng_state`` returned (CUDA states only when CUDA is there)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a training checkpoint folder (its ``manifest.json`` has this module's format)."""
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def step_of(path: Path) -> int | None:
    """N for a folder named ``checkpoint-N``, else None."""
    m = _NAME.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (with a manifest) in ``out_dir``, oldest first."""
    found = [p for p in Path(out_dir).glob("checkpoint-*") if step_of(p) is not None]
    return sorted((p for p in found if (p / "manifest.json").is_file()), key=step_of)


def save_checkpoint(
    directory: str | Path,
    *,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    step: int,
    rng_states: list[dict],
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint folder atomically (see the module docstring); an existing one is replaced.

    Args:
        model: the ``ReasoningRecommender`` (its ``lm`` unwrapped, trainable parameters requiring grad).
        rng_states: ``rng_state(...)`` of every process, in rank order.
    """
    directory = Path(directory).absolute()
    with atomic_folder(directory) as tmp:
        model.save_pretrained(tmp)
        trainable = {n: p.detach().cpu() for n, p in model.lm.named_parameters() if p.requires_grad}
        torch.save(trainable, tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        state = {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_states, "extra": extra or {}}
        torch.save(state, tmp / "trainer_state.pt")
        files = {
            f.relative_to(tmp).as_posix(): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
            for f in sorted(tmp.rglob("*"))
            if f.is_file()
        }
        manifest = {"format": FORMAT, "version": VERSION, "step": step, "world_size": len(rng_states),
                    "files": files}  # fmt: skip
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def save_from_every_process(
    out_dir: str | Path,
    step: int,
    *,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    generator: torch.Generator | None = None,
    extra: dict | None = None,
    keep: int = 0,
) -> Path:
    """Collective: every process hands in its RNG states, process 0 writes ``out_dir/checkpoint-{step}``
    and prunes to the newest ``keep``, all wait for it. Returns the folder."""
    from rrec import distributed

    rngs = distributed.gather_objects(rng_state(generator))
    where = Path(out_dir) / f"checkpoint-{step}"
    if distributed.rank_and_world()[0] == 0:
        save_checkpoint(where, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        rng_states=rngs, extra=extra)  # fmt: skip
        prune_checkpoints(out_dir, keep)
    distributed.barrier()
    return where


def _check(directory: Path) -> dict:
    """The manifest, after checking every file it lists; CheckpointError names the first bad file."""
    manifest_path = directory / "manifest.json"
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint folder")
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing (an incomplete checkpoint, or not one)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable or not JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise CheckpointError(f"{manifest_path}: not an rrec checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{manifest_path}: unsupported version {manifest.get('version')!r}")
    for name, entry in manifest["files"].items():
        f = directory / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if f.stat().st_size != entry["bytes"]:
            raise CheckpointError(
                f"{f}: truncated or altered: {f.stat().st_size} bytes, the manifest records {entry['bytes']}"
            )
        if _sha256(f) != entry["sha256"]:
            raise CheckpointError(f"{f}: corrupted (sha256 differs from the manifest)")
    return manifest


def verify_checkpoint(directory: str | Path) -> dict:
    """The manifest of a complete, intact checkpoint; CheckpointError names the bad file otherwise, and
    the newest earlier checkpoint beside it that does verify."""
    directory = Path(directory).absolute()
    try:
        return _check(directory)
    except CheckpointError as err:
        step = step_of(directory)
        good = None
        for other in reversed(list_checkpoints(directory.parent)):
            if other != directory and (step is None or step_of(other) < step):
                try:
                    _check(other)
                    good = other
                    break
                except CheckpointError:
                    continue
        hint = f"; the previous good checkpoint is {good}" if good else "; no earlier good checkpoint"
        raise CheckpointError(f"{err}{hint}") from err


def load_checkpoint(
    directory: str | Path,
    *,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    rank: int = 0,
    world: int = 1,
) -> TrainerState:
    """Verify, then restore in place: trainable weights, item table, optimiser, scheduler.

    Returns the step, this process's RNG states (apply with ``set_rng_state`` once setup is done) and
    the extras. Raises CheckpointError for a bad file, a different process count (the per-process RNG
    states would not map) or trainable parameters that do not match the model's.
    """
    from item_index import ItemIndex, ItemIndexError
    from rrec.backbone import weights_fingerprint

    directory = Path(directory).absolute()
    manifest = verify_checkpoint(directory)
    if manifest["world_size"] != world:
        raise CheckpointError(
            f"{directory / 'manifest.json'}: written by {manifest['world_size']} processes, resumed on "
            f"{world}; resume with the same number of processes"
        )
    saved = torch.load(directory / "trainable.pt", map_location="cpu", weights_only=True)
    params = {n: p for n, p in model.lm.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        diff = sorted(set(saved) ^ set(params))[:5]
        raise CheckpointError(
            f"{directory / 'trainable.pt'}: trainable parameters differ from the model's: {diff}"
        )
    with torch.no_grad():
        for n, p in params.items():
            if saved[n].shape != p.shape:
                raise CheckpointError(f"{directory / 'trainable.pt'}: {n} has shape {tuple(saved[n].shape)}")
            p.copy_(saved[n])
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True))
    state = torch.load(directory / "trainer_state.pt", map_location="cpu", weights_only=False)
    scheduler.load_state_dict(state["scheduler"])
    # the table's fingerprint covers every weight: a different base model, or weights not restored, fail here
    try:
        table = ItemIndex.load(directory / "item_index", expected_fingerprint=weights_fingerprint(model.lm))
    except ItemIndexError as err:
        raise CheckpointError(f"{err} (is the run's base model the one this checkpoint trained?)") from err
    model.rec_head = table
    model.invalidate_table_cache()
    return TrainerState(step=int(state["step"]), rng=state["rng"][rank], extra=state["extra"])


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Remove all but the newest ``keep`` complete checkpoints (``keep`` <= 0 keeps all)."""
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def sigterm_flag() -> Iterator[Callable[[], bool]]:
    """Within the block SIGTERM only raises a flag, which the yielded function reads; the recipes check
    it between steps, save a checkpoint and return (exit code 0). Outside the main thread (where no
    handler can be installed) the flag never rises. The previous handler is restored on exit."""
    seen = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield seen.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.set())
    try:
        yield seen.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)
