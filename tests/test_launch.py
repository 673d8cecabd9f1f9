"""Launching from anywhere: relative paths are the caller's, missing files stop the launch scripts before
torchrun starts a worker, a busy default port does not matter on one node, and the scripts explain misuse."""
import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.yaml")
FAST = ["train.threads=1", "data.num_workers=0", "train.batch_size=4", "train.max_steps=2", "eval.page_queries=0"]


def launch(script, *args, cwd, timeout=600, **env):
    environ = {k: v for k, v in os.environ.items() if k != "MASTER_PORT"}
    environ.update(NPROC_PER_NODE="1", OMP_NUM_THREADS="1", **env)
    return subprocess.run(["sh", os.path.join(REPO, script), *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def busy_default_port():
    """Port 29500 (torchrun's default) held by another program, when this machine lets us take it."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 29500))
        s.listen()
    except OSError:
        pass  # already taken by someone else: just as busy
    yield
    s.close()


def test_relative_paths_are_the_callers_from_training_to_evaluation(mini_root, tmp_path, busy_default_port):
    os.symlink(mini_root, tmp_path / "mini")
    proc = launch("train.sh", DEMO, "data.root=mini", "output_dir=myrun", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "myrun" / "checkpoint_latest.pth.tar").is_file()
    assert not os.path.exists(os.path.join(REPO, "myrun"))
    with open(tmp_path / "myrun" / "config.yaml", encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    assert saved["output_dir"] == str(tmp_path / "myrun") and saved["data"]["root"] == str(tmp_path / "mini")

    for script in ("video2goods_evaluate.sh", "goods2video_evaluate.sh"):
        proc = launch(script, "myrun/checkpoint_latest.pth.tar", DEMO, "data.root=mini", "output_dir=myrun", *FAST,
                      cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        direction = script.split("_")[0]
        assert (tmp_path / "myrun" / "eval" / direction / "fused" / "results.json").is_file()
        assert f"{direction} fused: R@1 " in proc.stdout


@pytest.mark.parametrize("script,args,message", [
    ("train.sh", ["data.root=nowhere"], "error: data.root={cwd}/nowhere: folder not found"),
    ("train.sh", ["data.root={mini}", "model.backbone.pretrained=clip_cn_vit-b-16.pt"],
     "error: model.backbone.pretrained={cwd}/clip_cn_vit-b-16.pt: file not found"),
    ("train.sh", ["data.root={mini}", "init_from=old/checkpoint.pth.tar"],
     "config error: init_from='{cwd}/old/checkpoint.pth.tar': checkpoint file not found"),
    ("video2goods_evaluate.sh", ["run/checkpoint_latest.pth.tar", DEMO, "data.root={mini}"],
     "error: eval.checkpoint={cwd}/run/checkpoint_latest.pth.tar: file not found"),
    ("goods2video_evaluate.sh", ["null", DEMO, "data.root={cwd}"],
     "error: list file not found: {cwd}/test_file/goods2video_query.txt"),
])
def test_a_missing_file_stops_the_launch_before_torchrun(mini_root, tmp_path, script, args, message):
    args = [a.format(cwd=tmp_path, mini=mini_root) for a in args]
    # the scripts' python, recording each of its command lines
    calls = tmp_path / "calls.txt"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    proc = launch(script, *([DEMO] if script == "train.sh" else []), *args, cwd=tmp_path, PYTHON=str(python))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message.format(cwd=tmp_path)), proc.stderr[-2000:]
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr
    # one call, the check of main_cross_domain_emb.py: no torchrun, no worker, no model built
    lines = calls.read_text().splitlines()
    assert len(lines) == 1 and "main_cross_domain_emb.py --config" in lines[0] and "--check" in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == sorted(["calls.txt", "python"])  # nothing written by a run


def test_the_evaluation_scripts_explain_their_arguments(tmp_path):
    proc = launch("video2goods_evaluate.sh", "configs/demo.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "video2goods_evaluate.sh: the first argument must be the checkpoint to evaluate (or null), got " \
           "'configs/demo.yaml'" in proc.stderr
    proc = launch("goods2video_evaluate.sh", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: sh goods2video_evaluate.sh CKPT [CONFIG]")


def test_every_evaluation_subcommand_has_a_help_text():
    out = subprocess.run([sys.executable, os.path.join(REPO, "evaluation.py"), "-h"], capture_output=True, text=True,
                         timeout=120).stdout
    listing = out.split("positional arguments:")[1]
    for command in ("run", "extract", "search", "table", "page"):
        line = next(line for line in listing.splitlines() if line.strip().startswith(command + " "))
        assert len(line.split(None, 1)[1]) > 20, line
        sub = subprocess.run([sys.executable, os.path.join(REPO, "evaluation.py"), command, "-h"], capture_output=True,
                             text=True, timeout=120)
        assert sub.returncode == 0 and "usage: evaluation.py " + command in sub.stdout


def test_an_empty_query_list_stops_evaluation_with_one_line(mini_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mini_root, root, ignore=lambda d, names: ["Real400K"] if d == mini_root else [])
    os.symlink(os.path.join(mini_root, "Real400K"), root / "Real400K")
    empty = root / "test_file" / "video2goods_query.txt"
    empty.write_text("\n")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "evaluation.py"), "run", "--config", DEMO,
                           f"data.root={root}", f"output_dir={tmp_path / 'out'}"] + FAST, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {empty}: empty list: expected at least one non-blank line"


@pytest.mark.parametrize("script,first", [("train.sh", []), ("video2goods_evaluate.sh", ["null"])])
def test_check_alone_stops_after_the_launch_check(script, first, mini_root, tmp_path):
    out = tmp_path / "out"
    proc = launch(script, *first, DEMO, f"data.root={mini_root}", f"output_dir={out}", "--check", cwd=tmp_path,
                  timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[launch]" not in proc.stdout + proc.stderr and not out.exists()  # torchrun never started
    bad = launch(script, *first, DEMO, "data.root=/absent", f"output_dir={out}", "--check", cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: data.root=/absent")
