"""The packed dataset (datasets/packed.py, scripts/pack_dataset.py): the same samples as the files, unreadable
items counted alike, a resumable pack that never overwrites, fork-safe readers, the validator, fast decoding."""
import io
import json
import math
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import build_eval_dataset, build_train_loader
from datasets import packed
from datasets.annotations import DatasetPaths, iter_lines, parse_train_line, read_frame_ids
from datasets.frames import load_image
from datasets.sampler import TrainSample
from datasets.packed import LmdbStore, PackError, check_packed, pack, read_manifest, run_lists, validate_packed
from datasets.transforms import EvalClipTransform, TrainClipTransform, train_clip_transform
from engine.checks import preflight, validate_config
from tests.helpers import REPO_ROOT
from utils.config import ConfigError, load_config

SHARD_ITEMS = 16  # the mini set's ~140 items per domain in several shards


def mini_cfg(root, *overrides):
    return load_config(os.path.join(REPO_ROOT, "configs", "base.yaml"), [
        f"data.root={root}", "data.image_size=32", "data.num_frames=3", "train.batch_size=4",
        "data.num_workers=0", *overrides])


def quiet(line):
    pass


@pytest.fixture(scope="module")
def packed_root(mini_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("packed") / "lmdb")
    pack(DatasetPaths(mini_root), out, shard_items=SHARD_ITEMS, log=quiet)
    return out


@pytest.fixture
def own_root(mini_root, tmp_path):
    """A copy of the mini set that a test may damage."""
    root = str(tmp_path / "root")
    shutil.copytree(mini_root, root, ignore=shutil.ignore_patterns(".train_index"))
    return root


def batches(cfg, epoch=1):
    loader, sampler = build_train_loader(cfg, rank=0, world_size=1)
    sampler.set_epoch(epoch)
    return list(loader), loader.dataset


def assert_same_batches(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if torch.is_tensor(x[key]):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_train_batches_equal_the_files(mini_root, packed_root):
    files, _ = batches(mini_cfg(mini_root))
    lmdb, dataset = batches(mini_cfg(mini_root, "data.format=lmdb", f"data.lmdb_root={packed_root}"))
    assert isinstance(dataset.store, LmdbStore)
    assert {b["domain"] for b in files} == {"goods", "video"}
    assert_same_batches(files, lmdb)


def test_eval_items_equal_the_files(mini_root, packed_root):
    paths = DatasetPaths(mini_root)
    for direction in ("video2goods", "goods2video"):
        for list_path in paths.direction_files(direction)[:2]:
            for test_text in ("fields", "authors_lines"):
                overrides = [f"data.test_text={test_text}", "data.preprocess=authors"]
                files = build_eval_dataset(mini_cfg(mini_root, *overrides), list_path)
                lmdb = build_eval_dataset(mini_cfg(mini_root, "data.format=lmdb", f"data.lmdb_root={packed_root}",
                                                   *overrides), list_path)
                assert len(files) == len(lmdb) > 0
                for i in range(len(files)):
                    a, b = files[i], lmdb[i]
                    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["text_ids"], b["text_ids"])


def test_two_workers_open_their_own_environments(mini_root, packed_root, tmp_path, monkeypatch):
    opened = tmp_path / "opened"
    real = packed.open_shard

    def recording(path, **options):
        with open(opened, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(path, **options)

    monkeypatch.setattr(packed, "open_shard", recording)
    cfg = mini_cfg(mini_root, "data.format=lmdb", f"data.lmdb_root={packed_root}")
    single, dataset = batches(cfg)
    store = dataset.store
    assert store._envs and store._pid == os.getpid()  # the main process holds open handles before the fork
    assert pickle.loads(pickle.dumps(store))._envs == {}
    two, _ = batches(mini_cfg(mini_root, "data.format=lmdb", f"data.lmdb_root={packed_root}", "data.num_workers=2"))
    assert_same_batches(single, two)
    pids = set(opened.read_text().split())
    assert len(pids - {str(os.getpid())}) == 2  # each worker opened what it read


def _first_train_line(root):
    paths = DatasetPaths(root)
    for lineno, line in iter_lines(paths.train_file):
        entry = parse_train_line(line, paths.train_file, lineno)
        if len(entry.goods) == 1 and entry.videos:  # its one goods item is drawn in every epoch
            return paths, lineno, entry


def test_unreadable_sources_are_reported_and_counted_as_with_files(own_root, tmp_path):
    paths, lineno, entry = _first_train_line(own_root)
    image = paths.image_path(entry.goods[0])
    os.remove(image)
    frame = os.path.join(paths.images_dir("video"), read_frame_ids(paths.frameid_path(entry.videos[0]))[0])
    with open(frame, "wb") as f:
        f.write(b"not a jpeg")
    out = str(tmp_path / "lmdb")
    run = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "pack_dataset.py"), own_root, out,
                          "--shard-items", str(SHARD_ITEMS)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "2 unreadable source files" in run.stdout
    assert f"{image}: file not found (pid {entry.goods[0]}, listed at {paths.train_file}:{lineno})" in run.stdout
    assert frame in run.stdout
    missing = {m["path"]: m for m in read_manifest(out)["missing"]}
    assert set(missing) == {image, frame} and read_manifest(out)["counts"]["missing_files"] == 2
    store = LmdbStore(paths, out)
    with pytest.raises(OSError, match="unreadable when packed: file not found"):
        load_image(image, store.reader("goods", entry.goods[0]))
    files, files_ds = batches(mini_cfg(own_root))
    lmdb, lmdb_ds = batches(mini_cfg(own_root, "data.format=lmdb", f"data.lmdb_root={out}"))
    assert_same_batches(files, lmdb)
    pid = entry.goods[0]
    index = next(i for i in range(len(files_ds.entries)) if pid in files_ds.entries[i].goods)
    a, b = (ds[TrainSample(1, index, "goods", pid)] for ds in (files_ds, lmdb_ds))
    assert a["pid"] == b["pid"] != pid and torch.equal(a["frames"], b["frames"])
    assert files_ds.counts.as_dict() == lmdb_ds.counts.as_dict()
    assert lmdb_ds.counts["unreadable_images"] >= 2 and lmdb_ds.counts["replaced_samples"] >= 1


def test_an_interrupted_pack_resumes_and_nothing_is_overwritten(mini_root, packed_root, tmp_path, monkeypatch):
    out = str(tmp_path / "lmdb")
    real, calls = packed.pack_shard, []

    def dying(job):
        calls.append(job[3])
        if len(calls) == 3:  # killed half-way through the third shard
            os.makedirs(os.path.join(job[0], job[3] + packed.PARTIAL))
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(packed, "pack_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        pack(DatasetPaths(mini_root), out, shard_items=SHARD_ITEMS, log=quiet)
    monkeypatch.setattr(packed, "pack_shard", real)
    assert os.path.isdir(os.path.join(out, calls[2] + packed.PARTIAL))
    with pytest.raises(PackError, match="unfinished pack"):
        read_manifest(out)
    with pytest.raises(PackError, match="holds a pack of other options"):
        pack(DatasetPaths(mini_root), out, shard_items=SHARD_ITEMS, quality=80, log=quiet)
    lines = []
    manifest = pack(DatasetPaths(mini_root), out, shard_items=SHARD_ITEMS, log=lines.append)
    assert any("resuming, 2 of" in line for line in lines)
    assert not [e for e in os.listdir(out) if e.endswith(packed.PARTIAL)]
    fresh = read_manifest(packed_root)
    assert manifest["shards"] == fresh["shards"] and validate_packed(out)[0] == []
    lines = []
    pack(DatasetPaths(mini_root), out, shard_items=SHARD_ITEMS, log=lines.append)
    assert lines == [f"{out}: already packed from these lists and options"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(PackError, match="not empty and not a pack"):
        pack(DatasetPaths(mini_root), str(other), log=quiet)
    assert os.listdir(other) == ["keep.txt"]


def test_workers_pack_the_same_shards(mini_root, packed_root, tmp_path):
    manifest = pack(DatasetPaths(mini_root), str(tmp_path / "lmdb"), shard_items=SHARD_ITEMS, workers=2, log=quiet)
    assert manifest["shards"] == read_manifest(packed_root)["shards"]


def test_validator_names_a_corrupted_shard(mini_root, packed_root, tmp_path):
    out = str(tmp_path / "lmdb")
    shutil.copytree(packed_root, out)
    assert validate_packed(out, decode_images=True)[0] == []
    name = read_manifest(out)["shards"]["goods"][1]["name"]
    data = os.path.join(out, name, "data.mdb")
    with packed.open_shard(os.path.join(out, name)).begin() as txn:
        value = next(v for k, v in txn.cursor() if k.endswith(b".jpg"))
    raw = bytearray(open(data, "rb").read())
    at = raw.find(value)
    while at >= 0:  # every copy (a committed page may survive as a free one): one byte of the image's data
        raw[at + len(value) // 2] ^= 0xFF
        at = raw.find(value, at + 1)
    open(data, "wb").write(bytes(raw))
    problems, _ = validate_packed(out)
    assert len(problems) == 1 and problems[0].startswith(f"{os.path.join(out, name)}: corrupted")
    shutil.rmtree(os.path.join(out, read_manifest(out)["shards"]["video"][0]["name"]))
    cli = subprocess.run([sys.executable, "-m", "datasets.validate", "--packed", out], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "video-00000: LMDB shard not found" in cli.stdout and name in cli.stdout
    truncated = read_manifest(out)["shards"]["goods"][2]
    open(os.path.join(out, truncated["name"], "data.mdb"), "r+b").truncate(100)
    paths = DatasetPaths(mini_root)
    with pytest.raises(PackError, match=f"{os.path.join(out, truncated['name'])}: cannot open the LMDB shard"):
        load_image(paths.image_path(truncated["first_pid"]), LmdbStore(paths, out).reader("goods",
                                                                                           truncated["first_pid"]))


def test_preflight_checks_the_pack_against_the_run(own_root, tmp_path):
    out = str(tmp_path / "lmdb")
    with pytest.raises(ConfigError, match="data.lmdb_root"):
        validate_config(mini_cfg(own_root, "data.format=lmdb"))
    with pytest.raises(ConfigError, match="data.frame_source=raw"):
        validate_config(mini_cfg(own_root, "data.format=lmdb", "data.lmdb_root=x", "data.frame_source=raw"))
    cfg = mini_cfg(own_root, "data.format=lmdb", f"data.lmdb_root={out}")
    with pytest.raises(PackError, match="no manifest.json"):
        preflight(cfg)
    pack(DatasetPaths(own_root), out, shard_items=SHARD_ITEMS, log=quiet)
    preflight(cfg)
    preflight(cfg, evaluate=True)
    paths = DatasetPaths(own_root)
    with pytest.raises(PackError, match="roots"):
        check_packed(out, DatasetPaths(own_root, roots={"goods_texts": "goods/other"}), run_lists(paths, False))
    with open(paths.train_file, "a", encoding="utf-8") as f:
        f.write("新的查询\t1\t2\n")
    with pytest.raises(PackError, match="data.train_file=.*changed since"):
        preflight(cfg)


def psnr(a, b):
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * math.log10(255 ** 2 / mse)


def test_resize_reports_its_psnr(mini_root, tmp_path):
    out = str(tmp_path / "lmdb")
    manifest = pack(DatasetPaths(mini_root), out, shard_items=1000, resize_short=16, psnr_size=32, log=quiet)
    paths = DatasetPaths(mini_root)
    pid = manifest["shards"]["goods"][0]["first_pid"]
    source = open(paths.image_path(pid), "rb").read()
    stored = LmdbStore(paths, out).reader("goods", pid)(paths.image_path(pid))
    assert min(Image.open(io.BytesIO(stored)).size) == 16
    squash = [torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB").resize((32, 32), Image.BICUBIC)))
              for d in (source, stored)]
    r = manifest["resize"]
    assert r["images"] > 100 and r["psnr_min_db"] - 1e-6 <= psnr(*squash) and r["psnr_min_db"] <= r["psnr_mean_db"]
    assert manifest["counts"]["packed_bytes"] < manifest["counts"]["source_bytes"]


def _jpeg(tmp_path, structured_image, width, height):
    path = tmp_path / f"{width}x{height}.jpg"
    structured_image(width, height).save(path, quality=92)
    return str(path)


def test_fast_decode_is_close_where_it_is_used_and_off_for_exact_profiles(tmp_path, structured_image, mini_root):
    transform = TrainClipTransform(32, (0.64, 1.0))
    assert transform.decode_size == (47, 47)  # ceil(32 / sqrt(0.64 * 3/4))
    big = _jpeg(tmp_path, structured_image, 400, 300)
    full, reduced = load_image(big), load_image(big, draft=transform.decode_size)
    assert full.shape == (3, 300, 400) and reduced.shape == (3, 75, 100)  # 1/4: both sides stay >= 47
    a, b = transform(full[None], seed=3), transform(reduced[None], seed=3)
    scale = transform.normalize.scale  # (x / 255 - mean) / std = x * scale - shift: divided back to 0..255 steps
    assert psnr(a / scale, b / scale) > 28
    small = _jpeg(tmp_path, structured_image, 90, 60)  # under twice 47: decoded whole
    assert torch.equal(load_image(small), load_image(small, draft=transform.decode_size))
    assert train_clip_transform(32, preprocess="authors").decode_size is None
    assert EvalClipTransform(32, "authors").decode_size is None and EvalClipTransform(32).decode_size == (32, 32)
    _, dataset = batches(mini_cfg(mini_root, "data.preprocess=authors"))
    assert dataset.draft is None
    _, dataset = batches(mini_cfg(mini_root))
    assert dataset.draft == (47, 47)
    assert build_eval_dataset(mini_cfg(mini_root), DatasetPaths(mini_root).query_list("video2goods")).draft is None
    with pytest.raises(ConfigError, match="data.fast_decode=true with data.preprocess=authors"):
        validate_config(mini_cfg(mini_root, "data.preprocess=authors", "data.fast_decode=true"))
    with pytest.raises(ConfigError, match="data.fast_decode=2: expected null"):
        validate_config(mini_cfg(mini_root, "data.fast_decode=2"))


def test_manifest_is_json_with_the_lists(packed_root, mini_root):
    manifest = json.load(open(os.path.join(packed_root, "manifest.json"), encoding="utf-8"))
    assert manifest["lists"]["data.train_file"]["path"] == os.path.join("train_file", "train.txt")
    total = {d: sum(s["items"] for s in manifest["shards"][d]) for d in ("goods", "video")}
    assert total == {"goods": manifest["counts"]["goods"], "video": manifest["counts"]["video"]}
    assert all(s["items"] <= SHARD_ITEMS for d in ("goods", "video") for s in manifest["shards"][d])


def test_result_page_reads_a_pack_without_the_source_files(own_root, tmp_path):
    from evaluate.page import dataset_items, thumbnail

    paths = DatasetPaths(own_root)
    out = str(tmp_path / "lmdb")
    pack(paths, out, shard_items=SHARD_ITEMS, log=quiet)
    lists = [paths.query_list("video2goods"), paths.gallery_list("video2goods")]  # videos, then goods
    pids = [next(iter_lines(path))[1].split("\t")[0] for path in lists]
    from_files = [dataset_items(paths, path)(int(pid)) for path, pid in zip(lists, pids)]
    expected = [(info["title"], [thumbnail(p) for p in info["images"]]) for info in from_files]
    for domain in ("goods", "video"):
        shutil.rmtree(paths.images_dir(domain))
        shutil.rmtree(paths.text_dir(domain), ignore_errors=True)
    store = LmdbStore(paths, out)
    for (title, thumbs), path, pid in zip(expected, lists, pids):
        info = dataset_items(paths, path, store)(int(pid))
        assert title and info["title"] == title
        assert thumbs and None not in thumbs and [thumbnail(p, info["read"]) for p in info["images"]] == thumbs
    assert dataset_items(paths, lists[0])(int(pids[0]))["title"] == "(text file missing)"  # the files are gone
