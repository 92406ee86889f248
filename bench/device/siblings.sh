#!/usr/bin/env bash
# Issue 6 on SmolLM2-135M + ML-100K: short runs of the sibling systems, each from an SFT warm-up where the
# small model cannot find the output format by RL alone (docs/results.md, CPU section). Each job has its
# own time limit so that one slow job cannot take the whole call; its log comes back either way.
source bench/device/env.sh
[ -f "$RREC_CACHE/models/SmolLM2-135M-Instruct/SOURCE" ] || bash bench/device/setup.sh
ld=recipes/configs/like_dislike_smollm2_ml100k.yaml
if [ "$QUICK" = 1 ]; then
  small=(eval_samples=4 eval_max_new_tokens=8 max_completion_length=8 dtype=float32)
  sft=(steps=2 prompts_per_step=2) rl=(steps=1 prompts_per_step=2 num_generations=2) lim=900
  zero=(steps=1 batch_size=2 num_generations=2 eval_samples=4 eval_max_new_tokens=8 max_completion_length=8 dtype=float32)
  r1=(sft_steps=2 steps=1 users_per_step=2 num_generations=2 eval_users=4 eval_max_new_tokens=8 max_completion_length=8 dtype=float32)
else
  small=(eval_samples=256 eval_max_new_tokens=64 max_completion_length=128 lr=1e-4 warmup_steps=0)
  sft=(steps=150 prompts_per_step=16) rl=(steps=40 prompts_per_step=8 num_generations=4) lim=150
  zero=(steps=40 batch_size=8 num_generations=4 eval_samples=256 max_completion_length=192 lr=1e-4 warmup_steps=0)
  r1=(sft_steps=150 steps=30 users_per_step=8 num_generations=4 eval_users=166 max_completion_length=160 lr=1e-4 warmup_steps=0)
fi
timeout $lim $PY -u -m recipes.grpo_like_dislike $ld method=sft out_dir="$RUNS/ld-sft" "${small[@]}" "${sft[@]}" > "$OUT/ld_sft.log" 2>&1 || echo "ld sft: exit $?"
timeout $lim $PY -u -m recipes.grpo_like_dislike $ld method=grpo model="$RUNS/ld-sft/final" out_dir="$RUNS/ld-grpo" "${small[@]}" "${rl[@]}" > "$OUT/ld_grpo.log" 2>&1 || echo "ld grpo: exit $?"
timeout $lim $PY -u -m recipes.reczero recipes/configs/reczero_smollm2_ml100k.yaml out_dir="$RUNS/reczero" "${zero[@]}" > "$OUT/reczero.log" 2>&1 || echo "reczero: exit $?"
timeout $lim $PY -u -m recipes.recllm_r1 recipes/configs/recllm_r1_smollm2_ml100k.yaml out_dir="$RUNS/recllm_r1" "${r1[@]}" > "$OUT/recllm_r1.log" 2>&1 || echo "recllm_r1: exit $?"
for f in ld-sft ld-grpo reczero recllm_r1; do
  if [ -f "$RUNS/$f/result.json" ]; then cp "$RUNS/$f/result.json" "$OUT/${f}_result.json"; fi
done
ls "$OUT"
