#!/bin/sh
# Table 2 baselines: train (where the row trains) and evaluate rows of configs/baselines, then print the table.
#   sh scripts/run_table2.sh [--dry-run] [ROW ...] [key=value ...]
# ROW: a config name of configs/baselines (clip_infer, cyclip_ft, xclip_q, ...), a family (clip, cyclip,
# fashionclip, xclip, chinese_clip) or a setting (infer, ft, q); default: all fifteen rows of the paper. The rows
# not in the paper, COPE-ft and COPE-Q (family cope: configs/baselines/cope_ft.yaml, cope_q.yaml), run after
# them when named: `cope`, `cope_ft` or `cope_q` (e.g. `ft cope`). key=value
# settings go to every command (e.g. data.root=/data). --dry-run prints the commands without running them.
# Each row runs `sh train.sh` (not for -infer rows), `sh video2goods_evaluate.sh` and `sh goods2video_evaluate.sh`
# exactly as for Ours-Q, then `evaluation.py table` adds it to $TABLE2_DIR/results.md (default outputs/table2),
# named as in the paper (CLIP-infer, CyCLIP-ft, ...). Launch variables (NPROC_PER_NODE, NNODES, ...) pass through.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
TABLE_DIR="${TABLE2_DIR:-outputs/table2}"
FAMILIES="chinese_clip clip cyclip fashionclip xclip"
SETTINGS="infer ft q"
# rows outside the paper's table: family cope (COPE), settings ft and q only (no released weights to infer with)
EXTRA_FAMILIES="cope"
EXTRA_SETTINGS="ft q"

DRY=0
ROWS=""
for arg; do
    shift
    case "$arg" in
        --dry-run) DRY=1 ;;
        *=*) set -- "$@" "$arg" ;;
        *) ROWS="$ROWS $arg" ;;
    esac
done
[ -n "$ROWS" ] || ROWS="$SETTINGS"

# ROW arguments -> config names, in the paper's order (setting, then family)
SELECTED=""
for setting in $SETTINGS; do
    for family in $FAMILIES; do
        for row in $ROWS; do
            if [ "$row" = "${family}_$setting" ] || [ "$row" = "$family" ] || [ "$row" = "$setting" ]; then
                SELECTED="$SELECTED ${family}_$setting"
                break
            fi
        done
    done
done
for family in $EXTRA_FAMILIES; do
    for setting in $EXTRA_SETTINGS; do
        for row in $ROWS; do
            if [ "$row" = "${family}_$setting" ] || [ "$row" = "$family" ]; then
                SELECTED="$SELECTED ${family}_$setting"
                break
            fi
        done
    done
done
for row in $ROWS; do
    case " $FAMILIES $EXTRA_FAMILIES $SETTINGS $SELECTED " in
        *" $row "*) ;;
        *) echo "run_table2.sh: unknown row '$row'; expected a config name of configs/baselines, a family" \
                "($FAMILIES $EXTRA_FAMILIES) or a setting ($SETTINGS)" >&2
           exit 2 ;;
    esac
done

run() {
    echo "+ $*"
    [ "$DRY" = 1 ] || "$@"
}

# each row's config, name, checkpoint and result files, from the resolved configs (one python start for all)
PLAN="$(mktemp)"
trap 'rm -f "$PLAN"' EXIT
PYTHONPATH="$ROOT" "$PYTHON" - "$ROOT/configs/baselines" "$SELECTED" "$@" > "$PLAN" <<'PY'
import os
import sys

from evaluate.pipeline import feature_names, out_dir
from evaluate.table import table2_row_name
from utils.checkpoint import LATEST
from utils.config import load_config

folder, rows, overrides = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
for row in rows:
    config = os.path.join(folder, f"{row}.yaml")
    cfg = load_config(config, overrides)
    feature = feature_names(cfg)[0]
    results = []
    for direction in ("video2goods", "goods2video"):
        cfg["eval"]["direction"] = direction
        results.append(os.path.join(out_dir(cfg, feature), "results.json"))
    ckpt = "null" if cfg["train"]["mode"] == "infer" else os.path.join(cfg["output_dir"], LATEST)
    print("\t".join([config, table2_row_name(cfg["model"]["family"], cfg["train"]["mode"]), ckpt, *results]))
PY
TAB="$(printf '\t')"
while IFS="$TAB" read -r CONFIG ROW_NAME CKPT V2G G2V <&3; do
    echo "== $ROW_NAME ($CONFIG)"
    if [ "$CKPT" != null ]; then
        run sh "$ROOT/train.sh" "$CONFIG" "$@"
    fi
    run sh "$ROOT/video2goods_evaluate.sh" "$CKPT" "$CONFIG" "$@"
    run sh "$ROOT/goods2video_evaluate.sh" "$CKPT" "$CONFIG" "$@"
    run "$PYTHON" "$ROOT/evaluation.py" table "$V2G" "$G2V" --name "$ROW_NAME" --out-dir "$TABLE_DIR"
done 3< "$PLAN"
if [ "$DRY" = 0 ]; then
    echo
    cat "$TABLE_DIR/results.md"
fi
