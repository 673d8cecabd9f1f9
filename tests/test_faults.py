"""Faults that used to pass silently: a GPU job without a GPU, a file system without flock, a stage-2
pre-training without weights, a stale or broken training-index cache, texts that tokenise to nothing."""
import errno
import json
import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import train_index
from datasets.annotations import DatasetPaths, TrainEntry, parse_train_file
from datasets.sampler import TrainSample
from datasets.tokenizer import Tokenizer
from datasets.train_dataset import TrainDataset
from datasets.train_index import load_train_index
from engine import run_dir
from engine.checks import run_cli
from engine.run_dir import RunDirError, RunLock, check_start, lock_run_dir
from tests.helpers import REPO_ROOT
from utils.config import ConfigError, load_config
from utils.distributed import UnsupportedGPU, init_distributed

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
GPU_VARS = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def no_cuda(monkeypatch):
    """A single process on a machine where torch sees no CUDA device, with no GPU variables set."""
    for name in RANK_VARS + GPU_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return monkeypatch


# ----------------------------------------------------------------------------- point 4: no GPU, no flock

def test_nccl_without_a_cuda_device_stops_with_one_line(no_cuda, capsys):
    with pytest.raises(UnsupportedGPU, match="dist_backend=nccl needs CUDA but torch sees no CUDA device"):
        init_distributed("nccl")
    assert run_cli(init_distributed, "nccl") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dist_backend=nccl needs CUDA") and err.count("\n") == 1


@pytest.mark.parametrize("name, value", [
    ("SLURM_GPUS_ON_NODE", "4"), ("SLURM_JOB_GPUS", "0,1"), ("SLURM_STEP_GPUS", "0"),
])
def test_auto_on_a_gpu_job_that_sees_no_gpu_stops_instead_of_running_on_cpu(no_cuda, name, value):
    no_cuda.setenv(name, value)
    with pytest.raises(UnsupportedGPU, match=f"dist_backend=auto on a GPU job \\({name}=.*no CUDA device.*"
                                             "dist_backend=gloo"):
        init_distributed("auto")


def test_auto_without_gpu_variables_and_gloo_on_a_gpu_job_run_on_cpu(no_cuda):
    no_cuda.setenv("SLURM_GPUS_ON_NODE", "")  # set but empty: no GPUs were given
    assert init_distributed("auto") == (0, 0, 1, torch.device("cpu"))
    no_cuda.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose, outside a GPU job
    assert init_distributed("auto") == (0, 0, 1, torch.device("cpu"))
    no_cuda.setenv("SLURM_JOB_GPUS", "0")
    assert init_distributed("gloo") == (0, 0, 1, torch.device("cpu"))


@pytest.fixture
def no_flock(monkeypatch):
    """A file system without flock (Lustre mounted without it)."""
    def flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_dir.fcntl, "flock", flock)


def test_without_flock_the_lock_file_refuses_a_second_run_and_is_taken_again_once_released(tmp_path, no_flock):
    first = lock_run_dir(str(tmp_path), 0, 1)
    with pytest.raises(RunDirError, match=f"in use by another run \\(host {socket.gethostname()} pid {os.getpid()} "
                                          "since .*delete .*\\.lock\\.excl"):
        lock_run_dir(str(tmp_path), 0, 1)
    first.release()
    assert not (tmp_path / run_dir.EXCL_LOCK_NAME).exists()
    again = lock_run_dir(str(tmp_path), 0, 1)
    assert f"pid {os.getpid()}" in (tmp_path / run_dir.EXCL_LOCK_NAME).read_text()
    again.release()


def test_without_flock_a_lock_file_of_a_dead_process_is_taken_over(tmp_path, no_flock, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"host {socket.gethostname()} pid {dead.pid} since 2026-01-01 00:00:00\n"
    (tmp_path / run_dir.EXCL_LOCK_NAME).write_text(stale)
    with caplog.at_level(logging.WARNING):
        lock = RunLock(str(tmp_path))
        lock.acquire()
    assert f"pid {os.getpid()}" in (tmp_path / run_dir.EXCL_LOCK_NAME).read_text()
    assert any("is dead; taking the lock over" in r.getMessage() for r in caplog.records)
    lock.release()
    # a holder on another host cannot be checked: refused
    (tmp_path / run_dir.EXCL_LOCK_NAME).write_text(f"host other-node pid {dead.pid} since 2026-01-01 00:00:00\n")
    with pytest.raises(RunDirError, match="host other-node"):
        RunLock(str(tmp_path)).acquire()


# ----------------------------------------------------------------------------- point 8: pre-training stage 2

def stage2_cfg(tmp_path, *overrides):
    return load_config(os.path.join(REPO_ROOT, "configs", "demo.yaml"),
                       ["task=pretrain", "pretrain.stage=2", "resume=auto", f"output_dir={tmp_path}", *overrides])


def test_stage2_with_nothing_resumed_and_no_init_from_is_an_error(tmp_path, capsys):
    cfg = stage2_cfg(tmp_path)
    with pytest.raises(ConfigError, match="pretrain.stage=2 .*no checkpoint to continue was found.*set init_from"):
        check_start(cfg, None)
    assert run_cli(check_start, cfg, None) == 2
    assert capsys.readouterr().err.startswith("config error: pretrain.stage=2")
    check_start(cfg, str(tmp_path / "checkpoint_latest.pt"))  # a continuation has its weights
    check_start(stage2_cfg(tmp_path, f"init_from={tmp_path / 'stage1.pt'}"), None)


def test_init_from_on_a_continuation_says_it_is_not_used(tmp_path, caplog):
    cfg = stage2_cfg(tmp_path, f"init_from={tmp_path / 'stage1.pt'}")
    resumed = str(tmp_path / "checkpoint_latest.pt")
    with caplog.at_level(logging.INFO, logger=run_dir.log.name):
        check_start(cfg, resumed)
    lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert lines == [f"init_from={tmp_path / 'stage1.pt'} not used: this run continues {resumed} (init_from only "
                     "initialises a run's first start)"]


# ----------------------------------------------------------------------------- point 9: the index cache

def write_list(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_an_edit_that_keeps_size_and_mtime_gets_a_new_index(tmp_path):
    path = write_list(tmp_path / "train.txt", "a\t1\tNone\nb\tNone\t2\n")
    st = os.stat(path)
    first = load_train_index(path, str(tmp_path / "cache"))
    assert first.goods(0) == [1]
    write_list(tmp_path / "train.txt", "a\t7\tNone\nb\tNone\t8\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    edited = load_train_index(path, str(tmp_path / "cache"))
    assert edited.folder != first.folder and (edited.goods(0), edited.videos(1)) == ([7], [8])


def _truncate_goods(folder):
    with open(os.path.join(folder, "goods.npy"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) - 8)


def _drop_videos(folder):
    os.remove(os.path.join(folder, "videos.npy"))


def _bad_meta(folder):
    with open(os.path.join(folder, "meta.json"), "w") as f:
        f.write('{"lines": 2,')


def _short_offsets(folder):
    np.save(os.path.join(folder, "query_offsets.npy"), np.asarray([0, 1], dtype=np.int64))


def _other_key(folder):
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({**meta, "sha256": "0" * 64}, f)


@pytest.mark.parametrize("damage", [_truncate_goods, _drop_videos, _bad_meta, _short_offsets, _other_key])
def test_a_truncated_or_corrupt_cache_is_rebuilt_with_one_warning(tmp_path, caplog, damage):
    path = write_list(tmp_path / "train.txt", "a\t1,2\tNone\nb\tNone\t3,4\nc\t5\t6\n")
    folder = load_train_index(path, str(tmp_path / "cache")).folder
    damage(folder)
    with caplog.at_level(logging.WARNING, logger=train_index.log.name):
        index = load_train_index(path, str(tmp_path / "cache"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"training-index cache {folder} is truncated or corrupt" in warnings[0]
    assert index.folder == folder and list(index) == parse_train_file(path)
    assert sorted(os.listdir(tmp_path / "cache")) == [os.path.basename(folder)]


def test_a_read_only_cache_folder_falls_back_to_the_output_folder(tmp_path, monkeypatch, caplog):
    path = write_list(tmp_path / "train.txt", "a\t1\tNone\nb\tNone\t2\n")
    cache, fallback = tmp_path / "cache", tmp_path / "out" / "train_index"
    real_makedirs = os.makedirs

    def makedirs(name, *args, **kwargs):  # as on a read-only mount (running as root ignores chmod)
        if str(name).startswith(str(cache)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)
        return real_makedirs(name, *args, **kwargs)

    monkeypatch.setattr(train_index.os, "makedirs", makedirs)
    with caplog.at_level(logging.WARNING, logger=train_index.log.name):
        index = load_train_index(path, str(cache), fallback_dir=str(fallback))
    assert os.path.dirname(index.folder) == str(fallback) and list(index) == parse_train_file(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"training-index cache folder {cache} cannot be written (Read-only file system): indexing into {fallback} "
        "instead"]
    # the next rank or run maps the fallback copy without parsing again
    monkeypatch.setattr(train_index, "parse_train_line", lambda *a: pytest.fail("parsed again"))
    assert load_train_index(path, str(cache), fallback_dir=str(fallback)).folder == index.folder


# ----------------------------------------------------------------------------- point 11: texts of no tokens

ZERO_WIDTH = "\u200b\u200d"


def add_goods(paths, pid, title):
    os.makedirs(os.path.dirname(paths.image_path(pid)), exist_ok=True)
    Image.new("RGB", (24, 20), (90, 90, 90)).save(paths.image_path(pid), "PNG")
    text = paths.text_path("goods", pid)
    os.makedirs(os.path.dirname(text), exist_ok=True)
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join([str(pid), "类目", "品牌", "实体", title, "描述"]) + "\n")


def test_a_text_of_zero_width_characters_counts_as_empty(tmp_path):
    tokenizer = Tokenizer()
    assert not tokenizer.has_tokens(ZERO_WIDTH) and not tokenizer.has_tokens("")
    assert tokenizer.has_tokens("!") and tokenizer.has_tokens("纯棉")
    paths = DatasetPaths(tmp_path)
    add_goods(paths, 1, ZERO_WIDTH)
    add_goods(paths, 2, "纯棉短袖")
    ds = TrainDataset(paths, [TrainEntry("q", [1, 2], [])], num_frames=3, image_size=16, query_max_len=8,
                      text_max_len=12, title_aug_prob=0.0, make_tokenizer=lambda: tokenizer)
    assert ds[TrainSample(0, 0, "goods", 1)]["text_mask"].sum() == 2  # start and end tokens only
    assert ds.raw_counts()["empty_texts"] == 1
    ds[TrainSample(0, 0, "goods", 2)]
    assert ds.raw_counts()["empty_texts"] == 1
