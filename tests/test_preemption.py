"""Preemption: SIGTERM, SIGUSR1 or SIGINT to any rank stops every rank at the same step with a checkpoint, one
line and EXIT_PREEMPTED, and resume=auto then ends with the weights of an uninterrupted run;
train.save_every_minutes checkpoints by rank 0's clock (tiny demo model, mini set, CPU, gloo)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import main_cross_domain_emb as entry
from engine import trainer as engine_trainer
from tests.helpers import REPO_ROOT, TINY
from utils import checkpoint as ckpt
from utils import preemption
from utils.preemption import EXIT_PREEMPTED, preempted_line

DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")
STEPS = 6  # the uninterrupted run; stopped at STOP_AT (mid-epoch in 1 and in 2 processes)
STOP_AT = 3


def argv(mini_root, out, *extra):
    # no step or epoch checkpoint before STEPS: any checkpoint before the end is the preemption's
    return ["--config", DEMO, f"data.root={mini_root}", f"output_dir={out}", "resume=auto", "train.batch_size=4",
            "train.epochs=2", f"train.max_steps={STEPS}", "train.save_every_steps=100", "train.log_every=1",
            "train.keep_last=10", "train.threads=1", "data.num_workers=0", *TINY, *extra]


def weights(out):
    return ckpt.load_checkpoint(os.path.join(out, ckpt.LATEST))["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def step_checkpoints(out):
    return sorted(int(name[len("checkpoint_"):-len(".pth.tar")]) for name in os.listdir(out)
                  if name.startswith("checkpoint_0") and name.endswith(".pth.tar"))


def signal_after_step(monkeypatch, step, signum):
    """This process sends itself `signum` right after optimizer step `step`, as a scheduler's signal would."""
    original = engine_trainer.Trainer.step

    def step_then_signal(self, batch):
        result = original(self, batch)
        if self.global_step == step:
            os.kill(os.getpid(), signum)
        return result
    monkeypatch.setattr(engine_trainer.Trainer, "step", step_then_signal)


@pytest.fixture(scope="module")
def straight(mini_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    assert entry.main(argv(mini_root, out)) == 0
    return weights(out)


def test_sigterm_checkpoints_at_the_next_step_and_resume_is_exact(straight, mini_root, tmp_path, monkeypatch, capsys):
    out = str(tmp_path)
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        signal_after_step(m, STOP_AT, signal.SIGTERM)
        assert entry.main(argv(mini_root, out)) == EXIT_PREEMPTED
    path = ckpt.step_path(out, STOP_AT)
    assert capsys.readouterr().err.rstrip().splitlines()[-1].endswith(preempted_line(STOP_AT, path))
    assert step_checkpoints(out) == [STOP_AT]
    assert ckpt.load_checkpoint(path)["global_step"] == STOP_AT
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's handlers are gone with it
    assert entry.main(argv(mini_root, out)) == 0
    assert_same_weights(weights(out), straight)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGINT])
def test_sigusr1_and_sigint_stop_the_same_way(signum, mini_root, tmp_path, monkeypatch, capsys):
    signal_after_step(monkeypatch, 1, signum)
    assert entry.main(argv(mini_root, tmp_path, "train.max_steps=2")) == EXIT_PREEMPTED
    assert capsys.readouterr().err.rstrip().splitlines()[-1].endswith(
        preempted_line(1, ckpt.step_path(str(tmp_path), 1)))
    assert step_checkpoints(str(tmp_path)) == [1]


def test_save_every_minutes_checkpoints_by_the_clock(mini_root, tmp_path, monkeypatch):
    """50 s per step, a checkpoint every 2 minutes: steps 3 and 6 (150 s after the previous one), and the last."""
    now = [1000.0]
    monkeypatch.setattr(preemption, "monotonic", lambda: now[0])
    original = engine_trainer.Trainer.step

    def timed_step(self, batch):
        now[0] += 50
        return original(self, batch)
    monkeypatch.setattr(engine_trainer.Trainer, "step", timed_step)
    assert entry.main(argv(mini_root, tmp_path, "train.max_steps=7", "train.save_every_minutes=2")) == 0
    assert step_checkpoints(str(tmp_path)) == [3, 6, 7]


# The entry script as torchrun runs it, after global step argv[2] sending SIGTERM as argv[1] says: "worker" from
# rank 1 to itself alone; "launcher" from rank 0 to torchrun, which forwards it to every worker (rank 0 waits
# for it, so that the stop step is known).
_WORKER = textwrap.dedent(f"""
    import os, runpy, signal, sys, time
    sys.path.insert(0, {REPO_ROOT!r})
    from engine import trainer
    target, stop_at = sys.argv[1], int(sys.argv[2])
    original = trainer.Trainer.step

    def step(self, batch):
        result = original(self, batch)
        if self.global_step == stop_at and target == "worker" and self.rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.global_step == stop_at and target == "launcher" and self.rank == 0:
            os.kill(os.getppid(), signal.SIGTERM)
            stop = signal.getsignal(signal.SIGTERM).__self__
            for _ in range(1200):
                if stop.received:
                    break
                time.sleep(0.05)
        return result

    trainer.Trainer.step = step
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def launch(worker, mini_root, out, port, target="none", stop_at=0, extra=()):
    """2 gloo processes started directly (-> [exit code of each], rank 0's stderr) or, with target="launcher",
    by torchrun (-> [torchrun's exit code], its stderr)."""
    script = [worker, target, str(stop_at), os.path.join(REPO_ROOT, "main_cross_domain_emb.py"),
              *argv(mini_root, out, *extra)]
    base = dict(os.environ, OMP_NUM_THREADS="1")
    if target == "launcher":
        commands = [([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script],
                     base)]
    else:
        commands = [([sys.executable, *script], dict(base, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                                                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
                    for rank in (0, 1)]
    procs = [subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd, env in commands]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    return [p.returncode for p in procs], errs[0]


def test_sigterm_to_torchrun_or_to_one_worker_stops_every_rank_and_resume_is_exact(mini_root, tmp_path, free_port):
    """Stopped twice mid-epoch (4 steps an epoch): SIGTERM to torchrun after step 1, then, resumed, SIGTERM to rank 1
    alone after step 3: the checkpoint of step 3 holds the weights of an uninterrupted 2-process run at step 3."""
    worker = str(tmp_path / "worker.py")
    with open(worker, "w", encoding="utf-8") as f:
        f.write(_WORKER)
    straight_out, out = str(tmp_path / "straight"), str(tmp_path / "stopped")
    codes, err = launch(worker, mini_root, straight_out, free_port, extra=("train.save_every_steps=1",))
    assert codes == [0, 0], err[-3000:]

    # torchrun forwards SIGTERM; its own exit code and report are the launch script's to turn into ours
    codes, err = launch(worker, mini_root, out, free_port, "launcher", 1)
    assert codes[0] != 0
    lines = [line for line in err.splitlines() if "preempted at step" in line]
    assert len(lines) == 1 and lines[0].endswith(preempted_line(1, ckpt.step_path(out, 1)))  # rank 0's only
    assert step_checkpoints(out) == [1]

    codes, err = launch(worker, mini_root, out, free_port, "worker", 3)
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], err[-3000:]
    assert err.rstrip().splitlines()[-1].endswith(preempted_line(3, ckpt.step_path(out, 3)))
    assert step_checkpoints(out) == [1, 3]
    assert_same_weights(ckpt.load_checkpoint(ckpt.step_path(out, 3))["model"],
                        ckpt.load_checkpoint(ckpt.step_path(straight_out, 3))["model"])


def test_sigterm_to_train_sh_ends_with_the_preemption_code_and_line(mini_root, tmp_path):
    """What SLURM's TERM does to `sh train.sh`: torchrun is told to stop, the worker checkpoints at the next step,
    and the script exits EXIT_PREEMPTED with its own last line instead of torchrun's exit code."""
    import time

    out = str(tmp_path / "run")
    args = argv(mini_root, out)
    args[args.index(f"train.max_steps={STEPS}")] = "train.max_steps=400"
    args[args.index("train.epochs=2")] = "train.epochs=100"
    proc = subprocess.Popen(["sh", os.path.join(REPO_ROOT, "train.sh"), *args[1:]], cwd=REPO_ROOT,
                            env=dict(os.environ, NPROC_PER_NODE="1", OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = os.path.join(out, "train.log")
    for _ in range(2400):  # until the first optimizer steps are logged
        if os.path.isfile(log) and "step 2/" in open(log, encoding="utf-8").read():
            break
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert err.rstrip().splitlines()[-1].startswith("[launch] preempted: the run stopped at a step boundary")
    stopped = [line for line in err.splitlines() if "preempted at step" in line]
    assert len(stopped) == 1
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]  # not torchrun's report
    step = int(stopped[0].split("preempted at step ")[1].split(";")[0])
    assert 2 <= step < 400 and step_checkpoints(out) == [step]
