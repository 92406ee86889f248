#!/usr/bin/env bash
# Issue 4, part 2 (after recpo.sh on the same warm machine): the contrastive baseline, then the one table:
# pop, zero-shot with / without reasoning, RecPO, contrastive on the 166-user subset, with 95% intervals.
source bench/device/env.sh
extra=() cmp=()
if [ "$QUICK" = 1 ]; then
  extra=(steps=2 users_per_step=2 eval_users=2 dtype=float32 device=cpu)
  cmp=(max_users=3 max_new_tokens=4 dtype=float32 device=cpu num_threads=2)
fi
$PY -u -m recipes.train_contrastive recipes/configs/contrastive_smollm2_ml100k_h100.yaml out_dir="$RUNS/contrastive" "${extra[@]}" > "$OUT/contrastive.log" 2>&1
cp "$RUNS/contrastive/result.json" "$OUT/contrastive_result.json"
$PY -u -m recipes.compare recipes/configs/compare_ml100k_h100.yaml out_dir="$RUNS/compare" \
  "checkpoints={recpo: $RUNS/recpo/final, contrastive: {path: $RUNS/contrastive/final, reasoning: false}}" \
  "${cmp[@]}" > "$OUT/compare.log" 2>&1
cp "$RUNS/compare/table.md" "$OUT/compare_table.md"
cp "$RUNS/compare/results.json" "$OUT/compare_results.json"
cat "$OUT/compare_table.md"
