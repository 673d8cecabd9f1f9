"""Faults of extraction and the result page (issue 20, points 10 and 13): list paths that leave data.root,
FIFOs and devices given as images, a full disk, a page cut short, two evaluations on one output folder."""
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from datasets.annotations import AnnotationError, DatasetPaths
from datasets.eval_dataset import EvalDataset
from datasets.frames import UnreadableImage, load_image
from evaluate import pipeline
from evaluate.extract import extract_features, merged_paths, shard_paths
from evaluate.features import DiskFull
from evaluate.page import dataset_items, render_page, thumbnail
from tests.helpers import REPO_ROOT

DEMO = os.path.join(REPO_ROOT, "configs", "demo.yaml")


class Hung(Exception):
    """Not an OSError, so that no reader's error handling turns it into an unreadable file."""


@contextlib.contextmanager
def fails_instead_of_hanging(seconds=20):
    """A blocking open (a FIFO without a writer) ends the test with Hung rather than stalling the suite."""
    def stop(signum, frame):
        raise Hung("blocked: the file was opened")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _goods_list(tmp_path, frame, text):
    path = tmp_path / "gallery.txt"
    path.write_text(f"1\tgoods\tq\t{frame}\t{text}\n", encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- point 10: paths out of data.root

@pytest.mark.parametrize("frame,text,bad", [
    ("../../elsewhere/1.jpg", "1/1.txt", "../../elsewhere/1.jpg"),
    ("/etc/passwd", "1/1.txt", "/etc/passwd"),
    ("1/1.jpg", "1/../../1.txt", "1/../../1.txt"),
])
def test_list_paths_that_leave_data_root_are_errors_in_extraction_and_the_page(tmp_path, frame, text, bad):
    paths, listing = DatasetPaths(str(tmp_path)), _goods_list(tmp_path, frame, text)
    with pytest.raises(AnnotationError, match=f"{listing}:1: .*{bad!r}, which leaves it"):
        EvalDataset(paths, listing, num_frames=2, image_size=16, text_max_len=12)
    with pytest.raises(AnnotationError, match=f"{listing}:1: .*{bad!r}, which leaves it"):
        dataset_items(paths, listing)


def test_a_path_that_stays_inside_its_folder_is_accepted(tmp_path):
    describe = dataset_items(DatasetPaths(str(tmp_path)), _goods_list(tmp_path, "1/x/../1.jpg", "./1/1.txt"))
    assert describe(1)["images"] == [os.path.join(DatasetPaths(str(tmp_path)).images_dir("goods"), "1/x/../1.jpg")]


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "frame.jpg"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("kind", ["FIFO", "device"])
def test_a_fifo_or_device_given_as_an_image_is_unreadable_never_a_hang(fifo, kind):
    path = fifo if kind == "FIFO" else os.devnull
    with fails_instead_of_hanging(), pytest.raises(UnreadableImage, match=f"not a regular file: a {kind}"):
        load_image(path)
    with fails_instead_of_hanging():
        assert thumbnail(path) is None  # the page's grey box


def test_a_fifo_frame_is_counted_as_a_black_frame(tmp_path):
    paths = DatasetPaths(str(tmp_path))
    image = paths.image_path(1)
    os.makedirs(os.path.dirname(image))
    os.mkfifo(image)
    text = paths.text_path("goods", 1)
    os.makedirs(os.path.dirname(text))
    with open(text, "w", encoding="utf-8") as f:
        f.write("1\ncategory\nbrand\nentity\na title\na description\n")
    ds = EvalDataset(paths, _goods_list(tmp_path, "1/1.jpg", "1/1.txt"), num_frames=2, image_size=16,
                     text_max_len=12, skip_unreadable=True)
    with fails_instead_of_hanging():
        frames = ds[0]["frames"]
    assert ds.stats()["black_frames"] == 1
    with pytest.raises(UnreadableImage, match="not a regular file: a FIFO; item 1 of"):
        EvalDataset(paths, ds.list_path, num_frames=2, image_size=16, text_max_len=12)[0]
    assert frames.shape[0] == 1


# ----------------------------------------------------------------------------- point 13: full disk, page, lock

DiskUsage = collections.namedtuple("DiskUsage", "total used free")


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(3 * 4 * 4, 8, generator=torch.Generator().manual_seed(0)))

    def encode_item(self, frames, input_ids, attention_mask):
        v = F.normalize(frames.mean(1).flatten(1) @ self.proj, dim=-1)
        return {"fused": v, "visual": v, "text": v}


class TinyItems(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"frames": torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(i)),
                "text_ids": torch.ones(3, dtype=torch.long), "text_mask": torch.ones(3), "pid": 100 + i, "index": i}


def test_a_full_disk_during_extraction_removes_the_partial_shard_and_names_folder_and_space(tmp_path, monkeypatch):
    folder = tmp_path / "fused" / "gallery"

    def extract():
        extract_features(TinyEncoder(), TinyItems(), {"fused": str(folder)}, batch_size=2, dtype="float32")

    extract()
    for path in merged_paths(str(folder)):  # a rerun with the same inputs (meta.json kept) writes its shard again
        os.remove(path)
    # the kernel's always-full device stands in for a full disk when the shard is written
    partial = f"{shard_paths(str(folder), 0, 1)[0]}.tmp{os.getpid()}"
    os.symlink("/dev/full", partial)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: DiskUsage(10**9, 10**9 - 300, 300))
    with pytest.raises(DiskFull) as err:
        extract()
    assert str(err.value).startswith(f"{folder}: disk full writing shard_0_of_1.npy: it needs ")
    assert re.search(r"it needs \d+ bytes, 300 bytes are free; free space there or point eval.out_dir at a larger "
                     r"disk$", str(err.value))
    assert not os.path.lexists(partial)
    assert not any(os.path.exists(p) for p in shard_paths(str(folder), 0, 1))
    monkeypatch.undo()  # space again: the rerun writes every file
    extract()
    assert all(os.path.exists(p) for p in merged_paths(str(folder)))


def test_page_html_is_written_atomically(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("the previous page", encoding="utf-8")
    os.symlink("/dev/full", f"{page}.tmp{os.getpid()}")  # the disk fills up while the new page is written
    with pytest.raises(OSError):
        render_page([], str(page), "title")
    assert page.read_text(encoding="utf-8") == "the previous page"
    assert os.listdir(tmp_path) == ["page.html"]
    render_page([], str(page), "title")
    assert "<title>title</title>" in page.read_text(encoding="utf-8")


def test_a_second_evaluation_on_one_output_folder_stops_naming_the_first(mini_root, tmp_path):
    from utils.config import load_config

    cfg = load_config(DEMO, [f"data.root={mini_root}", f"output_dir={tmp_path}", "eval.feature=all"])
    folder = pipeline.out_dir(cfg, "text")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom evaluate.pipeline import folder_lock\n"
         f"with folder_lock({folder!r}):\n    print('held', flush=True)\n    sys.stdin.read()"],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(pipeline.FolderInUse) as err:
            pipeline.extract(cfg)
    finally:
        holder.communicate("")
    assert str(err.value).startswith(f"{folder} is in use by another evaluation (host ")
    assert f" pid {holder.pid} since " in str(err.value)
    assert str(err.value).endswith("; wait for it to end or set another eval.out_dir")
    assert not os.path.exists(os.path.join(folder, "query"))  # it stopped before extracting anything
    with pipeline.folder_lock(folder):  # the first one gone, the folder is free again
        pass
