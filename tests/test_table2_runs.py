"""Every Table 2 row (configs/baselines) on the mini dataset with a tiny random model of its family saved in
the family's release format: the training rows train a few steps, every row evaluates both directions.
All fifteen run in-process; one row of each setting also runs through scripts/run_table2.sh, i.e. the
launch scripts of Ours-Q (train.sh, video2goods_evaluate.sh, goods2video_evaluate.sh) and the table."""
import glob
import json
import math
import os
import subprocess
import time

import pytest

from engine import train
from engine.checks import preflight, validate_config
from evaluate.metrics import SEARCH_KS
from evaluate.pipeline import evaluate_direction
from tests.helpers import REPO_ROOT as REPO, TINY
from utils.checkpoint import LATEST, load_checkpoint
from utils.config import load_config

BASELINES = os.path.join(REPO, "configs", "baselines")
# the paper's rows; COPE's (cope_ft, cope_q) run in tests/test_cope.py on its own tiny towers
ROWS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(BASELINES, "[!_]*.yaml"))
              if not os.path.basename(p).startswith("cope_"))
STEPS = 2


@pytest.fixture(scope="module")
def translations(mini_root, tmp_path_factory):
    """A table with the first half of the mini training file's queries, so some texts stay untranslated."""
    queries = []
    with open(os.path.join(mini_root, "train_file", "train.txt"), encoding="utf-8") as f:
        for line in f:
            query = line.split("\t")[0].strip()
            if query and query not in queries:
                queries.append(query)
    path = tmp_path_factory.mktemp("translations") / "translations.tsv"
    path.write_text("".join(f"{q}\tenglish query {i}\n" for i, q in enumerate(queries[:len(queries) // 2])),
                    encoding="utf-8")
    return str(path)


def row_overrides(row, mini_root, out, family_weights, translations):
    family = row.rsplit("_", 1)[0]
    common = [f"data.root={mini_root}", f"output_dir={out}", "data.num_workers=0", "train.batch_size=4",
              "train.epochs=1", f"train.max_steps={STEPS}", "train.threads=1", "train.amp=none",
              "model.backbone.grad_checkpointing=false", "eval.batch_size=32", "eval.page_queries=0"]
    if family == "chinese_clip":
        return common + TINY + ["model.backbone.pretrained=null"]
    return common + ["data.image_size=32", "data.num_frames=3", "data.query_max_len=8", "data.text_max_len=12",
                     "model.embed_dim=64", f"model.backbone.pretrained={family_weights(family)}",
                     f"data.translations={translations}"]


def recall_files(out):
    return sorted(glob.glob(os.path.join(out, "eval", "*", "*", "results.json")))


@pytest.mark.parametrize("row", ROWS)
def test_row_trains_and_evaluates(row, mini_root, tmp_path, family_weights, translations):
    out = str(tmp_path / row)
    extra = row_overrides(row, mini_root, out, family_weights, translations)
    cfg = load_config(os.path.join(BASELINES, f"{row}.yaml"), extra)
    infer = cfg["train"]["mode"] == "infer"
    validate_config(cfg, evaluate=infer)
    preflight(cfg)
    checkpoint = None
    if not infer:
        result = train(cfg)
        state = load_checkpoint(os.path.join(out, LATEST))
        assert result["global_step"] == state["global_step"] == STEPS
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            losses = [json.loads(line)["train/loss"] for line in f if "train/loss" in line]
        assert losses and all(math.isfinite(v) for v in losses)
        checkpoint = os.path.join(out, LATEST)
    for direction in ("video2goods", "goods2video"):
        cfg = load_config(os.path.join(BASELINES, f"{row}.yaml"),
                          extra + [f"eval.direction={direction}", f"eval.checkpoint={checkpoint or 'null'}"])
        validate_config(cfg, evaluate=True)
        results = evaluate_direction(cfg)[cfg["eval"]["feature"]]
        assert list(results["recall"]) == [str(k) for k in SEARCH_KS]
        assert all(0 <= v <= 100 for v in results["recall"].values())
    assert len(recall_files(out)) == 2
    if infer:  # nothing trained, nothing written but the evaluation
        assert sorted(os.listdir(out)) == ["eval"]


@pytest.mark.parametrize("row", ["clip_infer", "xclip_ft", "cyclip_q"])
def test_row_through_the_launch_scripts(row, mini_root, tmp_path, family_weights, translations):
    out = str(tmp_path / row)
    table_dir = str(tmp_path / "table")
    extra = row_overrides(row, mini_root, out, family_weights, translations)
    start = time.time()
    result = subprocess.run(["sh", os.path.join(REPO, "scripts", "run_table2.sh"), row, *extra], cwd=tmp_path,
                            env=dict(os.environ, NPROC_PER_NODE="1", TABLE2_DIR=table_dir),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ran = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert any("/train.sh " in line for line in ran) is (not row.endswith("_infer"))
    assert len(recall_files(out)) == 2
    with open(os.path.join(table_dir, "results.md"), encoding="utf-8") as f:
        table = f.read()
    name = {"clip_infer": "CLIP-infer", "xclip_ft": "XCLIP-ft", "cyclip_q": "CyCLIP-Q"}[row]
    assert f"| {name} |" in table
    assert "data.translations is not set" not in result.stderr
    print(f"{row}: {time.time() - start:.1f} s through run_table2.sh")
