"""What a resume says and allows: the non-finite-loss message names overrides that lower the lr, and a resume
with them continues the schedule from the checkpoint's step at the new base lrs; a resume renumbered onto
another batch size (likewise world size) logs the steps and samples left (tiny model, mini set, CPU)."""
import math
import os

import pytest

import engine
from datasets import build_train_loader
from engine import trainer as engine_trainer
from engine.checks import validate_config
from engine.run_dir import config_changes
from tests.helpers import REPO_ROOT, TINY
from utils import checkpoint as ckpt
from utils.config import load_config
from utils.logging import read_metrics
from utils.schedule import lr_factor

DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")
N = 4  # steps of the first run: mid-epoch (the mini set gives 9-10 batches of 4 per epoch)


def config(mini_root, out, *extra):
    return load_config(DEMO, [f"data.root={mini_root}", f"output_dir={out}", "resume=auto", "train.batch_size=4",
                              "train.epochs=2", "train.warmup_ratio=0.1", "train.save_every_steps=2",
                              "train.log_every=1", "train.keep_last=10", "train.threads=1", "data.num_workers=0",
                              *TINY, *extra])


def run(mini_root, out, *extra):
    cfg = config(mini_root, out, *extra)
    validate_config(cfg)
    return engine.train(cfg)


def schedule_length(cfg):
    loader, sampler = build_train_loader(cfg, 0, 1)
    lengths = []
    for epoch in range(cfg["train"]["epochs"]):
        sampler.set_epoch(epoch)
        lengths.append(len(loader))
    return lengths


def test_base_lrs_may_change_on_resume(mini_root):
    old = config(mini_root, "out")
    new = config(mini_root, "out", "train.lr=1e-5", "train.lr_visual=1e-6", "train.lr_recon=1e-6",
                 "pretrain.lr_new=1e-6")
    assert config_changes(old, new) == []


def test_the_non_finite_loss_advice_resumes_at_half_the_lr_on_the_schedule(mini_root, tmp_path):
    out = str(tmp_path)
    rates = ["train.lr=2e-3", "train.lr_visual=1e-3", "train.lr_recon=5e-4"]
    first = run(mini_root, out, *rates, f"train.max_steps={N}")
    cfg = config(mini_root, out, *rates)
    with pytest.raises(engine_trainer.NonFiniteLoss) as err:
        engine_trainer.check_finite({"loss": float("nan")}, N + 1, first["checkpoint"], cfg)
    msg = str(err.value)
    t = cfg["train"]
    lower = f"train.lr={t['lr'] / 2:g} train.lr_visual={t['lr_visual'] / 2:g} train.lr_recon={t['lr_recon'] / 2:g}"
    assert f"rerun with resume={first['checkpoint']} {lower} (the schedule continues" in msg
    assert f"output_dir=<a new folder> init_from={first['checkpoint']} {lower}" in msg
    assert msg.endswith(f"Last good checkpoint: {first['checkpoint']}")

    advised = msg.split("rerun with ")[1].split(" (the schedule")[0].split()
    result = run(mini_root, out, *advised, f"train.max_steps={N + 2}")
    assert result["global_step"] == N + 2
    total = sum(schedule_length(cfg))
    warmup = math.ceil(t["warmup_ratio"] * total)
    metrics = read_metrics(os.path.join(out, "metrics.jsonl"))
    for step in (N + 1, N + 2):  # the new base lrs at the resumed steps' place in the schedule
        f = lr_factor(step - 1, warmup, total)
        assert metrics[step]["lr/other"] == pytest.approx(t["lr"] / 2 * f)
        assert metrics[step]["lr/visual"] == pytest.approx(t["lr_visual"] / 2 * f)
        assert metrics[step]["lr/recon"] == pytest.approx(t["lr_recon"] / 2 * f)
    assert metrics[N]["lr/other"] == pytest.approx(t["lr"] * lr_factor(N - 1, warmup, total))
    # the continuation keeps the new base lrs in its checkpoint, so that a later resume goes on with them
    halves = [t["lr"] / 2, t["lr_visual"] / 2, t["lr_recon"] / 2]
    for base in ckpt.load_checkpoint(result["checkpoint"])["scheduler"]["base_lrs"]:
        assert any(base == pytest.approx(h) for h in halves), base


def test_without_a_checkpoint_the_advice_is_a_fresh_run_at_half_the_lr(mini_root):
    cfg = config(mini_root, "out", "train.lr=3e-4", "train.lr_visual=4e-5", "train.lr_recon=2e-5",
                 "pretrain.lr_new=1e-4")
    with pytest.raises(engine_trainer.NonFiniteLoss) as err:
        engine_trainer.check_finite({"loss": float("inf")}, 1, None, cfg)
    assert str(err.value) == ("non-finite loss = inf at step 1; stopping. To start again at half the lr, rerun with "
                              "resume=null train.lr=0.00015 train.lr_visual=2e-05 train.lr_recon=1e-05 "
                              "pretrain.lr_new=5e-05. Last good checkpoint: none written in this run")


def test_a_renumbered_resume_logs_the_steps_and_samples_left(mini_root, tmp_path):
    out = str(tmp_path)
    run(mini_root, out, f"train.max_steps={N}")
    cfg = config(mini_root, out, "train.batch_size=8")
    old, new = schedule_length(config(mini_root, out)), schedule_length(cfg)
    step = round(N * new[0] / old[0])
    max_steps = step + 2
    result = run(mini_root, out, "train.batch_size=8", f"train.max_steps={max_steps}")
    assert result["global_step"] == max_steps  # max_steps counts steps of the new batch size
    with open(os.path.join(out, "train.log")) as f:
        log = f.read()
    assert (f"resumed step {N} of 1 x 4 samples as step {step} of 1 x 8: max_steps={max_steps} trains 2 more "
            f"steps (16 samples x 1 ranks); schedule 0 .. {sum(new)} steps") in log
