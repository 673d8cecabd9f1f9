#!/bin/sh
# Pre-training on a laptop, Table 4 on the mini dataset: sh scripts/demo_pretrain.sh
#   1. sets up .venv and data/mini (as scripts/demo.sh),
#   2. pre-trains the demo model (configs/demo_pretrain.yaml, 2 gloo processes): stage 1 (VTC + VTM + MLM),
#      then stage 2 (EPL on the frozen towers), printing how often the level-3 pseudo-label is the
#      item's true entity before and after stage 1,
#   3. fine-tunes Ours-Q (configs/demo.yaml) from each stage: "Q + P w/o EPL" and "Q + P w EPL",
#   4. evaluates them and the Ours-Q run of scripts/demo.sh (trained here if outputs/demo lacks it)
#      on both directions and prints the three rows.
# Every run resumes if interrupted.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
sh "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
PY=.venv/bin/python
# the launch scripts run the .venv just set up, not an environment that happens to be activated
PYTHON="$ROOT/$PY"
export PYTHON
PRE=configs/demo_pretrain.yaml
FT=configs/demo.yaml
OUT=outputs/demo_pretrain
PY=$PY sh scripts/mini_dataset.sh
mkdir -p "$OUT"

$PY scripts/pseudo_label_accuracy.py --config "$PRE" --name "before stage 1" | tee "$OUT/pseudo_labels.txt"
NPROC_PER_NODE=2 sh train.sh "$PRE" "output_dir=$OUT/stage1"
$PY scripts/pseudo_label_accuracy.py --config "$PRE" --checkpoint "$OUT/stage1/checkpoint_latest.pth.tar" \
    --name "after stage 1" | tee -a "$OUT/pseudo_labels.txt"
NPROC_PER_NODE=2 sh train.sh "$PRE" pretrain.stage=2 train.epochs=10 "output_dir=$OUT/stage2" \
    "init_from=$OUT/stage1/checkpoint_latest.pth.tar"

NPROC_PER_NODE=2 sh train.sh "$FT" output_dir=outputs/demo
NPROC_PER_NODE=2 sh train.sh "$FT" "output_dir=$OUT/q_p_no_epl" "init_from=$OUT/stage1/checkpoint_latest.pth.tar"
NPROC_PER_NODE=2 sh train.sh "$FT" "output_dir=$OUT/q_p_epl" "init_from=$OUT/stage2/checkpoint_latest.pth.tar"

rm -rf "$OUT/eval"  # features of an earlier run may come from other checkpoints
for ROW in ours_q q_p_no_epl q_p_epl; do
    if [ "$ROW" = ours_q ]; then RUN=outputs/demo; else RUN="$OUT/$ROW"; fi
    for DIRECTION in video2goods goods2video; do
        NPROC_PER_NODE=2 sh "${DIRECTION}_evaluate.sh" "$RUN/checkpoint_latest.pth.tar" "$FT" "output_dir=$RUN" \
            eval.page_queries=0 "eval.out_dir=$OUT/eval/$ROW/{direction}"
    done
done

echo
echo "== Table 4 on the mini dataset, R@K in percent (fused feature) =="
for ROW in "ours_q:Ours-Q (scripts/demo.sh)" "q_p_no_epl:Q + P w/o EPL" "q_p_epl:Q + P w EPL"; do
    DIR=${ROW%%:*}
    $PY evaluation.py table "$OUT/eval/$DIR/video2goods/results.json" "$OUT/eval/$DIR/goods2video/results.json" \
        --name "${ROW#*:}" --out-dir "$OUT/eval" > /dev/null
done
cat "$OUT/eval/results.md"
echo
cat "$OUT/pseudo_labels.txt"
