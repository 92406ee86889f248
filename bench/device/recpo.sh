#!/usr/bin/env bash
# Issue 4, part 1: RecPO on SmolLM2-135M + ML-100K (recipes/configs/recpo_smollm2_ml100k_h100.yaml).
# Runs setup.sh first if the model is not converted yet. Results: $OUT/recpo.log, recpo_result.json.
source bench/device/env.sh
[ -f "$RREC_CACHE/models/SmolLM2-135M-Instruct/SOURCE" ] || bash bench/device/setup.sh
extra=()
[ "$QUICK" = 1 ] && extra=(steps=2 users_per_step=2 max_completion_length=4 eval_users=2 eval_max_new_tokens=4 dtype=float32 device=cpu)
$PY -u -m recipes.train_recpo recipes/configs/recpo_smollm2_ml100k_h100.yaml out_dir="$RUNS/recpo" "${extra[@]}" > "$OUT/recpo.log" 2>&1
cp "$RUNS/recpo/result.json" "$OUT/recpo_result.json"
cp "$RUNS/recpo/metrics.jsonl" "$OUT/recpo_metrics.jsonl"
tail -3 "$OUT/recpo.log"
