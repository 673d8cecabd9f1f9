"""What a run tells its user: a train.log line every train.log_every steps and at the last step, one progress
bar for the whole run, the config in TensorBoard, and each epoch's data events summed over the ranks."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from datasets.annotations import DatasetPaths, parse_train_file
from utils.logging import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.yaml")


def overrides(root, out, *extra):
    return [f"data.root={root}", f"output_dir={out}", "train.epochs=1", "train.threads=1", "data.num_workers=0",
            "train.save_every_steps=100", *extra]


@pytest.fixture(scope="module")
def damaged_root(mini_root, tmp_path_factory):
    """The mini set with every third training goods image removed (sorted by pid)."""
    root = tmp_path_factory.mktemp("damaged") / "mini"
    shutil.copytree(mini_root, root)
    paths = DatasetPaths(str(root))
    goods = sorted({pid for e in parse_train_file(paths.train_file) for pid in e.goods})
    for pid in goods[::3]:
        os.remove(paths.image_path(pid))
    return str(root)


def run(root, out, nproc, batch, free_port, *extra):
    cmd = ["sh", os.path.join(REPO, "train.sh"), DEMO] + overrides(root, out, f"train.batch_size={batch}", *extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NPROC_PER_NODE=str(nproc), MASTER_PORT=str(free_port),
                                   OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_epoch_data_counts_are_summed_over_ranks(damaged_root, tmp_path, free_port):
    """2 ranks x 4 see the samples 1 process x 8 sees: the same counts, if both ranks' events are summed."""
    results = {}
    for nproc, batch in ((1, 8), (2, 4)):
        out = tmp_path / f"n{nproc}"
        run(damaged_root, out, nproc, batch, free_port + nproc, "train.log_every=100")
        metrics = read_metrics(os.path.join(out, "metrics.jsonl"))
        last = metrics[max(metrics)]
        results[nproc] = {k: v for k, v in last.items() if k.startswith("data/")}
        log = (out / "train.log").read_text()
        assert re.search(rf"epoch 1 data \(all ranks\): {last['data/unreadable_images']} unreadable images, "
                         rf"{last['data/replaced_samples']} samples replaced", log)
    assert results[1] == results[2]
    assert results[1]["data/unreadable_images"] > 0 and results[1]["data/replaced_samples"] > 0
    assert 0 <= results[1]["data/text_truncation_rate"] <= 1


def test_train_log_has_a_line_every_log_every_steps_and_the_last(mini_root, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO, "main_cross_domain_emb.py"), "--config", DEMO]
    cmd += overrides(mini_root, out, "train.batch_size=4", "train.log_every=3", "train.max_steps=7")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (out / "train.log").read_text().splitlines() if " step " in line and "ETA" in line]
    assert [int(re.search(r" step (\d+)/7 ", line).group(1)) for line in lines] == [3, 6, 7]
    for line in lines:
        for part in ("epoch 0.", "loss ", "loss_qu ", "loss_recon_vision ", "lr visual ", "other ", "tau 0.0",
                     "samples/s, data wait ", "ETA "):
            assert part in line, (part, line)
    # stderr is not a terminal here: no progress bar, the step lines instead
    assert "train:" not in proc.stderr and sum("ETA" in line for line in proc.stderr.splitlines()) == 3


def test_one_progress_bar_for_the_whole_run_and_the_config_in_tensorboard(mini_root, tmp_path, monkeypatch):
    import io

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import main_cross_domain_emb as entry
    from utils import logging as qcd_logging

    monkeypatch.setattr(qcd_logging, "progress_bar_shown", lambda: True)
    stderr = io.StringIO()
    stderr.isatty = lambda: True  # tqdm draws its bar only on a terminal
    monkeypatch.setattr(sys, "stderr", stderr)
    out = tmp_path / "run"
    assert entry.main(["--config", DEMO] + overrides(mini_root, out, "train.batch_size=4", "train.epochs=2",
                                                     "train.log_every=1")) == 0
    text = stderr.getvalue()
    bars = set(re.findall(r"(\w+):\s+\d+%", text))
    assert bars == {"train"}, bars
    assert re.search(r"train: 100%\|.*\| (\d+)/\1 ", text)
    assert " step 1/" not in text  # the step lines go to train.log only while a bar is drawn
    assert " step 1/" in (out / "train.log").read_text()
    events = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0}).Reload()
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "task: retrieval" in config and f"output_dir: {out}" in config
