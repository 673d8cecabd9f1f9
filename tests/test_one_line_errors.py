"""An error raised after start-up, under torchrun with 2 processes, ends the launch with one "error:" line (the
workers' own, once) and the workers' exit code, not torchrun's ChildFailedError traceback (issue 20, point 7)."""
import contextlib
import os
import subprocess
import sys

from evaluate import pipeline
from engine.run_dir import RunLock
from tests.helpers import REPO_ROOT, TINY
from utils.config import load_config

DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")
FAST = ["train.threads=1", "data.num_workers=0", "train.batch_size=4", "train.max_steps=2", "eval.page_queries=0"]


def launch(script, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "TORCHELASTIC_ERROR_FILE")}
    env.update(NPROC_PER_NODE="2", OMP_NUM_THREADS="1")
    return subprocess.run(["sh", os.path.join(REPO_ROOT, script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_ends_with_one_error(proc, code, message):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr[-3000:]
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr[-3000:]
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], proc.stderr[-3000:]
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_a_taken_output_dir_ends_train_sh_with_the_runs_line_and_exit_code_2(mini_root, tmp_path):
    out = tmp_path / "run"
    lock = RunLock(str(out))
    lock.acquire()  # another run holds output_dir: every rank sees it after start-up (lock_run_dir)
    try:
        proc = launch("train.sh", DEMO, f"data.root={mini_root}", f"output_dir={out}", *TINY, *FAST, cwd=tmp_path)
    finally:
        lock.release()
    assert_ends_with_one_error(proc, 2, f"{out} is in use by another run")


def test_a_taken_eval_folder_ends_the_evaluate_script_with_one_line_and_exit_code_1(mini_root, tmp_path):
    args = [f"data.root={mini_root}", f"output_dir={tmp_path / 'run'}", "eval.feature=fused", *TINY, *FAST]
    cfg = load_config(DEMO, ["eval.direction=video2goods", *args])
    with contextlib.ExitStack() as stack:  # another evaluation writes the same folder
        for feature in pipeline.feature_names(cfg):
            stack.enter_context(pipeline.folder_lock(pipeline.out_dir(cfg, feature)))
        proc = launch("video2goods_evaluate.sh", "null", DEMO, *args, cwd=tmp_path)
    assert_ends_with_one_error(proc, 1, "is in use by another evaluation")


def torchrun(tmp_path, *lines):
    """scripts/torchrun.py, as the launch scripts run it, on 2 workers running the script `lines`."""
    script = tmp_path / "worker.py"
    script.write_text("\n".join(["import os, sys, time", "rank = int(os.environ['RANK'])", *lines, ""]))
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_ERROR_FILE"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "torchrun.py"), "-m",
                           "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script)], env=env, capture_output=True, text=True, timeout=120)


def test_an_error_of_one_rank_alone_is_its_line_while_the_other_is_stopped(tmp_path):
    proc = torchrun(
        tmp_path, f"sys.path.insert(0, {REPO_ROOT!r})", "from engine.checks import run_cli",
        "def work():",
        "    if rank == 1:",
        "        raise FileNotFoundError('data.root=/mini: gallery frame 7/1.jpg not found')",
        "    time.sleep(60)  # as in a collective that rank 1 never joins: torchrun stops rank 0",
        "sys.exit(run_cli(work))")
    assert_ends_with_one_error(proc, 2, "data.root=/mini: gallery frame 7/1.jpg not found")


def test_a_bug_keeps_its_traceback_and_ends_with_a_line_naming_the_rank(tmp_path):
    proc = torchrun(tmp_path, "if rank == 1:", "    raise KeyError('a bug')", "time.sleep(60)")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "KeyError: 'a bug'" in proc.stderr and "ChildFailedError" not in proc.stderr
    assert lines[-1] == "error: worker rank 1 exited with code 1; its output above says why", proc.stderr[-3000:]


def test_a_rank_stopped_after_writing_its_line_still_gives_its_exit_code(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from utils.distributed import failure_line, write_error_file

    write_error_file(str(tmp_path / "0.json"), "error: data.root=/nowhere: folder not found", 2)
    write_error_file(str(tmp_path / "1.json"), "error: data.root=/nowhere: folder not found", 2)
    failures = {1: ProcessFailure(1, 11, 2, str(tmp_path / "1.json")),
                0: ProcessFailure(0, 10, -15, str(tmp_path / "0.json"))}  # SIGTERM from torchrun after writing
    assert failure_line(failures) == ("error: data.root=/nowhere: folder not found", 2)
    # no line written: the lowest rank that exited with a code, not one torchrun stopped
    failures = {0: ProcessFailure(0, 10, -15, str(tmp_path / "none.json")),
                1: ProcessFailure(1, 11, 3, str(tmp_path / "none.json"))}
    assert failure_line(failures) == ("error: worker rank 1 exited with code 3; its output above says why", 3)


def test_workers_that_all_stopped_for_a_signal_end_with_the_preemption_line(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from utils.distributed import failure_line
    from utils.preemption import EXIT_PREEMPTED

    none = str(tmp_path / "none.json")
    stopped = {r: ProcessFailure(r, 10 + r, EXIT_PREEMPTED, none) for r in (0, 1)}  # SIGTERM to one worker only
    line, code = failure_line(stopped)
    assert code == EXIT_PREEMPTED and line.startswith("preempted: ") and line.endswith("resume=auto to continue")
    mixed = {0: ProcessFailure(0, 10, EXIT_PREEMPTED, none), 1: ProcessFailure(1, 11, 1, none)}
    assert failure_line(mixed) == ("error: worker rank 1 exited with code 1; its output above says why", 1)
