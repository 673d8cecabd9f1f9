#!/bin/sh
# The whole loop on a laptop with no GPU and no dataset: sh scripts/demo.sh [key=value ...]
#   1. sets up .venv, 2. generates the mini dataset in data/mini (if absent) and validates it,
#   3. trains the tiny QCD model of configs/demo.yaml with 2 gloo processes (resumes if interrupted),
#   4. evaluates both directions with the fused, visual and text features, for the trained model
#      and for the same model untrained (random init, same seed), and prints the paper's table.
# Extra key=value arguments go to training (for example train.epochs=20).
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
sh "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
PY=.venv/bin/python
# the launch scripts run the .venv just set up, not an environment that happens to be activated
PYTHON="$ROOT/$PY"
export PYTHON
CONFIG=configs/demo.yaml
OUT=outputs/demo

PY=$PY sh scripts/mini_dataset.sh

NPROC_PER_NODE=2 sh train.sh "$CONFIG" "output_dir=$OUT" "$@"

CKPT="$OUT/checkpoint_latest.pth.tar"
rm -rf "$OUT/eval"  # features of an earlier demo run may come from another checkpoint
for STATE in untrained trained; do
    if [ "$STATE" = trained ]; then WEIGHTS="$CKPT"; else WEIGHTS=null; fi
    for DIRECTION in video2goods goods2video; do
        NPROC_PER_NODE=2 sh "${DIRECTION}_evaluate.sh" "$WEIGHTS" "$CONFIG" "output_dir=$OUT" eval.feature=all \
            "eval.out_dir=$OUT/eval/$STATE/{direction}/{feature}"
    done
done

echo
echo "== Mini dataset, R@K in percent (chance R@10 is about 1 %) =="
rm -f "$OUT/eval/results.md" "$OUT/eval/results.csv"
for STATE in untrained trained; do
    for FEATURE in fused visual text; do
        $PY evaluation.py table "$OUT/eval/$STATE/video2goods/$FEATURE/results.json" \
            "$OUT/eval/$STATE/goods2video/$FEATURE/results.json" \
            --name "demo $STATE $FEATURE" --out-dir "$OUT/eval" > /dev/null
    done
done
cat "$OUT/eval/results.md"
echo
echo "Retrieval pages: $OUT/eval/trained/video2goods/fused/page.html  $OUT/eval/trained/goods2video/fused/page.html"
echo "TensorBoard:     .venv/bin/tensorboard --logdir $OUT"
