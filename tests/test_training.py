"""The training loop on the tiny model and the mini dataset (CPU, 1 thread, num_workers 0).

Resume exactness: a run of 2N steps, a run stopped after N steps then resumed, and a run killed
while writing its checkpoint of step N then resumed all end with identical parameters and log
identical losses. A checkpoint of a 2-process run resumes in 1 process. The lr of each group
follows the config's schedule. A non-finite loss stops the run naming the step and the term.
"""
import glob
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

import engine
import main_cross_domain_emb as entry
from engine import tasks
from engine import trainer as engine_trainer
from engine.checks import validate_config
from utils import checkpoint as ckpt
from utils.config import load_config
from utils.logging import read_metrics
from utils.schedule import lr_factor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.yaml")
N = 6  # the mini dataset gives 9-10 batches of 4 per epoch: step N is mid-epoch, step 2N in the next epoch


def overrides(mini_root, out, *extra):
    return [f"data.root={mini_root}", f"output_dir={out}", "resume=auto", "train.batch_size=4", "train.epochs=3",
            "train.warmup_ratio=0.1", "train.save_every_steps=2", "train.log_every=1", "train.keep_last=10",
            "train.threads=1", "data.num_workers=0", *extra]


def epoch_lengths(mini_root, world_size, *extra):
    from datasets import build_train_loader

    cfg = load_config(DEMO, overrides(mini_root, "unused", *extra))
    loader, sampler = build_train_loader(cfg, 0, world_size)
    lengths = []
    for epoch in range(cfg["train"]["epochs"]):
        sampler.set_epoch(epoch)
        lengths.append(len(loader))
    return lengths


def run_inprocess(mini_root, out, *extra):
    cfg = load_config(DEMO, overrides(mini_root, out, *extra))
    validate_config(cfg)
    return engine.train(cfg)


def run_cli(mini_root, out, *extra, env=None, train_sh=False, launcher=(sys.executable,)):
    """main_cross_domain_emb.py in a new process started by `launcher`, or train.sh (torchrun) when train_sh is set."""
    if train_sh:
        cmd = ["sh", os.path.join(REPO, "train.sh"), DEMO]
    else:
        cmd = [*launcher, os.path.join(REPO, "main_cross_domain_emb.py"), "--config", DEMO]
    cmd += overrides(mini_root, out, *extra)
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=600)


def final_state(out):
    return ckpt.load_checkpoint(os.path.join(out, ckpt.LATEST))


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight(mini_root, tmp_path_factory):
    """An uninterrupted run of 2N steps."""
    out = str(tmp_path_factory.mktemp("straight"))
    result = run_inprocess(mini_root, out, f"train.max_steps={2 * N}")
    assert result["global_step"] == 2 * N
    return out


def test_run_writes_checkpoints_logs_and_config(straight, mini_root):
    names = os.listdir(straight)
    assert {f"checkpoint_{s:08d}.pth.tar" for s in range(2, 2 * N + 1, 2)} <= set(names)
    assert os.listdir(os.path.join(straight, "tb"))
    state = final_state(straight)
    first = epoch_lengths(mini_root, 1)[0]
    assert N < first < 2 * N
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (2 * N, 1, 2 * N - first)
    assert not any(k.startswith("module.") for k in state["model"])
    with open(os.path.join(straight, "config.yaml"), encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    assert saved == state["config"] == load_config(DEMO, overrides(mini_root, straight, f"train.max_steps={2 * N}"))
    metrics = read_metrics(os.path.join(straight, "metrics.jsonl"))
    assert sorted(metrics) == list(range(1, 2 * N + 1))
    for key in ("train/loss", "train/loss_qu", "train/loss_qv", "train/loss_qt", "train/loss_recon_text",
                "train/loss_recon_vision", "train/tau", "perf/samples_per_s", "perf/data_wait_fraction"):
        assert key in metrics[1], key
    assert 0 <= metrics[2]["perf/data_wait_fraction"] <= 1
    assert metrics[1]["train/tau"] == pytest.approx(0.07, rel=1e-3)


def test_lr_of_each_group_follows_the_schedule(straight, mini_root):
    cfg = final_state(straight)["config"]
    t = cfg["train"]
    total = sum(epoch_lengths(mini_root, 1))
    warmup = math.ceil(t["warmup_ratio"] * total)
    assert warmup == 3
    metrics = read_metrics(os.path.join(straight, "metrics.jsonl"))
    for step, rec in metrics.items():
        f = lr_factor(step - 1, warmup, total)
        assert rec["lr/visual"] == pytest.approx(t["lr_visual"] * f)
        assert rec["lr/recon"] == pytest.approx(t["lr_recon"] * f)
        assert rec["lr/other"] == pytest.approx(t["lr"] * f)
    assert metrics[3]["lr/other"] == pytest.approx(t["lr"])  # end of the 3-step warm-up


def assert_matches_straight(straight, out, first_step):
    assert_same_params(final_state(straight)["model"], final_state(out)["model"])
    a = read_metrics(os.path.join(straight, "metrics.jsonl"))
    b = read_metrics(os.path.join(out, "metrics.jsonl"))
    for step in range(first_step, 2 * N + 1):
        for key, value in a[step].items():
            if key.startswith(("train/", "lr/")):
                assert b[step][key] == value, (step, key)


def test_stop_and_resume_is_exact(straight, mini_root, tmp_path):
    out = str(tmp_path)
    assert run_inprocess(mini_root, out, f"train.max_steps={N}")["global_step"] == N
    state = final_state(out)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, N, N)
    assert run_inprocess(mini_root, out, f"train.max_steps={2 * N}")["global_step"] == 2 * N
    assert_matches_straight(straight, out, 1)
    straight_opt = final_state(straight)["optimizer"]["state"]
    for k, v in final_state(out)["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], straight_opt[k]["exp_avg"])


def test_checkpoint_with_a_lambdalr_schedule_resumes_exactly(straight, mini_root, tmp_path):
    """Checkpoints of earlier releases hold a LambdaLR state and a config with train.warmup_steps."""
    out = str(tmp_path)
    run_inprocess(mini_root, out, f"train.max_steps={N}")
    path = os.path.join(out, ckpt.LATEST)
    state = ckpt.load_checkpoint(path)
    base_lrs = state["scheduler"]["base_lrs"]
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in base_lrs]
    old_opt = torch.optim.Adam(groups)
    old_sched = torch.optim.lr_scheduler.LambdaLR(old_opt, lambda step: 1.0)
    for _ in range(N):
        old_opt.step()
        old_sched.step()
    state["scheduler"] = old_sched.state_dict()
    for group, lr in zip(state["optimizer"]["param_groups"], base_lrs):
        group["initial_lr"] = lr
    del state["config"]["train"]["warmup_ratio"]
    state["config"]["train"]["warmup_steps"] = 3
    for p in glob.glob(os.path.join(out, "checkpoint_*.pth.tar")):
        os.remove(p)
    torch.save(state, ckpt.step_path(out, N))
    assert run_inprocess(mini_root, out, f"train.max_steps={2 * N}")["global_step"] == 2 * N
    assert_matches_straight(straight, out, N + 1)


def test_killed_while_writing_a_checkpoint_then_resumed_is_exact(straight, mini_root, tmp_path, killed_at_checkpoint):
    out = str(tmp_path)
    killed = run_cli(mini_root, out, f"train.max_steps={2 * N}", launcher=killed_at_checkpoint(N))
    assert killed.returncode == -9, killed.stderr[-2000:]
    # the half-written step-N file never got its real name; the newest valid checkpoint is N - 2
    assert os.path.exists(os.path.join(out, f"checkpoint_{N:08d}.pth.tar.tmp"))
    assert not os.path.exists(os.path.join(out, f"checkpoint_{N:08d}.pth.tar"))
    assert ckpt.find_latest_valid(out)[1]["global_step"] == N - 2
    assert run_inprocess(mini_root, out, f"train.max_steps={2 * N}")["global_step"] == 2 * N
    assert_matches_straight(straight, out, 1)



def test_two_process_checkpoint_resumes_in_one_process(mini_root, tmp_path, free_port):
    out = str(tmp_path)
    env = {"NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port), "OMP_NUM_THREADS": "1"}
    two = run_cli(mini_root, out, "train.max_steps=3", env=env, train_sh=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "world size 2" in two.stderr and "global batch 8" in two.stderr
    saved = final_state(out)
    two_lengths, one_lengths = epoch_lengths(mini_root, 2), epoch_lengths(mini_root, 1)
    assert (saved["world_size"], saved["epoch_lengths"], saved["global_step"]) == (2, two_lengths, 3)
    assert len(saved["rng"]) == 2
    # 3 of the epoch's batches with 2 ranks is the same share of the epoch in 1 process
    start = round(3 * one_lengths[0] / two_lengths[0])
    run_inprocess(mini_root, out, f"train.max_steps={one_lengths[0]}")
    resumed = final_state(out)
    assert (resumed["world_size"], resumed["global_step"], resumed["epoch"], resumed["step_in_epoch"]) == (
        1, one_lengths[0], 1, 0)
    assert sorted(read_metrics(os.path.join(out, "metrics.jsonl"))) == [1, 2, 3, *range(start + 1, one_lengths[0] + 1)]
    # Adam's step count continued from the 2-process run's 3 steps
    assert {int(v["step"]) for v in resumed["optimizer"]["state"].values()} == {3 + one_lengths[0] - start}


def test_continuing_at_a_lower_global_step_sets_later_checkpoints_aside(mini_root, tmp_path):
    """A larger global batch (here batch 4 -> 8; likewise more processes) renumbers the run downward:
    the old checkpoints numbered above the new step must neither outlive the new ones nor be resumed."""
    out = str(tmp_path)
    run_inprocess(mini_root, out, f"train.max_steps={N}", "train.keep_last=2")
    assert [s for s, _ in ckpt.step_checkpoints(out)] == [N - 2, N]
    result = run_inprocess(mini_root, out, "train.batch_size=8", "train.keep_last=2", f"train.max_steps={N // 2 + 1}")
    assert result["global_step"] == N // 2 + 1
    path, state = ckpt.find_latest_valid(out)
    assert path == result["checkpoint"] and (state["batch_size"], state["global_step"]) == (8, N // 2 + 1)
    assert [s for s, _ in ckpt.step_checkpoints(out)] == [N // 2 + 1]
    for step in (N - 2, N):
        assert os.path.exists(ckpt.step_path(out, step) + ".superseded")


def test_scaler_state_of_a_disabled_scaler_loads_into_an_enabled_one():
    """A bf16 (or CPU) run saves a disabled GradScaler's empty state; an fp16 run may continue from it."""
    enabled = torch.amp.GradScaler("cpu", init_scale=1024.0)
    engine_trainer.load_scaler_state(enabled, torch.amp.GradScaler("cpu", enabled=False).state_dict())
    assert enabled.get_scale() == 1024.0
    engine_trainer.load_scaler_state(enabled, torch.amp.GradScaler("cpu", init_scale=8.0).state_dict())
    assert enabled.get_scale() == 8.0


def test_ranks_resume_from_the_checkpoint_rank_0_chose(tmp_path, free_port):
    """resume=auto with 2 processes whose views of output_dir differ (node-local or stale folders):
    both load the file rank 0 found."""
    views = [tmp_path / "rank0", tmp_path / "rank1"]
    for view, steps in zip(views, ([2, 4], [2])):
        for step in steps:
            ckpt.save_checkpoint({"model": {}, "optimizer": {}, "scaler": {}, "scheduler": {}, "epoch": 0,
                                  "step_in_epoch": step, "global_step": step, "rng": [], "config": {},
                                  "world_size": 2, "batch_size": 2, "epoch_lengths": [10]}, str(view), keep_last=5)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        import torch.distributed as dist
        from engine.trainer import resolve_resume
        from utils.distributed import exit_process
        rank = int(sys.argv[1])
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{free_port}", rank=rank, world_size=2)
        path, state = resolve_resume("auto", [{str(views[0])!r}, {str(views[1])!r}][rank], rank, 2)
        print(path, state["global_step"])
        dist.barrier()  # neither rank exits while the other still uses gloo
        exit_process(0)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(rank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for rank in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-2000:]
        assert stdout.split() == [ckpt.step_path(str(views[0]), 4), "4"]


@pytest.mark.parametrize("in_gloo_group", [True, False])
def test_exit_process_flushes_and_skips_the_teardown_only_in_a_gloo_group(in_gloo_group, free_port):
    """With a live gloo group the process ends without the interpreter's teardown (no atexit handler runs), its
    buffered output written and the exit code kept; without one it exits as usual."""
    script = textwrap.dedent(f"""
        import atexit, sys
        sys.path.insert(0, {REPO!r})
        import torch.distributed as dist
        from utils.distributed import exit_process
        if {in_gloo_group!r}:
            dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{free_port}", rank=0, world_size=1)
            dist.barrier()
        atexit.register(print, "teardown ran")
        print("result", end="")  # buffered: stdout is a pipe
        exit_process(3)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout == ("result" if in_gloo_group else "resultteardown ran\n")


def test_non_finite_loss_stops_naming_step_term_and_checkpoint(mini_root, tmp_path, monkeypatch):
    from models import build_model

    class FailsAtStep3(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.inner = build_model(cfg)
            self.calls = 0

        def forward(self, batch):
            out = self.inner(batch)
            self.calls += 1
            if self.calls == 3:
                out["loss_qv"] = out["loss_qv"] * float("nan")
                out["loss"] = out["loss"] + out["loss_qv"]
            return out

        def param_groups(self):
            return self.inner.param_groups()

    monkeypatch.setitem(tasks.TASKS, "retrieval", tasks.TASKS["retrieval"]._replace(build_model=FailsAtStep3))
    out = str(tmp_path)
    cfg = load_config(DEMO, overrides(mini_root, out))
    with pytest.raises(engine.NonFiniteLoss) as err:
        engine.train(cfg)
    msg = str(err.value)
    assert "non-finite loss_qv = nan at step 3" in msg
    assert msg.endswith(os.path.join(out, "checkpoint_00000002.pth.tar"))
    assert ckpt.find_latest_valid(out)[1]["global_step"] == 2


@pytest.mark.parametrize("override,key", [
    ("model.video.pooling=gru", "model.video.pooling"),
    ("model.fusion.type=concat", "model.fusion.type"),
    ("loss.negatives=all", "loss.negatives"),
    ("model.backbone.freeze=[visual, vision]", "model.backbone.freeze"),
    ("model.recon.vision_mask_ratio=0", "model.recon.vision_mask_ratio"),
    ("model.recon.vision_mask_ratio=1.5", "model.recon.vision_mask_ratio"),
    ("data.frame_source=video", "data.frame_source"),
    ("eval.feature=both", "eval.feature"),
    ("eval.dtype=bfloat16", "eval.dtype"),
    ("eval.direction=query2goods", "eval.direction"),
    ("train.grad_clip=-1", "train.grad_clip=-1.0: expected 0 (off) or a norm > 0"),
])
@pytest.mark.parametrize("evaluate", [False, True])
def test_bad_setting_stops_before_any_work(override, key, evaluate, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--config", DEMO] + (["--evaluate"] if evaluate else []) + [f"output_dir={out}", override]
    assert entry.main(argv) == 2
    assert key in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("env,expected", [
    ({}, (0, 0, 1, "single")),
    ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, (5, 1, 8, "torchrun")),
    # torchrun inside a SLURM job (scripts/slurm_train.sh): torchrun's variables win
    ({"RANK": "3", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, (3, 3, 16, "torchrun")),
    ({"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2"}, (6, 2, 8, "slurm")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (0, 0, 1, "single")),  # a one-task allocation
])
def test_rank_detection(env, expected):
    from utils.distributed import _ranks_from_env

    assert _ranks_from_env(env) == expected


def test_train_sh_takes_a_config_path_relative_to_the_callers_directory(tmp_path, free_port):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my.yaml").write_text(f"_base_: {DEMO}\n")
    # a bad setting stops the run right after the config is read
    proc = subprocess.run(["sh", os.path.join(REPO, "train.sh"), "sub/my.yaml", "model.video.pooling=gru",
                           f"output_dir={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NPROC_PER_NODE="1", MASTER_PORT=str(free_port)))
    assert "config error: model.video.pooling='gru'" in proc.stderr, proc.stderr[-2000:]


def test_slurm_script_says_how_to_find_the_repository(tmp_path):
    proc = subprocess.run(["sh", os.path.join(REPO, "scripts", "slurm_train.sh")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, SLURM_JOB_ID="1", QCD_ROOT=str(tmp_path)))
    assert proc.returncode == 1
    assert f"{tmp_path}/main_cross_domain_emb.py not found" in proc.stderr and "QCD_ROOT=" in proc.stderr


def test_backend_choice_and_single_process_init(monkeypatch):
    from utils.distributed import init_distributed, is_dist, pick_backend

    assert pick_backend("auto", True) == "nccl" and pick_backend("auto", False) == "gloo"
    assert pick_backend("gloo", True) == "gloo"
    with pytest.raises(RuntimeError, match="nccl needs CUDA"):
        pick_backend("nccl", False)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR",
                 "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    if not torch.cuda.is_available():
        assert init_distributed("auto") == (0, 0, 1, torch.device("cpu"))
        assert not is_dist()
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(RuntimeError, match="export MASTER_ADDR and MASTER_PORT"):
        init_distributed("auto")


def test_evaluate_flag_hands_over_to_feature_extraction(straight, mini_root, tmp_path):
    import numpy as np

    from datasets.annotations import DatasetPaths, parse_item_list

    code = entry.main(["--config", DEMO, "--evaluate", f"data.root={mini_root}", "data.num_workers=0",
                       f"eval.checkpoint={os.path.join(straight, ckpt.LATEST)}", "eval.direction=goods2video",
                       f"eval.out_dir={tmp_path}/{{direction}}/{{feature}}"])
    assert code == 0
    paths = DatasetPaths(mini_root)
    for side, list_path in (("query", paths.query_list("goods2video")), ("gallery", paths.gallery_list("goods2video"))):
        feats = np.load(tmp_path / "goods2video" / "fused" / side / "feats.npy")
        ids = (tmp_path / "goods2video" / "fused" / side / "ids.txt").read_text().split()
        assert ids == [str(item.pid) for item in parse_item_list(list_path)]
        assert feats.shape == (len(ids), 64)
        assert np.allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=1e-2)


def test_a_list_too_small_for_one_batch_is_bad_input_naming_the_list_and_the_fix(mini_root, tmp_path):
    from engine.checks import FAILURES

    with pytest.raises(ValueError, match=r"train\.txt gives no full batch of 1000 per rank on 1 ranks in some epoch; "
                                         r"lower train\.batch_size") as err:
        run_inprocess(mini_root, str(tmp_path / "out"), "train.batch_size=1000")
    assert [code for kinds, _, code in FAILURES if isinstance(err.value, kinds)][0] == 2
