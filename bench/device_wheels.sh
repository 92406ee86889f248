#!/usr/bin/env bash
# Everything a lent GPU machine (no network) needs for `bench/run.py --trl`, put into .whl/ (git-ignored):
#   1. the wheels it lacks, for CPython 3.12 on x86-64 manylinux, one version of each;
#   2. the prepared ML-100K split (recipes/prepare.py's output, 5 MiB) as .whl/rrec_cache, to use as
#      RREC_CACHE there: the machine cannot download the MovieLens wheel.
#
# The machine has (/work/.library/device/KINDS.md): torch 2.11, transformers 5.17, peft 0.21, accelerate,
# numpy, pandas, pyarrow, xxhash, fsspec, aiohttp, huggingface-hub 1.33, jinja2, psutil, pyyaml, requests,
# tqdm, typer, safetensors, tokenizers, matplotlib, tensorboard, packaging, filelock. It lacks:
#   trl          the bench extra (pyproject.toml): accelerate, datasets, huggingface_hub, jinja2, numpy,
#                packaging, pandas, psutil, pyarrow, pyyaml, transformers
#   datasets     trl imports it: dill, multiprocess, fsspec, xxhash, pyarrow, huggingface-hub, pandas, ...
#   dill         datasets pins dill<0.4.2
#   multiprocess datasets pins multiprocess<0.70.20; it needs dill>=0.4.1
#   fsspec       datasets pins fsspec<=2026.9.0; the machine's version is not recorded, so this one travels
#   gguf         an rrec dependency (loading the embedded GGUF model): numpy, pyyaml, requests, tqdm
#   faiss-cpu    item_index imports faiss at import time (rrec.model -> item_index -> backends): numpy, packaging
# Left to the machine's own: pyarrow (datasets 5.2 asks >= 24, trl >= 21; too big to carry beside these).
#
# Usage: bench/device_wheels.sh            then, in each device call: carry [".whl"] and start with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD RREC_CACHE=$PWD/.whl/rrec_cache || exit;
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 gguf==0.19.0
        faiss-cpu==1.15.1)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

mkdir -p .whl
for req in "${WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$req"
done

# Two versions of one distribution stop the whole install there: refuse them here.
dupes=$(for w in .whl/*.whl; do basename "$w" | cut -d- -f1 | tr 'A-Z-' 'a-z_'; done | sort | uniq -d)
if [ -n "$dupes" ]; then
  echo "error: .whl holds several versions of: $dupes (remove the stale wheels)" >&2
  exit 1
fi

prepared="${RREC_CACHE:-$HOME/.cache/rrec}/prepared/ml-100k-temporal"
if [ -f "$prepared/prepare.json" ]; then
  mkdir -p .whl/rrec_cache/prepared
  rm -rf .whl/rrec_cache/prepared/ml-100k-temporal
  cp -r "$prepared" .whl/rrec_cache/prepared/
else
  echo "warning: $prepared is missing: run '.venv/bin/python -m recipes.prepare' here first" >&2
fi

ls -l .whl/*.whl
du -sh .whl
