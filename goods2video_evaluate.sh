#!/bin/sh
# Goods2video evaluation: sh goods2video_evaluate.sh CKPT [CONFIG] [key=value ...]
# Same steps and environment variables as video2goods_evaluate.sh, for the goods2video lists (--help lists them).
EVAL_DIRECTION=goods2video EVAL_SCRIPT="$(basename "$0")" exec sh "$(cd "$(dirname "$0")" && pwd)/video2goods_evaluate.sh" "$@"
