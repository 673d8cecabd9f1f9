"""A run owns its output_dir: it continues only its own checkpoints, leaves a finished run alone, holds a
lock against a second run, stops when its launcher dies, and survives a full disk with its last checkpoint."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import main_cross_domain_emb as entry
from engine.run_dir import LOCK_NAME
from utils import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.yaml")


def argv(mini_root, out, *extra):
    return ["--config", DEMO, f"data.root={mini_root}", f"output_dir={out}", "resume=auto", "train.batch_size=4",
            "train.epochs=1", "train.save_every_steps=2", "train.log_every=1", "train.threads=1",
            "data.num_workers=0", *extra]


def snapshot(folder):
    """{relative path: (size, mtime_ns)} of every file under folder but the lock (whose holder line every run
    rewrites: it checks the folder only while holding the lock)."""
    found = {}
    for base, _, files in os.walk(folder):
        for name in set(files) - {LOCK_NAME}:
            st = os.stat(os.path.join(base, name))
            found[os.path.relpath(os.path.join(base, name), folder)] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def finished_run(mini_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    assert entry.main(argv(mini_root, out, "train.max_steps=2")) == 0
    return out


def test_a_finished_run_is_left_untouched(finished_run, mini_root, capsys):
    before = snapshot(finished_run)
    assert entry.main(argv(mini_root, finished_run, "train.max_steps=2", "train.log_every=5")) == 0
    assert "is a finished run (global step 2" in capsys.readouterr().err
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("max_steps", [2, 4])  # the run is finished / would go on
def test_another_config_in_a_used_output_dir_is_refused_before_writing(finished_run, mini_root, max_steps, capsys):
    before = snapshot(finished_run)
    assert entry.main(argv(mini_root, finished_run, f"train.max_steps={max_steps}", "train.weight_decay=0.5",
                           "loss.weights.qt=2")) == 2
    err = capsys.readouterr().err
    assert "was written by a run with other settings" in err
    assert "loss.weights.qt: 1.0 -> 2.0" in err and "train.weight_decay: 0.0 -> 0.5" in err and "resume=null" in err
    assert "train.max_steps" not in err.split("other settings")[1].split("Pick another")[0]
    assert snapshot(finished_run) == before


def test_a_checkpoint_whose_tensors_do_not_fit_gets_a_short_message(finished_run, mini_root, tmp_path, capsys):
    state = ckpt.load_checkpoint(os.path.join(finished_run, ckpt.LATEST))
    name = next(k for k in state["model"] if k.endswith("weight"))
    state["model"][name] = torch.zeros(3, 3)
    out = tmp_path / "run"
    out.mkdir()
    torch.save(state, ckpt.step_path(str(out), 2))
    assert entry.main(argv(mini_root, out, "train.max_steps=4")) == 2
    err = capsys.readouterr().err
    assert f"does not fit the model of this config: 1 mismatched (first: {name}: checkpoint (3, 3)" in err
    assert "pick another output_dir, or pass resume=null" in err and "size mismatch" not in err


def test_a_second_run_on_a_locked_output_dir_fails_naming_the_holder(mini_root, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, sys.argv[1]); from engine.run_dir import RunLock; "
        "RunLock(sys.argv[2]).acquire(); print('locked', flush=True); sys.stdin.read()"), REPO, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.time()
        assert entry.main(argv(mini_root, tmp_path, "train.max_steps=2")) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path} is in use by another run (host {os.uname().nodename} pid {holder.pid} since" in err
        assert time.time() - start < 10 and not list(tmp_path.glob("checkpoint_*"))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the holder is gone: its lock file (still naming it) no longer blocks
    assert str(holder.pid) in (tmp_path / LOCK_NAME).read_text()
    assert entry.main(argv(mini_root, tmp_path, "train.max_steps=2")) == 0
    assert f"pid {os.getpid()} " in (tmp_path / LOCK_NAME).read_text()


def _children(pid):
    kids = []
    for entry_ in os.listdir("/proc"):
        if entry_.isdigit():
            try:
                with open(f"/proc/{entry_}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry_))
    return kids


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process parents from /proc")
def test_workers_stop_when_torchrun_is_killed(mini_root, tmp_path, free_port):
    out = tmp_path / "run"
    launcher = subprocess.Popen(["sh", os.path.join(REPO, "train.sh")] + argv(mini_root, out, "train.epochs=50")[1:],
                                env=dict(os.environ, NPROC_PER_NODE="1", MASTER_PORT=str(free_port),
                                         OMP_NUM_THREADS="1"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 300
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            assert launcher.poll() is None, "training ended early"
            time.sleep(0.5)
        workers = _children(launcher.pid)
        assert workers, "no worker found under torchrun"
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.time() + 30
        while any(map(_alive, workers)) and time.time() < deadline:
            time.sleep(0.5)
        assert not any(map(_alive, workers)), f"workers {workers} outlived their launcher"
    finally:
        for pid in [launcher.pid] + workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_full_disk_keeps_the_last_checkpoint_and_removes_the_partial_file(mini_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    # the kernel's always-full device stands in for a full disk at the checkpoint of step 4
    partial = out / f"checkpoint_{4:08d}.pth.tar.tmp"
    os.symlink("/dev/full", partial)
    assert entry.main(argv(mini_root, out, "train.max_steps=6")) == 1
    err = capsys.readouterr().err
    assert f"No space left on device while writing {ckpt.step_path(str(out), 4)}" in err
    assert f"Last good checkpoint: {ckpt.step_path(str(out), 2)}" in err
    assert not os.path.lexists(partial)
    path, state = ckpt.find_latest_valid(str(out))
    assert state["global_step"] == 2
    assert entry.main(argv(mini_root, out, "train.max_steps=6")) == 0  # space again: it goes on from step 2
    assert ckpt.find_latest_valid(str(out))[1]["global_step"] == 6


@pytest.mark.parametrize("kind", ["text", "foreign pickle"])
@pytest.mark.parametrize("setting", ["model.backbone.pretrained", "init_from", "eval.checkpoint"])
def test_a_file_that_is_not_a_checkpoint_is_named_with_its_setting(mini_root, tmp_path, setting, kind):
    import argparse

    bad = tmp_path / "weights.pt"
    if kind == "text":
        bad.write_text("these are not weights\n")
    else:  # weights_only=True refuses to unpickle objects other than tensors and plain values
        torch.save({"state_dict": argparse.Namespace(lr=1)}, bad)
    script = "evaluation.py" if setting == "eval.checkpoint" else "main_cross_domain_emb.py"
    cmd = [sys.executable, os.path.join(REPO, script)] + (["run"] if setting == "eval.checkpoint" else [])
    cmd += ["--config", DEMO, f"data.root={mini_root}", f"output_dir={tmp_path / 'out'}", f"{setting}={bad}",
            "train.max_steps=1", "data.num_workers=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (1, 2)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {setting}={bad}: not a PyTorch checkpoint (expected "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
