#!/usr/bin/env bash
# Issue 5: bench/run.py with the TRL comparison, for the models given (split over two calls to stay
# inside 10 minutes each): bash bench/device/bench.sh smollm2  |  bash bench/device/bench.sh 0p5b,1p5b
# Here afterwards: .venv/bin/python bench/run.py --merge <the two JSONs> --write BENCHMARKS.md
source bench/device/env.sh
[ -f "$RREC_CACHE/models/SmolLM2-135M-Instruct/SOURCE" ] || bash bench/device/setup.sh
models=${1:-smollm2,0p5b,1p5b}
extra=()
[ "$QUICK" = 1 ] && extra=(--quick --repeats 1)
$PY -u bench/run.py --trl --models "$models" --out "$OUT" "${extra[@]}" > "$OUT/bench_${models//,/_}.log" 2>&1
tail -5 "$OUT/bench_${models//,/_}.log"
