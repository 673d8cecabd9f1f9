#!/bin/sh
# Make data/mini with scripts/make_mini_dataset.py if it is absent or was made by an earlier generator,
# then validate it. Used by scripts/demo.sh and scripts/demo_pretrain.sh from the repository root.
set -e
PY=${PY:-.venv/bin/python}
if [ -d data/mini ] && [ ! -f data/mini/entities/mini_item_level3.tsv ]; then
    echo "data/mini comes from an earlier version of the generator (no entities/mini_item_level3.tsv): regenerating it"
    rm -rf data/mini.old && mv data/mini data/mini.old
fi
if [ ! -d data/mini ]; then
    # written aside and moved into place, so an interrupted generation is never taken for a dataset
    rm -rf data/mini.partial
    $PY scripts/make_mini_dataset.py --out data/mini.partial
    mv data/mini.partial data/mini
    rm -rf data/mini.old
fi
$PY -m datasets.validate data/mini --max-items 200
